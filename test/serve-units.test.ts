import { createServer, type Server } from 'node:http';
import type { AddressInfo, Server as NetServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type Backend, createFront, pickBackend } from '../cli/serve-front.ts';
import {
  functionCommand,
  functionEnv,
  ManifestError,
  parseManifest,
  proxyArgs,
} from '../cli/serve-manifest.ts';
import { formatNatsLine, formatPinoLine } from '../cli/serve-process.ts';
import { freePort, waitFor } from '../common/net.ts';

const manifest = (spec: string, name = 'fn') =>
  `apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\nmetadata:\n  name: ${name}\nspec:\n${spec}`;

describe('pickBackend', () => {
  const b = (name: string, inFlight: number, ready = true): Backend => ({ name, port: 1, ready, inFlight });
  it.each([
    ['least in flight wins', [b('a', 3), b('b', 1), b('c', 2)], 0, 'b'],
    ['ties rotate with the turn (0)', [b('a', 0), b('b', 0)], 0, 'a'],
    ['ties rotate with the turn (1)', [b('a', 0), b('b', 0)], 1, 'b'],
    ['a replica that is not ready is skipped', [b('a', 0, false), b('b', 5)], 0, 'b'],
    ['none ready: any, so the proxy answers 502 itself', [b('a', 2, false), b('b', 1, false)], 0, 'b'],
  ])('%s', (_what, backends, turn, expected) => {
    expect(pickBackend(backends, turn)?.name).toBe(expected);
  });

  it('no backends: undefined', () => {
    expect(pickBackend([], 0)).toBeUndefined();
  });
});

describe('parseManifest', () => {
  it('applies the CRD defaults', () => {
    const fn = parseManifest(manifest('  image: x\n  command: [node, s.js]\n'), 'f.yaml');
    expect(fn.spec.scaling.concurrency).toBe(8);
    expect(fn.spec.streaming.heartbeatSeconds).toBe(15);
    expect(fn.spec.map.path).toBe('/');
  });

  it('picks the StreamingFunction out of a multi-document file', () => {
    const source = `apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n${manifest('  image: x\n')}`;
    expect(parseManifest(source, 'f.yaml').metadata.name).toBe('fn');
  });

  it.each([
    ['  image: x\n  env:\n    - {name: "1bad", value: v}\n', 'spec.env[0].name:'],
    ['  image: x\n  scaling: {minReplicas: 3, maxReplicas: 1}\n', 'minReplicas must not exceed maxReplicas'],
    ['  image: x\n  port: 8080\n', 'spec.port:'],
    ['  image: x\n  unknownField: 1\n', 'unknownField'],
  ])('refuses %j naming %s', (spec, expected) => {
    let error: unknown;
    try {
      parseManifest(manifest(spec), 'f.yaml');
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ManifestError);
    expect((error as ManifestError).code).toBe('ERR_MANIFEST');
    expect((error as ManifestError).problems.join('\n')).toContain(expected);
  });

  it('refuses a file with no StreamingFunction', () => {
    expect(() => parseManifest('apiVersion: v1\nkind: Secret\n---\nkind: ConfigMap\n', 'f.yaml')).toThrow(
      /no StreamingFunction in the file/,
    );
  });
});

describe('what serve runs', () => {
  const fn = parseManifest(
    manifest(
      [
        '  image: x',
        '  command: [python3]',
        '  args: [server.py, --fast]',
        '  env:',
        '    - {name: A, value: "1"}',
        '    - name: TOKEN',
        '      valueFrom: {secretKeyRef: {name: s, key: k}}',
        '  scaling: {concurrency: 3, queueTimeoutSeconds: 7}',
        '  streaming: {heartbeatSeconds: 5, idleTimeoutSeconds: 60, maxDurationSeconds: 120}',
        '  map: {path: /work, ackWaitSeconds: 9, maxDeliver: 2, resultRetentionSeconds: 99}',
        '  ingress: {path: /api/fn}',
        '',
      ].join('\n'),
    ),
    'f.yaml',
  );

  it('the command after -- wins over spec.command/args', () => {
    expect(functionCommand(fn, [], 'f.yaml')).toEqual(['python3', 'server.py', '--fast']);
    expect(functionCommand(fn, ['node', 'x.js'], 'f.yaml')).toEqual(['node', 'x.js']);
  });

  it('literal env values pass on; valueFrom ones are named for the user', () => {
    expect(functionEnv(fn)).toEqual({ env: { A: '1' }, fromCluster: ['TOKEN'] });
  });

  it("the proxy gets the spec's settings as flags", () => {
    const args = proxyArgs(
      fn,
      { name: 'fn-0', listenPort: 1001, adminPort: 1002, functionPort: 1003 },
      'nats://n:4222',
    );
    expect(args).toEqual([
      'proxy',
      '--listen=127.0.0.1:1001',
      '--admin=127.0.0.1:1002',
      '--upstream=http://127.0.0.1:1003',
      '--concurrency=3',
      '--queue-timeout=7',
      '--heartbeat=5',
      '--idle-timeout=60',
      '--max-duration=120',
      '--drain=3',
      '--function=default/fn',
      '--path-prefix=/api/fn',
      '--nats=nats://n:4222',
      '--map-path=/work',
      '--map-ack-wait=9',
      '--map-max-deliver=2',
      '--map-retention=99',
      '--replica=fn-0',
    ]);
  });
});

describe('formatPinoLine', () => {
  it.each([
    [
      '{"level":30,"time":"t","pid":1,"hostname":"h","component":"proxy","msg":"request finished","status":200,"path":"/x"}',
      'info request finished status=200 path=/x',
    ],
    ['{"level":50,"msg":"boom","err":{"message":"m"}}', 'error boom err={"message":"m"}'],
    ['plain text', 'plain text'],
    ['{"no":"msg"}', '{"no":"msg"}'],
  ])('%s', (line, expected) => {
    expect(formatPinoLine(line)).toBe(expected);
  });
});

describe('formatNatsLine', () => {
  it.each([
    ['[1] 2026/11/21 [INF] Starting nats-server', 'info', undefined],
    ['[1] 2026/11/21 [WRN] Disk low', 'info', '[1] 2026/11/21 [WRN] Disk low'],
    ['[1] 2026/11/21 [ERR] boom', 'info', '[1] 2026/11/21 [ERR] boom'],
    ['[1] 2026/11/21 [INF] Starting nats-server', 'debug', '[1] 2026/11/21 [INF] Starting nats-server'],
  ])('%s at %s', (line, level, expected) => {
    expect(formatNatsLine(line, level)).toBe(expected);
  });
});

describe('front port before any replica is ready', () => {
  const servers: NetServer[] = [];
  afterEach(() => {
    for (const server of servers.splice(0)) {
      (server as Partial<Server>).closeAllConnections?.();
      server.close();
    }
  });

  async function listen(server: NetServer): Promise<number> {
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as AddressInfo).port;
  }

  it('holds a request until a replica turns ready, then forwards it', async () => {
    // The replica's port has no listener yet, as right after `sluice serve` starts.
    const backendPort = await freePort();
    const backend: Backend = { name: 'r0', port: backendPort, ready: false, inFlight: 0 };
    const front = createFront({ backends: [backend] });
    let arrived = false;
    front.http1.on('request', () => {
      arrived = true;
    });
    const frontPort = await listen(front.server);
    const response = fetch(`http://127.0.0.1:${frontPort}/`);
    await waitFor(() => arrived, { what: 'the request to reach the front port' });
    const replica = createServer((_req, res) => res.end('from the replica'));
    servers.push(replica);
    await new Promise<void>((resolve) => replica.listen(backendPort, '127.0.0.1', resolve));
    backend.ready = true;
    const answer = await response;
    expect(answer.status).toBe(200);
    expect(await answer.text()).toBe('from the replica');
  });

  it('answers 503 with Retry-After when none turns ready in time', async () => {
    const backend: Backend = { name: 'r0', port: 1, ready: false, inFlight: 0 };
    const front = createFront({ backends: [backend], readyWaitMs: 100 });
    const frontPort = await listen(front.server);
    const answer = await fetch(`http://127.0.0.1:${frontPort}/`);
    expect(answer.status).toBe(503);
    expect(answer.headers.get('retry-after')).toBe('1');
    expect(((await answer.json()) as { error: { code: string } }).error.code).toBe('no_replica');
  });
});
