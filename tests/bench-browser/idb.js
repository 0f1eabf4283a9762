// The workloads on idb 8 (Jake Archibald's promise wrapper over IndexedDB).
import { openDB } from "./lib/idb/index.js";

const ownerRange = (owner) => IDBKeyRange.bound([owner, -Infinity], [owner, Infinity]);

export async function openDb(name) {
  const db = await openDB(name, 1, {
    upgrade(db) {
      const store = db.createObjectStore("docs", { keyPath: "id" });
      store.createIndex("owner_created", ["owner", "created"]);
    },
  });
  return {
    async bulkInsert(docs) {
      const tx = db.transaction("docs", "readwrite");
      for (const d of docs) tx.store.add(d);
      await tx.done;
    },
    async insertOne(doc) {
      const tx = db.transaction("docs", "readwrite");
      tx.store.add(doc);
      await tx.done;
    },
    get: (id) => db.get("docs", id),
    /** Every id in one read transaction. */
    getMany(ids) {
      const tx = db.transaction("docs");
      return Promise.all(ids.map((id) => tx.store.get(id)));
    },
    byOwner: (owner) => db.getAllFromIndex("docs", "owner_created", ownerRange(owner)),
    firstByOwner: (owner, n) => db.getAllFromIndex("docs", "owner_created", ownerRange(owner), n),
    count: () => db.count("docs"),
    countOwner: (owner) => db.countFromIndex("docs", "owner_created", ownerRange(owner)),
    scan: () => db.getAll("docs"),
    close: () => db.close(),
  };
}
