// Imports the installed package in Node: the modules load, the API is there, and
// `open` refuses clearly (there is no IndexedDB in Node) with a coded error.
import assert from "node:assert/strict";
import * as warren from "warren";
import * as react from "warren/react";

for (const name of ["open", "load", "claimsOf", "syncUrl", "literal", "Database", "LiveQuery", "Collection",
  "SetQuery", "WarrenError", "ProgramError", "PermissionDeniedError", "StorageError", "ConnectionError", "AuthError"]) {
  assert.ok(name in warren, `warren exports ${name}`);
}
assert.equal(typeof react.useQuery, "function");
assert.equal(typeof react.useStatus, "function");
assert.equal(warren.syncUrl("https://db.example.com"), "wss://db.example.com/v1/sync");
assert.equal(new warren.Collection("Todo").index("byOwner", 'a"b').take(2).source, 'Todo.byOwner("a\\"b").take(2)');
await assert.rejects(warren.open({ url: "ws://localhost:1", token: "x.e30.y" }), (e) =>
  e instanceof warren.StorageError && e.code === "STORAGE_ERROR" && /IndexedDB/.test(e.message));
console.log("ok - the package imports in Node and refuses to open without IndexedDB");
