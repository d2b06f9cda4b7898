// The pod runner as a kubelet: pods on the simulated nodes really run, as processes in their own
// network namespaces, from the pod spec. Busybox-image pods here run this machine's shell and
// tools (plane/images.yaml). Every assertion reads what the API shows (pod status, events,
// EndpointSlices, `kubectl logs`) or what a pod itself printed.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { contains, SERVICE_RANGE } from '../plane/addresses.ts';
import {
  applyObject,
  kubeconfigPath,
  kubectl,
  type Namespace,
  throwawayNamespace,
} from './support/cluster.ts';
import type { Manifest } from './support/helm.ts';
import {
  condition,
  containerStatus,
  curl,
  getJson,
  isReady,
  podsSimulated,
  waitForPod,
} from './support/plane.ts';

const simulated = podsSimulated();
if (simulated) console.warn(`skipping the pod runner tests: ${simulated}`);

const shell = (name: string, script: string, more: Manifest = {}): Manifest => ({
  name,
  image: 'busybox',
  command: ['sh', '-c', script],
  ...more,
});

describe.skipIf(Boolean(simulated))('the pod runner', () => {
  let ns: Namespace;
  let hostDir: string;
  const apply = (object: Manifest) =>
    applyObject(kubeconfigPath(), { ...object, metadata: { namespace: ns.name, ...object.metadata } });
  const pod = (name: string, spec: Manifest, metadata: Manifest = {}) =>
    apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: ns.name, ...metadata }, spec });
  const logs = async (name: string, args: string[] = []) => {
    const r = await kubectl(['logs', '-n', ns.name, name, ...args]);
    if (r.code !== 0) throw new Error(`kubectl logs ${name}: ${r.stderr}`);
    return r.stdout;
  };
  const phase = (want: string) => (p: Manifest) => p.status?.phase === want;

  async function createUnmapped(): Promise<void> {
    await pod('unmapped', { containers: [{ name: 'fn', image: 'ghcr.io/acme/echo:1' }] });
  }

  async function createFull(): Promise<void> {
    await apply({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'settings' },
      data: { greeting: 'hello', 'app.conf': 'port=1\n' },
    });
    await apply({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'creds' },
      stringData: { password: 's3cret' },
    });
    await pod(
      'full',
      {
        securityContext: { runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000 },
        initContainers: [
          // The first process of the pod: status.podIP must be known to it already (a kubelet
          // knows it from the sandbox, before any status says so).
          shell('first', 'echo init > /shared/order; echo "$IP" > /shared/first-ip', {
            env: [{ name: 'IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } }],
            volumeMounts: [{ name: 'shared', mountPath: '/shared' }],
          }),
          shell('side', 'echo sidecar >> /shared/order; touch /shared/side-up; exec sleep 3600', {
            restartPolicy: 'Always',
            startupProbe: { exec: { command: ['test', '-f', '/shared/side-up'] }, periodSeconds: 1 },
            volumeMounts: [{ name: 'shared', mountPath: '/shared' }],
          }),
        ],
        containers: [
          shell(
            'main',
            [
              'echo main >> /shared/order',
              'echo "order=$(tr "\\n" , < /shared/order)"',
              'echo "env=$GREETING|$PW|$POD|$NODE|$MEM|$BOTH"',
              'echo "first-ip=$(cat /shared/first-ip)"',
              'echo "files=$(cat /config/greeting)|$(cat /secret/password)|$(cat /info/labels)"',
              'echo "id=$(id -u):$(id -g):$(id -G | tr " " ,)"',
              'echo "pwd=$(pwd) host=$(hostname)"',
              'echo "routes=$(ip -4 route | tr "\\n" ";")"',
              'echo "resolv=$(grep -E "^(nameserver|search)" /etc/resolv.conf | tr "\\n" ";")"',
              'echo "writable=$(touch /shared/by-main && echo yes)"',
              'exec sleep 3600',
            ].join('\n'),
            {
              workingDir: '/shared',
              env: [
                { name: 'GREETING', valueFrom: { configMapKeyRef: { name: 'settings', key: 'greeting' } } },
                { name: 'PW', valueFrom: { secretKeyRef: { name: 'creds', key: 'password' } } },
                { name: 'POD', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'NODE', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
                {
                  name: 'MEM',
                  valueFrom: { resourceFieldRef: { resource: 'limits.memory', divisor: '1Mi' } },
                },
                { name: 'BOTH', value: '$(POD)/$(GREETING)' },
              ],
              resources: { limits: { memory: '64Mi' } },
              volumeMounts: [
                { name: 'shared', mountPath: '/shared' },
                { name: 'config', mountPath: '/config', readOnly: true },
                { name: 'secret', mountPath: '/secret', readOnly: true },
                { name: 'info', mountPath: '/info' },
              ],
            },
          ),
        ],
        volumes: [
          { name: 'shared', emptyDir: {} },
          { name: 'config', configMap: { name: 'settings' } },
          { name: 'secret', secret: { secretName: 'creds' } },
          {
            name: 'info',
            downwardAPI: { items: [{ path: 'labels', fieldRef: { fieldPath: "metadata.labels['app']" } }] },
          },
        ],
      },
      { labels: { app: 'full' } },
    );
  }

  async function createReader(): Promise<void> {
    await apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'reader' } });
    await apply({
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name: 'read-pods' },
      rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['get'] }],
    });
    await apply({
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: 'reader-reads-pods' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'read-pods' },
      subjects: [{ kind: 'ServiceAccount', name: 'reader', namespace: ns.name }],
    });
    const sa = '/var/run/secrets/kubernetes.io/serviceaccount';
    const call = (path: string) =>
      `curl -s -o /dev/null -w '%{http_code}' --cacert ${sa}/ca.crt -H "Authorization: Bearer $(cat ${sa}/token)" https://kubernetes.default.svc${path}`;
    await pod('reader', {
      serviceAccountName: 'reader',
      restartPolicy: 'Never',
      containers: [
        shell(
          'c',
          `echo "ns=$(cat ${sa}/namespace) env=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; ` +
            `echo "own=$(${call(`/api/v1/namespaces/$(cat ${sa}/namespace)/pods/reader`)})"; ` +
            `echo "secrets=$(${call(`/api/v1/namespaces/$(cat ${sa}/namespace)/secrets`)})"`,
        ),
      ],
    });
  }

  async function createWeb(): Promise<void> {
    const web = (name: string, readyPath: string) =>
      pod(
        name,
        {
          containers: [
            shell(
              'web',
              'mkdir -p /srv && hostname > /srv/index.html && touch /srv/ready && cd /srv && exec python3 -m http.server 8000',
              {
                ports: [{ name: 'http', containerPort: 8000 }],
                readinessProbe: { httpGet: { path: readyPath, port: 'http' }, periodSeconds: 1 },
              },
            ),
          ],
        },
        { labels: { app: 'web' } },
      );
    await web('web-ready', '/ready');
    await web('web-unready', '/never');
    await apply({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web' },
      spec: { selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }] },
    });
  }

  async function createCrasher(): Promise<void> {
    await pod('crasher', { containers: [shell('c', 'echo "run at $(date +%s%N)"; exit 3')] });
  }

  async function createUnhealthy(): Promise<void> {
    await pod('unhealthy', {
      containers: [
        shell('c', 'exec sleep 3600', {
          livenessProbe: {
            exec: { command: ['test', '-f', '/tmp/alive'] },
            periodSeconds: 1,
            failureThreshold: 2,
          },
        }),
      ],
    });
  }

  async function createTraced(): Promise<void> {
    const trace = join(hostDir, 'trace');
    const traced = (name: string, script: string, grace: number) =>
      pod(name, {
        terminationGracePeriodSeconds: grace,
        containers: [
          shell('c', script, {
            lifecycle: { preStop: { exec: { command: ['sh', '-c', `echo ${name}:prestop >> /trace/log`] } } },
            readinessProbe: { exec: { command: ['test', '-f', '/tmp/up'] }, periodSeconds: 1 },
            volumeMounts: [{ name: 'trace', mountPath: '/trace' }],
          }),
        ],
        volumes: [{ name: 'trace', hostPath: { path: trace, type: 'DirectoryOrCreate' } }],
      });
    await traced(
      'polite',
      `trap 'echo polite:term >> /trace/log; exit 0' TERM; touch /tmp/up; while :; do sleep 0.1; done`,
      30,
    );
    await traced('stubborn', `trap '' TERM; touch /tmp/up; while :; do sleep 0.1; done`, 2);
  }

  async function createClaim(): Promise<void> {
    await apply({
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: 'data' },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    });
    await pod('writer', {
      restartPolicy: 'Never',
      securityContext: { runAsUser: 1000, fsGroup: 1000 },
      containers: [
        shell('c', 'echo persisted > /data/file && ls -ln /data/file', {
          volumeMounts: [{ name: 'd', mountPath: '/data' }],
        }),
      ],
      volumes: [{ name: 'd', persistentVolumeClaim: { claimName: 'data' } }],
    });
  }

  // The tests' pods start together (they are independent); each test waits for its own.
  beforeAll(async () => {
    ns = await throwawayNamespace('runner');
    hostDir = await mkdtemp(join(tmpdir(), 'sluice-runner-'));
    await Promise.all([
      createUnmapped(),
      createFull(),
      createReader(),
      createWeb(),
      createCrasher(),
      createUnhealthy(),
      createTraced(),
      createClaim(),
    ]);
  });
  afterAll(async () => {
    await ns?.delete();
    if (hostDir) await rm(hostDir, { recursive: true, force: true });
  });

  it('keeps a pod whose image has no table entry Waiting, naming the image and the table', async () => {
    const p = await waitForPod(
      ns.name,
      'unmapped',
      (p) => containerStatus(p, 'fn')?.state?.waiting?.reason === 'ImageNotInTable',
      'ImageNotInTable',
    );
    const waiting = containerStatus(p, 'fn')!.state.waiting;
    expect(waiting.message).toMatch(/image ghcr\.io\/acme\/echo:1 has no entry in \S+\/plane\/images\.yaml/);
    expect(p.status.phase).toBe('Pending');
    expect(p.status.podIP).toMatch(/^198\.18\.\d+\.\d+$/);
  });

  it('runs init containers, then a native sidecar until its startup probe passes, then the containers, with env, volumes, user and a network of their own', async () => {
    const p = await waitForPod(ns.name, 'full', isReady, 'pod full Ready');
    expect(p.status.podIP).toMatch(/^198\.18\.\d+\.\d+$/);
    expect(p.status.hostIP).toBe('198.18.0.1');
    expect(containerStatus(p, 'first')!.state.terminated).toMatchObject({ exitCode: 0, reason: 'Completed' });
    expect(containerStatus(p, 'side')).toMatchObject({ started: true, ready: true });
    expect(condition(p, 'Initialized')?.status).toBe('True');
    const out = await waitFor(
      async () => {
        const text = await logs('full', ['-c', 'main']);
        return text.includes('writable=') ? text : undefined;
      },
      { what: 'main to print everything' },
    );
    expect(out).toContain('order=init,sidecar,main,');
    expect(out).toContain(`env=hello|s3cret|full|${p.spec.nodeName}|64|full/hello`);
    expect(out).toContain(`first-ip=${p.status.podIP}\n`);
    expect(out).toContain('files=hello|s3cret|full');
    expect(out).toContain('id=1000:1000:1000,2000');
    expect(out).toContain('pwd=/shared host=full');
    // One route, to the plane's range through the node address: nothing leaves the machine.
    expect(out).toContain(
      `routes=198.18.0.0/15 via 198.18.0.1 dev eth0 src ${p.status.podIP} ;198.18.0.1 dev eth0 scope link ;`,
    );
    expect(out).toContain(
      `resolv=nameserver 198.19.0.10;search ${ns.name}.svc.cluster.local svc.cluster.local cluster.local;`,
    );
    expect(out).toContain('writable=yes');
  });

  it("authenticates with the pod's projected service-account token, and RBAC decides", async () => {
    const p = await waitForPod(ns.name, 'reader', phase('Succeeded'), 'reader Succeeded');
    // The ServiceAccount admission plugin projected the token; the runner asked TokenRequest for it.
    expect(
      p.spec.volumes.some((v: Manifest) =>
        v.projected?.sources?.some((s: Manifest) => s.serviceAccountToken),
      ),
    ).toBe(true);
    const out = await logs('reader');
    expect(out).toContain(`ns=${ns.name} env=198.19.0.1:443`);
    expect(out).toContain('own=200');
    expect(out).toContain('secrets=403');
  });

  it('decides readiness by probes: a Service sends traffic to ready pods only, by ClusterIP from the host and by name from pods', async () => {
    const ready = await waitForPod(ns.name, 'web-ready', isReady, 'web-ready Ready');
    const unready = await waitForPod(
      ns.name,
      'web-unready',
      (p) => p.status?.phase === 'Running' && containerStatus(p, 'web')?.started,
      'web-unready Running',
    );
    expect(condition(unready, 'Ready')).toMatchObject({ status: 'False', reason: 'ContainersNotReady' });
    const slice = await waitFor(
      async () => {
        const list = await getJson([
          'get',
          'endpointslices',
          '-n',
          ns.name,
          '-l',
          'kubernetes.io/service-name=web',
        ]);
        const endpoints = list.items.flatMap((s: Manifest) => s.endpoints ?? []);
        return endpoints.length === 2 ? endpoints : undefined;
      },
      { what: 'both pods in the EndpointSlice' },
    );
    const readyByIp = Object.fromEntries(slice.map((e: Manifest) => [e.addresses[0], e.conditions.ready]));
    expect(readyByIp).toEqual({ [ready.status.podIP]: true, [unready.status.podIP]: false });

    const svc = await getJson(['get', 'service', 'web', '-n', ns.name]);
    expect(contains(SERVICE_RANGE, svc.spec.clusterIP)).toBe(true);
    // kube-proxy programs the Service within its sync period; then every answer is the ready pod's.
    await waitFor(async () => (await curl(`http://${svc.spec.clusterIP}/`, ['-m', '2'])).status === 200, {
      what: 'the ClusterIP to answer from the host',
    });
    for (let i = 0; i < 5; i++) {
      const r = await curl(`http://${svc.spec.clusterIP}/`);
      expect(r.status).toBe(200);
      expect(r.body.trim()).toBe('web-ready');
    }
    await pod('client', {
      restartPolicy: 'Never',
      containers: [
        shell(
          'c',
          `for host in web web.${ns.name} web.${ns.name}.svc.cluster.local; do echo "$host=$(curl -s http://$host/)"; done; ` +
            'echo "outside=$(curl -s -m 2 -o /dev/null -w %{http_code} http://192.0.2.2:2024/ 2>&1)"',
        ),
      ],
    });
    await waitForPod(ns.name, 'client', phase('Succeeded'), 'client Succeeded');
    const out = await logs('client');
    expect(out).toContain('web=web-ready');
    expect(out).toContain(`web.${ns.name}=web-ready`);
    expect(out).toContain(`web.${ns.name}.svc.cluster.local=web-ready`);
    // No route to this machine's own subnet, let alone beyond.
    expect(out).toMatch(/outside=000/);
  });

  it('restarts an exiting container with back-off (CrashLoopBackOff) and keeps the previous log', async () => {
    const p = await waitForPod(
      ns.name,
      'crasher',
      (p) => containerStatus(p, 'c')?.state?.waiting?.reason === 'CrashLoopBackOff',
      'CrashLoopBackOff',
    );
    const status = containerStatus(p, 'c')!;
    expect(status.restartCount).toBeGreaterThanOrEqual(1);
    expect(status.lastState.terminated).toMatchObject({ exitCode: 3, reason: 'Error' });
    expect(status.state.waiting.message).toMatch(/^back-off \d+s restarting failed container=c pod=crasher_/);
    expect(await logs('crasher', ['--previous'])).toMatch(/^run at \d+\n$/);
    const events = await getJson([
      'get',
      'events',
      '-n',
      ns.name,
      '--field-selector',
      'involvedObject.name=crasher,reason=BackOff',
    ]);
    expect(events.items.length).toBeGreaterThan(0);
  });

  it('restarts a container whose liveness probe fails', async () => {
    const p = await waitForPod(
      ns.name,
      'unhealthy',
      (p) => containerStatus(p, 'c')?.restartCount >= 1,
      'a restart',
    );
    // SIGTERM ended it (sleep does not trap it): 128 + 15.
    expect(containerStatus(p, 'c')!.lastState.terminated.exitCode).toBe(143);
    const events = await getJson([
      'get',
      'events',
      '-n',
      ns.name,
      '--field-selector',
      'involvedObject.name=unhealthy,reason=Unhealthy',
    ]);
    expect(events.items[0].message).toMatch(/^Liveness probe failed/);
  });

  it('on deletion runs preStop, sends SIGTERM, and SIGKILLs what outlives the grace period', async () => {
    const trace = join(hostDir, 'trace');
    await waitForPod(ns.name, 'polite', isReady, 'polite Ready');
    await waitForPod(ns.name, 'stubborn', isReady, 'stubborn Ready');
    const began = Date.now();
    const del = await kubectl(['delete', 'pod', 'polite', 'stubborn', '-n', ns.name, '--wait=true']);
    expect(del.code, del.stderr).toBe(0);
    const tookMs = Date.now() - began;
    const lines = (await readFile(join(trace, 'log'), 'utf8')).trim().split('\n').sort();
    expect(lines).toEqual(['polite:prestop', 'polite:term', 'stubborn:prestop']);
    // The stubborn pod went at its 2 s grace period, the polite one at once: not the 30 s.
    expect(tookMs).toBeGreaterThanOrEqual(2_000);
    expect(tookMs).toBeLessThan(15_000);
    const killing = await getJson([
      'get',
      'events',
      '-n',
      ns.name,
      '--field-selector',
      'involvedObject.name=stubborn,reason=Killing',
    ]);
    expect(killing.items.length).toBe(1);
  });

  it('follows logs with kubectl logs -f until the container exits, and finishes the pod', async () => {
    await pod('counter', {
      restartPolicy: 'Never',
      containers: [shell('c', 'for i in 1 2 3; do echo "line $i"; sleep 0.2; done')],
    });
    await waitForPod(
      ns.name,
      'counter',
      (p) => containerStatus(p, 'c')?.state?.running || p.status?.phase === 'Succeeded',
      'counter started',
    );
    expect(await logs('counter', ['-f'])).toBe('line 1\nline 2\nline 3\n');
    const done = await waitForPod(ns.name, 'counter', phase('Succeeded'), 'Succeeded');
    expect(containerStatus(done, 'c')!.state.terminated).toMatchObject({ exitCode: 0, reason: 'Completed' });
    expect(condition(done, 'Ready')).toMatchObject({ status: 'False', reason: 'PodCompleted' });
  });

  it('mounts a claim that the local-path provisioner bound (default StorageClass)', async () => {
    await waitForPod(ns.name, 'writer', phase('Succeeded'), 'writer Succeeded', 90_000);
    const pvc = await getJson(['get', 'pvc', 'data', '-n', ns.name]);
    expect(pvc.status.phase).toBe('Bound');
    expect(pvc.spec.storageClassName).toBe('local-path');
    const pv = await getJson(['get', 'pv', pvc.spec.volumeName]);
    expect(await readFile(join(pv.spec.hostPath.path, 'file'), 'utf8')).toBe('persisted\n');
  });
});
