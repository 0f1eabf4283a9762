//! Collaborative text fields: a Yjs-compatible CRDT document held by `yrs`.
//!
//! A collection declares `field notes: text`. The field's stored value is
//! [`Value::Bytes`] in the format below; programs and rules read it as its string, and
//! change it only with `doc.editText("notes", update)`, where `update` is a Yjs update
//! (lib0 v1 encoding) made by any Yjs or yrs client. The document has two roots: a
//! `Y.Text` named [`ROOT`] for plain-text editors (CodeMirror, Quill, a textarea) and a
//! `Y.XmlFragment` named [`XML_ROOT`] for rich-text ones (ProseMirror, TipTap through
//! y-prosemirror); the string programs read is [`field_string`].
//!
//! # One answer everywhere
//!
//! The stored value is a function of the edits in the order the log applied them:
//! [`apply`] decodes the stored state into a fresh `yrs` document whose client id and
//! guid are fixed (the engine never writes content of its own, and `yrs` draws no
//! random number for a document made with explicit options), applies the update, and
//! encodes the whole state again with `yrs`'s v1 encoder, which writes clients in
//! descending id order and the delete set from a `BTreeMap`. `yrs` keeps the entries
//! of an object (a link's attributes, an element's attribute value) in a `HashMap`
//! with a random seed and writes them in that order, so `canonical` rewrites every
//! such object with its keys sorted. Each replica folds the same function over the
//! same updates in the same order, so every replica holds the same bytes and the same
//! digest. Before the log orders them, a replica's local view may apply edits in
//! another order: the CRDT gives it the same string, and the log's order then gives
//! it the same bytes (the property tests in `tests/ytext.rs`).
//!
//! # Hostile updates
//!
//! An update is checked by [`check_update`], a bounded reader of the v1 format, before
//! `yrs` sees it: every count is bounded by the bytes left, clocks stay below 2^31 (so
//! `yrs`'s `u32` clock arithmetic cannot overflow), JSON and lib0 values nest at most
//! [`MAX_JSON_DEPTH`] levels, and only the content the two roots hold is accepted
//! (strings, deletions, formatting attributes, embeds; XML elements, XML texts and
//! element attributes). [`apply`] then places each struct in the tree the stored state
//! and the update make (`check_tree`): text only in the `Y.Text` or an XML text,
//! elements only in the fragment or an element, values only as attributes, and
//! elements nested at most [`MAX_NESTING`] deep, since `yrs` deletes and collects
//! nested types by recursion. An update that depends on edits the text does not have
//! (an earlier edit was rejected) is refused with `TEXT_UPDATE_OUT_OF_ORDER` rather
//! than kept pending.
//!
//! # Stored format (docs/STORAGE.md, "Text fields")
//!
//! `0x01` (the format's version), the text's UTF-8 length as `u32` little-endian, the
//! text, then the `yrs` state as a v1 update. The text is kept beside the state so that
//! reading a field never runs `yrs`.

// Without the feature `text` the engine checks updates (fuel is paid the same way in
// every build) but applies none: the tree's and the canonical form's code is unused.
#![cfg_attr(not(feature = "text"), allow(dead_code))]

use std::collections::BTreeSet;

#[cfg(feature = "text")]
use yrs::updates::decoder::Decode;
#[cfg(feature = "text")]
use yrs::{GetString, Options, ReadTxn, StateVector, Transact, Update, XmlFragment, XmlOut};

use crate::error::{Error, ErrorCode};
use crate::value::Value;

/// The name of the `Y.Text` in the document: clients edit `doc.getText("text")`.
pub const ROOT: &str = "text";
/// The name of the `Y.XmlFragment` in the document, for rich-text editors
/// (ProseMirror, TipTap): clients bind `doc.getXmlFragment("xml")`.
pub const XML_ROOT: &str = "xml";
/// How deep XML elements may nest in a text field's fragment.
pub const MAX_NESTING: u64 = 32;
/// The version byte of the stored format.
const FORMAT: u8 = 1;
/// The engine's own client id in its `yrs` documents; no update may use it.
const ENGINE_CLIENT: u64 = (1 << 53) - 1;
/// Clocks and lengths stay below this, so `yrs`'s `u32` and `i32` clock arithmetic
/// never overflows.
const MAX_CLOCK: u64 = (1 << 31) - 1;
/// How deep a formatting attribute's or an embed's JSON value may nest.
pub const MAX_JSON_DEPTH: usize = 16;
/// Memory an update's application may hold, per byte of state and update: a `yrs`
/// block takes about a hundred bytes for the few bytes it is encoded in.
pub const MEMORY_PER_BYTE: u64 = 64;

/// A stored text value: the string and the `yrs` state it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored<'a> {
    pub text: &'a str,
    pub state: &'a [u8],
}

/// Reads a stored text value; `null` (a field never edited) is the empty text.
pub fn stored(v: &Value) -> Result<Stored<'_>, Error> {
    match v {
        Value::Null => Ok(Stored {
            text: "",
            state: &[],
        }),
        Value::Bytes(b) => decode(b),
        other => Err(corrupt(format!(
            "a text field holds a {}, not its stored bytes",
            other.type_name()
        ))),
    }
}

fn decode(b: &[u8]) -> Result<Stored<'_>, Error> {
    if b.len() < 5 || b[0] != FORMAT {
        return Err(corrupt("a text field's bytes have no header".into()));
    }
    let n = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize;
    let rest = &b[5..];
    if n > rest.len() {
        return Err(corrupt("a text field's string runs past its bytes".into()));
    }
    let text = std::str::from_utf8(&rest[..n])
        .map_err(|_| corrupt("a text field's string is not UTF-8".into()))?;
    Ok(Stored {
        text,
        state: &rest[n..],
    })
}

fn encode(text: &str, state: &[u8]) -> Value {
    let mut b = Vec::with_capacity(5 + text.len() + state.len());
    b.push(FORMAT);
    b.extend_from_slice(&(text.len() as u32).to_le_bytes());
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(state);
    Value::Bytes(b)
}

/// Stored bytes that are not a text value: a rejection, the same on every replica
/// (they are part of the state), never a reason to stop.
fn corrupt(msg: String) -> Error {
    Error::new(ErrorCode::Type, msg)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidTextUpdate, msg.into())
}

/// What [`check_update`] found in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Structs (insertions, deletions, gaps) and delete-set ranges.
    pub parts: u64,
}

/// Checks that `update` is a well-formed v1 Yjs update of the roots a text field has
/// (a `Y.Text` named [`ROOT`], a `Y.XmlFragment` named [`XML_ROOT`]) within the bounds
/// above, reading each byte once. What it cannot see without the stored state (where
/// a struct sits in the tree) [`apply`] checks before `yrs` runs.
pub fn check_update(update: &[u8]) -> Result<Checked, Error> {
    parse(update).map(|p| Checked { parts: p.parts })
}

/// Which root a struct names as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootName {
    Text,
    Xml,
}

/// A struct's parent as the update writes it: a root, a nested type's item, or the
/// parent of its origin (the struct to its left or right, found by id).
#[derive(Debug, Clone, Copy)]
enum Parent {
    Root(RootName),
    Of((u64, u64)),
    Like((u64, u64)),
    /// A gap or a garbage-collected run: it has no parent.
    Gone,
}

/// What a struct holds, as far as the tree's shape is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A gap (GC or Skip) or deleted content: anywhere.
    Empty,
    /// Text: strings, embeds and formats, in the root `Y.Text` or a `Y.XmlText`.
    Inline,
    /// A `Y.XmlElement`, in the fragment or another element.
    Element,
    /// A `Y.XmlText`, in the fragment or an element.
    XmlText,
    /// A value (lib0 "any"): only an element's attribute.
    Value,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    client: u64,
    clock: u64,
    len: u64,
    parent: Parent,
    kind: Kind,
    /// A map entry (an attribute), when the update says so (its parent is written).
    sub: bool,
}

/// Where a JSON string or a lib0 value sits in an update, for [`canonical`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    json: bool,
}

struct Parsed {
    parts: u64,
    nodes: Vec<Node>,
    spans: Vec<Span>,
}

fn parse(update: &[u8]) -> Result<Parsed, Error> {
    let mut r = Reader { b: update, i: 0 };
    let mut parts = 0u64;
    let mut nodes = Vec::new();
    let mut spans = Vec::new();
    let clients = r.count()?;
    let mut seen = BTreeSet::new();
    for _ in 0..clients {
        let structs = r.count()?;
        let client = r.client()?;
        if !seen.insert(client) {
            return Err(invalid(format!("client {client} appears twice")));
        }
        let mut clock = r.clock()?;
        for _ in 0..structs {
            parts += 1;
            let info = r.byte()?;
            let (len, parent, kind, sub) = match info & 0x1f {
                // GC and Skip: a run of clocks with no content.
                0 | 10 => (r.len()?, Parent::Gone, Kind::Empty, false),
                content => {
                    let has_origin = info & 0x80 != 0;
                    let has_right = info & 0x40 != 0;
                    let mut sub = false;
                    let mut parent = None;
                    if has_origin {
                        parent = Some(Parent::Like(r.id()?));
                    }
                    if has_right {
                        let right = r.id()?;
                        parent = parent.or(Some(Parent::Like(right)));
                    }
                    let parent = match parent {
                        Some(p) => p,
                        None => {
                            // The parent: 1 and a root type's name, or 0 and a nested
                            // type's id; then a map entry's key.
                            let p = match r.var()? {
                                1 => match r.string()? {
                                    ROOT => Parent::Root(RootName::Text),
                                    XML_ROOT => Parent::Root(RootName::Xml),
                                    name => {
                                        return Err(invalid(format!(
                                            "the update edits the root {name:?}; a text field's are {ROOT:?} (Y.Text) and {XML_ROOT:?} (Y.XmlFragment)"
                                        )))
                                    }
                                },
                                0 => Parent::Of(r.id()?),
                                _ => return Err(invalid("a parent is neither a root nor a type")),
                            };
                            if info & 0x20 != 0 {
                                sub = true;
                                r.string()?;
                            }
                            p
                        }
                    };
                    let (len, kind) = match content {
                        1 => (r.len()?, Kind::Empty),
                        4 => {
                            let s = r.string()?;
                            let n = s.encode_utf16().count() as u64;
                            if n == 0 {
                                return Err(invalid("an empty string insertion"));
                            }
                            (n, Kind::Inline)
                        }
                        5 => {
                            let start = r.i;
                            json(r.string()?)?;
                            spans.push(Span { start, end: r.i, json: true });
                            (1, Kind::Inline)
                        }
                        6 => {
                            r.string()?;
                            let start = r.i;
                            json(r.string()?)?;
                            spans.push(Span { start, end: r.i, json: true });
                            (1, Kind::Inline)
                        }
                        7 => match r.var()? {
                            // Y.XmlElement and its tag name; Y.XmlText.
                            3 => {
                                r.string()?;
                                (1, Kind::Element)
                            }
                            6 => (1, Kind::XmlText),
                            other => {
                                return Err(invalid(format!(
                                    "a nested type of kind {other} (a field's types are Y.XmlElement and Y.XmlText)"
                                )))
                            }
                        },
                        8 => {
                            let n = r.count()?;
                            if n == 0 {
                                return Err(invalid("an empty run of values"));
                            }
                            for _ in 0..n {
                                let start = r.i;
                                r.any(0)?;
                                spans.push(Span { start, end: r.i, json: false });
                            }
                            (n, Kind::Value)
                        }
                        other => {
                            return Err(invalid(format!(
                                "content of kind {other} is not text (strings, deletions, formats, embeds, XML elements and their attributes are)"
                            )))
                        }
                    };
                    (len, parent, kind, sub)
                }
            };
            nodes.push(Node {
                client,
                clock,
                len,
                parent,
                kind,
                sub,
            });
            clock = clock
                .checked_add(len)
                .filter(|c| *c <= MAX_CLOCK)
                .ok_or_else(|| invalid("a clock passes 2^31"))?;
        }
    }
    let clients = r.count()?;
    for _ in 0..clients {
        r.client()?;
        let ranges = r.count()?;
        for _ in 0..ranges {
            parts += 1;
            let clock = r.clock()?;
            let len = r.len()?;
            if clock + len > MAX_CLOCK {
                return Err(invalid("a deleted range passes 2^31"));
            }
        }
    }
    if r.i != update.len() {
        return Err(invalid("bytes after the update's end"));
    }
    Ok(Parsed {
        parts,
        nodes,
        spans,
    })
}

/// Where each struct of `update` lands in the tree the stored `state` and the update
/// make, checked before `yrs` sees it: text only in the `Y.Text` root or a
/// `Y.XmlText`, elements and XML texts only in the fragment or an element, values
/// only as an element's attributes, and elements nested at most [`MAX_NESTING`]
/// deep (`yrs` deletes and collects a nested type by recursion). A struct whose
/// parent is in neither (an edit this text does not have) is left to `yrs`, which
/// keeps it pending: [`apply`] then refuses the update as out of order.
fn check_tree(state: &[Node], update: &[Node]) -> Result<(), Error> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Resolved {
        Root(RootName),
        Type(usize),
        Unknown,
    }
    let nodes: Vec<&Node> = state.iter().chain(update).collect();
    // The structs by id, to find the one that holds an id.
    let mut at: Vec<usize> = (0..nodes.len()).collect();
    at.sort_by_key(|&i| (nodes[i].client, nodes[i].clock));
    let find = |(client, clock): (u64, u64)| -> Option<usize> {
        let k = at.partition_point(|&i| (nodes[i].client, nodes[i].clock) <= (client, clock));
        let i = *at.get(k.checked_sub(1)?)?;
        (nodes[i].client == client && clock < nodes[i].clock + nodes[i].len).then_some(i)
    };
    // Each struct's parent and whether it is a map entry, following origins without
    // recursion; a cycle of origins (which `yrs` never integrates) resolves to
    // unknown.
    let mut parent: Vec<Option<(Resolved, bool)>> = vec![None; nodes.len()];
    let mut visiting = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        let mut chain = Vec::new();
        let mut cur = i;
        let found = loop {
            if let Some(p) = parent[cur] {
                break p;
            }
            if visiting[cur] {
                break (Resolved::Unknown, false);
            }
            visiting[cur] = true;
            chain.push(cur);
            let n = nodes[cur];
            match n.parent {
                Parent::Root(r) => break (Resolved::Root(r), n.sub),
                Parent::Of(id) => {
                    break (find(id).map_or(Resolved::Unknown, Resolved::Type), n.sub)
                }
                Parent::Like(id) => match find(id) {
                    Some(j) => cur = j,
                    None => break (Resolved::Unknown, false),
                },
                Parent::Gone => break (Resolved::Unknown, false),
            }
        };
        for c in chain {
            parent[c] = Some(found);
        }
    }
    let parent = |i: usize| parent[i].unwrap_or((Resolved::Unknown, false));
    // Nesting depth of each type, without recursion.
    let mut depth = vec![0u64; nodes.len()];
    for i in 0..nodes.len() {
        if !matches!(nodes[i].kind, Kind::Element | Kind::XmlText) || depth[i] != 0 {
            continue;
        }
        let mut chain = vec![i];
        let mut base = 0;
        loop {
            let top = *chain.last().expect("the chain starts with i");
            match parent(top).0 {
                Resolved::Type(j)
                    if matches!(nodes[j].kind, Kind::Element | Kind::XmlText)
                        && chain.len() as u64 <= MAX_NESTING =>
                {
                    if depth[j] != 0 {
                        base = depth[j];
                        break;
                    }
                    if chain.contains(&j) {
                        break;
                    }
                    chain.push(j);
                }
                _ => break,
            }
        }
        for (k, c) in chain.iter().rev().enumerate() {
            depth[*c] = base + k as u64 + 1;
        }
        if depth[i] > MAX_NESTING {
            return Err(invalid(format!(
                "XML elements nest deeper than {MAX_NESTING}"
            )));
        }
    }
    for (i, n) in nodes.iter().enumerate().skip(state.len()) {
        let (p, sub) = parent(i);
        let kind_of = |p: Resolved| match p {
            Resolved::Type(j) => Some(nodes[j].kind),
            _ => None,
        };
        let fits = match (n.kind, p) {
            (Kind::Empty, _) | (_, Resolved::Unknown) => true,
            (Kind::Inline, Resolved::Root(RootName::Text)) => !sub,
            (Kind::Inline, p) => !sub && kind_of(p) == Some(Kind::XmlText),
            (Kind::Element | Kind::XmlText, Resolved::Root(RootName::Xml)) => !sub,
            (Kind::Element | Kind::XmlText, p) => !sub && kind_of(p) == Some(Kind::Element),
            (Kind::Value, p) => sub && kind_of(p) == Some(Kind::Element),
        };
        if !fits {
            return Err(invalid(match n.kind {
                Kind::Inline => "text outside the Y.Text root and Y.XmlText (or as a map entry)",
                Kind::Value => "a value that is not an XML element's attribute",
                _ => "an XML node outside the Y.XmlFragment root and its elements",
            }));
        }
    }
    Ok(())
}

/// A JSON value of a formatting attribute or an embed: parses and nests at most
/// [`MAX_JSON_DEPTH`] levels.
fn json(s: &str) -> Result<(), Error> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|_| invalid("an attribute or embed is not JSON"))?;
    fn walk(v: &serde_json::Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(invalid(format!(
                "an attribute or embed nests deeper than {MAX_JSON_DEPTH}"
            )));
        }
        match v {
            serde_json::Value::Array(a) => a.iter().try_for_each(|x| walk(x, depth + 1)),
            serde_json::Value::Object(o) => o.values().try_for_each(|x| walk(x, depth + 1)),
            _ => Ok(()),
        }
    }
    walk(&v, 0)
}

/// `state` (as `yrs` encoded it) with every object of a JSON attribute or embed and
/// of a lib0 value written with its keys in order. `yrs` keeps an object's entries in
/// a `HashMap` with a random seed and writes them in that map's order; this makes the
/// stored bytes a function of the edits again.
fn canonical(state: &[u8]) -> Result<Vec<u8>, Error> {
    let p = parse(state)?;
    if p.spans.is_empty() {
        return Ok(state.to_vec());
    }
    let mut out = Vec::with_capacity(state.len());
    let mut last = 0;
    for sp in &p.spans {
        out.extend_from_slice(&state[last..sp.start]);
        let mut r = Reader {
            b: state,
            i: sp.start,
        };
        if sp.json {
            let text = r.string()?.as_bytes();
            let mut sorted = Vec::with_capacity(text.len());
            let mut j = Json { b: text, i: 0 };
            j.value(&mut sorted)
                .ok_or_else(|| corrupt("an attribute or embed is not JSON".into()))?;
            put_var(&mut out, sorted.len() as u64);
            out.extend_from_slice(&sorted);
        } else {
            r.any_sorted(0, &mut out)?;
        }
        last = sp.end;
    }
    out.extend_from_slice(&state[last..]);
    Ok(out)
}

/// A JSON text (checked by [`json`] before it was stored) written again with each
/// object's members in the byte order of their keys as written, and no whitespace.
/// Scalars are copied as they are.
struct Json<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Json<'a> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The bytes of a string token, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        let b = self.b;
        let start = self.i;
        self.i += 1;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(&b[start..self.i]);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut members: Vec<(&'a [u8], Vec<u8>)> = Vec::new();
                loop {
                    self.ws();
                    match *self.b.get(self.i)? {
                        b'}' => break,
                        b',' => self.i += 1,
                        _ => {
                            let key = self.string()?;
                            self.ws();
                            self.i += 1; // ':'
                            let mut v = Vec::new();
                            self.value(&mut v)?;
                            members.push((key, v));
                        }
                    }
                }
                self.i += 1;
                members.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(k);
                    out.push(b':');
                    out.extend_from_slice(v);
                }
                out.push(b'}');
            }
            b'[' => {
                self.i += 1;
                out.push(b'[');
                let mut first = true;
                loop {
                    self.ws();
                    match *self.b.get(self.i)? {
                        b']' => break,
                        b',' => self.i += 1,
                        _ => {
                            if !first {
                                out.push(b',');
                            }
                            first = false;
                            self.value(out)?;
                        }
                    }
                }
                self.i += 1;
                out.push(b']');
            }
            b'"' => {
                let s = self.string()?;
                out.extend_from_slice(s);
            }
            _ => {
                let start = self.i;
                while let Some(c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if start == self.i {
                    return None;
                }
                out.extend_from_slice(&self.b[start..self.i]);
            }
        }
        Some(())
    }
}

/// Writes a lib0 variable-length unsigned integer.
fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .b
            .get(self.i)
            .ok_or_else(|| invalid("the update ends early"))?;
        self.i += 1;
        Ok(b)
    }

    /// A lib0 variable-length unsigned integer, at most 2^53 - 1 (what JavaScript's
    /// lib0 writes).
    fn var(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..56).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if v >= 1 << 53 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(invalid("a number is larger than 2^53"))
    }

    /// A count of things that each take at least one more byte.
    fn count(&mut self) -> Result<u64, Error> {
        let n = self.var()?;
        if n > (self.b.len() - self.i) as u64 {
            return Err(invalid("a count is larger than the bytes left"));
        }
        Ok(n)
    }

    fn client(&mut self) -> Result<u64, Error> {
        let c = self.var()?;
        if c == ENGINE_CLIENT {
            return Err(invalid("the client id 2^53-1 is the engine's"));
        }
        Ok(c)
    }

    fn clock(&mut self) -> Result<u64, Error> {
        let c = self.var()?;
        if c > MAX_CLOCK {
            return Err(invalid("a clock passes 2^31"));
        }
        Ok(c)
    }

    fn len(&mut self) -> Result<u64, Error> {
        let n = self.clock()?;
        if n == 0 {
            return Err(invalid("a run of length 0"));
        }
        Ok(n)
    }

    fn id(&mut self) -> Result<(u64, u64), Error> {
        Ok((self.client()?, self.clock()?))
    }

    fn skip(&mut self, n: usize) -> Result<(), Error> {
        if n > self.b.len() - self.i {
            return Err(invalid("the update ends early"));
        }
        self.i += n;
        Ok(())
    }

    /// A lib0 value ("any"), nesting at most [`MAX_JSON_DEPTH`] levels.
    fn any(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(invalid(format!(
                "a value nests deeper than {MAX_JSON_DEPTH}"
            )));
        }
        match self.byte()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => Ok(()),
            // a signed variable-length integer: at most 8 bytes
            125 => {
                for _ in 0..8 {
                    if self.byte()? & 0x80 == 0 {
                        return Ok(());
                    }
                }
                Err(invalid("an integer value is longer than 8 bytes"))
            }
            124 => self.skip(4),
            123 | 122 => self.skip(8),
            119 => self.string().map(|_| ()),
            118 => {
                for _ in 0..self.count()? {
                    self.string()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            117 => {
                for _ in 0..self.count()? {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            116 => {
                let n = self.count()? as usize;
                self.skip(n)
            }
            other => Err(invalid(format!("a value of unknown kind {other}"))),
        }
    }

    /// Copies a lib0 value to `out` with each object's entries in key order.
    fn any_sorted(&mut self, depth: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = self.i;
        match self.b.get(self.i) {
            Some(118) => {
                self.i += 1;
                let n = self.count()?;
                let mut entries = Vec::new();
                for _ in 0..n {
                    let key = self.string()?;
                    let mut v = Vec::new();
                    self.any_sorted(depth + 1, &mut v)?;
                    entries.push((key, v));
                }
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push(118);
                put_var(out, n);
                for (k, v) in entries {
                    put_var(out, k.len() as u64);
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(&v);
                }
                Ok(())
            }
            Some(117) => {
                self.i += 1;
                let n = self.count()?;
                out.push(117);
                put_var(out, n);
                for _ in 0..n {
                    self.any_sorted(depth + 1, out)?;
                }
                Ok(())
            }
            _ => {
                self.any(depth)?;
                out.extend_from_slice(&self.b[start..self.i]);
                Ok(())
            }
        }
    }

    fn string(&mut self) -> Result<&'a str, Error> {
        let n = self.count()? as usize;
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        std::str::from_utf8(s).map_err(|_| invalid("a string is not UTF-8"))
    }
}

#[cfg(feature = "text")]
/// A fresh document with the engine's fixed options (no random id or guid).
fn new_doc() -> yrs::Doc {
    let mut o =
        Options::with_guid_and_client_id("warren".into(), yrs::ClientID::new(ENGINE_CLIENT));
    o.skip_gc = false;
    yrs::Doc::with_options(o)
}

/// Applies a checked `update` to a stored text value (`null` for a text never edited)
/// and returns the new stored value. The caller has run [`check_update`] and paid
/// for the work and memory.
///
/// An engine built without the feature `text` (the browser's smaller module) reads
/// text fields but cannot apply an edit: `TEXT_UNAVAILABLE`, which is not a property
/// of the commit (the server decides it), so the replica does not take the write.
#[cfg(not(feature = "text"))]
pub fn apply(_old: &Value, _update: &[u8]) -> Result<Value, Error> {
    Err(Error::new(
        ErrorCode::TextUnavailable,
        "this engine was loaded without collaborative text: open the database with the schema that declares the text field, or with `text: true`",
    ))
}

/// Applies a checked `update` to a stored text value (`null` for a text never edited)
/// and returns the new stored value. The caller has run [`check_update`] and paid
/// for the work and memory.
#[cfg(feature = "text")]
pub fn apply(old: &Value, update: &[u8]) -> Result<Value, Error> {
    let old = stored(old)?;
    let before = match old.state {
        [] => Vec::new(),
        state => {
            parse(state)
                .map_err(|e| corrupt(format!("a text field's state does not read: {}", e.message)))?
                .nodes
        }
    };
    check_tree(&before, &parse(update)?.nodes)?;
    let doc = new_doc();
    // The roots' types, before any update names them.
    doc.get_or_insert_text(ROOT);
    doc.get_or_insert_xml_fragment(XML_ROOT);
    if !old.state.is_empty() {
        let u = Update::decode_v1(old.state)
            .map_err(|e| corrupt(format!("a text field's state does not decode: {e}")))?;
        let mut txn = doc.transact_mut();
        txn.apply_update(u)
            .map_err(|e| corrupt(format!("a text field's state does not apply: {e}")))?;
    }
    {
        let u = Update::decode_v1(update).map_err(|e| invalid(format!("{e}")))?;
        let mut txn = doc.transact_mut();
        txn.apply_update(u).map_err(|e| invalid(format!("{e}")))?;
        if txn.has_missing_updates() {
            return Err(Error::new(
                ErrorCode::TextUpdateOutOfOrder,
                "the update depends on edits this text does not have (an earlier edit was refused, or not sent yet)",
            ));
        }
    }
    let s = field_string(&doc);
    let txn = doc.transact();
    let state = canonical(&txn.encode_state_as_update_v1(&StateVector::default()))?;
    Ok(encode(&s, &state))
}

#[cfg(feature = "text")]
/// A text field's string, as programs read it: the `Y.Text`'s string, then (on a new
/// line if both have text) the fragment's: its XML texts in document order, each
/// element starting a new line (unless the text so far is empty or ends with one).
/// Formatting, embeds and attributes are not part of it.
pub fn field_string(doc: &yrs::Doc) -> String {
    let text = doc.get_or_insert_text(ROOT);
    let fragment = doc.get_or_insert_xml_fragment(XML_ROOT);
    let txn = doc.transact();
    let mut s = text.get_string(&txn);
    let mut xml = String::new();
    for node in fragment.successors(&txn) {
        match node {
            XmlOut::Element(_) => {
                if !xml.is_empty() && !xml.ends_with('\n') {
                    xml.push('\n');
                }
            }
            XmlOut::Text(t) => {
                let t: &yrs::TextRef = t.as_ref();
                xml.push_str(&t.get_string(&txn));
            }
            XmlOut::Fragment(_) => {}
        }
    }
    if !xml.is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&xml);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_is_the_empty_text() {
        assert_eq!(stored(&Value::Null).unwrap().text, "");
    }
}
