/**
 * The one normal form of a request path, made once before routing and --path-prefix stripping,
 * so that what the proxy routes and what the function receives are the same path: a function
 * that decodes or resolves its path itself ends up where the proxy thought it was going.
 *
 * - percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) and `/` are
 *   decoded (`%2e%2e` is `..`, `%2F` is `/`, `%5f` is `_`), repeatedly, so none is left for the
 *   function to decode; other encodings stay as they are;
 * - repeated slashes collapse into one;
 * - `.` and `..` segments are resolved (RFC 3986 §5.2.4); `..` never climbs above `/`.
 *
 * The query is passed on untouched.
 */
const DECODED = /%(2[dDeEfF]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])/g;

/** Until nothing changes: `%%32%65` decodes to `%2e`, which must not be left for the function to decode. */
function decodeSafe(path: string): string {
  for (;;) {
    const decoded = path.replace(DECODED, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
    if (decoded === path) return path;
    path = decoded;
  }
}

/** RFC 3986 §5.2.4 remove_dot_segments on an absolute path whose slashes are already single. */
function resolveDots(path: string): string {
  const out: string[] = [];
  const segments = path.split('/').slice(1); // the path starts with '/'
  segments.forEach((segment, i) => {
    const last = i === segments.length - 1;
    if (segment === '.' || segment === '..') {
      if (segment === '..') out.pop();
      // A trailing dot segment names the directory: keep its slash (`/a/b/..` is `/a/`).
      if (last) out.push('');
    } else {
      out.push(segment);
    }
  });
  return `/${out.join('/')}`;
}

/** The normal form of an origin-form target (`/path?query`). */
export function normaliseTarget(target: string): string {
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q);
  return resolveDots(decodeSafe(path).replace(/\/{2,}/g, '/')) + query;
}
