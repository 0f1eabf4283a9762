//! Rules: who may read a partition, and whether a write is allowed.

use super::{bind_static, Evaluator, Mode, Val};
use crate::error::{Error, ErrorCode};
use crate::lang::ast::Action;
use crate::schema::Collection;
use crate::value::Value;

impl<'a> Evaluator<'a> {
    /// Whether the program may see documents of `coll` in `partition`.
    pub(crate) fn can_read(&mut self, coll: &Collection, partition: &str) -> Result<bool, Error> {
        if self.mode == Mode::Rule {
            return Ok(true);
        }
        let key = (coll.name.clone(), partition.to_owned());
        if let Some(ok) = self.readable.get(&key) {
            return Ok(*ok);
        }
        let mut vars = vec![("partition", Value::String(partition.to_owned()))];
        vars.push(("collection", Value::String(coll.name.clone())));
        let ok = self.check_rules(coll, Action::Read, vars)?.is_ok();
        self.readable.insert(key, ok);
        Ok(ok)
    }

    /// Evaluates the rules for `action`; `Ok(Err(message))` when they deny.
    pub(super) fn check_rules(
        &mut self,
        coll: &Collection,
        action: Action,
        vars: Vec<(&'static str, Value)>,
    ) -> Result<Result<(), String>, Error> {
        let Some(rules) = coll.rules.get(&action) else {
            return Ok(Err(format!(
                "collection {} has no `allow {}` rule",
                coll.name,
                action.as_str()
            )));
        };
        let mut env = self.root_env();
        for (k, v) in vars {
            env = bind_static(&env, k, Val::Data(v));
        }
        let saved = self.mode;
        self.mode = Mode::Rule;
        let mut last_err = String::new();
        let mut allowed = false;
        for r in rules {
            match self.eval(&r.expr, &env) {
                Ok(v) => {
                    if self.truthy(&v) {
                        allowed = true;
                        break;
                    }
                    last_err = format!("rule `allow {}` at {} is false", action.as_str(), r.pos);
                }
                // Running out of budget is not a denial: it ends the whole evaluation.
                Err(e) if matches!(e.code, ErrorCode::FuelExhausted | ErrorCode::DepthExceeded) => {
                    self.mode = saved;
                    return Err(e);
                }
                Err(e) if !e.code.is_deterministic() => {
                    self.mode = saved;
                    return Err(e);
                }
                Err(e) => {
                    last_err = format!("rule `allow {}` at {} failed: {e}", action.as_str(), r.pos);
                }
            }
        }
        self.mode = saved;
        Ok(if allowed { Ok(()) } else { Err(last_err) })
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
        let mut env = self.root_env();
        for (k, v) in vars {
            env = bind_static(&env, k, Val::Data(v));
        }
        let saved = self.mode;
        self.mode = Mode::Rule;
        let r = self.eval(expr, &env).and_then(|v| self.materialize(v));
        self.mode = saved;
        r
    }
}
