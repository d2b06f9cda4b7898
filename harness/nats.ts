import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from '../common/net.ts';
import { type Started, start } from './process.ts';

export interface NatsServer {
  url: string;
  port: number;
  /** JetStream's store directory: kept across restart(), removed by stop(). */
  storeDir: string;
  output: () => string;
  /** The running server's process id (undefined while paused). */
  pid: () => number | undefined;
  /** Stops the server (SIGTERM by default; SIGKILL for a crash) and starts it again, same port and store. */
  restart: (signal?: NodeJS.Signals) => Promise<void>;
  /** Stops it without starting again (a lasting outage); `resume()` brings it back. */
  pause: (signal?: NodeJS.Signals) => Promise<void>;
  resume: () => Promise<void>;
  stop: () => Promise<void>;
}

/** A real `nats-server -js` (the Debian package) on a free loopback port with its own store. */
export async function startNats(): Promise<NatsServer> {
  const port = await freePort();
  const storeDir = await mkdtemp(join(tmpdir(), 'sluice-nats-'));
  let output = '';
  let server: Started | undefined;
  const launch = async () => {
    const before = output;
    server = start('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir]);
    const current = server;
    output = before;
    current.child.stdout?.on('data', (d: Buffer) => {
      output += d.toString();
    });
    current.child.stderr?.on('data', (d: Buffer) => {
      output += d.toString();
    });
    await waitForPort(port);
  };
  await launch();
  const pause = async (signal: NodeJS.Signals = 'SIGTERM') => {
    await server?.stop(signal);
    server = undefined;
  };
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    output: () => output,
    pid: () => server?.child.pid,
    pause,
    resume: launch,
    restart: async (signal) => {
      await pause(signal);
      await launch();
    },
    stop: async () => {
      await pause();
      await rm(storeDir, { recursive: true, force: true });
    },
  };
}
