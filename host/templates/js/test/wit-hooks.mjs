// Module hooks for the tests: the host's `zdr:projector/…` imports exist only inside zdr, so
// under Node they resolve to the fakes in fake-host.mjs.
export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith("zdr:projector/")) {
    return { url: new URL("./fake-host.mjs", import.meta.url).href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
