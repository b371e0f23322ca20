// Builds one version of the JavaScript `balance` projector into a Wasm component with
// componentize-js (its `componentize()` API; not the jco CLI).
//
// Usage, from anywhere: node plugins/balance-js/build.mjs v1|v2
// Output: plugins/target/js/balance_<version>.wasm. Other JavaScript guests of the repository
// (tests/hostile/) reuse it: node plugins/balance-js/build.mjs SOURCE.js OUTPUT.wasm. Installs the pinned npm packages
// (`npm ci`) when node_modules is missing, and does nothing when the output is newer than
// every input.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const [version, otherOutput] = process.argv.slice(2);
const bundled = ["v1", "v2"].includes(version) && otherOutput === undefined;
if (!bundled && (version === undefined || otherOutput === undefined)) {
  console.error("usage: node build.mjs v1|v2, or node build.mjs SOURCE.js OUTPUT.wasm");
  process.exit(2);
}

const source = bundled ? join(here, version, "projector.js") : resolve(version);
const wit = join(root, "wit");
const output = bundled ? join(root, "plugins", "target", "js", `balance_${version}.wasm`) : resolve(otherOutput);
const inputs = [source, join(here, "common.js"), join(here, "build.mjs"), join(here, "package-lock.json"), join(wit, "projector.wit")];

if (!existsSync(join(here, "node_modules", "@bytecodealliance", "componentize-js"))) {
  // `npm ci` would be the natural choice, but npm 11 refuses lock files that list
  // platform-specific optional packages without a version (npm/cli#4828); `npm install`
  // with `--no-save` installs the locked versions and leaves the lock file alone.
  console.error("balance-js: installing the pinned npm packages (npm install --no-save)");
  const npm = spawnSync("npm", ["install", "--no-save", "--no-audit", "--no-fund"], { cwd: here, stdio: ["ignore", "inherit", "inherit"] });
  if (npm.status !== 0) {
    console.error("balance-js: error: npm install failed; check that the npm registry is reachable");
    process.exit(1);
  }
}

const newest = Math.max(...inputs.map((file) => statSync(file).mtimeMs));
if (existsSync(output) && statSync(output).mtimeMs >= newest) {
  console.error(`balance-js: ${relative(root, output)} is up to date`);
  process.exit(0);
}

const { componentize } = await import("@bytecodealliance/componentize-js");
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  // Version 2 declares `partition-by` (its rows are keyed by account), so it targets the
  // world that exports it; the other guests built here target the plain `projector` world.
  worldName: version === "v2" && bundled ? "partitioned-projector" : "projector",
  // The host grants no network: leave out the engine's HTTP support and its imports.
  disableFeatures: ["http", "fetch-event"],
});
mkdirSync(dirname(output), { recursive: true });
writeFileSync(output, component);
console.error(`balance-js: built ${relative(root, output)} (${component.length} bytes)`);
