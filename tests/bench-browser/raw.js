// The workloads on hand-written IndexedDB: one object store keyed by `id`, an index on
// [owner, created]. Every write transaction is awaited to its `complete` event.

const req = (r) => new Promise((ok, err) => { r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });
const done = (tx) => new Promise((ok, err) => { tx.oncomplete = () => ok(); tx.onerror = () => err(tx.error); tx.onabort = () => err(tx.error); });
const ownerRange = (owner) => IDBKeyRange.bound([owner, -Infinity], [owner, Infinity]);

export async function openDb(name) {
  const open = indexedDB.open(name, 1);
  open.onupgradeneeded = () => {
    const store = open.result.createObjectStore("docs", { keyPath: "id" });
    store.createIndex("owner_created", ["owner", "created"]);
  };
  const db = await req(open);
  return {
    async bulkInsert(docs) {
      const tx = db.transaction("docs", "readwrite");
      const store = tx.objectStore("docs");
      for (const d of docs) store.add(d);
      await done(tx);
    },
    async insertOne(doc) {
      const tx = db.transaction("docs", "readwrite");
      tx.objectStore("docs").add(doc);
      await done(tx);
    },
    get: (id) => req(db.transaction("docs").objectStore("docs").get(id)),
    /** Every id in one read transaction. */
    getMany(ids) {
      const store = db.transaction("docs").objectStore("docs");
      return Promise.all(ids.map((id) => req(store.get(id))));
    },
    byOwner: (owner) => req(db.transaction("docs").objectStore("docs").index("owner_created").getAll(ownerRange(owner))),
    firstByOwner: (owner, n) =>
      req(db.transaction("docs").objectStore("docs").index("owner_created").getAll(ownerRange(owner), n)),
    count: () => req(db.transaction("docs").objectStore("docs").count()),
    countOwner: (owner) => req(db.transaction("docs").objectStore("docs").index("owner_created").count(ownerRange(owner))),
    scan: () => req(db.transaction("docs").objectStore("docs").getAll()),
    close: () => db.close(),
  };
}
