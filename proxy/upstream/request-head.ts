import type { IncomingHttpHeaders } from 'node:http';
import { connectionListed, passesOn } from '../headers.ts';

/** What the request head for the function is made of: the client's request as Node parsed it. */
export interface ForwardedRequest {
  method: string;
  /** Origin-form target (path and query), as the function should see it. */
  url: string;
  headers: IncomingHttpHeaders;
  /** The client's address, as the socket sees it. */
  remoteAddress: string | undefined;
  encrypted: boolean;
}

export interface RequestHeadOptions {
  requestId: string;
  /** Host for a request that came without one (HTTP/1.0). */
  defaultHost: string;
  /** The body goes on chunked (it came without a length). */
  chunked: boolean;
}

// Rewritten below, from the client's values and this hop's.
const REWRITTEN = new Set([
  'x-request-id',
  'x-forwarded-for',
  'x-forwarded-port',
  'x-forwarded-proto',
  'x-forwarded-host',
  // Node answered `Expect: 100-continue` to the client already.
  'expect',
]);

/**
 * The HTTP/1.1 request head for the function, built without touching the request: end-to-end
 * fields only (RFC 9110 §7.6.1), `X-Request-Id`, and `X-Forwarded-For/-Port/-Proto` appended to
 * what earlier proxies wrote, `X-Forwarded-Host` kept when one set it (as http-proxy's `xfwd`).
 * Strings are latin1, as Node's parser produced them.
 */
export function requestHead(req: ForwardedRequest, options: RequestHeadOptions): string {
  const headers = req.headers;
  const listed = connectionListed(headers);
  let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
  // An HTTP/2 client names the host in :authority (pseudo-headers do not pass on).
  const host = headers.host ?? (headers[':authority'] as string | undefined);
  if (headers.host === undefined) head += `host: ${host ?? options.defaultHost}\r\n`;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || name.startsWith(':') || REWRITTEN.has(name) || !passesOn(name, value, listed))
      continue;
    if (typeof value === 'string') head += `${name}: ${value}\r\n`;
    else for (const item of value) head += `${name}: ${item}\r\n`;
  }
  head += `x-request-id: ${options.requestId}\r\n`;
  const hop = {
    for: req.remoteAddress ?? '',
    port: /:(\d+)$/.exec(host ?? '')?.[1] ?? (req.encrypted ? '443' : '80'),
    proto: req.encrypted ? 'https' : 'http',
  };
  for (const [key, value] of Object.entries(hop)) {
    const earlier = headers[`x-forwarded-${key}`];
    head += `x-forwarded-${key}: ${earlier ? `${earlier},${value}` : value}\r\n`;
  }
  head += `x-forwarded-host: ${headers['x-forwarded-host'] ?? host ?? ''}\r\n`;
  if (options.chunked) head += 'transfer-encoding: chunked\r\n';
  return `${head}\r\n`;
}
