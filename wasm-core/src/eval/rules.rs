//! Rules: who may read a partition, and whether a write is allowed.
//!
//! Rules are the schema's code, not the program's, and what they read is often what
//! the caller may not see (a team's member list, another user's partition). So a rule
//! runs on a budget of its own: [`super::Limits::rule_fuel`] steps and
//! [`super::Limits::rule_memory_bytes`] bytes, fresh for each evaluation, and none of
//! it is charged to the program. The steps a rule takes count instead as hidden work
//! ([`super::Limits::max_hidden_work`]).
//!
//! - A read rule that fails or runs out of its budget denies: the partition is
//!   invisible. That is the one answer that is the same whether or not the partition
//!   holds anything, and the client, which only ever holds readable partitions,
//!   evaluates the same rule with the same budget.
//! - A write rule that fails or runs out of its budget denies too. The denial names the
//!   rule but never says why it did not allow the write: a rule's error could carry
//!   what the caller may not read.

use std::rc::Rc;

use super::{bind_static, Data, Env, Evaluator, Meter, Mode, Val};
use crate::error::{Error, ErrorCode};
use crate::explain::RuleOutcome;
use crate::lang::ast::Action;
use crate::schema::Collection;
use crate::value::Value;

/// What the cache of read-rule answers may hold: beyond it, answers are computed again
/// (each time as hidden work), so no scan can grow the evaluator's memory with it.
const READABLE_CACHE_ENTRIES: usize = 4096;
const READABLE_CACHE_BYTES: usize = 1 << 20;

/// Puts the key of a read-rule answer into `buf`: `collection NUL partition` (a
/// collection's name holds no NUL, so no two pairs give one key). One string rather
/// than a pair, so that a lookup can reuse a buffer and allocate nothing.
pub(crate) fn readable_key(buf: &mut String, coll: &str, partition: &str) {
    buf.clear();
    buf.push_str(coll);
    buf.push('\0');
    buf.push_str(partition);
}

/// The variables a write rule sees (each made once, shared by every rule).
pub(super) struct WriteVars<'v> {
    /// The document after the write with its `id` (`doc` and `new`), if it stays.
    pub new: Option<&'v Data>,
    /// The document before the write with its `id`, if it existed.
    pub old: Option<&'v Data>,
    pub id: &'v str,
    pub partition: &'v str,
}

/// What was saved while a rule runs.
struct Saved {
    fuel: u64,
    meter: Rc<Meter>,
    mode: Mode,
}

impl<'a> Evaluator<'a> {
    /// Starts a rule's budget: fresh fuel and memory, unfiltered reads, no writes.
    fn rule_start(&mut self) -> Saved {
        let saved = Saved {
            fuel: self.fuel,
            meter: self.meter.clone(),
            mode: self.mode,
        };
        if self.program_fuel.is_none() {
            self.program_fuel = Some(self.fuel);
        }
        self.fuel = self.limits.rule_fuel;
        self.meter = Meter::new(self.limits.rule_memory_bytes, "a rule");
        self.mode = Mode::Rule;
        saved
    }

    /// Ends a rule's budget; its steps count as hidden work.
    fn rule_end(&mut self, saved: Saved) -> Result<(), Error> {
        let steps = self.limits.rule_fuel - self.fuel;
        self.fuel = saved.fuel;
        self.meter = saved.meter;
        self.mode = saved.mode;
        if self.mode != Mode::Rule {
            self.program_fuel = None;
        }
        self.hidden_work(steps.max(1))
    }

    /// Runs `f` on a rule's budget (or, inside a rule already, on that rule's).
    pub(super) fn on_rule_budget<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.mode == Mode::Rule {
            return f(self);
        }
        let saved = self.rule_start();
        let r = f(self);
        self.rule_end(saved)?;
        r
    }

    /// Whether the program may see documents of `coll` in `partition`. Costs the
    /// program nothing (see the module documentation).
    pub(crate) fn can_read(&mut self, coll: &Collection, partition: &str) -> Result<bool, Error> {
        if self.mode == Mode::Rule {
            return Ok(true);
        }
        readable_key(&mut self.readable_key, &coll.name, partition);
        if let Some(ok) = self.readable.get(&self.readable_key) {
            return Ok(*ok);
        }
        let root = self.root_env()?;
        if let Some(x) = &mut self.explain {
            x.begin(Action::Read, &coll.name, partition, None);
        }
        let ok = self.on_rule_budget(|ev| {
            let p = ev.string(partition.len(), || partition.to_owned())?;
            let c = ev.string(coll.name.len(), || coll.name.clone())?;
            let env = bind_static(&root, "partition", p, ev.binding()?);
            let env = bind_static(&env, "collection", c, ev.binding()?);
            Ok(ev.any_rule_allows(coll, Action::Read, &env)?.is_ok())
        });
        // A storage failure is not an answer; anything else the rule met is a denial.
        let ok = match ok {
            Ok(ok) => ok,
            Err(e) if !e.code.is_deterministic() || e.code == ErrorCode::HiddenWorkExhausted => {
                return Err(e)
            }
            Err(_) => false,
        };
        if let Some(x) = &mut self.explain {
            x.end(ok);
        }
        let bytes = coll.name.len() + partition.len();
        if self.readable.len() < READABLE_CACHE_ENTRIES
            && self.readable_bytes + bytes <= READABLE_CACHE_BYTES
        {
            self.readable_bytes += bytes;
            self.readable.insert(self.readable_key.clone(), ok);
        }
        Ok(ok)
    }

    /// Checks the write rules for `action`; `Ok(Err(message))` when they deny.
    pub(super) fn check_write_rules(
        &mut self,
        coll: &Collection,
        action: Action,
        vars: WriteVars<'_>,
    ) -> Result<Result<(), String>, Error> {
        let mut env = self.root_env()?;
        if let Some(x) = &mut self.explain {
            x.begin(action, &coll.name, vars.partition, Some(vars.id));
        }
        let r = self.on_rule_budget(|ev| {
            // Shared with the write, not copied: the program paid for them.
            let new = vars.new.map_or(Val::NULL, |d| Val::Data(d.clone()));
            let old = vars.old.map_or(Val::NULL, |d| Val::Data(d.clone()));
            let doc = if vars.new.is_some() {
                new.clone()
            } else {
                old.clone()
            };
            env = bind_static(&env, "doc", doc, ev.binding()?);
            env = bind_static(&env, "new", new, ev.binding()?);
            env = bind_static(&env, "old", old, ev.binding()?);
            let p = vars.partition;
            let p = ev.string(p.len(), || p.to_owned())?;
            env = bind_static(&env, "partition", p, ev.binding()?);
            let c = &coll.name;
            let c = ev.string(c.len(), || c.clone())?;
            env = bind_static(&env, "collection", c, ev.binding()?);
            ev.any_rule_allows(coll, action, &env)
        });
        if let Some(x) = &mut self.explain {
            x.end(matches!(r, Ok(Ok(()))));
        }
        match r {
            Ok(r) => Ok(r),
            Err(e) if !e.code.is_deterministic() || e.code == ErrorCode::HiddenWorkExhausted => {
                Err(e)
            }
            // Setting up the rule's variables ran out of its memory: a denial.
            Err(_) => Ok(Err(format!(
                "the `allow {}` rules of {} did not allow it (of {})",
                action.as_str(),
                coll.name,
                vars.id
            ))),
        }
    }

    /// Evaluates the rules for `action` in `env` (inside a rule's budget):
    /// `Ok(Ok(()))` when one allows, `Ok(Err(message))` when none does. The message
    /// names the rules, never why they did not allow.
    fn any_rule_allows(
        &mut self,
        coll: &Collection,
        action: Action,
        env: &Env,
    ) -> Result<Result<(), String>, Error> {
        let Some(rules) = coll.rules.get(&action) else {
            return Ok(Err(format!(
                "collection {} has no `allow {}` rule",
                coll.name,
                action.as_str()
            )));
        };
        for r in rules {
            // Each alternative gets the whole budget.
            self.hidden_work(self.limits.rule_fuel - self.fuel)?;
            self.fuel = self.limits.rule_fuel;
            if let Some(x) = &mut self.explain {
                x.rule_start(r.pos);
            }
            let v = self.eval(&r.expr, env);
            let allows = matches!(&v, Ok(v) if self.truthy(v));
            if let Some(x) = &mut self.explain {
                x.rule_end(match &v {
                    Ok(_) if allows => RuleOutcome::Allow,
                    Ok(_) => RuleOutcome::Deny,
                    Err(e) => RuleOutcome::Fail {
                        code: e.code,
                        message: Some(e.message.clone()),
                    },
                });
            }
            match v {
                Ok(_) if allows => return Ok(Ok(())),
                Ok(_) => {}
                Err(e)
                    if !e.code.is_deterministic() || e.code == ErrorCode::HiddenWorkExhausted =>
                {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
        let at: Vec<String> = rules.iter().map(|r| r.pos.to_string()).collect();
        Ok(Err(format!(
            "no `allow {}` rule allowed it (rules at {})",
            action.as_str(),
            at.join(", ")
        )))
    }

    /// The partition of a document (`doc`: its fields with `id`), computed by the
    /// collection's partition expression on a rule's budget.
    pub(super) fn partition_of(&mut self, coll: &Collection, doc: &Data) -> Result<String, Error> {
        let Some(expr) = &coll.partition else {
            return Ok(coll.name.clone());
        };
        let root = self.root_env()?;
        let r = self.on_rule_budget(|ev| {
            let env = bind_static(&root, "doc", Val::Data(doc.clone()), ev.binding()?);
            let v = ev.eval(expr, &env)?;
            Ok(match v.value() {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(other) => Err(crate::text::preview(other)),
                None => Err(v.kind().to_owned()),
            })
        });
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(what)) => Err(super::type_err(format!(
                "the partition expression of {} must give a non-empty string, not {}",
                coll.name, what
            ))),
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::FuelExhausted
                        | ErrorCode::MemoryExhausted
                        | ErrorCode::DepthExceeded
                ) && e.code.is_deterministic() =>
            {
                Err(Error {
                    message: format!(
                        "the partition expression of {} ran out of its budget: {}",
                        coll.name, e.message
                    ),
                    ..e
                })
            }
            Err(e) => Err(e),
        }
    }
}

impl<'a> Evaluator<'a> {
    /// Evaluates `expr` as a part of a read rule: unfiltered reads, `auth` and `vars`
    /// bound. The read-rule index (`crate::reach`) evaluates the parts of a rule that
    /// name partitions with it.
    pub(crate) fn eval_rule_part(
        &mut self,
        expr: &crate::lang::ast::Expr,
        vars: Vec<(&'static str, Value)>,
    ) -> Result<Value, Error> {
        let root = self.root_env()?;
        self.on_rule_budget(|ev| {
            let mut env = root;
            for (k, v) in vars {
                let val = ev.copy(&v)?;
                env = bind_static(&env, k, val, ev.binding()?);
            }
            let v = ev.eval(expr, &env)?;
            ev.materialize(v)
        })
    }
}
