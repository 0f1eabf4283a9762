//! Collaborative text for tests: simulated editors (a `yrs` document each, as a person's
//! Y.Doc in the browser), and the seeded run the differential harness compares between
//! the native and the wasm32 builds.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;

use yrs::types::Attrs;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, ClientID, OffsetKind, Options, Text, Transact, Update, Xml, XmlElementPrelim, XmlFragment,
    XmlOut, XmlTextPrelim,
};

use super::Rng;
use crate::eval::Limits;
use crate::exec::{Commit, Executor, Op, Outcome};
use crate::storage::MemoryStore;
use crate::value::{obj, Value};
use crate::Schema;

/// A schema with one text field; `edit(id, update)` applies an update to note `id`.
pub const SCHEMA: &str = r#"
collection Note {
  field body: text
  allow read true
  allow create true
  allow update auth.sub != "mallory" && new.body.length <= 2000
  allow delete false
}

function edit(id, update) {
  let n = Note.byId(id) ?? abort("no such note")
  n.editText("body", update)
  n.id
}
"#;

/// A person's editor: a Yjs document edited locally; each local transaction's update
/// waits in `outbox` until it is sent as a commit.
pub struct Editor {
    doc: yrs::Doc,
    text: yrs::TextRef,
    /// The rich-text root, as ProseMirror's binding edits it.
    xml: yrs::XmlFragmentRef,
    pub outbox: Vec<Vec<u8>>,
}

impl Editor {
    /// Editor `n`, with client id 1000 + n and UTF-16 offsets (as Yjs in a browser).
    pub fn new(n: u64) -> Editor {
        let mut o = Options::with_guid_and_client_id("n".into(), ClientID::new(1000 + n));
        o.offset_kind = OffsetKind::Utf16;
        let doc = yrs::Doc::with_options(o);
        let text = doc.get_or_insert_text(crate::ytext::ROOT);
        let xml = doc.get_or_insert_xml_fragment(crate::ytext::XML_ROOT);
        Editor {
            doc,
            text,
            xml,
            outbox: Vec::new(),
        }
    }

    /// The text as the engine reads the field.
    pub fn string(&self) -> String {
        crate::ytext::field_string(&self.doc)
    }

    /// The length of the plain `Y.Text`, in UTF-16 units.
    fn text_len(&self) -> u32 {
        self.text.len(&self.doc.transact())
    }

    /// Inserts `s` at UTF-16 offset `at`, as one local transaction.
    pub fn insert(&mut self, at: u32, s: &str) {
        let mut txn = self.doc.transact_mut();
        self.text.insert(&mut txn, at, s);
        self.outbox.push(txn.encode_update_v1());
    }

    /// Removes `len` UTF-16 units at `at`, as one local transaction.
    pub fn remove(&mut self, at: u32, len: u32) {
        let mut txn = self.doc.transact_mut();
        self.text.remove_range(&mut txn, at, len);
        self.outbox.push(txn.encode_update_v1());
    }

    /// A random edit of the rich-text fragment, as a ProseMirror binding makes them:
    /// a paragraph inserted (with an attribute and a link of several keys, whose order
    /// `yrs` keeps in a randomly seeded map) or removed, or text typed into one.
    pub fn random_xml_edit(&mut self, rng: &mut Rng) {
        let mut txn = self.doc.transact_mut();
        let len = self.xml.len(&txn);
        let word = *rng.pick(&["one", "two", "ж", "xyz"]);
        if len > 0 && rng.chance(30) {
            self.xml
                .remove_range(&mut txn, rng.below(u64::from(len)) as u32, 1);
        } else if len > 0 && rng.chance(50) {
            let at = rng.below(u64::from(len)) as u32;
            if let Some(XmlOut::Element(p)) = self.xml.get(&txn, at) {
                if let Some(XmlOut::Text(t)) = p.get(&txn, 0) {
                    let n = t.len(&txn);
                    t.insert(&mut txn, rng.below(u64::from(n) + 1) as u32, word);
                }
            }
        } else {
            let at = rng.below(u64::from(len) + 1) as u32;
            let p = self
                .xml
                .insert(&mut txn, at, XmlElementPrelim::empty("paragraph"));
            let t = p.insert(&mut txn, 0, XmlTextPrelim::new(word));
            if rng.chance(50) {
                let link: Any = Any::from(std::collections::HashMap::from([
                    (
                        "href".to_owned(),
                        Any::from(format!("https://x/{}", rng.below(9))),
                    ),
                    ("title".to_owned(), Any::Null),
                    ("target".to_owned(), Any::from("_blank")),
                ]));
                t.format(&mut txn, 0, 1, Attrs::from([("link".into(), link)]));
            }
            if rng.chance(50) {
                let attrs = Any::from(std::collections::HashMap::from([
                    ("level".to_owned(), Any::from(rng.below(3) as f64)),
                    ("align".to_owned(), Any::from("left")),
                    ("id".to_owned(), Any::from(format!("p{}", rng.below(99)))),
                ]));
                p.insert_attribute(&mut txn, "attrs", attrs);
            }
        }
        self.outbox.push(txn.encode_update_v1());
    }

    /// A random insertion or deletion (in the plain text, or one time in four in the
    /// rich-text fragment).
    pub fn random_edit(&mut self, rng: &mut Rng) {
        if rng.chance(25) {
            return self.random_xml_edit(rng);
        }
        let len = self.text_len();
        if len > 0 && rng.chance(35) {
            let at = rng.below(u64::from(len)) as u32;
            let n = 1 + rng.below(u64::from((len - at).min(5))) as u32;
            self.remove(at, n);
        } else {
            let at = rng.below(u64::from(len) + 1) as u32;
            let words = ["a", "bc", "déf", "ж", " ", "xyz!", "\n"];
            let s = (0..1 + rng.below(3))
                .map(|_| *rng.pick(&words))
                .collect::<String>();
            self.insert(at, &s);
        }
    }

    /// Applies an update received from elsewhere.
    pub fn receive(&self, update: &[u8]) {
        let mut txn = self.doc.transact_mut();
        let u = Update::decode_v1(update).expect("an update from an editor decodes");
        txn.apply_update(u)
            .expect("an update from an editor applies");
    }
}

/// An executor over [`SCHEMA`] holding note `n`.
pub fn store() -> Executor<MemoryStore> {
    store_with(Limits::default())
}

/// [`store`] with other limits.
pub fn store_with(limits: Limits) -> Executor<MemoryStore> {
    let schema = Arc::new(Schema::parse(SCHEMA).expect("the text schema parses"));
    let mut db = Executor::new(MemoryStore::new(), schema, limits);
    let c = Commit {
        client_id: "setup".into(),
        client_seq: 1,
        schema_version: String::new(),
        timestamp: 0,
        auth: obj([("sub", "ann".into())]),
        op: Op::Run {
            source: r#"Note.create({ id: "n", title: "shared" })"#.into(),
        },
    };
    db.commit(&c, 1).expect("memory");
    db
}

/// The commit that sends `update` of note `n` as client `client`'s `seq`th commit.
pub fn edit_commit(client: &str, seq: u64, update: Vec<u8>) -> Commit {
    Commit {
        client_id: client.into(),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: seq as i64,
        auth: obj([("sub", client.into())]),
        op: Op::Call {
            function: "edit".into(),
            args: obj([("id", "n".into()), ("update", Value::Bytes(update))]),
        },
    }
}

/// `rounds` seeded rounds of editors editing offline and sending their edits in a
/// random interleaving; one line per commit (its outcome) and per round (the text's
/// length and the digest). The differential harness compares the lines of the native
/// and wasm32 builds.
pub fn differential(seed: u64, rounds: u64) -> String {
    let mut out = String::new();
    for round in 0..rounds {
        let mut rng = Rng::new(seed ^ 0x7e47 ^ round);
        let mut editors: Vec<Editor> = (0..2 + rng.below(3)).map(Editor::new).collect();
        let mut seqs = vec![0u64; editors.len()];
        let mut db = store();
        for _ in 0..1 + rng.below(3) {
            for e in editors.iter_mut() {
                for _ in 0..rng.below(6) {
                    e.random_edit(&mut rng);
                }
            }
            let mut queues: Vec<VecDeque<Vec<u8>>> = editors
                .iter_mut()
                .map(|e| std::mem::take(&mut e.outbox).into())
                .collect();
            let mut sent = Vec::new();
            while queues.iter().any(|q| !q.is_empty()) {
                let live: Vec<usize> = (0..queues.len())
                    .filter(|&i| !queues[i].is_empty())
                    .collect();
                let who = *rng.pick(&live);
                let u = queues[who].pop_front().expect("not empty");
                seqs[who] += 1;
                let pos = db.position().expect("memory") + 1;
                let c = edit_commit(&format!("c{who}"), seqs[who], u.clone());
                let o = db.commit(&c, pos).expect("memory");
                let shown = match o {
                    Outcome::Committed { .. } => "committed".to_owned(),
                    Outcome::Rejected { code, .. } => code.as_str().to_owned(),
                    Outcome::Skipped(s) => format!("{s:?}"),
                };
                let _ = writeln!(out, "text {round} {pos} {shown}");
                sent.push(u);
            }
            for e in &editors {
                for u in &sent {
                    e.receive(u);
                }
            }
        }
        let text = match db.query(r#"Note.byId("n").body"#, &Value::Null, 0) {
            Ok(Value::String(s)) => s,
            other => format!("{other:?}"),
        };
        let same = editors.iter().all(|e| e.string() == text);
        let _ = writeln!(
            out,
            "text {round} end {} chars, editors agree: {same}, digest {}",
            text.chars().count(),
            crate::hex(&db.digest().expect("memory"))
        );
    }
    out
}
