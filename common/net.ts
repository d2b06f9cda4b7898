import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';

/** Ports handed out by this process: never handed out twice, even before anyone binds them. */
const handedOut = new Set<number>();

/** The kernel's ephemeral range (it picks ports for bind(0) and outgoing connections there). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 11_000 ? low : 32_768;
  } catch {
    return 32_768;
  }
}
const PORT_FLOOR = 10_000;
const PORT_CEILING = ephemeralLow();

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    // Every address, not loopback only: a test's process may listen on all of them (nats-server's
    // cluster port), and the plane holds fixed ports on its node address (the kubelet API, 10250).
    server.listen(port, () => server.close(() => resolve(true)));
  });
}

/**
 * A free loopback TCP port for a process that binds it later. Taken below the kernel's
 * ephemeral range: a port from bind(0) is released before its user binds it, and in that window
 * the kernel may hand the same port to anyone's outgoing connection or bind(0) (a proxy whose
 * public port another process had taken, seen under load). Here only another explicit chooser
 * can collide, which needs the same random pick inside that window; one process never gets a
 * port twice.
 */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < 1_000; tries++) {
    const port = PORT_FLOOR + Math.floor(Math.random() * (PORT_CEILING - PORT_FLOOR));
    if (handedOut.has(port) || !(await bindable(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port between ${PORT_FLOOR} and ${PORT_CEILING} after 1,000 tries`);
}

/**
 * Polls `check` until it returns a truthy value or `timeoutMs` passes; the condition, never a sleep.
 * `what` names the condition in the timeout error; a function is asked then, so it can say what it saw.
 */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  {
    timeoutMs = 10_000,
    intervalMs = 20,
    what = 'condition' as string | (() => string),
  }: { timeoutMs?: number; intervalMs?: number; what?: string | (() => string) } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const named = typeof what === 'function' ? what() : what;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${named}`, { cause: lastError });
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolves once something accepts TCP connections on host:port. */
export async function waitForPort(port: number, host = '127.0.0.1', timeoutMs = 15_000): Promise<void> {
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const socket = connect({ port, host });
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      }),
    { timeoutMs, what: `${host}:${port} to accept connections` },
  );
}
