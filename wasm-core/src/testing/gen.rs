//! A generator of random well-formed programs, driven by a source of choices (a seeded
//! [`Rng`], or the bytes a fuzzer hands over), and the store they run against.
//!
//! The programs are grammar-based: literals of every type (with the edge values that
//! have bitten engines: `-0.0`, 2^32, 2^63 - 1, exact float ties), operators, `let`,
//! `if`, lambdas, every built-in, sets over collections and indexes with their whole
//! pipeline, `byId`, writes, `newId()`, `abort`, and the schema's functions. They are
//! well-formed, not well-typed: a type error is an outcome like any other, and must be
//! the same everywhere.
//!
//! The differential harness (`wasm-core/difftest`) runs the same programs with the
//! native build and the wasm32 build and compares every result, error, fuel figure,
//! memory figure and digest; the fuzz target `lang_exec` runs programs a fuzzer steers.
//! Nothing here may depend on the platform: choices are `u64`, never `usize`.

use std::fmt::Write as _;
use std::sync::Arc;

use super::Rng;
use crate::eval::Limits;
use crate::exec::{self, Commit, Executor, Op, Outcome, Usage};
use crate::lang::BUILTINS;
use crate::schema::Schema;
use crate::storage::MemoryStore;
use crate::value::{obj, Value};

/// Where choices come from.
pub trait Choices {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64;
}

impl Choices for Rng {
    fn below(&mut self, n: u64) -> u64 {
        Rng::below(self, n)
    }
}

/// Choices read from bytes (a fuzzer's input): each choice takes the next bytes; when
/// they run out, every choice is 0, which always ends the program soon.
pub struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, at: 0 }
    }
}

impl Choices for Bytes<'_> {
    fn below(&mut self, n: u64) -> u64 {
        let mut v: u64 = 0;
        let mut span: u64 = 1;
        while span < n {
            let b = self.data.get(self.at).copied().unwrap_or(0);
            self.at += 1;
            v = (v << 8) | u64::from(b);
            span = span.saturating_mul(256);
        }
        v % n
    }
}

/// The schema the generated programs run against: a public collection with a unique
/// index, per-user partitions, and a rule that reads another document.
pub const SCHEMA: &str = r#"
collection Item {
  index byCat [cat, n]
  unique index bySlug [slug]
  allow read true
  allow create true
  allow update true
  allow delete old.n >= 0
}

collection Note {
  partition "user:" + doc.owner
  index byTitle [title]
  index byOwner [owner, n]
  allow read   partition == "user:" + auth.sub || auth.role == "admin"
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub && new.owner == old.owner
  allow delete old.owner == auth.sub
}

collection Team {
  partition "team:" + doc.id
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create doc.members.includes(auth.sub)
  allow update old.members.includes(auth.sub)
}

function addNote(title, n) { Note.create({ owner: auth.sub, title, n }) }

function bump(id) {
  let i = Item.byId(id) ?? Item.create({ id, n: 0, cat: "a" })
  i.update({ n: i.n + 1 })
}

function fact(n) { if n <= 1 { 1 } else { n * fact(n - 1) } }

function titles(from) { Note.byTitle().range({ gte: from }).take(5).map(.title).toArray() }
"#;

/// The users programs run as (`dee` is an admin, who reads every note).
pub const USERS: &[&str] = &["ann", "bob", "cy", "dee"];

/// The claims of user `i` (of [`USERS`]).
pub fn auth(i: u64) -> Value {
    let sub = USERS[(i % USERS.len() as u64) as usize];
    if sub == "dee" {
        obj([("sub", sub.into()), ("role", "admin".into())])
    } else {
        obj([("sub", sub.into())])
    }
}

/// The limits generated programs run with: small enough that a run is quick.
pub fn limits() -> Limits {
    Limits {
        fuel: 200_000,
        max_memory_bytes: 16 << 20,
        rule_memory_bytes: 4 << 20,
        max_hidden_work: 200_000,
        ..Limits::default()
    }
}

/// A store with the example data: items, notes of three users (hidden from each other),
/// teams. The same on every build.
pub fn store() -> Executor<MemoryStore> {
    let schema = Arc::new(Schema::parse(SCHEMA).expect("the generator's schema parses"));
    let mut db = Executor::new(MemoryStore::new(), schema, limits());
    let setup = [
        (
            0,
            r#"range(20).map(i => Item.create({ id: "i" + i, n: i % 7 - 2, cat: ["a", "b", "c"][i % 3],
            slug: "s" + i, x: i * 0.25 - 1.5, tags: range(i % 4).map(t => "t" + t),
            meta: { k: i, deep: { v: [i, -0.0, 1e16] } } })).length"#,
        ),
        (
            0,
            r#"range(6).map(i => Note.create({ id: "na" + i, owner: "ann", title: "wa" + i, n: i })).length"#,
        ),
        (
            1,
            r#"range(6).map(i => Note.create({ id: "nb" + i, owner: "bob", title: "wb" + (5 - i), n: i * 2 })).length"#,
        ),
        (
            2,
            r#"range(30).map(i => Note.create({ id: "nc" + i, owner: "cy", title: "wc" + i, n: -i })).length"#,
        ),
        (
            0,
            r#"Team.create({ id: "red", members: ["ann", "bob"] }).id"#,
        ),
        (2, r#"Team.create({ id: "blue", members: ["cy"] }).id"#),
    ];
    for (n, (user, src)) in setup.iter().enumerate() {
        let position = n as u64 + 1;
        let c = Commit {
            client_id: format!("setup-{n}"),
            client_seq: 1,
            schema_version: String::new(),
            timestamp: 1_700_000_000_000,
            auth: auth(*user),
            op: Op::Run {
                source: (*src).into(),
            },
        };
        match db.commit(&c, position) {
            Ok(Outcome::Committed { .. }) => {}
            other => panic!("the generator's setup failed: {other:?}"),
        }
    }
    db
}

/// One generated program: its source, the user it runs as, and whether it runs as a
/// call of a schema function (with generated arguments) instead.
#[derive(Clone, Debug)]
pub struct Program {
    pub source: String,
    pub user: u64,
    pub call: Option<(String, Value)>,
}

/// Programs that once gave different answers on different builds, or broke a limit:
/// they run first in every differential run.
pub const REGRESSIONS: &[&str] = &[
    "[1, 2, 3].take(5000000000)",
    "[1, 2, 3].skip(5000000000)",
    "\"\".repeat(5000000000)",
    "\"x\".repeat(5000000000)",
    "[1, 2, 3][4294967296]",
    "\"abc\"[-4294967296]",
    "take([1, 2, 3], 9223372036854775807)",
    "[1, 2].slice(-9223372036854775807 - 1, 9223372036854775807)",
    "[distinct([0.0, -0.0]), -0.0 == 0.0, toString(-0.0), order([-0.0, 0.0, -1.0], x => x)]",
    "[toString(-1808899083386983.25), toString(30281395965754.3125), toString(0.1 + 0.2)]",
    "[toString(1e16), toString(1e-7), toString(5e-324), toString(1.7976931348623157e308)]",
    "Item.all().map(.meta.deep.v).toArray()",
    "let s = \"x\".repeat(1000000)\n[s, s, s, s, s, s, s, s].length",
    "range(300000).map(i => ({ a: i })).length",
    // Seed 133: a closure deleting a document further on in an index scan's page.
    "Item.byCat(\"b\").where(p1 => (Item.byId(\"i4\")?.delete())).take(100).toArray()",
];

struct Gen<'c, C: Choices> {
    c: &'c mut C,
    /// Names in scope.
    vars: Vec<String>,
    /// Lambdas made so far (for fresh parameter names).
    lambdas: u64,
}

const INTS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "-1",
    "100",
    "4294967296",
    "5000000000",
    "9223372036854775807",
    "(-9223372036854775807 - 1)",
];
const FLOATS: &[&str] = &[
    "0.0",
    "-0.0",
    "0.1",
    "1.5",
    "-2.5",
    "1e16",
    "1e-7",
    "2.5e-8",
    "123.456",
    "1e300",
    "0.30000000000000004",
];
const STRINGS: &[&str] = &[
    "\"\"",
    "\"a\"",
    "\"abc\"",
    "\"wa\"",
    "\"i3\"",
    "\"na1\"",
    "\"héllo\"",
    "\"x y\"",
    "\"\\u{1F600}\"",
    "'it\\'s'",
    "\"a\\nb\"",
    "\"s5\"",
    "\"_0000000000000000000000000\"",
];
const FIELDS: &[&str] = &[
    "n", "cat", "slug", "x", "tags", "meta", "title", "owner", "id", "members", "k", "nope",
];
const COLLS: &[&str] = &["Item", "Note", "Team"];

impl<C: Choices> Gen<'_, C> {
    fn pick<'s>(&mut self, xs: &[&'s str]) -> &'s str {
        xs[self.c.below(xs.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.c.below(100) < percent
    }

    fn small(&mut self) -> u64 {
        self.c.below(6)
    }

    /// An expression; `depth` is how much nesting is left.
    fn expr(&mut self, depth: u32) -> String {
        if depth == 0 {
            return self.leaf();
        }
        let d = depth - 1;
        match self.c.below(22) {
            0..=3 => self.leaf(),
            4 => {
                let n = self.small();
                let items: Vec<String> = (0..n).map(|_| self.expr(d)).collect();
                format!("[{}]", items.join(", "))
            }
            5 => {
                // Distinct keys (a key written twice does not parse).
                let mut keys: Vec<&str> = FIELDS.to_vec();
                let n = self.small();
                let fields: Vec<String> = (0..n)
                    .map(|_| {
                        let k = keys.remove(self.c.below(keys.len() as u64) as usize);
                        format!("{k}: {}", self.expr(d))
                    })
                    .collect();
                format!("({{ {} }})", fields.join(", "))
            }
            6 | 7 => {
                let op = self.pick(&[
                    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "??",
                ]);
                format!("({} {op} {})", self.expr(d), self.expr(d))
            }
            8 => {
                let op = self.pick(&["-", "!"]);
                format!("({op}{})", self.expr(d))
            }
            9 => format!(
                "(if {} {{ {} }} else {{ {} }})",
                self.expr(d),
                self.expr(d),
                self.expr(d)
            ),
            10 | 11 => self.builtin(d),
            12 | 13 => self.set(d),
            14 => {
                let c = self.pick(COLLS);
                let id = self.pick(&[
                    "\"i1\"", "\"i19\"", "\"na2\"", "\"nb1\"", "\"nc7\"", "\"red\"", "\"blue\"",
                    "\"nope\"",
                ]);
                let tail = if self.chance(50) {
                    format!("?.{}", self.pick(FIELDS))
                } else {
                    String::new()
                };
                format!("{c}.byId({id}){tail}")
            }
            15 => {
                let f = self.pick(FIELDS);
                let q = if self.chance(50) { "?." } else { "." };
                format!("({}){q}{f}", self.expr(d))
            }
            16 => format!("({})[{}]", self.expr(d), self.expr(d)),
            17 => self.write(d),
            18 => {
                let call = self.pick(&["fact", "titles", "bump", "addNote"]);
                let n = 1 + u64::from(call == "addNote");
                let args: Vec<String> = (0..n).map(|_| self.expr(d)).collect();
                format!("{call}({})", args.join(", "))
            }
            19 => {
                let p = self.lambda_param();
                self.vars.push(p.clone());
                let body = self.expr(d);
                self.vars.pop();
                let arg = self.expr(d);
                // A lambda applied: there are no calls of expressions, so through map.
                format!("[{arg}].map({p} => ({body}))[0]")
            }
            20 => self
                .pick(&["newId()", "now()", "abort(\"stop\")", "abort()"])
                .to_owned(),
            _ => {
                let s = self.expr(d);
                let m = self.pick(&[
                    "length",
                    "upper()",
                    "lower()",
                    "trim()",
                    "keys()",
                    "reverse()",
                    "toString()",
                    "first()",
                    "isEmpty()",
                    "sort()",
                    "distinct()",
                ]);
                format!("({s}).{m}")
            }
        }
    }

    fn leaf(&mut self) -> String {
        match self.c.below(8) {
            0 | 1 => self.pick(INTS).to_owned(),
            2 => self.pick(FLOATS).to_owned(),
            3 | 4 => self.pick(STRINGS).to_owned(),
            5 => self
                .pick(&["true", "false", "null", "auth", "auth.sub"])
                .to_owned(),
            _ => {
                if self.vars.is_empty() {
                    self.pick(INTS).to_owned()
                } else {
                    let i = self.c.below(self.vars.len() as u64) as usize;
                    self.vars[i].clone()
                }
            }
        }
    }

    fn lambda_param(&mut self) -> String {
        self.lambdas += 1;
        format!("p{}", self.lambdas)
    }

    /// A lambda of `params` parameters.
    fn lambda(&mut self, params: u64, d: u32) -> String {
        if params == 1 && self.chance(30) {
            // The `.field` shorthand.
            let f = self.pick(FIELDS);
            let op = self.pick(&[" > 1", " == \"a\"", "", " ?? 0"]);
            return format!(".{f}{op}");
        }
        let ps: Vec<String> = (0..params).map(|_| self.lambda_param()).collect();
        let n = self.vars.len();
        self.vars.extend(ps.iter().cloned());
        let body = self.expr(d);
        self.vars.truncate(n);
        if params == 1 {
            format!("{} => ({body})", ps[0])
        } else {
            format!("({}) => ({body})", ps.join(", "))
        }
    }

    fn builtin(&mut self, d: u32) -> String {
        // Mostly with arguments of the types the built-in takes, so that programs run
        // on past the call; sometimes with anything, for the errors.
        if self.chance(70) {
            return self.typed_builtin(d);
        }
        let name = BUILTINS[self.c.below(BUILTINS.len() as u64) as usize];
        let lambdas = match name {
            "map" | "filter" | "where" | "some" | "every" | "find" => 1,
            "reduce" => 2,
            "order" => 1,
            _ => 0,
        };
        if name == "abort" && self.chance(80) {
            return self.leaf();
        }
        if lambdas > 0 {
            let recv = self.expr(d);
            let f = self.lambda(lambdas, d);
            return match name {
                "reduce" => format!("({recv}).reduce({f}, {})", self.expr(d)),
                "order" => {
                    let k = if self.chance(50) {
                        format!("desc({})", self.lambda_body_field())
                    } else {
                        f
                    };
                    format!("({recv}).order({k})")
                }
                _ => format!("({recv}).{name}({f})"),
            };
        }
        let n = self.c.below(4);
        let args: Vec<String> = (0..n).map(|_| self.expr(d)).collect();
        if !args.is_empty() && self.chance(50) {
            format!("({}).{name}({})", args[0], args[1..].join(", "))
        } else {
            format!("{name}({})", args.join(", "))
        }
    }

    /// An expression of a kind: `s`tring, `i`nt (small, to count with), `n`umber,
    /// `a`rray, `o`bject, `b`oolean, or `x` (any).
    fn typed(&mut self, kind: char, d: u32) -> String {
        if d == 0 || self.chance(10) {
            return match kind {
                's' => self.pick(STRINGS).to_owned(),
                'i' => self.pick(&["0", "1", "2", "3", "5", "-1", "10"]).to_owned(),
                'n' => self
                    .pick(&["0", "2", "-3", "0.5", "-0.0", "1e16", "2.25"])
                    .to_owned(),
                'a' => self
                    .pick(&[
                        "[]",
                        "[1, 2, 3]",
                        "[\"b\", \"a\"]",
                        "[[1], [2, 3]]",
                        "[1.5, -2]",
                    ])
                    .to_owned(),
                'o' => self
                    .pick(&["({})", "({ a: 1, b: \"x\" })", "({ n: [1, 2], k: null })"])
                    .to_owned(),
                'b' => self.pick(&["true", "false"]).to_owned(),
                _ => self.leaf(),
            };
        }
        let e = d - 1;
        match kind {
            's' => match self.c.below(8) {
                0 => format!("({} + {})", self.typed('s', e), self.typed('x', e)),
                1 => format!("toString({})", self.typed('x', e)),
                2 => format!("{}.upper()", self.typed('s', e)),
                3 => format!("join({}, {})", self.typed('a', e), self.typed('s', e)),
                4 => format!(
                    "{}.slice({}, {})",
                    self.typed('s', e),
                    self.typed('i', e),
                    self.typed('i', e)
                ),
                5 => format!("(Item.byId(\"i{}\")?.cat ?? \"none\")", self.c.below(25)),
                6 => format!(
                    "{}.replace({}, \"-\")",
                    self.typed('s', e),
                    self.pick(&["\"a\"", "\" \"", "\"i\""])
                ),
                _ => self.pick(STRINGS).to_owned(),
            },
            'i' => match self.c.below(7) {
                0 => {
                    let k = self.pick_kind("sa");
                    format!("({}).length", self.typed(k, e))
                }
                1 => format!(
                    "({} {} {})",
                    self.typed('i', e),
                    self.pick(&["+", "-", "*", "%"]),
                    self.typed('i', e)
                ),
                2 => format!("Item.byCat({}).count()", self.pick(&["\"a\"", "\"b\""])),
                3 => format!("round({})", self.typed('n', e)),
                4 => format!("abs({})", self.typed('i', e)),
                _ => self.pick(&["0", "1", "2", "3", "4", "7"]).to_owned(),
            },
            'n' => match self.c.below(6) {
                0 => format!(
                    "({} {} {})",
                    self.typed('n', e),
                    self.pick(&["+", "-", "*", "/"]),
                    self.typed('n', e)
                ),
                1 => format!("sqrt(abs({}))", self.typed('n', e)),
                2 => format!(
                    "pow({}, {})",
                    self.typed('n', e),
                    self.pick(&["0", "2", "3", "-1"])
                ),
                3 => format!("toFloat({})", self.typed('i', e)),
                4 => format!("sum({})", self.typed('a', e)),
                _ => self.typed('i', e),
            },
            'a' => match self.c.below(11) {
                0 => format!("range({})", self.typed('i', e)),
                1 => format!("[{}, {}]", self.typed('x', e), self.typed('x', e)),
                2 => format!(
                    "{}.split({})",
                    self.typed('s', e),
                    self.pick(&["\"\"", "\"a\"", "\" \""])
                ),
                3 => format!("keys({})", self.typed('o', e)),
                4 => format!("{}.map({})", self.typed('a', e), self.lambda(1, e)),
                5 => format!("{}.filter({})", self.typed('a', e), self.lambda(1, e)),
                6 => format!("{}.take({})", self.typed('a', e), self.typed('i', e)),
                7 => format!("{}.order(x => x)", self.typed('a', e)),
                8 => format!(
                    "Item.byCat({}).map(.n).toArray()",
                    self.pick(&["\"a\"", "\"c\""])
                ),
                9 => format!("concat({}, {})", self.typed('a', e), self.typed('a', e)),
                _ => format!("distinct({})", self.typed('a', e)),
            },
            'o' => match self.c.below(5) {
                0 => format!("merge({}, {})", self.typed('o', e), self.typed('o', e)),
                1 => format!(
                    "({{ a: {}, b: {} }})",
                    self.typed('x', e),
                    self.typed('x', e)
                ),
                2 => format!("(Item.byId(\"i{}\") ?? ({{}}))", self.c.below(25)),
                3 => format!(
                    "fromEntries([[{}, {}]])",
                    self.typed('s', e),
                    self.typed('x', e)
                ),
                _ => format!("without({}, \"a\")", self.typed('o', e)),
            },
            'b' => match self.c.below(5) {
                0 => format!(
                    "({} {} {})",
                    self.typed('n', e),
                    self.pick(&["<", "<=", "==", "!=", ">"]),
                    self.typed('n', e)
                ),
                1 => format!("{}.startsWith({})", self.typed('s', e), self.typed('s', e)),
                2 => format!("{}.includes({})", self.typed('a', e), self.typed('x', e)),
                3 => format!(
                    "has({}, {})",
                    self.typed('o', e),
                    self.pick(&["\"a\"", "\"n\""])
                ),
                _ => format!("!{}", self.typed('b', e)),
            },
            _ => {
                let k = self.pick_kind("sinaob");
                self.typed(k, e)
            }
        }
    }

    fn pick_kind(&mut self, kinds: &str) -> char {
        let k: Vec<char> = kinds.chars().collect();
        k[self.c.below(k.len() as u64) as usize]
    }

    /// A built-in called with arguments of the types it takes.
    fn typed_builtin(&mut self, d: u32) -> String {
        const SIGS: &[(&str, &str)] = &[
            ("abs", "n"),
            ("append", "ax"),
            ("ceil", "n"),
            ("concat", "aa"),
            ("distinct", "a"),
            ("endsWith", "ss"),
            ("entries", "o"),
            ("first", "a"),
            ("flatten", "a"),
            ("floor", "n"),
            ("has", "os"),
            ("includes", "ax"),
            ("indexOf", "sx"),
            ("isEmpty", "x"),
            ("join", "as"),
            ("keys", "o"),
            ("last", "a"),
            ("length", "a"),
            ("lower", "s"),
            ("max", "a"),
            ("merge", "oo"),
            ("min", "a"),
            ("pow", "ni"),
            ("range", "ii"),
            ("repeat", "si"),
            ("replace", "sss"),
            ("reverse", "a"),
            ("round", "n"),
            ("skip", "ai"),
            ("slice", "aii"),
            ("sort", "a"),
            ("split", "ss"),
            ("sqrt", "n"),
            ("startsWith", "ss"),
            ("sum", "a"),
            ("take", "ai"),
            ("toFloat", "x"),
            ("toInt", "n"),
            ("toString", "x"),
            ("trim", "s"),
            ("typeOf", "x"),
            ("upper", "s"),
            ("values", "o"),
            ("without", "os"),
        ];
        let (name, sig) = SIGS[self.c.below(SIGS.len() as u64) as usize];
        let args: Vec<String> = sig.chars().map(|k| self.typed(k, d)).collect();
        if self.chance(50) {
            format!("({}).{name}({})", args[0], args[1..].join(", "))
        } else {
            format!("{name}({})", args.join(", "))
        }
    }

    fn lambda_body_field(&mut self) -> String {
        format!(".{}", self.pick(FIELDS))
    }

    /// A set and an operation that reads it.
    fn set(&mut self, d: u32) -> String {
        let mut s = match self.c.below(6) {
            0 => "Item.all()".to_owned(),
            1 => format!("Item.byCat({})", self.pick(&["\"a\"", "\"b\"", "\"z\""])),
            2 => "Note.all()".to_owned(),
            3 => format!(
                "Note.byTitle().range({{ {}: {} }})",
                self.pick(&["gte", "gt", "lte", "lt"]),
                self.pick(&["\"w\"", "\"wb\"", "\"wc1\"", "\"x\"", "1"])
            ),
            4 => format!(
                "Note.byOwner({})",
                self.pick(&["\"ann\"", "\"cy\"", "auth.sub"])
            ),
            _ => "Team.all()".to_owned(),
        };
        if self.chance(20) {
            s.push_str(".reverse()");
        }
        for _ in 0..self.c.below(3) {
            match self.c.below(5) {
                0 | 1 => {
                    let f = self.lambda(1, d);
                    let _ = write!(s, ".where({f})");
                }
                2 => {
                    let f = self.lambda(1, d);
                    let _ = write!(s, ".map({f})");
                }
                3 => {
                    let _ = write!(s, ".take({})", self.pick(INTS));
                }
                _ => {
                    let _ = write!(s, ".skip({})", self.pick(&["0", "1", "3", "5000000000"]));
                }
            }
        }
        if self.chance(15) {
            let k = self.lambda_body_field();
            let k = if self.chance(50) {
                format!("desc({k})")
            } else {
                k
            };
            let _ = write!(s, ".order({k})");
        }
        let end = self.pick(&[
            ".toArray()",
            ".count()",
            ".first()",
            ".isEmpty()",
            ".paginate(2)",
            ".paginate(3, null)",
            "",
        ]);
        s.push_str(end);
        if end.is_empty() && self.chance(50) {
            let f = self.lambda(1, d);
            let _ = write!(s, ".forEach({f})");
        }
        s
    }

    fn write(&mut self, d: u32) -> String {
        match self.c.below(5) {
            0 => format!(
                "Item.create({{ {}n: {}, cat: {}, slug: {} }})",
                if self.chance(50) {
                    format!("id: {}, ", self.expr(d))
                } else {
                    String::new()
                },
                self.expr(d),
                self.pick(STRINGS),
                self.expr(d)
            ),
            1 => format!(
                "Note.create({{ owner: {}, title: {}, n: {} }})",
                self.pick(&["auth.sub", "\"ann\"", "\"bob\""]),
                self.expr(d),
                self.expr(d)
            ),
            2 => format!(
                "Item.byId({})?.update({{ n: {}, slug: {} }})",
                self.pick(&["\"i1\"", "\"i2\"", "\"i9\""]),
                self.expr(d),
                self.expr(d)
            ),
            3 => format!(
                "{}.byId({})?.delete()",
                self.pick(COLLS),
                self.pick(&["\"i4\"", "\"na0\"", "\"nb0\"", "\"nc0\"", "\"red\""])
            ),
            _ => format!(
                "Note.byId({})?.replace({{ owner: {}, title: {} }})",
                self.pick(&["\"na1\"", "\"nb2\"", "\"nc3\""]),
                self.pick(&["auth.sub", "\"cy\""]),
                self.expr(d)
            ),
        }
    }

    fn program(&mut self) -> String {
        let lets = self.c.below(4);
        let mut lines = Vec::new();
        for i in 0..lets {
            let e = if self.chance(50) {
                let k = self.pick_kind("sinaobx");
                self.typed(k, 4)
            } else {
                self.expr(3)
            };
            lines.push(format!("let v{i} = {e}"));
            self.vars.push(format!("v{i}"));
        }
        lines.push(self.expr(4));
        lines.join("\n")
    }
}

/// Generates one program from `c`.
pub fn program<C: Choices>(c: &mut C) -> Program {
    let user = c.below(USERS.len() as u64);
    let call = if c.below(10) == 0 {
        let (f, n) = [("fact", 1), ("titles", 1), ("bump", 1), ("addNote", 2)][c.below(4) as usize];
        let mut g = Gen {
            c,
            vars: Vec::new(),
            lambdas: 0,
        };
        let leaves: Vec<Value> = (0..n)
            .map(|_| {
                let text = g.leaf();
                crate::lang::parse_expr(&text)
                    .ok()
                    .and_then(|e| match e.kind {
                        crate::lang::ast::ExprKind::Lit(v) => Some(v),
                        _ => None,
                    })
                    .unwrap_or(Value::Null)
            })
            .collect();
        Some((f.to_owned(), Value::Array(leaves)))
    } else {
        None
    };
    let mut g = Gen {
        c,
        vars: Vec::new(),
        lambdas: 0,
    };
    Program {
        source: g.program(),
        user,
        call,
    }
}

/// The `i`th program of the run with `seed` (each program has its own generator, so
/// a run can be resumed or sampled at any index).
pub fn nth(seed: u64, i: u64) -> Program {
    let mut rng = Rng(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
    program(&mut rng)
}

/// A value in a line: its JSON, or for a long one its length and a hash of it.
fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= 300 {
        text
    } else {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(text.as_bytes());
        format!(
            "<{} bytes of JSON, sha256 {}>",
            text.len(),
            crate::hex(&h[..8])
        )
    }
}

/// What one run of a program gave, in one line of text: the same on every build, or a
/// finding. `Usage::hidden_work` is left out on purpose: it is the same too, but it is
/// not part of what a caller observes.
pub fn describe(result: &Result<Value, crate::Error>, usage: &Usage) -> String {
    let r = match result {
        Ok(v) => show(v),
        Err(e) => format!("error {}", e),
    };
    format!("{r} fuel={} memory={}", usage.fuel, usage.memory)
}

/// Runs `program` against `db`: as a query, then as a commit at the next position.
/// Returns one line per run.
pub fn run(db: &mut Executor<MemoryStore>, program: &Program, client_seq: u64) -> [String; 2] {
    let auth = auth(program.user);
    let (q, usage) = exec::query_metered(
        db.store(),
        db.schema(),
        &program.source,
        &auth,
        1_700_000_000_000,
        db.limits(),
    );
    // The explain trace of the same query: the same outcome and usage as without it,
    // and (compared line by line with the wasm32 build) the same trace everywhere.
    let x = crate::explain::explain_query(
        db.store(),
        db.schema(),
        &program.source,
        &auth,
        1_700_000_000_000,
        db.limits(),
    )
    .expect("a memory store does not fail");
    let plain = match &q {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err((e.code, e.message.clone())),
    };
    let same = x.outcome == plain && x.usage == usage;
    let query = format!(
        "query {} explain={} {}",
        describe(&q, &usage),
        if same { "same" } else { "DIFFERENT" },
        trace_hash(&x)
    );
    let commit = Commit {
        client_id: format!("gen-{}", program.user),
        client_seq,
        schema_version: String::new(),
        timestamp: 1_700_000_000_000 + client_seq as i64,
        auth,
        op: match &program.call {
            Some((function, args)) => Op::Call {
                function: function.clone(),
                args: args.clone(),
            },
            None => Op::Run {
                source: program.source.clone(),
            },
        },
    };
    let position = db.position().expect("memory") + 1;
    let (outcome, usage) =
        exec::execute_metered(db.store(), db.schema(), &commit, position, db.limits())
            .expect("a memory store does not fail");
    let x = crate::explain::explain_commit(db.store(), db.schema(), &commit, position, db.limits())
        .expect("a memory store does not fail");
    let explained = match &outcome {
        Outcome::Committed { result, .. } => Some(Ok(result.clone())),
        Outcome::Rejected { code, message } => Some(Err((*code, message.clone()))),
        Outcome::Skipped(_) => None,
    };
    let same = explained.is_none_or(|o| o == x.outcome && x.usage == usage);
    let digest = db
        .apply(position, &commit.client_id, commit.client_seq, &outcome)
        .expect("a memory store does not fail");
    let outcome = match &outcome {
        Outcome::Committed { writes, result } => {
            format!("committed {} writes {}", writes.len(), show(result))
        }
        Outcome::Rejected { code, message } => format!("rejected {code} {message}"),
        Outcome::Skipped(s) => format!("skipped {s:?}"),
    };
    let tx = format!(
        "commit {outcome} fuel={} memory={} digest={} explain={} {}",
        usage.fuel,
        usage.memory,
        crate::hex(&digest[..8]),
        if same { "same" } else { "DIFFERENT" },
        trace_hash(&x)
    );
    [query, tx]
}

/// A short fingerprint of an explain trace's serialized form, and its decision count.
fn trace_hash(x: &crate::explain::Explanation) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(x.to_json().as_bytes());
    format!("trace={}/{}", x.decisions.len(), crate::hex(&h[..8]))
}

/// The whole differential run: the regressions, then `count` generated programs, each
/// as a query and a commit against one evolving store. One line per run, each prefixed
/// with the program's index.
pub fn differential(seed: u64, count: u64) -> String {
    let mut db = store();
    let mut out = String::new();
    let mut seqs = [0u64; 4];
    let fixed = REGRESSIONS.iter().map(|s| Program {
        source: (*s).to_owned(),
        user: 0,
        call: None,
    });
    let generated = (0..count).map(|i| nth(seed, i));
    for (i, p) in fixed.chain(generated).enumerate() {
        let u = (p.user % 4) as usize;
        seqs[u] += 1;
        let [q, t] = run(&mut db, &p, seqs[u]);
        let _ = writeln!(out, "{i} {q}");
        let _ = writeln!(out, "{i} {t}");
    }
    // Collaborative text: editors' updates interleaved at random (a round per 300
    // programs, and at least three).
    #[cfg(feature = "text")]
    out.push_str(&super::text::differential(seed, 3 + count / 300));
    let _ = writeln!(out, "end {}", crate::hex(&db.digest().expect("memory")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated program parses (the generator writes well-formed programs).
    #[test]
    fn generated_programs_parse() {
        for i in 0..2000 {
            let p = nth(7, i);
            if let Err(e) = crate::lang::parse_block(&p.source) {
                panic!("program {i} does not parse: {e}\n{}", p.source);
            }
        }
        // From bytes too, even too few of them.
        for data in [&b""[..], b"\x01\x02\x03", &[0xff; 64]] {
            let p = program(&mut Bytes::new(data));
            crate::lang::parse_block(&p.source).unwrap();
        }
    }

    #[test]
    fn a_short_run_is_stable() {
        let a = differential(1, 30);
        assert_eq!(a, differential(1, 30));
        assert!(a.lines().count() > 60);
        // Explaining changed no outcome and no usage.
        assert!(!a.contains("explain=DIFFERENT"), "{a}");
        assert!(a.contains("explain=same trace="));
    }
}
