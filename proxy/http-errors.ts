import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';

/**
 * Every error the proxy answers itself is JSON `{"error":{"code","message"}}`, so clients can
 * branch on `code` whatever the status. Used by the map service too.
 */
export function sendJsonError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  headers: OutgoingHttpHeaders = {},
): void {
  if (res.headersSent) {
    // Too late for a status line: the caller decides how to end a started response.
    return;
  }
  const body = JSON.stringify({ error: { code, message } });
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}
