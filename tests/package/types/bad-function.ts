// A typo in a function name must not compile.
import { open } from "warren";
import type { Schema } from "./schema.js";

export async function app(token: string): Promise<void> {
  const db = await open<Schema>({ url: "ws://localhost:8080", token });
  db.call("addTodos", { title: "milk" }); // error: TS2769
}
