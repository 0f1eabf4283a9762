// A typo in a collection name must not compile.
import { open } from "warren";
import type { Schema } from "./schema.js";

export async function app(token: string): Promise<void> {
  const db = await open<Schema>({ url: "ws://localhost:8080", token });
  db.q.Todos.all(); // error: TS2551
}
