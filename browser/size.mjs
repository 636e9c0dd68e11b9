// Prints the size of wshub.js as shipped to a browser that gets it minified and gzipped:
// `node size.mjs` (or `npm run size`). Exits 1 above the 5 kB budget.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";

const BUDGET = 5 * 1024;
const path = new URL("../crates/wshub/assets/wshub.js", import.meta.url);
const source = readFileSync(path, "utf8");
const { code } = await transform(source, { minify: true, format: "esm", target: "es2022" });
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(
  `wshub.js: ${source.length} bytes source, ${code.length} minified, ${gzipped} minified+gzipped (budget ${BUDGET})`,
);
if (gzipped > BUDGET) {
  console.error(`wshub.js is over its ${BUDGET}-byte budget`);
  process.exit(1);
}
