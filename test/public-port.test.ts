// The public port's two protocols on real sockets, in this process: the HTTP/1.1 server owns
// every connection and gives one that opens with the HTTP/2 preface to the HTTP/2 server.
import { createServer, type Server } from 'node:http';
import { connect as h2Connect } from 'node:http2';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { createH2PublicServer, createPublicPort, type PublicPort } from '../proxy/h2/public-port.ts';

const HEADERS_TIMEOUT_MS = 500;

let port: PublicPort | undefined;
afterEach(async () => {
  await port?.close();
  port = undefined;
});

/** A port whose handler answers with the protocol and path it saw; `accepted` holds the server's sockets. */
async function publicPort(): Promise<{ url: string; accepted: Socket[]; http1: Server }> {
  const handle = (req: { httpVersion: string; url?: string }, res: { end: (body: string) => void }) =>
    res.end(`${req.httpVersion} ${req.url}`);
  const http1 = createServer(
    { headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 50, requestTimeout: 0 },
    handle as never,
  );
  const accepted: Socket[] = [];
  http1.on('connection', (socket: Socket) => accepted.push(socket));
  port = createPublicPort({ http1, http2: createH2PublicServer(handle as never) });
  await new Promise<void>((resolve) => port!.server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(port.server.address() as AddressInfo).port}`, accepted, http1 };
}

/** One HTTP/2 GET on a session: the body. */
function h2Get(session: ReturnType<typeof h2Connect>, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': path });
    let body = '';
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => {
      body += d;
    });
    stream.on('end', () => resolve(body));
    stream.on('error', reject);
    stream.end();
  });
}

/** Raw bytes on a fresh connection: the first line of what comes back before it closes. */
function rawFirstLine(url: string, bytes: string): Promise<string> {
  const { hostname, port: p } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(p), hostname, () => {
      if (bytes) socket.write(bytes);
    });
    let text = '';
    socket.setEncoding('utf8').on('data', (d: string) => {
      text += d;
    });
    socket.on('close', () => resolve(text.split('\r\n')[0] ?? ''));
    socket.on('error', reject);
  });
}

describe('one port, HTTP/1.1 and h2c with prior knowledge', () => {
  it('serves both protocols, each request by the handler', async () => {
    const { url } = await publicPort();
    expect(await (await fetch(`${url}/one`)).text()).toBe('1.1 /one');
    const session = h2Connect(url);
    try {
      expect(await h2Get(session, '/two')).toBe('2.0 /two');
    } finally {
      session.close();
    }
  });

  // A client may send the preface in pieces; the server has read exactly the first piece
  // before the rest leaves.
  it.each([1, 10, 18, 23, 24])('takes an HTTP/2 preface whose first %i bytes came alone', async (split) => {
    const { url, accepted } = await publicPort();
    const { hostname, port: p } = new URL(url);
    const raw = connect(Number(p), hostname);
    raw.setNoDelay(true);
    let first = true;
    const piecewise = new Duplex({
      write(chunk: Buffer, _encoding, done) {
        if (!first) return void raw.write(chunk, done);
        first = false;
        raw.write(chunk.subarray(0, split));
        waitFor(() => accepted.length === 1 && accepted[0]!.bytesRead === split, {
          what: `the server to read ${split} bytes`,
        }).then(
          () => raw.write(chunk.subarray(split), done),
          (err: Error) => done(err),
        );
      },
      read() {},
    });
    raw.on('data', (d: Buffer) => piecewise.push(d));
    raw.on('end', () => piecewise.push(null));
    const session = h2Connect(url, { createConnection: () => piecewise as never });
    try {
      expect(await h2Get(session, '/split')).toBe('2.0 /split');
      expect(await h2Get(session, '/again')).toBe('2.0 /again');
    } finally {
      await new Promise<void>((resolve) => session.close(resolve));
      raw.destroy();
    }
  });

  it("an HTTP/2 connection is no longer the HTTP/1.1 server's: its headers timeout does not cut it", async () => {
    const { url, http1 } = await publicPort();
    const session = h2Connect(url);
    try {
      expect(await h2Get(session, '/first')).toBe('2.0 /first');
      // A silent HTTP/1.1 connection opened now is cut by that timeout; the HTTP/2 one is not.
      expect(await rawFirstLine(url, '')).toBe('HTTP/1.1 408 Request Timeout');
      expect(session.closed).toBe(false);
      expect(await h2Get(session, '/later')).toBe('2.0 /later');
      expect(await new Promise((resolve) => http1.getConnections((_e, n) => resolve(n)))).toBe(1);
    } finally {
      session.close();
    }
  });

  it("an HTTP/2 client that leaves (FIN) closes the server's side of its connection", async () => {
    const { url, http1 } = await publicPort();
    const { hostname, port: p } = new URL(url);
    const raw = connect(Number(p), hostname);
    const session = h2Connect(url, { createConnection: () => raw });
    session.on('error', () => {});
    expect(await h2Get(session, '/first')).toBe('2.0 /first');
    const connections = () => new Promise<number>((resolve) => http1.getConnections((_e, n) => resolve(n)));
    expect(await connections()).toBe(1);
    raw.end(); // FIN, as from a client process that exits
    await waitFor(async () => (await connections()) === 0, {
      what: "the server's side of the connection to close",
    });
    session.destroy();
  });

  it("answers what llhttp refuses as Node does, and a request that starts with 'P' is HTTP/1.1", async () => {
    const { url } = await publicPort();
    expect(await rawFirstLine(url, 'GARBAGE\r\n\r\n')).toBe('HTTP/1.1 400 Bad Request');
    expect(await rawFirstLine(url, 'POST /p HTTP/1.0\r\ncontent-length: 0\r\n\r\n')).toBe('HTTP/1.1 200 OK');
  });
});
