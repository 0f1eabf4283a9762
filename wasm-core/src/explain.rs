//! Explain: a decision of the engine replayed with a trace of the rules it evaluated.
//!
//! [`explain_query`], [`explain_commit`] and [`explain_partition`] run what
//! [`crate::exec::query`], [`crate::exec::execute_optimistic`] and
//! [`crate::exec::can_read_partition`] run, through the same code, with a
//! [`Recorder`] on the evaluator. The recorder notes every rule decision (the action,
//! the collection, the partition, the document), every rule alternative evaluated (its
//! position and text, allow / deny / fail) with the documents it read, and how many
//! documents read rules made invisible. The evaluator only writes into the recorder:
//! fuel, memory, hidden work and results are the same with or without it, and without
//! it (every normal execution) each hook is one test of an `Option`.
//!
//! What a trace shows is filtered by the explaining identity's own read rights
//! ([`finish`]), so explain tells nothing a query could not:
//! - a document a rule read is shown (id, partition, value) only when the identity may
//!   read its partition; otherwise the read says `visible: false`, whether the document
//!   exists or not (a query cannot tell those apart either), and its id only when
//!   everything the rule read before it was visible (the id then derives from what the
//!   identity sees);
//! - a rule that failed shows its error code, and its message only when everything
//!   the rule read was visible (a message may quote a value);
//! - a read rule that denied a partition met while running is not listed: the
//!   documents it hid are counted per collection (`invisible`), never named. A partition
//!   asked about by name ([`explain_partition`]) is listed whatever the answer.
//!
//! The serialized form ([`Explanation::to_json`]) is documented in docs/DEBUGGING.md.

use std::collections::BTreeMap;

use crate::error::{Error, ErrorCode, Pos};
use crate::eval::{Context, Evaluator, Limits, Mode};
use crate::exec::{Commit, Outcome};
use crate::lang::ast::Action;
use crate::schema::Schema;
use crate::storage::Storage;
use crate::value::Value;

/// The version of the serialized form ([`Explanation::to_json`]).
pub const TRACE_VERSION: i64 = 1;
/// Decisions a trace keeps; beyond, `truncated` is set.
pub const MAX_DECISIONS: usize = 256;
/// Documents one rule alternative's trace keeps; beyond, `truncated` is set.
pub const MAX_READS_PER_RULE: usize = 32;
/// A value read is kept whole up to this many bytes of JSON, described beyond.
pub const MAX_VALUE_JSON: usize = 2048;
/// Bytes of JSON of the values one trace keeps in all; beyond, values are described.
pub const MAX_TRACE_VALUE_BYTES: usize = 256 * 1024;
/// Characters of a rule's source text kept.
const MAX_RULE_TEXT: usize = 200;

/// What a rule alternative gave.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleOutcome {
    Allow,
    Deny,
    /// It failed (an error, or out of its budget): a failure denies. The message is
    /// `None` when it may not be shown.
    Fail {
        code: ErrorCode,
        message: Option<String>,
    },
}

/// A document a rule read.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    pub collection: String,
    /// `None` when it may not be shown (see the module documentation).
    pub id: Option<String>,
    /// Whether the explaining identity may read it; when not, nothing below is shown.
    pub visible: bool,
    /// `None` when the document does not exist.
    pub partition: Option<String>,
    pub value: Option<Value>,
}

/// One rule alternative evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleEval {
    pub pos: Pos,
    /// The rule's source, from `allow` to the end of its line.
    pub text: String,
    pub outcome: RuleOutcome,
    pub reads: Vec<Read>,
}

/// One decision: may this identity do `action` on this collection, partition and
/// document?
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub collection: String,
    pub partition: String,
    /// The document written (write rules); `None` for a read rule.
    pub id: Option<String>,
    pub allowed: bool,
    /// The alternatives evaluated, in order (evaluation stops at the first that
    /// allows); empty when the collection has no rule for the action.
    pub rules: Vec<RuleEval>,
}

/// What the evaluator records while explaining (only written to, never read by it).
#[derive(Debug, Default)]
pub struct Recorder {
    decisions: Vec<Decision>,
    /// The decision being made, and whether a rule alternative of it is running.
    open: Option<Decision>,
    rule_open: bool,
    /// Documents hidden by read rules, per collection.
    invisible: BTreeMap<String, u64>,
    truncated: bool,
    /// Bytes of JSON of the values kept so far ([`MAX_TRACE_VALUE_BYTES`]).
    value_bytes: usize,
}

impl Recorder {
    #[inline(never)]
    pub(crate) fn begin(
        &mut self,
        action: Action,
        collection: &str,
        partition: &str,
        id: Option<&str>,
    ) {
        self.open = Some(Decision {
            action,
            collection: collection.to_owned(),
            partition: partition.to_owned(),
            id: id.map(str::to_owned),
            allowed: false,
            rules: Vec::new(),
        });
    }

    #[inline(never)]
    pub(crate) fn end(&mut self, allowed: bool) {
        self.rule_open = false;
        if let Some(mut d) = self.open.take() {
            d.allowed = allowed;
            if self.decisions.len() < MAX_DECISIONS {
                self.decisions.push(d);
            } else {
                self.truncated = true;
            }
        }
    }

    #[inline(never)]
    pub(crate) fn rule_start(&mut self, pos: Pos) {
        if let Some(d) = &mut self.open {
            d.rules.push(RuleEval {
                pos,
                text: String::new(),
                outcome: RuleOutcome::Deny,
                reads: Vec::new(),
            });
            self.rule_open = true;
        }
    }

    #[inline(never)]
    pub(crate) fn rule_end(&mut self, outcome: RuleOutcome) {
        if let Some(r) = self.open.as_mut().and_then(|d| d.rules.last_mut()) {
            r.outcome = outcome;
        }
        self.rule_open = false;
    }

    /// A document a running rule read (`None`: it does not exist).
    #[inline(never)]
    pub(crate) fn read(&mut self, collection: &str, id: &str, doc: Option<(&str, &Value)>) {
        if !self.rule_open {
            return;
        }
        let Some(r) = self.open.as_mut().and_then(|d| d.rules.last_mut()) else {
            return;
        };
        if r.reads.len() >= MAX_READS_PER_RULE {
            self.truncated = true;
            return;
        }
        let value = doc.map(|(_, v)| {
            let n = crate::text::json_len(v);
            if n <= MAX_VALUE_JSON && self.value_bytes + n <= MAX_TRACE_VALUE_BYTES {
                self.value_bytes += n;
                v.clone()
            } else {
                Value::String(crate::text::preview(v))
            }
        });
        r.reads.push(Read {
            collection: collection.to_owned(),
            id: Some(id.to_owned()),
            visible: true,
            partition: doc.map(|(p, _)| p.to_owned()),
            value,
        });
    }

    /// `n` documents of `collection` a read rule hid from the program.
    #[inline(never)]
    pub(crate) fn invisible(&mut self, collection: &str, n: u64) {
        match self.invisible.get_mut(collection) {
            Some(c) => *c = c.saturating_add(n),
            None => {
                self.invisible.insert(collection.to_owned(), n);
            }
        }
    }
}

/// An outcome with its trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// `Ok(result)` (a query's result, a commit's result, or for a partition whether it
    /// may be read) or `Err((code, message))`, exactly as without explain.
    pub outcome: Result<Value, (ErrorCode, String)>,
    /// A committed transaction's writes: (collection, id, partition, deleted).
    pub writes: Vec<(String, String, String, bool)>,
    pub decisions: Vec<Decision>,
    /// Documents read rules hid from the program, per collection (counts only).
    pub invisible: BTreeMap<String, u64>,
    /// Whether a bound on the trace's size left something out.
    pub truncated: bool,
    /// What the run used of its limits: the same as without explain (not serialized:
    /// its hidden work is not the caller's to see).
    pub usage: crate::exec::Usage,
}

/// What a replica explains ([`crate::replica::Replica::explain`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// A read-only query.
    Query(String),
    /// A write (a function call or an ad-hoc transaction), run as one made now would
    /// be; nothing is stored.
    Write(crate::exec::Op),
    /// Whether the identity may read a partition.
    Partition(String),
}

/// Explains a read-only query run as `auth` (what [`crate::exec::query`] runs).
pub fn explain_query(
    store: &dyn Storage,
    schema: &Schema,
    source: &str,
    auth: &Value,
    now: i64,
    limits: &Limits,
) -> Result<Explanation, Error> {
    let (r, usage, rec) = crate::exec::query_traced(store, schema, source, auth, now, limits, true);
    let outcome = match r {
        Ok(v) => Ok(v),
        Err(e) if e.code.is_deterministic() => Err((e.code, e.message)),
        Err(e) => return Err(e),
    };
    Ok(finish(store, schema, auth, limits, rec, outcome, Vec::new(), None).with(usage))
}

/// Explains a commit (a function call or an ad-hoc transaction) run as its `auth`, as
/// a client runs its own pending commits (no sequence-number check). Nothing is
/// written.
pub fn explain_commit(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<Explanation, Error> {
    let (outcome, usage, rec) =
        crate::exec::optimistic_traced(store, schema, commit, position, limits, true)?;
    let (outcome, writes) = match outcome {
        Outcome::Committed { writes, result } => (
            Ok(result),
            writes
                .into_iter()
                .map(|w| (w.collection, w.id, w.partition, w.data.is_none()))
                .collect(),
        ),
        Outcome::Rejected { code, message } => (Err((code, message)), Vec::new()),
        Outcome::Skipped(_) => unreachable!("an optimistic run is never skipped"),
    };
    Ok(finish(
        store,
        schema,
        &commit.auth,
        limits,
        rec,
        outcome,
        writes,
        None,
    )
    .with(usage))
}

/// Explains whether `auth` may read `partition`: the read rule of every collection
/// evaluated for it ("why does this identity not receive partition P"). The outcome is
/// the list of collections whose read rule allows it.
pub fn explain_partition(
    store: &dyn Storage,
    schema: &Schema,
    partition: &str,
    auth: &Value,
    limits: &Limits,
) -> Result<Explanation, Error> {
    let ctx = Context::reader(auth, 0, crate::exec::position(store)?);
    let mut ev = Evaluator::new(schema, store, limits, &ctx, Mode::Query);
    ev.explain = Some(Box::default());
    let mut allowed = Vec::new();
    let mut failed = None;
    for coll in schema.collections.values() {
        match ev.can_read(coll, partition) {
            Ok(true) => allowed.push(Value::from(coll.name.as_str())),
            Ok(false) => {}
            Err(e) if e.code.is_deterministic() => {
                failed = Some((e.code, e.message));
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let outcome = match failed {
        Some(f) => Err(f),
        None => Ok(Value::Array(allowed)),
    };
    let rec = ev.explain.take();
    let usage = ev.usage();
    Ok(finish(
        store,
        schema,
        auth,
        limits,
        rec,
        outcome,
        Vec::new(),
        Some(partition),
    )
    .with(usage))
}

/// Filters a recording by `auth`'s read rights (see the module documentation) and
/// fills in the rules' text.
#[allow(clippy::too_many_arguments)]
fn finish(
    store: &dyn Storage,
    schema: &Schema,
    auth: &Value,
    limits: &Limits,
    rec: Option<Box<Recorder>>,
    outcome: Result<Value, (ErrorCode, String)>,
    writes: Vec<(String, String, String, bool)>,
    asked: Option<&str>,
) -> Explanation {
    let rec = rec.map(|r| *r).unwrap_or_default();
    let mut readable: BTreeMap<String, bool> = BTreeMap::new();
    let mut key = String::new();
    let mut may_read = |coll: &str, partition: &str| -> bool {
        crate::eval::readable_key(&mut key, coll, partition);
        if let Some(ok) = readable.get(&key) {
            return *ok;
        }
        // A failure to answer is not a permission.
        let ok = crate::exec::can_read_partition(store, schema, coll, partition, auth, limits)
            == Ok(true);
        readable.insert(key.clone(), ok);
        ok
    };
    let mut decisions = Vec::new();
    for mut d in rec.decisions {
        if d.action == Action::Read && !d.allowed && asked != Some(d.partition.as_str()) {
            continue;
        }
        for r in &mut d.rules {
            r.text = rule_text(schema.source(), r.pos);
            let mut all_visible = true;
            for read in &mut r.reads {
                let visible = read
                    .partition
                    .as_deref()
                    .is_some_and(|p| may_read(&read.collection, p));
                if !visible {
                    read.visible = false;
                    read.partition = None;
                    read.value = None;
                    if !all_visible {
                        read.id = None;
                    }
                    all_visible = false;
                }
            }
            if let RuleOutcome::Fail { message, .. } = &mut r.outcome {
                if !all_visible {
                    *message = None;
                }
            }
        }
        decisions.push(d);
    }
    Explanation {
        outcome,
        writes,
        decisions,
        invisible: rec.invisible,
        truncated: rec.truncated,
        usage: Default::default(),
    }
}

/// The source of the rule at `pos`: from there to the end of its line, with the lines
/// after it that are indented deeper (a rule continued on the next lines), joined by a
/// space.
fn rule_text(source: &str, pos: Pos) -> String {
    let mut lines = source.lines().skip((pos.line as usize).saturating_sub(1));
    let Some(line) = lines.next() else {
        return String::new();
    };
    let indent = (pos.col as usize).saturating_sub(1);
    let start = line
        .char_indices()
        .nth(indent)
        .map_or(line.len(), |(i, _)| i);
    let mut text = line[start..].trim_end().to_owned();
    for more in lines {
        let body = more.trim_start();
        let deeper = more.len() - body.len() > indent;
        if !deeper || body.is_empty() || body.starts_with("//") || text.len() > MAX_RULE_TEXT {
            break;
        }
        text.push(' ');
        text.push_str(body.trim_end());
    }
    text.chars().take(MAX_RULE_TEXT).collect()
}

impl Explanation {
    fn with(mut self, usage: crate::exec::Usage) -> Explanation {
        self.usage = usage;
        self
    }

    /// The serialized form: one JSON object (keys sorted, values as the engine prints
    /// them), the same from every build. Format in docs/DEBUGGING.md.
    pub fn to_value(&self) -> Value {
        let s = |x: &str| Value::from(x);
        let obj = |pairs: Vec<(&str, Value)>| {
            Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        };
        let outcome = match &self.outcome {
            Ok(v) => obj(vec![("ok", Value::Bool(true)), ("result", v.clone())]),
            Err((code, message)) => obj(vec![
                ("ok", Value::Bool(false)),
                ("code", s(code.as_str())),
                ("message", s(message)),
            ]),
        };
        let writes = self
            .writes
            .iter()
            .map(|(c, id, p, deleted)| {
                obj(vec![
                    ("collection", s(c)),
                    ("id", s(id)),
                    ("partition", s(p)),
                    ("deleted", Value::Bool(*deleted)),
                ])
            })
            .collect();
        let decisions = self
            .decisions
            .iter()
            .map(|d| {
                let rules = d
                    .rules
                    .iter()
                    .map(|r| {
                        let mut f = vec![
                            ("line", Value::Int(r.pos.line.into())),
                            ("column", Value::Int(r.pos.col.into())),
                            ("text", s(&r.text)),
                        ];
                        match &r.outcome {
                            RuleOutcome::Allow => f.push(("outcome", s("allow"))),
                            RuleOutcome::Deny => f.push(("outcome", s("deny"))),
                            RuleOutcome::Fail { code, message } => {
                                f.push(("outcome", s("fail")));
                                f.push(("code", s(code.as_str())));
                                if let Some(m) = message {
                                    f.push(("message", s(m)));
                                }
                            }
                        }
                        let reads = r
                            .reads
                            .iter()
                            .map(|rd| {
                                let mut f = vec![
                                    ("collection", s(&rd.collection)),
                                    ("visible", Value::Bool(rd.visible)),
                                ];
                                if let Some(id) = &rd.id {
                                    f.push(("id", s(id)));
                                }
                                if rd.visible {
                                    f.push(("found", Value::Bool(rd.partition.is_some())));
                                }
                                if let Some(p) = &rd.partition {
                                    f.push(("partition", s(p)));
                                }
                                if let Some(v) = &rd.value {
                                    f.push(("value", v.clone()));
                                }
                                obj(f)
                            })
                            .collect();
                        f.push(("reads", Value::Array(reads)));
                        obj(f)
                    })
                    .collect();
                let mut f = vec![
                    ("action", s(d.action.as_str())),
                    ("collection", s(&d.collection)),
                    ("partition", s(&d.partition)),
                    ("allowed", Value::Bool(d.allowed)),
                    ("rules", Value::Array(rules)),
                ];
                if let Some(id) = &d.id {
                    f.push(("id", s(id)));
                }
                obj(f)
            })
            .collect();
        let invisible = self
            .invisible
            .iter()
            .map(|(c, n)| (c.clone(), Value::Int(i64::try_from(*n).unwrap_or(i64::MAX))))
            .collect();
        obj(vec![
            ("version", Value::Int(TRACE_VERSION)),
            ("outcome", outcome),
            ("writes", Value::Array(writes)),
            ("decisions", Value::Array(decisions)),
            ("invisible", Value::Object(invisible)),
            ("truncated", Value::Bool(self.truncated)),
        ])
    }

    /// [`Explanation::to_value`] as JSON text.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        crate::text::write_json(&mut out, &self.to_value());
        out
    }

    /// A trace for a person ([`text_of`] of the serialized form).
    pub fn to_text(&self) -> String {
        text_of(&self.to_value())
    }
}

/// A trace in its serialized form ([`Explanation::to_value`], or the same parsed from
/// JSON) written for a person: the outcome, one line per decision and per rule
/// alternative, the documents each read indented under it, the invisible counts.
pub fn text_of(t: &Value) -> String {
    use std::fmt::Write as _;
    let st = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let arr = |v: &Value| match v {
        Value::Array(a) => a.clone(),
        _ => Vec::new(),
    };
    let mut out = String::new();
    let o = t.get("outcome");
    if o.get("ok") == &Value::Bool(true) {
        let _ = writeln!(out, "outcome: ok {}", crate::text::preview(o.get("result")));
    } else {
        let _ = writeln!(
            out,
            "outcome: {} {}",
            st(o.get("code")),
            st(o.get("message"))
        );
    }
    for w in arr(t.get("writes")) {
        let _ = writeln!(
            out,
            "  would {} {}/{} in {}",
            if w.get("deleted") == &Value::Bool(true) {
                "delete"
            } else {
                "write"
            },
            st(w.get("collection")),
            st(w.get("id")),
            st(w.get("partition"))
        );
    }
    for d in arr(t.get("decisions")) {
        let rules = arr(d.get("rules"));
        let id = match d.get("id") {
            Value::String(i) => format!(" document {i}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{} {} {}{id} in partition {}{}",
            if d.get("allowed") == &Value::Bool(true) {
                "ALLOW"
            } else {
                "DENY "
            },
            st(d.get("action")),
            st(d.get("collection")),
            st(d.get("partition")),
            if rules.is_empty() {
                ": the collection has no rule for this action"
            } else {
                ""
            }
        );
        for r in rules {
            let mut what = st(r.get("outcome"));
            if let Value::String(c) = r.get("code") {
                let _ = write!(what, " {c}");
            }
            if let Value::String(m) = r.get("message") {
                let _ = write!(what, ": {m}");
            }
            let _ = writeln!(
                out,
                "  {}:{}  {}  -> {what}",
                crate::text::preview(r.get("line")),
                crate::text::preview(r.get("column")),
                st(r.get("text"))
            );
            for rd in arr(r.get("reads")) {
                let id = rd.get("id").as_str().unwrap_or("?").to_owned();
                let at = format!("{}/{id}", st(rd.get("collection")));
                let seen = if rd.get("visible") != &Value::Bool(true) {
                    "not visible to this identity".to_owned()
                } else if rd.get("found") != &Value::Bool(true) {
                    "not found".to_owned()
                } else {
                    crate::text::preview(rd.get("value"))
                };
                let _ = writeln!(out, "      read {at}: {seen}");
            }
        }
    }
    if let Value::Object(inv) = t.get("invisible") {
        for (c, n) in inv {
            let _ = writeln!(
                out,
                "invisible: {} document(s) of {c} hidden by its read rule",
                crate::text::preview(n)
            );
        }
    }
    if t.get("truncated") == &Value::Bool(true) {
        let _ = writeln!(out, "(trace truncated)");
    }
    out
}
