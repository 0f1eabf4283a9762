// The workloads on Dexie 4: a table keyed by `id` with a compound index
// [owner+created]; live queries with Dexie's `liveQuery`.
import Dexie, { liveQuery } from "./lib/dexie/dexie.min.mjs";

const between = (t, owner) => t.where("[owner+created]").between([owner, Dexie.minKey], [owner, Dexie.maxKey]);

export async function openDb(name) {
  const db = new Dexie(name);
  db.version(1).stores({ docs: "id, [owner+created]" });
  await db.open();
  return {
    bulkInsert: (docs) => db.docs.bulkAdd(docs),
    insertOne: (doc) => db.docs.add(doc),
    get: (id) => db.docs.get(id),
    getMany: (ids) => db.docs.bulkGet(ids),
    byOwner: (owner) => between(db.docs, owner).toArray(),
    firstByOwner: (owner, n) => between(db.docs, owner).limit(n).toArray(),
    count: () => db.docs.count(),
    countOwner: (owner) => between(db.docs, owner).count(),
    scan: () => db.docs.toArray(),
    /** A live query on one owner's newest 5 documents; resolves once it has a first result. */
    live(owner, onRows) {
      return new Promise((ready) => {
        const sub = liveQuery(() => between(db.docs, owner).reverse().limit(5).toArray()).subscribe({
          next(rows) { onRows(rows); ready(() => sub.unsubscribe()); },
          error(e) { console.error(e); },
        });
      });
    },
    close: () => db.close(),
  };
}
