// Scale from zero with requests held: the real `sluice activator` (in this process), the real
// operator against the local plane's API server, a real nats-server, and for each pod the
// plane's kube-controller-manager makes, a real echo function and `sluice proxy` started here
// under the pod's name (the plane's kwok nodes run no processes: this plays their kubelet).
import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { connect as connectH2 } from 'node:http2';
import { resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadActivatorConfig } from '../activator/config.ts';
import { type RunningActivator, startActivator } from '../activator/main.ts';
import { decodeReport, loadSubject } from '../common/autoscale/load-report.ts';
import { createLogger } from '../common/log.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { type Started, start, startSluice } from '../harness/process.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { kubeconfigPath } from './support/cluster.ts';

const ECHO = resolve(import.meta.dirname, '..', 'examples', 'echo', 'server.js');
const SFN = 'sluice.dev/v1alpha1';
let kube: KubeClient;
let nats: NatsServer;
let nc: NatsConnection;
let ns = '';
let op: RunningOperator;
let activator: RunningActivator;
let runner: PodRunner;

/** Starts a function and its proxy for every pod of the namespace's functions; stops them when the pod goes. */
class PodRunner {
  readonly running = new Map<string, { fn: Started; proxy: Started; port: number }>();
  /** Environment of the function processes, by function name (STARTUP_DELAY_MS). */
  readonly env = new Map<string, Record<string, string>>();
  readonly #timer: NodeJS.Timeout;
  #busy = false;

  constructor() {
    this.#timer = setInterval(() => void this.#sync(), 100);
  }

  async #sync(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const list = await kube.get<{ items: KubeObject[] }>(resourcePath('v1', 'pods', ns));
      const alive = new Set<string>();
      for (const pod of list.items) {
        const name = pod.metadata!.name!;
        const fn = pod.metadata?.labels?.['sluice.dev/function'];
        if (!fn || pod.metadata?.deletionTimestamp) continue;
        alive.add(name);
        if (!this.running.has(name)) await this.#start(name, fn, pod);
      }
      for (const [name, processes] of this.running) {
        if (alive.has(name)) continue;
        this.running.delete(name);
        // As the kubelet: SIGTERM (the proxy drains), then the function.
        void processes.proxy.stop('SIGTERM', 10_000).then(() => processes.fn.stop());
      }
    } catch {
      // the next round tries again
    } finally {
      this.#busy = false;
    }
  }

  async #start(pod: string, fn: string, object: KubeObject): Promise<void> {
    const [fnPort, port, admin] = [await freePort(), await freePort(), await freePort()];
    const sidecar = object.spec.containers.find((c: { name: string }) => c.name === 'sluice-proxy');
    // The pod's own proxy flags, as the operator wrote them, with this machine's addresses.
    const flags = (sidecar.args as string[])
      .slice(1)
      .filter((f) => !/^--(listen|admin|upstream|advertise|nats)=/.test(f));
    const fnProcess = start(process.execPath, [ECHO], {
      env: { ...process.env, PORT: String(fnPort), ...this.env.get(fn) },
    });
    const proxy = startSluice(
      [
        'proxy',
        ...flags,
        `--listen=127.0.0.1:${port}`,
        `--admin=127.0.0.1:${admin}`,
        `--upstream=http://127.0.0.1:${fnPort}`,
        `--nats=${nats.url}`,
        `--advertise=http://127.0.0.1:${port}`,
      ],
      { env: { ...process.env, SLUICE_REPLICA: pod, SLUICE_LOG_LEVEL: 'warn' } },
    );
    this.running.set(pod, { fn: fnProcess, proxy, port });
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await Promise.all([...this.running.values()].flatMap((p) => [p.proxy.stop(), p.fn.stop()]));
  }
}

async function createFunction(name: string, spec: Record<string, unknown>): Promise<void> {
  await kube.request('POST', resourcePath(SFN, 'streamingfunctions', ns), {
    body: {
      apiVersion: SFN,
      kind: 'StreamingFunction',
      metadata: { name, namespace: ns },
      spec: { image: 'sluice-examples:dev', ...spec },
    },
  });
  // Wait until the activator knows it and the operator made its Deployment (at zero).
  await waitFor(
    async () =>
      (await kube.get<KubeObject>(resourcePath('apps/v1', 'deployments', ns, name)).catch(() => undefined))
        ?.spec?.replicas === 0,
    { timeoutMs: 30_000, what: `${name} at zero` },
  );
}

const replicasOf = async (name: string) =>
  (await kube.get<KubeObject>(resourcePath('apps/v1', 'deployments', ns, name))).spec?.replicas as number;

/** A raw HTTP exchange with the activator, as the Service would send it (Host: <name>.<ns>.svc). */
function send(
  fn: string,
  path: string,
  options: { method?: string; body?: string; accept?: string; signal?: AbortSignal } = {},
): Promise<{
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  chunks: { at: number; text: string }[];
}> {
  return new Promise((done, fail) => {
    const chunks: { at: number; text: string }[] = [];
    const req = request(
      {
        host: '127.0.0.1',
        port: activator.port,
        path,
        method: options.method ?? 'GET',
        headers: {
          host: `${fn}.${ns}.svc.cluster.local`,
          accept: options.accept ?? '*/*',
          'content-type': 'application/json',
        },
        signal: options.signal,
      },
      (res) => {
        res.setEncoding('utf8');
        res.on('data', (text: string) => chunks.push({ at: Date.now(), text }));
        res.on('end', () =>
          done({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: chunks.map((c) => c.text).join(''),
            chunks,
          }),
        );
      },
    );
    req.on('error', fail);
    req.end(options.body);
  });
}

async function activatorMetric(name: string, fn: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${activator.adminPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{function="${ns}/${fn}"}`));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

beforeAll(async () => {
  const kubeconfig = kubeconfigPath();
  kube = await KubeClient.load(kubeconfig);
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  ns = `act-${randomUUID().slice(0, 8)}`;
  await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: ns } } });
  op = await startOperator(
    loadOperatorConfig(
      [
        '--kubeconfig',
        kubeconfig,
        '--namespace',
        ns,
        '--metrics',
        `127.0.0.1:${await freePort()}`,
        '--nats',
        nats.url,
        '--nats-auth=false',
      ],
      {},
    ),
    createLogger('operator', 'silent'),
  );
  activator = await startActivator(
    loadActivatorConfig(
      [
        '--listen',
        '127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--nats',
        nats.url,
        '--kubeconfig',
        kubeconfig,
        '--namespace',
        ns,
        '--identity',
        'a0',
      ],
      {},
    ),
    createLogger('activator', 'silent'),
  );
  runner = new PodRunner();
});

afterAll(async () => {
  await runner?.stop();
  await activator?.stop();
  // The map function's streams go through the operator's finalizer: delete it while it runs.
  await kube?.request('DELETE', resourcePath(SFN, 'streamingfunctions', ns, 'mapped')).catch(() => undefined);
  await waitFor(
    () =>
      kube.get(resourcePath(SFN, 'streamingfunctions', ns, 'mapped')).then(
        () => false,
        () => true,
      ),
    { timeoutMs: 30_000, what: 'the map function finalized' },
  ).catch(() => undefined);
  await op?.stop();
  await nc?.close();
  await nats?.stop();
  await kube?.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
  kube?.close();
});

describe('sluice activator: scale from zero with requests held', () => {
  it('a request to a function at zero is held, starts the first replica, then gets every event', {
    timeout: 90_000,
  }, async () => {
    await createFunction('echo', {
      scaling: { minReplicas: 0, maxReplicas: 2, concurrency: 4, scaleDownDelaySeconds: 2 },
      map: { enabled: false },
    });
    // The held count reaches the autoscaler on NATS, at once.
    const heldReports: number[] = [];
    const sub = nc.subscribe(loadSubject(`${ns}/echo`), {
      callback: (_err, msg) => {
        const r = decodeReport(new TextDecoder().decode(msg.data));
        if (r?.kind === 'activator') heldReports.push(r.held ?? 0);
      },
    });
    const answer = await send('echo', '/?n=4&pause=20');
    sub.unsubscribe();
    expect(answer.status).toBe(200);
    expect(answer.body.match(/^id: \d+$/gm)).toEqual(['id: 0', 'id: 1', 'id: 2', 'id: 3']);
    expect(answer.body).toContain('event: done');
    expect(heldReports[0]).toBe(1);
    expect(await replicasOf('echo')).toBe(1);
    expect(await activatorMetric('sluice_cold_start_seconds_count', 'echo')).toBe(1);
    // Idle for the delay: back to zero (its process stops), the activator holds nothing.
    await waitFor(async () => (await replicasOf('echo')) === 0, {
      timeoutMs: 30_000,
      what: 'echo back to 0',
    });
    expect(activator.held()).toBe(0);
  });

  it('a held event stream gets its 200 and waiting comments while the first replica starts slowly', {
    timeout: 90_000,
  }, async () => {
    runner.env.set('slow', { STARTUP_DELAY_MS: '3500' });
    await createFunction('slow', {
      scaling: { minReplicas: 0, maxReplicas: 1, coldStartTimeoutSeconds: 60 },
      streaming: { heartbeatSeconds: 1 },
      map: { enabled: false },
    });
    const sent = Date.now();
    const answer = await send('slow', '/?n=2&pause=10', { accept: 'text/event-stream' });
    expect(answer.status).toBe(200);
    expect(answer.headers['content-type']).toBe('text/event-stream');
    // The first bytes (headers, a comment) came about heartbeatSeconds in, seconds before the function.
    expect(answer.chunks[0]!.text).toBe(': waiting for a replica\n\n');
    expect(answer.chunks[0]!.at - sent).toBeLessThan(3000);
    const comments = answer.body.split('\n\n').filter((p) => p === ': waiting for a replica');
    expect(comments.length).toBeGreaterThanOrEqual(3);
    expect(answer.body).toMatch(/(: waiting for a replica\n\n)+id: 0\nevent: message\n/);
    expect(answer.body).toContain('event: done');
  });

  it('when the function then fails before its headers, the held stream ends with event: error', {
    timeout: 90_000,
  }, async () => {
    runner.env.set('picky', { STARTUP_DELAY_MS: '2500' });
    await createFunction('picky', {
      scaling: { minReplicas: 0, maxReplicas: 1 },
      streaming: { heartbeatSeconds: 1 },
      map: { enabled: false },
    });
    // n=0 is refused by the echo function with a 400 JSON body before any event.
    const answer = await send('picky', '/?n=0', { accept: 'text/event-stream' });
    expect(answer.status).toBe(200);
    expect(answer.body).toContain(': waiting for a replica\n\n');
    const event = /event: error\ndata: (.*)\n\n$/.exec(answer.body);
    expect(event).not.toBeNull();
    expect(JSON.parse(event![1]!)).toMatchObject({
      error: { code: 'upstream_unavailable', status: 400, body: { error: { code: 'BAD_PARAMS' } } },
    });
  });

  it('a client that leaves while held is forgotten and stops counting as load', {
    timeout: 90_000,
  }, async () => {
    runner.env.set('gone', { STARTUP_DELAY_MS: '60000' }); // never ready within the test
    await createFunction('gone', {
      scaling: { minReplicas: 0, maxReplicas: 1, scaleDownDelaySeconds: 1 },
      map: { enabled: false },
    });
    const leave = new AbortController();
    const pending = send('gone', '/', { signal: leave.signal }).catch(() => undefined);
    await waitFor(async () => (await activatorMetric('sluice_activator_held_requests', 'gone')) === 1, {
      what: 'held',
    });
    await waitFor(async () => (await replicasOf('gone')) === 1, {
      timeoutMs: 10_000,
      what: 'a replica started for it',
    });
    leave.abort();
    await pending;
    await waitFor(async () => (await activatorMetric('sluice_activator_held_requests', 'gone')) === 0, {
      what: 'forgotten',
    });
    // Nobody waits any more: the replica that was starting for it goes after the delay.
    await waitFor(async () => (await replicasOf('gone')) === 0, { timeoutMs: 20_000, what: 'back to 0' });
  });

  it('a map call to a function at zero is held and scales it up too', { timeout: 90_000 }, async () => {
    await createFunction('mapped', {
      scaling: { minReplicas: 0, maxReplicas: 2 },
      map: { enabled: true, path: '/map' },
    });
    const answer = await send('mapped', '/mapped/_sluice/map', {
      method: 'POST',
      body: JSON.stringify({ inputs: [1, 2, 3] }),
    });
    expect(answer.status).toBe(200);
    const results = [...answer.body.matchAll(/event: result\nid: (\d+)\ndata: (.*)\n/g)].map((m) =>
      JSON.parse(m[2]!),
    );
    expect(results.map((r) => r.output.echo)).toEqual([1, 2, 3]);
    expect(answer.body).toMatch(/event: done\ndata: \{"requestId":"[^"]+","count":3,"failed":0/);
  });

  it('over h2c, as Traefik speaks to every function: the host from :authority, the body and events forwarded', {
    timeout: 90_000,
  }, async () => {
    // A POST with a body, the kind Traefik's HTTP/1.1 transport could cut (operator/desired.ts).
    const session = connectH2(`http://127.0.0.1:${activator.port}`);
    try {
      const answer = await new Promise<{ status: number; body: string }>((done, fail) => {
        const stream = session.request({
          ':method': 'POST',
          ':path': '/mapped/_sluice/map',
          ':authority': `mapped.${ns}.svc.cluster.local`,
          'content-type': 'application/json',
        });
        let status = 0;
        let body = '';
        stream.setEncoding('utf8');
        stream.on('response', (headers) => {
          status = Number(headers[':status']);
        });
        stream.on('data', (text: string) => {
          body += text;
        });
        stream.on('end', () => done({ status, body }));
        stream.on('error', fail);
        stream.end(JSON.stringify({ inputs: [4, 5] }));
      });
      expect(answer.status, answer.body).toBe(200);
      const results = [...answer.body.matchAll(/event: result\nid: (\d+)\ndata: (.*)\n/g)].map(
        (m) => JSON.parse(m[2]!).output.echo,
      );
      expect(results).toEqual([4, 5]);
    } finally {
      session.close();
    }
  });

  it('a host and path that match no function: 404 naming them', async () => {
    const answer = await new Promise<{ status: number; body: string }>((done, fail) => {
      const req = request(
        {
          port: activator.port,
          host: '127.0.0.1',
          path: '/nothing',
          headers: { host: 'nowhere.example.com' },
        },
        (res) => {
          let body = '';
          res.on('data', (d) => {
            body += d;
          });
          res.on('end', () => done({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', fail);
      req.end();
    });
    expect(answer.status).toBe(404);
    expect(JSON.parse(answer.body).error.message).toContain('nowhere.example.com');
  });
});
