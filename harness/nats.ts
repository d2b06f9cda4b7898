import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { type NatsAuthority, pushAccount, resolverConfig } from '../common/nats-auth.ts';
import { freePort, waitForPort } from '../common/net.ts';
import { NATS_SERVER, type Started, start } from './process.ts';

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

export interface NatsOptions {
  /** Runs as Sluice's clusters do: decentralised auth trusting this authority (see SecuredNats). */
  authority?: NatsAuthority;
  /** The same from a trust.conf text (what the operator's Secret holds). */
  trust?: string;
  /** Default: a free one. */
  port?: number;
}

/**
 * A real `nats-server -js` (the chart's version, built by scripts/tools.sh) on a loopback port with its own store. Locked
 * down (`authority` or `trust`), every client needs credentials and function accounts are pushed.
 */
export async function startNats(options: NatsOptions = {}): Promise<NatsServer> {
  const port = options.port ?? (await freePort());
  const storeDir = await mkdtemp(join(tmpdir(), 'sluice-nats-'));
  const args = ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir];
  const trust = options.trust ?? (await options.authority?.trustConfig());
  if (trust) {
    const config = join(storeDir, 'nats.conf');
    await writeFile(config, trust + resolverConfig(join(storeDir, 'accounts')));
    args.push('-c', config);
  }
  let output = '';
  let server: Started | undefined;
  const launch = async () => {
    const before = output;
    server = start(NATS_SERVER, args);
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

/** A NATS in operator mode with the keys to run it: what the operator holds in a cluster. */
export interface SecuredNats extends NatsServer {
  authority: NatsAuthority;
  /** Pushes `fn`'s account (as the operator does before its pods start), with `revocations` if given. */
  addFunction: (fn: string, revocations?: Record<string, number>) => Promise<void>;
  /** A client with `creds` (a .creds text); closed by stop(). */
  connectWith: (creds: string, name?: string) => Promise<NatsConnection>;
}

export async function startSecuredNats(authority: NatsAuthority): Promise<SecuredNats> {
  const nats = await startNats({ authority });
  const clients: NatsConnection[] = [];
  const connectWith = async (creds: string, name = 'test') => {
    const nc = await connect({
      servers: nats.url,
      name,
      authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
    });
    clients.push(nc);
    return nc;
  };
  let system: NatsConnection | undefined;
  return {
    ...nats,
    authority,
    connectWith,
    addFunction: async (fn, revocations) => {
      system ??= await connectWith((await authority.systemCredentials()).creds, 'system');
      await pushAccount(system, await authority.functionAccountJwt(fn, revocations));
    },
    stop: async () => {
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await nats.stop();
    },
  };
}
