//! The client replica on IndexedDB, in a real browser: the outbox, the base and the
//! cursors are in IndexedDB, so closing and reopening the database (a reload, a crashed
//! tab) resumes exactly where it was.
#![cfg(target_arch = "wasm32")]

use warren_core::exec::Op;
use warren_core::protocol::{ClientFrame, ServerFrame, SnapshotDoc};
use warren_core::replica::Replica;
use warren_core::storage::KeyRange;
use warren_core::value::obj;
use warren_core::{Schema, Value};
use warren_web::IdbStore;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  index byOwner [owner, created]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}
function add(id, title, created) { Todo.create({ id, owner: auth.sub, title, created }) }
"#;

/// Opens the replica as the browser driver does: the replica's own keys first.
async fn open(name: &str) -> Replica<IdbStore> {
    let mut store = IdbStore::open(name).await.unwrap();
    for space in [b'X', b'O', b'K', b'Q'] {
        store.load(&KeyRange::prefix(&[space])).await.unwrap();
    }
    let mut r = Replica::open(store, "tab-1", Some(SCHEMA)).unwrap();
    r.set_auth(obj([("sub", "ann".into())]));
    r
}

/// Runs `f` until it reads nothing the store had not loaded, loading what it missed.
async fn settled<T>(
    r: &mut Replica<IdbStore>,
    mut f: impl FnMut(&mut Replica<IdbStore>) -> T,
) -> T {
    loop {
        let out = f(r);
        let misses = r.store().take_misses();
        if misses.is_empty() {
            return out;
        }
        let gained = r.store_mut().load_misses(misses).await.unwrap();
        if gained.is_empty() {
            return out;
        }
        r.loaded(gained);
    }
}

fn add(i: i64) -> Op {
    Op::Call {
        function: "add".into(),
        args: obj([
            ("id", format!("t{i}").into()),
            ("title", "x".into()),
            ("created", Value::Int(i)),
        ]),
    }
}

#[wasm_bindgen_test]
async fn the_outbox_survives_closing_the_database() {
    let name = "replica-outbox";
    IdbStore::delete(name).await.unwrap();
    let mut r = open(name).await;
    for i in 1..=3 {
        settled(&mut r, |r| r.dry_run(add(i), 0))
            .await
            .unwrap()
            .unwrap();
        r.mutate(add(i), 0).unwrap();
        r.store_mut().flush().await.unwrap();
    }
    r.into_store().close();

    let mut r = open(name).await;
    assert_eq!(
        r.pending().iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let view = settled(&mut r, |r| r.query("Todo.all().map(.id)"))
        .await
        .unwrap();
    assert_eq!(view, Value::parse_json(r#"["t1","t2","t3"]"#).unwrap());
    // Resent in order once a connection is welcomed.
    let version = r.schema().unwrap().version().to_owned();
    r.handle(ServerFrame::Welcome {
        schema_version: version,
        schema_source: SCHEMA.into(),
        position: 0,
        applied_seq: 0,
        partitions: vec![],
    })
    .unwrap();
    let seqs: Vec<u64> = r
        .outgoing()
        .into_iter()
        .flat_map(|f| match f {
            ClientFrame::Push { commits } => commits.into_iter().map(|c| c.seq).collect(),
            _ => vec![],
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    r.into_store().close();
    IdbStore::delete(name).await.unwrap();
}

#[wasm_bindgen_test]
async fn the_base_and_cursors_survive_and_load_lazily() {
    let name = "replica-base";
    IdbStore::delete(name).await.unwrap();
    let mut r = open(name).await;
    let version = Schema::parse(SCHEMA).unwrap().version().to_owned();
    r.handle(ServerFrame::Welcome {
        schema_version: version,
        schema_source: SCHEMA.into(),
        position: 7,
        applied_seq: 0,
        partitions: vec!["user:ann".into()],
    })
    .unwrap();
    let docs = (0..50)
        .map(|i| SnapshotDoc {
            collection: "Todo".into(),
            id: format!("s{i:02}"),
            version: 7,
            data: obj([("owner", "ann".into()), ("created", Value::Int(i))]),
        })
        .collect();
    // A snapshot first clears what the base holds of the partition: load that.
    r.store_mut()
        .load(&KeyRange::prefix(&warren_core::keys::partition_prefix(
            "user:ann",
        )))
        .await
        .unwrap();
    r.handle(ServerFrame::Snapshot {
        partition: "user:ann".into(),
        position: 7,
        docs,
    })
    .unwrap();
    r.store_mut().flush().await.unwrap();
    r.into_store().close();

    let mut r = open(name).await;
    assert_eq!(r.partitions().unwrap(), vec![("user:ann".to_string(), 7)]);
    // Documents were not loaded at open; the query loads what it reads.
    let top = settled(&mut r, |r| {
        r.query("Todo.byOwner(\"ann\").order(desc(.created)).take(3).map(.id)")
    })
    .await
    .unwrap();
    assert_eq!(top, Value::parse_json(r#"["s49","s48","s47"]"#).unwrap());
    assert_eq!(
        settled(&mut r, |r| r.query("Todo.all().count()"))
            .await
            .unwrap(),
        Value::Int(50)
    );
    r.into_store().close();
    IdbStore::delete(name).await.unwrap();
}

/// The driver answers a write (its optimistic result, and the live queries it changed)
/// before it issues the write's IndexedDB transaction: the answer leaves in a microtask,
/// and the transaction is issued on the next turn of the event loop (issuing one is
/// about half a millisecond of calls, which the answer used to wait behind). `local`
/// still resolves only once the write is in IndexedDB.
#[wasm_bindgen_test]
async fn a_write_answers_before_its_transaction_is_issued() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use warren_web::Warren;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen_futures::JsFuture;

    let name = "replica-answer-first";
    IdbStore::delete(name).await.unwrap();
    let auth = js_sys::JSON::parse(r#"{"sub":"ann"}"#).unwrap();
    // Nothing listens on port 9: the client stays offline.
    let w = Warren::open(
        name.into(),
        "ann:tab-1".into(),
        "ws://127.0.0.1:9/v1/sync".into(),
        "unused".into(),
        Some(SCHEMA.into()),
        auth,
        JsValue::UNDEFINED,
    )
    .await
    .unwrap();
    w.set_online(false);
    let events: Rc<RefCell<Vec<String>>> = Rc::default();
    let seen = events.clone();
    let listener = Closure::<dyn Fn(JsValue)>::new(move |e: JsValue| {
        let kind = js_sys::Reflect::get(&e, &"type".into()).unwrap();
        seen.borrow_mut().push(kind.as_string().unwrap_or_default());
    });
    w.on_event(
        listener
            .as_ref()
            .unchecked_ref::<js_sys::Function>()
            .clone(),
    );
    w.subscribe(r#"Todo.byOwner("ann")"#.into()).await.unwrap();
    w.flush().await.unwrap();
    let stat = |k: &str| {
        js_sys::Reflect::get(&w.stats(), &k.into())
            .unwrap()
            .as_f64()
            .unwrap()
    };
    let flushes = stat("flushes");
    let live = |events: &Rc<RefCell<Vec<String>>>| {
        events.borrow().iter().filter(|k| *k == "changed").count()
    };
    let changed = live(&events);

    let args = js_sys::JSON::parse(r#"{"id":"t1","title":"first","created":1}"#).unwrap();
    let answer = w.call("add".into(), args, None).await.unwrap();
    // The microtasks that follow the answer (a worker posts its messages in one) run
    // before the transaction is issued.
    JsFuture::from(js_sys::Promise::resolve(&JsValue::NULL))
        .await
        .unwrap();
    assert_eq!(live(&events), changed + 1, "the live query saw the write");
    assert_eq!(
        stat("flushes"),
        flushes,
        "no transaction issued before the answer went out"
    );
    let local: js_sys::Promise = js_sys::Reflect::get(&answer, &"local".into())
        .unwrap()
        .dyn_into()
        .unwrap();
    JsFuture::from(local).await.unwrap();
    assert_eq!(
        stat("flushes"),
        flushes + 1.0,
        "local waited for its transaction"
    );
    w.close().await.unwrap();
}
