// An import map for ES modules from node_modules, for pages that load them with no
// bundler (the demo, tests/browser/text.mjs): every subpath a package exports, as its
// package.json's `exports` say for a browser (`browser`, `import`, `module`, `default`).
//
//   node .ci/importmap.mjs NODE_MODULES URL_PREFIX PACKAGE...   prints {"imports": ...}
//   COPY_TO=DIR node .ci/importmap.mjs ...   also copies the first package's entry and
//                                            every module it imports, under DIR
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

function pick(target) {
  if (typeof target === "string") return target;
  for (const c of ["browser", "import", "module", "default"]) {
    if (target && target[c] !== undefined) return pick(target[c]);
  }
  return null;
}

/** `{ specifier: url }` for `packages` in `modules`, their files under `prefix/NAME/`. */
export function importMap(modules, prefix, packages) {
  const imports = {};
  for (const name of packages) {
    const meta = JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8"));
    let exp = meta.exports || { ".": meta.module || meta.main };
    // A string, or conditions with no subpaths (`{ "import": ..., "require": ... }`),
    // is the package's main entry.
    if (typeof exp === "string" || !Object.keys(exp).some((k) => k.startsWith("."))) exp = { ".": exp };
    for (const [sub, target] of Object.entries(exp)) {
      const file = pick(target);
      if (!file || sub.includes("*") || !/\.m?js$/.test(file)) continue;
      imports[sub === "." ? name : `${name}/${sub.slice(2)}`] = `${prefix}/${name}/${normalize(file)}`;
    }
  }
  return imports;
}

/** Copies the file of `specifier` and every module it imports (by relative path or
 * through `imports`) under `dest`. */
function copyClosure(modules, dest, prefix, imports, specifier, seen) {
  const walk = (rel) => {
    if (seen.has(rel)) return;
    seen.add(rel);
    const to = join(dest, rel);
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(join(modules, rel), to);
    const src = readFileSync(join(modules, rel), "utf8");
    // Static imports and re-exports (`import(...)` in JSDoc types is not a module).
    for (const m of src.matchAll(/(?:\bfrom|^import)\s*['"]([^'"]+)['"]/gm)) {
      const spec = m[1];
      if (spec.startsWith(".")) walk(normalize(join(dirname(rel), spec)));
      else if (imports[spec]) walk(imports[spec].slice(prefix.length + 1));
    }
  };
  walk(imports[specifier].slice(prefix.length + 1));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [modules, prefix, ...packages] = process.argv.slice(2);
  const imports = importMap(modules, prefix, packages);
  if (process.env.COPY_TO) {
    copyClosure(modules, process.env.COPY_TO, prefix, imports, packages[0], new Set());
  }
  console.log(JSON.stringify({ imports }));
}
