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
function connectionListed(headers: IncomingHttpHeaders): Set<string> {
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

/** Removes hop-by-hop fields from a request in place before it is forwarded. */
export function stripHopByHop(headers: IncomingHttpHeaders): void {
  const listed = connectionListed(headers);
  for (const name of Object.keys(headers)) {
    // `TE: trailers` is the one TE value a proxy may pass on (RFC 9110 §10.1.4).
    if (name === 'te' && /^\s*trailers\s*$/i.test(String(headers.te))) continue;
    if (HOP_BY_HOP.has(name) || listed.has(name)) delete headers[name];
  }
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
