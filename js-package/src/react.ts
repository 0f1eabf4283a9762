// React bindings: `useQuery` for live queries, `useStatus` for the sync state.
// React is a peer dependency; import these from "warren/react".

import { useEffect, useMemo, useState, useSyncExternalStore } from "react";
import type { Collections, Database, Query, Status, WarrenError } from "./index.js";

export interface QueryState<R> {
  /** The latest result; `undefined` until the first one. */
  data: R | undefined;
  /** Why the query failed, if it did (a parse error, say). */
  error: WarrenError | undefined;
  /** True until the first result or error. */
  loading: boolean;
}

/**
 * A live query as React state: the component re-renders when the result changes
 * (after a local write or a confirmed effect from the server), never otherwise.
 * `query` is Warren source, a builder query, or a function of the collections; the
 * query restarts when its source text changes. `options.initialData` (a result the
 * server rendered the page with, say) is `data` until the first local result.
 */
export function useQuery<R = unknown, S = any>(
  db: Database<S>,
  query: Query<R> | string | ((c: Collections<S>) => Query<R>),
  options: { initialData?: R } = {},
): QueryState<R> {
  const initial = options.initialData;
  const source =
    typeof query === "function" ? query(db.q).source : typeof query === "string" ? query : query.source;
  const live = useMemo(() => db.live<R>(source), [db, source]);
  const now = (): QueryState<R> => ({
    data: live.current ?? initial,
    error: live.error,
    loading: live.current === undefined && initial === undefined && !live.error,
  });
  const [state, setState] = useState<QueryState<R>>(now);
  useEffect(() => {
    setState(now());
    return live.subscribe((data) =>
      setState({
        data: data ?? initial,
        error: live.error,
        loading: data === undefined && initial === undefined && !live.error,
      }),
    );
    // `initialData` only stands in until the first result: a new one does not restart.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [live]);
  return state;
}

/** The sync state (online, connected, pending writes, last sync) as React state. */
export function useStatus(db: Database<any>): Status {
  return useSyncExternalStore(
    (onChange) => db.status.subscribe(() => onChange()),
    () => db.status.current,
    () => db.status.current,
  );
}
