// A typo in a `where` field must not compile.
import { open } from "warren";
import type { Schema } from "./schema.js";

export async function app(token: string): Promise<void> {
  const db = await open<Schema>({ url: "ws://localhost:8080", token });
  db.q.Todo.all().where("dnoe", "==", true); // error: TS2345
}
