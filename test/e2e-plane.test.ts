// The README's Kubernetes walkthrough, command for command, on the local plane with pods that
// really run: `helm install` of the chart (the operator and NATS as pods, NATS on a volume the
// local-path provisioner made), `kubectl apply -f examples/echo.yaml`, and `curl` through
// Traefik, the Service (kube-proxy) and the sidecars. Then what users do next: a map over both
// replicas, a crashed function, a rollout under load, the hook example calling a GPU function by
// its Service name, NATS keeping JetStream data across a restart, and deleting the function.
//
// Two deviations from the walkthrough, both for running beside the rest of the suite: the CRD
// is the test run's (crds.enabled=false), and the operator watches only this test's namespace
// (other test files run operators of their own).
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, credsAuthenticator } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mapNames } from '../common/map-streams.ts';
import { waitFor, waitForPort } from '../common/net.ts';
import { FUNCTION_LABEL } from '../operator/desired.ts';
import { kubeconfigPath, kubectl, type Namespace, throwawayNamespace } from './support/cluster.ts';
import { CHART, helm, helmMissing, type Manifest, ROOT } from './support/helm.ts';
import {
  condition,
  containerPids,
  containerStatus,
  curl,
  firstEvent,
  getJson,
  ingressUrl,
  isReady,
  podLogs,
  pods,
  podsSimulated,
  runnerLog,
  watchReady,
} from './support/plane.ts';

const skip = helmMissing || podsSimulated();
if (skip) console.warn(`skipping the plane end-to-end test: ${skip}`);

describe.skipIf(Boolean(skip))('the Kubernetes walkthrough on the local plane, pods really running', () => {
  const release = 'sluice';
  let system: Namespace;
  let ns: Namespace;
  let ingress: string;
  const fnPods = async (name: string) =>
    (await pods(ns.name, `${FUNCTION_LABEL}=${name}`)).filter((p) => !p.metadata.deletionTimestamp);
  const sfn = (name: string) => getJson(['get', 'sfn', name, '-n', ns.name]);
  const k = async (args: string[]) => {
    const r = await kubectl([...args, '-n', ns.name]);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  /**
   * NATS's monitoring endpoint, at the pod's own address (the node reaches pods; monitoring is
   * not on the client Service, and the NATS NetworkPolicy lets only monitoring namespaces in).
   */
  /** What the last jsz() saw, beyond the streams: for an assertion's message. */
  let jszSeen = '';
  const jsz = async () => {
    const pod = await getJson(['get', 'pod', `${release}-nats-0`, '-n', system.name]);
    const res = await fetch(`http://${pod.status.podIP}:8222/jsz?streams=true`);
    const body = (await res.json()) as Manifest;
    const nats = containerStatus(pod, 'nats');
    jszSeen = JSON.stringify({
      pod: `${pod.metadata.uid} ${pod.status.podIP} restarts ${nats?.restartCount}`,
      server: body.server_name ?? body.server_id,
      now: body.now,
      accounts: body.accounts,
      streams: body.streams,
      details: (body.account_details ?? []).map(
        (a: Manifest) => `${a.name}: ${(a.stream_detail ?? []).length}`,
      ),
      error: body.error,
    });
    return (body.account_details ?? []).flatMap((a: Manifest) => a.stream_detail ?? []) as Manifest[];
  };
  /** Traefik serves the path: the function answers (a HEAD is refused by it with 405), not Traefik's 404 or 503. */
  const routed = (path: string) =>
    waitFor(
      async () => {
        const r = await curl(`${ingress}${path}`, ['-I', '-o', '/dev/null']);
        return r.status !== 404 && r.status !== 503;
      },
      { timeoutMs: 30_000, what: `Traefik to route ${path}` },
    );
  const metricsBinding = `e2e-metrics-${randomBytes(3).toString('hex')}`;
  const mapInputs = (count: number, sleepMs: number) =>
    JSON.stringify({ inputs: Array.from({ length: count }, (_, i) => ({ i, sleepMs })) });

  beforeAll(async () => {
    ingress = ingressUrl();
    system = await throwawayNamespace('sluice-system');
    ns = await throwawayNamespace('walk');
  });

  afterAll(async () => {
    await kubectl(['delete', 'clusterrolebinding', metricsBinding, '--ignore-not-found']);
    await kubectl(['delete', 'sfn', '--all', '-n', ns?.name ?? 'none', '--wait=true', '--timeout=60s']);
    if (system)
      await helm(['uninstall', release, '--kubeconfig', kubeconfigPath(), '-n', system.name, '--wait']);
    await ns?.delete();
    await system?.delete();
  }, 120_000);

  it('1. helm install runs the operator and NATS as pods; the operator works as its ServiceAccount', async () => {
    const began = Date.now();
    const install = await helm([
      'install',
      release,
      CHART,
      '--kubeconfig',
      kubeconfigPath(),
      '-n',
      system.name,
      '--set',
      'crds.enabled=false',
      '--set',
      `operator.watchNamespace=${ns.name}`,
      '--wait',
      '--timeout=120s',
    ]);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    console.log(`helm install --wait: ${Date.now() - began} ms`);
    const operators = await pods(system.name, 'app.kubernetes.io/component=operator');
    expect(operators).toHaveLength(2);
    const nats = await pods(system.name, 'app.kubernetes.io/component=nats');
    expect(nats).toHaveLength(1);
    for (const p of [...operators, ...nats]) {
      expect(isReady(p), p.metadata.name).toBe(true);
      // Run by the pod runner: a real pod IP and container ids, not kwok's simulation.
      expect(p.status.podIP).toMatch(/^198\.18\.([1-9]|[1-9]\d|1[01]\d|12[0-7])\.\d+$/);
      for (const c of p.status.containerStatuses) expect(c.containerID).toMatch(/^sluice:\/\//);
    }
    const pvc = await getJson(['get', 'pvc', `data-${release}-nats-0`, '-n', system.name]);
    expect(pvc.status.phase).toBe('Bound');
    expect(pvc.spec.storageClassName).toBe('local-path');
    // One replica leads through the Lease, which only the chart's RBAC lets it take.
    const lease = await waitFor(
      async () => {
        const r = await kubectl(['get', 'lease', 'sluice-operator', '-n', system.name, '-o', 'json']);
        return r.code === 0 ? (JSON.parse(r.stdout) as Manifest) : undefined;
      },
      { timeoutMs: 30_000, what: 'the operator Lease' },
    );
    expect(operators.map((p) => p.metadata.name)).toContain(lease.spec.holderIdentity);
  }, 180_000);

  it('2. kubectl apply -f examples/echo.yaml: kubectl get sfn shows it Ready with its URL', async () => {
    await k(['apply', '-f', join(ROOT, 'examples', 'echo.yaml')]);
    // The hook example (checked further down) starts meanwhile; its RENDER_URL names this namespace.
    await k(['apply', '-f', join(ROOT, 'examples', 'fake-video-render.yaml')]);
    const hook = (await readFile(join(ROOT, 'examples', 'hook.yaml'), 'utf8')).replace(
      'http://fake-video-render.default.svc/',
      `http://fake-video-render.${ns.name}.svc/`,
    );
    const applied = await kubectl(['apply', '-n', ns.name, '-f', '-'], { input: hook });
    expect(applied.code, applied.stderr).toBe(0);
    const fn = await waitFor(
      async () => {
        const f = await sfn('echo');
        return condition(f, 'Ready')?.status === 'True' && f.status.url === `${ingress}/echo` ? f : undefined;
      },
      { timeoutMs: 90_000, what: 'echo Ready with the ingress URL' },
    );
    expect(fn.status.readyReplicas).toBe(2);
    await routed('/echo/');
    const table = await k(['get', 'sfn', 'echo']);
    expect(table).toMatch(new RegExp(`echo\\s+0\\s+True\\s+2\\s+${ingress.replace(/\./g, '\\.')}/echo`));
    // The operator's log comes through `kubectl logs` (the pod runner's kubelet API).
    const leader = (await getJson(['get', 'lease', 'sluice-operator', '-n', system.name])).spec
      .holderIdentity;
    const log = await kubectl(['logs', '-n', system.name, leader]);
    expect(log.stdout).toContain(
      `created Deployment, Service, Ingress, NetworkPolicy, Secret ${ns.name}/echo`,
    );
    expect(log.stdout).not.toMatch(/"status":40[13]/);
  }, 120_000);

  it('3. curl --no-buffer through the ingress: five events, each arriving on its own', async () => {
    const r = await curl(`${ingress}/echo/?n=5&pause=300`);
    expect(r.status).toBe(200);
    const messages = r.events.filter((e) => e.event === 'message');
    expect(messages.map((e) => JSON.parse(e.data).i)).toEqual([0, 1, 2, 3, 4]);
    expect(r.events.at(-1)?.event).toBe('done');
    // Nothing buffered them on the way: consecutive events arrive about 300 ms apart.
    for (let i = 1; i < messages.length; i++) {
      expect(messages[i]!.at - messages[i - 1]!.at).toBeGreaterThan(200);
    }
  });

  it('4. a map of 40 inputs through the ingress: 40 results, from both replicas', async () => {
    const r = await curl(`${ingress}/echo/_sluice/map`, ['-X', 'POST', '-d', mapInputs(40, 100)]);
    expect(r.status).toBe(200);
    const results = r.events.filter((e) => e.event === 'result').map((e) => JSON.parse(e.data));
    expect(results.map((x) => x.index).sort((a, b) => a - b)).toEqual([...Array(40).keys()]);
    const replicas = new Set(results.map((x) => x.replica));
    const names = (await fnPods('echo')).map((p) => p.metadata.name);
    expect(replicas.size).toBeGreaterThanOrEqual(2);
    for (const replica of replicas) expect(names).toContain(replica);
    expect(JSON.parse(r.events.at(-1)!.data)).toMatchObject({ count: 40, failed: 0 });
    // Traefik spoke HTTP/2 to the sidecar, as the Service tells it (operator/desired.ts: why).
    const logs = await podLogs(ns.name, `${FUNCTION_LABEL}=echo`, 'sluice-proxy');
    expect(logs).toMatch(/"path":"\/_sluice\/map","http":"2\.0"/);
  }, 60_000);

  it('5. a killed function process: the pod restarts it, leaves and re-enters the Service, and a running map loses nothing', async () => {
    /** Pod IPs the Service's EndpointSlices list as ready now. */
    const readyInService = async (): Promise<string[]> => {
      const list = await getJson([
        'get',
        'endpointslices',
        '-n',
        ns.name,
        '-l',
        'kubernetes.io/service-name=echo',
      ]);
      return list.items
        .flatMap((s: Manifest) => s.endpoints ?? [])
        .filter((e: Manifest) => e.conditions?.ready)
        .flatMap((e: Manifest) => e.addresses as string[]);
    };
    // The victim: the oldest replica the Service sends traffic to. Step 4's map burst may have
    // scaled echo up, and a replica it started may still be starting (slowly, on a loaded machine).
    let seen = '';
    const victim = await waitFor(
      async () => {
        const ready = await readyInService();
        const list = await fnPods('echo');
        seen = list
          .map((p) => `${p.metadata.name} ${p.status.podIP} ready=${ready.includes(p.status.podIP)}`)
          .join(', ');
        return list
          .filter((p) => ready.includes(p.status.podIP))
          .sort((a, b) => a.metadata.creationTimestamp.localeCompare(b.metadata.creationTimestamp))[0];
      },
      { timeoutMs: 30_000, what: () => `an echo replica ready in the Service; pods: ${seen}` },
    );
    const ip = victim.status.podIP as string;
    const endpointReady = async () => (await readyInService()).includes(ip);
    const firstResult = firstEvent((e) => e.event === 'result');
    // Bounded, so a map that stalls fails with what it got (curl exits 28) instead of hanging.
    const map = curl(
      `${ingress}/echo/_sluice/map`,
      ['-X', 'POST', '-d', mapInputs(40, 250), '--max-time', '60'],
      firstResult.feed,
    );
    // Kill it while the map runs: once the first result is in.
    await Promise.race([
      firstResult.seen,
      map.then(async (r) => {
        const logs = await podLogs(ns.name, `${FUNCTION_LABEL}=echo`, 'sluice-proxy');
        throw new Error(
          `the map ended before its first result: curl exit ${r.code} ${r.stderr}, ${r.status} ${r.body}\n${logs}`,
        );
      }),
    ]);
    // Every version of the pod's Ready condition, from a watch, so a short dip is seen too.
    const watch = watchReady(ns.name, victim.metadata.name);
    await watch.started;
    const killedAt = Date.now();
    const pids = containerPids(victim.metadata.uid, 'function');
    // Nothing to kill would leave Ready True for a reason that is not the runner's: say so.
    expect(pids.length, `the function's processes in ${victim.metadata.name}'s cgroup`).toBeGreaterThan(0);
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await waitFor(() => watch.seen.includes('False') && watch.seen.at(-1) === 'True', {
      timeoutMs: 30_000,
      what: () =>
        `the pod to leave (Ready False) and re-enter (True) the Service; the watch saw ${watch.seen.join(' ')}`,
    })
      .catch(async (err: Error) => {
        // What the pod's runner did meanwhile, to tell its fault from the watch's.
        const pod = await getJson(['get', 'pod', victim.metadata.name, '-n', ns.name]);
        const log = runnerLog(victim.metadata.name);
        throw new Error(
          `${err.message}; pod status now: ${JSON.stringify({ conditions: pod.status.conditions, function: containerStatus(pod, 'function') })}; pod runner log:\n${log}`,
        );
      })
      .finally(() => watch.stop());
    await waitFor(endpointReady, { timeoutMs: 30_000, what: 'its endpoint ready again' });
    const after = await getJson(['get', 'pod', victim.metadata.name, '-n', ns.name]);
    const fn = containerStatus(after, 'function')!;
    expect(fn.restartCount).toBe(1);
    expect(fn.lastState.terminated).toMatchObject({ exitCode: 137, reason: 'Error' });
    expect(new Date(condition(after, 'Ready')!.lastTransitionTime).getTime()).toBeGreaterThanOrEqual(
      Math.floor(killedAt / 1000) * 1000,
    );
    const r = await map;
    const results = r.events.filter((e) => e.event === 'result').map((e) => JSON.parse(e.data).index);
    expect(results.sort((a, b) => a - b)).toEqual([...Array(40).keys()]);
    expect(r.events.filter((e) => e.event === 'error')).toEqual([]);
  }, 90_000);

  it('6. a rollout (new env) while a stream is open: the stream completes or drains cleanly, new pods serve', async () => {
    const before = new Set((await fnPods('echo')).map((p) => p.metadata.name));
    const opened = firstEvent((e) => e.event === 'message');
    const stream = curl(`${ingress}/echo/?n=30&pause=300`, [], opened.feed);
    // The stream is open once its first event is in; then the spec changes.
    await opened.seen;
    await k([
      'patch',
      'sfn',
      'echo',
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { env: [{ name: 'ROLLOUT', value: '2' }] } }),
    ]);
    const r = await stream;
    expect(r.code).toBe(0); // never a cut connection
    const last = r.events.at(-1)!;
    if (last.event === 'error') expect(JSON.parse(last.data)).toMatchObject({ code: 'shutdown' });
    else expect(last.event).toBe('done');
    const fresh = await waitFor(
      async () => {
        const list = await fnPods('echo');
        const ready = list.filter(isReady);
        // Two at least: the map burst above may have scaled echo up (maxReplicas 4) for a while.
        return list.length >= 2 &&
          ready.length === list.length &&
          ready.every((p) => !before.has(p.metadata.name))
          ? ready
          : undefined;
      },
      { timeoutMs: 90_000, what: 'new pods Ready, the old ones gone' },
    );
    for (const p of fresh) {
      expect(p.spec.containers[0].env).toContainEqual({ name: 'ROLLOUT', value: '2' });
    }
    const m = await curl(`${ingress}/echo/_sluice/map`, ['-X', 'POST', '-d', mapInputs(4, 0)]);
    for (const e of m.events.filter((x) => x.event === 'result')) {
      expect(fresh.map((p) => p.metadata.name)).toContain(JSON.parse(e.data).replica);
    }
  }, 150_000);

  it('NATS keeps JetStream data on its PersistentVolumeClaim across a pod restart', async () => {
    const results = `SLUICE_RESULTS_${ns.name}_echo`;
    const before = (await jsz()).find((s) => s.name === results);
    expect(before?.state?.messages, jszSeen).toBeGreaterThan(0);
    const pod = `${release}-nats-0`;
    const uid = (await getJson(['get', 'pod', pod, '-n', system.name])).metadata.uid;
    expect((await kubectl(['delete', 'pod', pod, '-n', system.name, '--wait=true'])).code).toBe(0);
    await waitFor(
      async () => {
        const p = await getJson(['get', 'pod', pod, '-n', system.name]).catch(() => undefined);
        return p && p.metadata.uid !== uid && isReady(p);
      },
      { timeoutMs: 60_000, what: 'a new NATS pod Ready' },
    );
    const after = await waitFor(async () => (await jsz()).find((s) => s.name === results), {
      timeoutMs: 30_000,
      what: 'the results stream after the restart',
    });
    expect(after.state.messages).toBe(before!.state.messages);
    expect(after.state.last_seq).toBe(before!.state.last_seq);
  }, 120_000);

  it("lock-down: NATS takes only credentials, echo's reach its own streams, /metrics needs a reader's token", async () => {
    // NATS by its Service, from the node: nothing without credentials.
    const svc = await getJson(['get', 'service', `${release}-nats`, '-n', system.name]);
    const natsUrl = `nats://${svc.spec.clusterIP}:4222`;
    expect(svc.spec.ports.map((p: Manifest) => p.port)).toEqual([4222]);
    // The NATS pod was just restarted: its endpoint is back once it is Ready again.
    await waitForPort(4222, svc.spec.clusterIP, 60_000);
    await expect(connect({ servers: natsUrl })).rejects.toThrow(/Authorization Violation/);
    // The credentials the operator issued to echo's sidecars (the Secret they mount).
    const secret = await getJson(['get', 'secret', 'echo-nats-credentials', '-n', ns.name]);
    const nc = await connect({
      servers: natsUrl,
      authenticator: credsAuthenticator(Buffer.from(secret.data['nats.creds'], 'base64')),
    });
    try {
      const names = mapNames(`${ns.name}/echo`);
      const info = await (await jetstreamManager(nc)).streams.info(names.resultsStream);
      expect(info.state.messages).toBeGreaterThan(0); // the maps above went through it
    } finally {
      await nc.close();
    }
    // The operator pods' /metrics: a token whose ServiceAccount is bound to the chart's
    // metrics-reader ClusterRole, reviewed by the API server from inside the operator pod.
    const [operator] = await pods(system.name, 'app.kubernetes.io/component=operator');
    const metrics = `http://${operator!.status.podIP}:8081/metrics`;
    expect((await fetch(metrics)).status).toBe(401);
    for (const args of [
      ['create', 'serviceaccount', 'prometheus', '-n', system.name],
      [
        'create',
        'clusterrolebinding',
        metricsBinding,
        `--clusterrole=${release}-metrics-reader`,
        `--serviceaccount=${system.name}:prometheus`,
      ],
    ]) {
      const r = await kubectl(args);
      expect(r.code, r.stderr).toBe(0);
    }
    // The API server's RBAC caches follow the binding; ask it before the operator does.
    await waitFor(
      async () =>
        (
          await kubectl([
            'auth',
            'can-i',
            'get',
            '/metrics',
            `--as=system:serviceaccount:${system.name}:prometheus`,
          ])
        ).stdout.trim() === 'yes',
      { what: 'the binding to take effect' },
    );
    const token = (await kubectl(['create', 'token', 'prometheus', '-n', system.name])).stdout.trim();
    const response = await fetch(metrics, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    const scraped = await response.text();
    expect(scraped).toContain('sluice_operator_reconcile_total');
    // The plane's pod runner enforces no NetworkPolicy (README): their presence is all there is to see.
    const policy = await getJson(['get', 'networkpolicy', 'echo', '-n', ns.name]);
    expect(policy.spec.podSelector.matchLabels).toEqual({ [FUNCTION_LABEL]: 'echo' });
  }, 90_000);

  it('the hook example: a CPU endpoint streams from the GPU function by its Service name', async () => {
    for (const name of ['fake-video-render', 'hook']) {
      let last: Manifest | undefined;
      await waitFor(
        async () => {
          last = await sfn(name);
          return condition(last, 'Ready')?.status === 'True';
        },
        { timeoutMs: 120_000, what: () => `${name} Ready; its status: ${JSON.stringify(last?.status)}` },
      ).catch(async (err: Error) => {
        // Why its pod is not ready: the containers' own words and the pod runner's.
        const selector = `${FUNCTION_LABEL}=${name}`;
        const logs = [
          await podLogs(ns.name, selector, 'function'),
          await podLogs(ns.name, selector, 'sluice-proxy'),
        ].join('\n');
        const runner = (await fnPods(name)).map((p) => runnerLog(p.metadata.name)).join('\n');
        throw new Error(`${err.message}\n${logs}\npod runner:\n${runner}`);
      });
    }
    await routed('/hook/');
    const [render] = await fnPods('fake-video-render');
    expect(render!.spec.nodeName).toMatch(/^gpu-/);
    const r = await curl(`${ingress}/hook/?chunks=3`);
    expect(r.status).toBe(200);
    expect(r.events.map((e) => e.data)).toEqual(
      [0, 1, 2].map((i) => `finished processing some data from GPU ${i}`),
    );
    // The render function pauses RENDER_PAUSE (1 s) after each chunk: they came as made.
    expect(r.events[1]!.at - r.events[0]!.at).toBeGreaterThan(500);
  }, 180_000);

  it("gRPC through the ingress: the text-model example's h2c side, MLServer's own client, word by word", async () => {
    const applied = await kubectl([
      'apply',
      '-n',
      ns.name,
      '-f',
      join(ROOT, 'examples', 'text-model-grpc.yaml'),
    ]);
    expect(applied.code, applied.stderr).toBe(0);
    await waitFor(async () => condition(await sfn('text-model-grpc'), 'Ready')?.status === 'True', {
      timeoutMs: 120_000,
      what: 'text-model-grpc Ready',
    });
    const python = execFileSync('bash', ['scripts/python-deps.sh'], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    })
      .trim()
      .split('\n')
      .pop()!;
    // gRPC's default port is 443: name the ingress port even when the URL leaves it out.
    const { hostname, port } = new URL(ingress);
    const target = `${hostname}:${port || 80}`;
    // Traefik routes by the Ingress host; the Service's appProtocol makes it speak h2c to the sidecar.
    const lines = await waitFor(
      async () => {
        const run = await runClient(python, [
          join(ROOT, 'examples', 'text-model', 'grpc_client.py'),
          target,
          'text-model-grpc.local',
        ]);
        return run.code === 0 ? run.lines : undefined;
      },
      { timeoutMs: 60_000, what: 'a gRPC call through Traefik (until the route is in place)' },
    );
    const words = lines.filter((l) => !l.text.startsWith('status '));
    expect(words.map((l) => l.text)).toEqual(['What', ' is', ' the', ' capital', ' of', ' France?']);
    // MLServer yields a word every 0.5 s: each came on its own, none held back by a hop.
    for (let i = 1; i < words.length; i++) expect(words[i]!.at - words[i - 1]!.at).toBeGreaterThan(150);
    expect(lines.at(-1)?.text).toBe('status OK');
    const service = await getJson(['get', 'service', 'text-model-grpc', '-n', ns.name]);
    expect(service.spec.ports[0].appProtocol).toBe('kubernetes.io/h2c');
  }, 240_000);

  it('7. kubectl delete sfn echo: pods terminate gracefully and the NATS streams go with the finalizer', async () => {
    const names = new Set((await jsz()).map((s) => s.name));
    expect(names, jszSeen).toContain(`SLUICE_TASKS_${ns.name}_echo`);
    const watched = await fnPods('echo');
    const finals = new Map<string, Manifest>();
    const del = kubectl(['delete', 'sfn', 'echo', '-n', ns.name, '--wait=true']);
    // The last status each pod had before it went: what its containers' exits were.
    await waitFor(
      async () => {
        for (const p of watched) {
          const r = await kubectl(['get', 'pod', p.metadata.name, '-n', ns.name, '-o', 'json']);
          if (r.code === 0) finals.set(p.metadata.name, JSON.parse(r.stdout));
        }
        return (
          (await fnPods('echo')).length === 0 && (await pods(ns.name, `${FUNCTION_LABEL}=echo`)).length === 0
        );
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'the echo pods gone' },
    );
    expect((await del).code).toBe(0);
    const events = await getJson(['get', 'events', '-n', ns.name, '--field-selector', 'reason=Killing']);
    for (const p of watched) {
      expect(events.items.some((e: Manifest) => e.involvedObject.name === p.metadata.name)).toBe(true);
      const last = finals.get(p.metadata.name);
      // Stopped by SIGTERM within the grace period, never SIGKILLed (137).
      for (const c of last?.status?.containerStatuses ?? []) {
        if (c.state.terminated)
          expect(c.state.terminated.exitCode, `${p.metadata.name}/${c.name}`).not.toBe(137);
      }
    }
    const left = new Set((await jsz()).map((s) => s.name));
    expect(left).not.toContain(`SLUICE_TASKS_${ns.name}_echo`);
    expect(left).not.toContain(`SLUICE_RESULTS_${ns.name}_echo`);
  }, 120_000);
});

/** Runs a client to its end: its exit code and each stdout line with when it arrived. */
function runClient(
  file: string,
  args: string[],
): Promise<{ code: number | null; lines: { text: string; at: number }[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: { text: string; at: number }[] = [];
    let partial = '';
    child.stdout.on('data', (chunk: Buffer) => {
      const parts = (partial + chunk.toString()).split('\n');
      partial = parts.pop()!;
      for (const text of parts) lines.push({ text, at: performance.now() });
    });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, lines }));
  });
}
