// An example app written against the package's declarations: `tsc --noEmit` must
// accept it (tests/package/run checks that). It exercises the whole public API with
// the types an app would use, so a change to the declarations that breaks apps fails.
import {
  open,
  Database,
  Doc,
  LiveQuery,
  PermissionDeniedError,
  Status,
  WarrenError,
  Write,
  type ErrorCode,
} from "warren";
import { useQuery, useStatus } from "warren/react";

interface Todo {
  owner: string;
  title: string;
  done: boolean;
  created: number;
}
interface Schema {
  Todo: Todo;
}

export async function main(getJwt: () => Promise<string>): Promise<void> {
  const db: Database<Schema> = await open<Schema>({ url: "wss://eu.example.com", token: getJwt });
  const sub = String(db.auth.sub);

  // Builder queries are typed by the schema map.
  const mine: LiveQuery<Doc<Todo>[]> = db.live((q) => q.Todo.index("byOwner", sub).where("done", "==", false));
  const stop: () => void = mine.subscribe((rows) => {
    if (rows) rows.forEach((r) => console.log(r.id, r.title.toUpperCase(), r.created + 1));
  });
  stop();
  const n: number = await db.query(db.q.Todo.all().count());
  const first = await db.query(db.q.Todo.byId("t1"));
  if (first) console.log(first.title, n);
  const raw = await db.query<string[]>("Todo.all().map(.title)");
  console.log(raw.join(", "));

  // Writes: optimistic result, then durable, then confirmed.
  const w: Write<Doc<Todo>> = db.call<Doc<Todo>>("addTodo", { title: "milk" });
  const optimistic = await w.result;
  await w.local;
  try {
    const c = await w.confirmed;
    console.log(optimistic.id, c.position ?? "forgotten", c.result.title);
  } catch (e) {
    if (e instanceof PermissionDeniedError) console.log("refused by a rule", e.code satisfies "PERMISSION_DENIED");
    else if (e instanceof WarrenError) {
      const code: ErrorCode = e.code;
      console.log(code, e.message);
    }
  }
  db.transact<number>("Todo.all().count()").result.then((k) => k.toFixed());

  db.status.subscribe((s: Status) => console.log(s.online, s.connected, s.pending, s.lastSync?.toISOString()));
  const off = db.on("rejected", (e) => console.log(e.code, e.seq));
  off();
  db.setOnline(false);
  db.close();
}

export function TodoList({ db }: { db: Database<Schema> }) {
  const { data, error, loading } = useQuery(db, (q) => q.Todo.all().order("created", "desc").take(20));
  const status = useStatus(db);
  if (loading) return <p>Loading…</p>;
  if (error) return <p>{error.code}</p>;
  return (
    <ul data-pending={status.pending}>
      {data?.map((t) => (
        <li key={t.id}>{t.title}</li>
      ))}
    </ul>
  );
}
