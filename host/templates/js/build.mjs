// Builds projector.js into dist/{{ident}}.wasm with componentize-js (`zdr plugin build` runs
// this). Installs the npm packages pinned in package-lock.json first when node_modules is
// missing.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, "node_modules", "@bytecodealliance", "componentize-js"))) {
  // `npm ci` would be the natural choice, but npm 11 refuses lock files that list
  // platform-specific optional packages without a version (npm/cli#4828); `npm install`
  // with `--no-save` installs the locked versions and leaves the lock file alone.
  const npm = spawnSync("npm", ["install", "--no-save", "--no-audit", "--no-fund"], { cwd: here, stdio: ["ignore", 2, 2] });
  if (npm.status !== 0) {
    console.error("error: npm could not install componentize-js; check that the npm registry is reachable");
    process.exit(1);
  }
}
const { componentize } = await import("@bytecodealliance/componentize-js");
const { component } = await componentize({
  sourcePath: join(here, "projector.js"),
  witPath: join(here, "wit"),
  worldName: "projector",
  // The host grants no network: leave out the engine's HTTP support.
  disableFeatures: ["http", "fetch-event"],
});
mkdirSync(join(here, "dist"), { recursive: true });
writeFileSync(join(here, "dist", "{{ident}}.wasm"), component);
console.error(`built dist/{{ident}}.wasm (${component.length} bytes)`);
