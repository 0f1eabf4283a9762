// A typo in an argument's name must not compile.
import { open } from "warren";
import type { Schema } from "./schema.js";

export async function app(token: string): Promise<void> {
  const db = await open<Schema>({ url: "ws://localhost:8080", token });
  db.call("addTask", { team: "t1", titel: "plan" }); // error: TS2769
}
