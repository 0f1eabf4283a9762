//! The names of the built-in functions.
//!
//! The table lives with the language rather than the evaluator because the schema
//! needs it too (a schema function may not take a built-in's name), and the schema
//! must not depend on the evaluator. `docs/LANGUAGE.md` documents every name, and
//! `eval::builtins` implements them.

/// Every built-in's name, sorted.
pub const BUILTINS: &[&str] = &[
    "abort",
    "abs",
    "append",
    "asc",
    "ceil",
    "concat",
    "desc",
    "distinct",
    "endsWith",
    "entries",
    "every",
    "filter",
    "find",
    "first",
    "flatten",
    "floor",
    "fromEntries",
    "has",
    "includes",
    "indexOf",
    "isEmpty",
    "join",
    "keys",
    "last",
    "length",
    "lower",
    "map",
    "max",
    "merge",
    "min",
    "newId",
    "now",
    "order",
    "partitionOf",
    "pow",
    "range",
    "reduce",
    "repeat",
    "replace",
    "reverse",
    "round",
    "skip",
    "slice",
    "some",
    "sort",
    "split",
    "sqrt",
    "startsWith",
    "sum",
    "take",
    "toFloat",
    "toInt",
    "toString",
    "trim",
    "typeOf",
    "upper",
    "values",
    "versionOf",
    "where",
    "without",
];

/// Whether `name` is a built-in.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_is_sorted_and_unique() {
        let mut sorted = BUILTINS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, BUILTINS);
    }
}
