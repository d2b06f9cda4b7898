import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

/** Hop-by-hop fields (RFC 9110 §7.6.1 plus the legacy ones proxies still see). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Field names the `Connection` header lists: hop-by-hop for this message only. */
export function connectionListed(headers: IncomingHttpHeaders): Set<string> {
  const listed = new Set<string>();
  for (const token of String(headers.connection ?? '').split(',')) {
    const name = token.trim().toLowerCase();
    if (name) listed.add(name);
  }
  return listed;
}

/** A copy of `headers` without hop-by-hop fields (they describe one connection, not the message). */
export function endToEndHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const listed = connectionListed(headers);
  const kept: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || listed.has(name)) continue;
    kept[name] = value;
  }
  return kept;
}

/** The request's host: `Host` for HTTP/1.1, `:authority` for HTTP/2. */
export function requestHost(req: { headers: IncomingHttpHeaders }): string | undefined {
  return req.headers.host ?? (req.headers[':authority'] as string | undefined);
}

/**
 * A request's end-to-end fields for an HTTP/1.1 request onwards, from an HTTP/1.1 or HTTP/2
 * request: pseudo-headers do not pass on, and HTTP/2's `:authority` becomes `Host`.
 */
export function http1RequestHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const kept = endToEndHeaders(headers);
  for (const name of Object.keys(kept)) if (name.startsWith(':')) delete kept[name];
  const host = requestHost({ headers });
  if (host !== undefined) kept.host = host;
  return kept;
}

/**
 * Response headers as received (`rawHeaders`: name, value, name, value...) without hop-by-hop
 * fields, names lower-cased, repeated fields kept as arrays.
 */
export function endToEndRawHeaders(rawHeaders: string[]): OutgoingHttpHeaders {
  let listed: Set<string> | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === 'connection') {
      listed = connectionListed({ connection: rawHeaders[i + 1] });
      break;
    }
  }
  const kept: Record<string, string | string[]> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    if (HOP_BY_HOP.has(name) || listed?.has(name)) continue;
    const value = rawHeaders[i + 1]!;
    const earlier = kept[name];
    if (earlier === undefined) kept[name] = value;
    else if (typeof earlier === 'string') kept[name] = [earlier, value];
    else earlier.push(value);
  }
  return kept;
}

/**
 * Whether a request field is passed on to the function: end-to-end fields are, hop-by-hop ones
 * (and those `Connection` lists) are not, except `TE: trailers`, the one TE value a proxy may
 * pass on (RFC 9110 §10.1.4).
 */
export function passesOn(name: string, value: string | string[], listed: Set<string>): boolean {
  if (name === 'te') return /^\s*trailers\s*$/i.test(String(value));
  return !HOP_BY_HOP.has(name) && !listed.has(name);
}

/** Why a request target is refused, or undefined when it is origin-form (`/path?query`). */
export function refusedTarget(method: string | undefined, url: string | undefined): string | undefined {
  if (method === 'CONNECT') return 'CONNECT is not supported: this is not an open proxy';
  if (!url?.startsWith('/')) return `request target must be a path (origin-form), got ${JSON.stringify(url)}`;
  if (url.startsWith('//')) return 'request target must not start with //';
  return undefined;
}

/**
 * Strips `prefix` (the ingress path) when the request path is the prefix or below it, so the
 * function sees paths relative to its ingress path; other paths pass unchanged.
 */
export function stripPathPrefix(url: string, prefix: string): string {
  if (prefix === '' || !url.startsWith(prefix)) return url;
  const rest = url.slice(prefix.length);
  if (rest === '') return '/';
  if (rest.startsWith('/')) return rest;
  if (rest.startsWith('?')) return `/${rest}`;
  return url; // e.g. /echoes under the prefix /echo
}

/** The path part of an origin-form target, without the query. */
export function pathOf(url: string): string {
  const query = url.indexOf('?');
  return query === -1 ? url : url.slice(0, query);
}
