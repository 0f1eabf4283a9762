// Writes the files of the package README's "Your first app" guide into a directory:
// every fenced block of that section whose info string names a file
// (```tsx title="src/App.tsx"), exactly as the guide shows it. .ci/test-package then
// runs the guide's commands on them, so the guide is the app CI builds.
//
//   node tests/package/extract-guide.mjs README.md DIR
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";

const [readme, dir] = process.argv.slice(2);
const text = readFileSync(readme, "utf8");
const start = text.indexOf("\n## Your first app");
if (start < 0) throw new Error(`${readme} has no "Your first app" section`);
const end = text.indexOf("\n## ", start + 1);
const section = text.slice(start, end < 0 ? undefined : end);
const written = [];
for (const m of section.matchAll(/^```[^\n]*title="([^"]+)"[^\n]*\n([\s\S]*?)^```$/gm)) {
  const file = normalize(m[1]);
  if (file.startsWith("..") || file.startsWith("/")) throw new Error(`a file outside the app: ${m[1]}`);
  mkdirSync(dirname(join(dir, file)), { recursive: true });
  writeFileSync(join(dir, file), m[2]);
  written.push(file);
}
if (written.length === 0) throw new Error("the guide names no files");
console.log(`the guide's files: ${written.join(", ")}`);
