import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { type Started, startSluice } from '../harness/process.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { curl } from './support/proxy-harness.ts';

let fn: FunctionServer | undefined;
let proc: Started | undefined;
async function exitCode(started: Started): Promise<number | null> {
  if (started.child.exitCode !== null) return started.child.exitCode;
  const [code] = (await once(started.child, 'exit')) as [number | null];
  return code;
}

afterEach(async () => {
  await proc?.stop('SIGKILL');
  await fn?.close();
  proc = fn = undefined;
});

describe('sluice proxy (the command)', () => {
  it.each([
    {
      args: ['--concurrency', 'many'],
      env: {},
      line: /--concurrency \(SLUICE_CONCURRENCY\): expected a whole number/,
    },
    {
      args: [],
      env: { SLUICE_HEARTBEAT: '-5' },
      line: /--heartbeat \(SLUICE_HEARTBEAT\): must be at least 0/,
    },
    { args: ['--listen', 'localhost'], env: {}, line: /--listen \(SLUICE_LISTEN\): expected host:port/ },
    {
      args: [],
      env: { SLUICE_UPSTREAM: 'ftp://x' },
      line: /--upstream \(SLUICE_UPSTREAM\): expected an http:\/\/ URL/,
    },
    {
      args: ['--path-prefix', '/fn/'],
      env: {},
      line: /--path-prefix \(SLUICE_PATH_PREFIX\): must start with \/ and not end/,
    },
    {
      args: ['--auth-tokens-file', '/nonexistent'],
      env: {},
      line: /--auth-tokens-file \(SLUICE_AUTH_TOKENS_FILE\): cannot read "\/nonexistent" \(ENOENT\)/,
    },
    {
      args: [],
      env: { SLUICE_NATS_CREDENTIALS: '/nonexistent.creds' },
      line: /--nats-credentials \(SLUICE_NATS_CREDENTIALS\): cannot read "\/nonexistent.creds" \(ENOENT\)/,
    },
    {
      args: ['--nats-credentials', '/etc/hostname'],
      env: {},
      line: /--nats-credentials \(SLUICE_NATS_CREDENTIALS\): "\/etc\/hostname" is not a NATS .creds file/,
    },
    {
      args: ['--headers-timeout', '0'],
      env: {},
      line: /--headers-timeout \(SLUICE_HEADERS_TIMEOUT\): must be at least 1/,
    },
  ])('stops with exit 2 and one line naming $line', async ({ args, env, line }) => {
    proc = startSluice(['proxy', ...args], { env: { ...process.env, ...env } });
    expect(await exitCode(proc)).toBe(2);
    const lines = proc.output().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(line);
  });

  it('on SIGTERM: readiness fails, the stream drains, then ends with a shutdown event; exit 0', async () => {
    fn = await startFunctionServer();
    const [port, admin] = [await freePort(), await freePort()];
    // Configured through the SLUICE_* twins, as the operator's Deployment does.
    proc = startSluice(['proxy'], {
      env: {
        ...process.env,
        SLUICE_LISTEN: `127.0.0.1:${port}`,
        SLUICE_ADMIN: `127.0.0.1:${admin}`,
        SLUICE_UPSTREAM: fn.url,
        SLUICE_DRAIN: '1',
      },
    });
    await waitForPort(port);
    const client = curl(`http://127.0.0.1:${port}/stream`);
    const stream = await fn.nextStream();
    await stream.write('data: working\n\n');
    await waitFor(() => client.events().length === 1);
    proc.child.kill('SIGTERM');
    await waitFor(async () => (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 503, {
      what: 'readiness to fail',
    });
    expect(await client.exit).toBe(0);
    expect(client.events().map((e) => e.event)).toEqual([undefined, 'error']);
    expect(JSON.parse(client.events()[1]!.data).error.code).toBe('shutdown');
    expect(await exitCode(proc)).toBe(0);
    await stream.closed;
    const finished = proc
      .output()
      .split('\n')
      .filter((l) => l.includes('"request finished"'));
    expect(finished).toHaveLength(1);
    expect(JSON.parse(finished[0]!)).toMatchObject({ status: 200, events: 1, outcome: 'shutdown' });
  });
});
