import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { endToEndHeaders } from '../headers.ts';

/** What the function's request is built from: an HTTP/1.1 or an HTTP/2 request on the public port. */
export interface ForwardedRequest {
  method: string;
  /** The path the function sees (the ingress prefix already stripped). */
  url: string;
  headers: IncomingHttpHeaders;
  remoteAddress: string | undefined;
}

/**
 * The HTTP/2 request headers for the function: `:method`, `:path`, `:scheme`, `:authority` (the
 * client's, so the function sees the host it was called by), every end-to-end field (`te:
 * trailers` included: gRPC servers require it), and X-Forwarded-For/-Proto/-Host as the
 * HTTP/1.1 path adds them.
 */
export function upstreamRequestHeaders(req: ForwardedRequest): OutgoingHttpHeaders {
  const { headers } = req;
  const authority = headers[':authority'] ?? headers.host;
  const out: OutgoingHttpHeaders = {};
  const te = headers.te;
  for (const [name, value] of Object.entries(endToEndHeaders(headers))) {
    // Expect: 100-continue was answered to the client already (Node does that itself).
    if (name.startsWith(':') || name === 'host' || name === 'expect') continue;
    out[name] = value;
  }
  if (typeof te === 'string' && /^\s*trailers\s*$/i.test(te)) out.te = 'trailers';
  out[':method'] = req.method;
  out[':path'] = req.url;
  out[':scheme'] = 'http';
  if (authority) {
    out[':authority'] = authority;
    out['x-forwarded-host'] ??= authority;
  }
  if (req.remoteAddress) {
    const before = headers['x-forwarded-for'];
    out['x-forwarded-for'] = before ? `${before}, ${req.remoteAddress}` : req.remoteAddress;
  }
  out['x-forwarded-proto'] ??= 'http';
  return out;
}

/** Response headers or trailers from the function, as the client gets them: no pseudo-headers, no hop-by-hop fields. */
export function downstreamHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out = endToEndHeaders(headers);
  for (const name of Object.keys(out)) if (name.startsWith(':')) delete out[name];
  return out;
}
