//! `warren codegen ts` (`warren_core::codegen::typescript`): what each declared type
//! becomes in TypeScript. The generated file is type-checked against the npm package
//! by `.ci/test-types`.

use warren_core::codegen::typescript;
use warren_core::Schema;

const SCHEMA: &str = r#"
collection Team { field name: string allow read true }
collection Task {
  field team: ref Team
  field title: string(nonblank, ..200)
  field n: int
  field size?: float
  field at: time
  field tags?: [string]
  field meta: { by: string, "odd key"?: bool, list: [{ x: int }] }
  field extra: any
  field notes: text
  index byTeam [team, at]
  index byMeta [meta.by]
  allow read true
}
collection Loose { allow read true }
collection Value { allow read true }
function add(team: ref Team, title: string, n?: int, untyped) {
  Task.create({ team, title, n: n ?? 0, at: now(), meta: { by: "x", list: [] }, extra: untyped })
}
function nothing() { 1 }
"#;

#[test]
fn each_type_becomes_its_typescript() {
    let out = typescript(&Schema::parse(SCHEMA).unwrap());
    let want = [
        "export interface Task {",
        "  team: string;",
        "  /** string(nonblank, ..200) */\n  title: string;",
        "  n: number;",
        "  size?: number | null;",
        "  at: number;",
        "  tags?: string[] | null;",
        "  meta: { by: string; \"odd key\"?: boolean | null; list: Array<{ x: number }> };",
        "  extra: Value;",
        "  notes: string;",
        "export type Loose = Record<string, Value>;",
        // A collection named like one of the module's own names.
        "export type ValueDoc = Record<string, Value>;",
        "        byMeta: [meta_by: Value];",
        "        byTeam: [team: string, at: number];",
        "    add: { args: { team: string; title: string; n?: number | null; untyped?: Value }; result: Task & { id: string } };",
        "    nothing: { args: {}; result: unknown };",
        "import type { Value } from \"warren\";",
        "readonly __warrenSchema: true;",
    ];
    for w in want {
        assert!(out.contains(w), "missing {w:?} in:\n{out}");
    }
}
