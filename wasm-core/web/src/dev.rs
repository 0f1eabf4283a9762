//! The development entry points of the binding (the `devtools` feature: a development
//! build of the package; docs/DEBUGGING.md): `explain` replays a query, a write or a
//! partition's read rule on the local view with the rules' trace, and `inspect` says
//! what the replica holds, for `warren/devtools`. Both run on the local lane like a
//! query.

use std::rc::Rc;

use futures_channel::oneshot;
use warren_core::exec::Op;
use warren_core::explain::Subject;
use warren_core::replica::Replica;
use warren_core::{Error, ErrorCode};
use wasm_bindgen::prelude::*;

use super::{closed, from_js, js_error, now_ms, LocalCmd, Shared, Warren};
use crate::idb::IdbStore;

/// A development command on the local lane.
pub(crate) enum DevCmd {
    Explain(Subject, oneshot::Sender<Result<String, Error>>),
    Inspect(oneshot::Sender<Result<String, Error>>),
}

impl Shared {
    pub(super) async fn dev(self: &Rc<Self>, c: DevCmd) {
        match c {
            DevCmd::Explain(what, reply) => {
                let now = now_ms();
                let r = self.settle(|r| r.explain(&what, now)).await;
                let _ = reply.send(r.and_then(|r| r).map(|x| x.to_json()));
            }
            DevCmd::Inspect(reply) => {
                let r = self.settle(inspect).await;
                let _ = reply.send(r.and_then(|r| r));
            }
        }
    }
}

/// What the inspector shows of a replica, as JSON text: the partitions it holds with
/// their cursors, its outbox (each pending write's sequence number and operation), its
/// live queries.
fn inspect(r: &mut Replica<IdbStore>) -> Result<String, Error> {
    use serde_json::json;
    let partitions: Vec<_> = r
        .partitions()?
        .into_iter()
        .map(|(p, c)| json!({ "partition": p, "cursor": c }))
        .collect();
    let outbox: Vec<_> = r
        .pending()
        .iter()
        .map(|p| match &p.op {
            Op::Call { function, args } => {
                json!({ "seq": p.seq, "call": function, "args": args.to_json() })
            }
            Op::Run { source } => json!({ "seq": p.seq, "run": source }),
        })
        .collect();
    let live: Vec<_> = r
        .live_queries()
        .into_iter()
        .map(|(id, s)| json!({ "id": id, "source": s }))
        .collect();
    Ok(json!({ "partitions": partitions, "outbox": outbox, "live": live }).to_string())
}

/// `db.explain` and `db.inspect`.
#[wasm_bindgen]
impl Warren {
    /// Replays something on the local view as this replica's identity, with the trace
    /// of the rules it evaluated (docs/DEBUGGING.md): `kind` "query" (`source` a
    /// query), "run" (`source` an ad-hoc transaction), "call" (`source` a function,
    /// `args` its arguments) or "partition" (`source` a partition's name). Nothing is
    /// stored or sent. Resolves with the trace as JSON text.
    pub async fn explain(
        &self,
        kind: String,
        source: String,
        args: JsValue,
    ) -> Result<JsValue, JsValue> {
        use warren_core::explain::Subject;
        let what = match kind.as_str() {
            "query" => Subject::Query(source),
            "run" => Subject::Write(Op::Run { source }),
            "call" => Subject::Write(Op::Call {
                function: source,
                args: from_js(args).map_err(|e| js_error(&e))?,
            }),
            "partition" => Subject::Partition(source),
            _ => {
                return Err(js_error(&Error::new(
                    ErrorCode::InvalidArgument,
                    format!("explain takes query, run, call or partition, not {kind:?}"),
                )))
            }
        };
        let (tx, rx) = oneshot::channel();
        self.send(LocalCmd::Dev(DevCmd::Explain(what, tx)))?;
        let t = rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))?;
        Ok(JsValue::from_str(&t))
    }

    /// What the replica holds, for the inspector (`warren/devtools`): resolves with
    /// `{partitions: [{partition, cursor}], outbox: [{seq, call, args} | {seq, run}],
    /// live: [{id, source}]}` as JSON text.
    pub async fn inspect(&self) -> Result<JsValue, JsValue> {
        let (tx, rx) = oneshot::channel();
        self.send(LocalCmd::Dev(DevCmd::Inspect(tx)))?;
        let t = rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))?;
        Ok(JsValue::from_str(&t))
    }
}
