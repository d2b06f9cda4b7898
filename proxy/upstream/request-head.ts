import type { IncomingHttpHeaders } from 'node:http';

export interface ForwardedFrom {
  /** The client's address, as the socket sees it. */
  remoteAddress: string | undefined;
  encrypted: boolean;
}

/**
 * Adds `X-Forwarded-For/-Port/-Proto` (appended to what earlier proxies wrote) and
 * `X-Forwarded-Host` (kept when an earlier proxy set it), as http-proxy's `xfwd` does.
 */
export function addForwardedHeaders(headers: IncomingHttpHeaders, from: ForwardedFrom): void {
  const host = headers.host ?? '';
  const values = {
    for: from.remoteAddress ?? '',
    port: /:(\d+)$/.exec(host)?.[1] ?? (from.encrypted ? '443' : '80'),
    proto: from.encrypted ? 'https' : 'http',
  };
  for (const [key, value] of Object.entries(values)) {
    const name = `x-forwarded-${key}`;
    const earlier = headers[name];
    headers[name] = earlier ? `${earlier},${value}` : value;
  }
  headers['x-forwarded-host'] ??= host;
}

/**
 * The HTTP/1.1 request head for the function, from headers that hold only end-to-end fields
 * (hop-by-hop ones already removed). Strings are latin1, as Node's parser produced them.
 */
export function requestHead(
  method: string,
  target: string,
  headers: IncomingHttpHeaders,
  options: { defaultHost: string; chunked: boolean },
): string {
  let head = `${method} ${target} HTTP/1.1\r\n`;
  if (headers.host === undefined) head += `host: ${options.defaultHost}\r\n`;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    if (typeof value === 'string') head += `${name}: ${value}\r\n`;
    else for (const item of value) head += `${name}: ${item}\r\n`;
  }
  if (options.chunked) head += 'transfer-encoding: chunked\r\n';
  return `${head}\r\n`;
}
