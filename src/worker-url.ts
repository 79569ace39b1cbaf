// Worker entry points are compiled JavaScript. Under vitest the importing module is the .ts source,
// so point at the build output instead (`npm test` builds first).
export function workerUrl(relativeJs: string, from: string): URL {
  const url = new URL(relativeJs, from);
  if (from.endsWith('.ts')) return new URL(url.href.replace(/\/src\//, '/dist/'));
  return url;
}
