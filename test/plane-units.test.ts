// The pod runner's pure rules, as tables: the address plan, the images table, environment and
// $(VAR) expansion, pod phase and conditions, the launch script, back-off, the network batches.
import type { lstatSync, readlinkSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  contains,
  IpPool,
  ipToInt,
  nodePodCidr,
  PLANE_RANGE,
  SERVICE_RANGE,
  SIMULATED_POD_RANGE,
} from '../plane/addresses.ts';
import {
  ContainerConfigError,
  containerEnv,
  expandReferences,
  quantity,
  serviceLinkEnv,
} from '../plane/env.ts';
import { commandLine, ImageTable, parseReference } from '../plane/images.ts';
import { tail } from '../plane/kubelet-api.ts';
import { capabilitySet, launchCommand, launchScript, quote, resolveInRoot } from '../plane/launch.ts';
import { firewallRules, sandboxBatches, sandboxName } from '../plane/network.ts';
import { Backoff } from '../plane/pod.ts';
import { healthRequest, healthStatus, resolvePort } from '../plane/probes.ts';
import { type ContainerRecord, type PodView, podConditions, podPhase, podStatus } from '../plane/status.ts';
import type { Container, Pod } from '../plane/types.ts';
import { kwokConfig } from '../scripts/cluster.ts';

describe('address plan', () => {
  it('keeps every range inside 198.18.0.0/15 and apart from each other', () => {
    for (const ip of ['198.18.1.1', '198.18.127.254', '198.18.200.1', '198.19.0.10']) {
      expect(contains(PLANE_RANGE, ip)).toBe(true);
    }
    expect(contains(SIMULATED_POD_RANGE, nodePodCidr(126).replace('.0/24', '.9'))).toBe(false);
    expect(contains(SERVICE_RANGE, '198.18.1.1')).toBe(false);
    for (const outside of ['10.0.0.1', '172.16.0.1', '192.168.1.1', '192.0.2.2']) {
      expect(contains(PLANE_RANGE, outside)).toBe(false);
    }
  });

  it.each([
    [0, '198.18.1.0/24'],
    [3, '198.18.4.0/24'],
    [126, '198.18.127.0/24'],
  ])('node %i takes %s', (index, cidr) => {
    expect(nodePodCidr(index)).toBe(cidr);
  });

  it('refuses a node index past the plan', () => {
    expect(() => nodePodCidr(127)).toThrow(RangeError);
  });

  it('hands out pod IPs round-robin, never the network or broadcast address', () => {
    const pool = new IpPool('198.18.1.0/30');
    expect([pool.allocate(), pool.allocate()]).toEqual(['198.18.1.1', '198.18.1.2']);
    expect(() => pool.allocate()).toThrow(/no free pod IP/);
    pool.release('198.18.1.1');
    expect(pool.allocate()).toBe('198.18.1.1');
  });

  it('lets a pod keep the IP it had, unless taken or outside', () => {
    const pool = new IpPool('198.18.2.0/24');
    expect(pool.claim('198.18.2.77')).toBe(true);
    expect(pool.claim('198.18.2.77')).toBe(false);
    expect(pool.claim('198.18.3.1')).toBe(false);
    expect(pool.claim('198.18.2.255')).toBe(false);
  });

  it('parses addresses strictly', () => {
    expect(ipToInt('198.18.0.1')).toBe(0xc6120001);
    expect(() => ipToInt('198.18.0')).toThrow(RangeError);
  });
});

describe('images table', () => {
  const table = ImageTable.load(undefined, { ROOT: '/repo', CACHE: '/cache' });

  it.each([
    ['nats', 'docker.io/library/nats', undefined],
    ['nats:2.11.8-alpine', 'docker.io/library/nats', '2.11.8-alpine'],
    ['ghcr.io/sluice-dev/sluice:0.1.0', 'ghcr.io/sluice-dev/sluice', '0.1.0'],
    ['localhost:5000/x/y:1', 'localhost:5000/x/y', '1'],
    ['acme/echo@sha256:abc', 'docker.io/acme/echo', undefined],
  ])('%s is %s', (ref, repository, tag) => {
    expect(parseReference(ref)).toMatchObject({ repository, tag });
  });

  it.each([
    ['ghcr.io/sluice-dev/sluice:0.1.0', ['node', 'bin/sluice.js']],
    ['docker.io/library/nats:2.11.8-alpine', ['/repo/.sluice/bin/nats-server']],
    ['sluice-examples:dev', undefined],
  ])('%s resolves with entrypoint %j', (ref, entrypoint) => {
    expect(table.resolve(ref)?.entrypoint).toEqual(entrypoint);
  });

  it('expands the ROOT and CACHE variables', () => {
    expect(table.resolve('sluice-examples-python:dev')).toMatchObject({
      workingDir: '/repo/examples',
      paths: ['/cache/venv'],
      env: { PATH: expect.stringMatching(/^\/cache\/venv\/bin:/) },
    });
  });

  it('has no entry for an unknown image, and says where the table is', () => {
    expect(table.resolve('ghcr.io/acme/echo:1')).toBeUndefined();
    expect(table.missing('ghcr.io/acme/echo:1')).toMatch(
      /image ghcr\.io\/acme\/echo:1 has no entry in .*plane\/images\.yaml/,
    );
  });

  it.each([
    ['entrypoint and cmd', undefined, undefined, ['e', 'c']],
    ['args replace cmd', undefined, ['a'], ['e', 'a']],
    ['command drops entrypoint and cmd', ['x'], undefined, ['x']],
    ['command and args', ['x'], ['a'], ['x', 'a']],
  ])('docker rule: %s', (_what, command, args, expected) => {
    expect(
      commandLine(
        { image: 'i', entrypoint: ['e'], cmd: ['c'], workingDir: '/', user: 0, env: {}, paths: [] },
        command,
        args,
      ),
    ).toEqual(expected);
  });
});

const basePod = (spec: Partial<Pod['spec']> = {}): Pod => ({
  metadata: { name: 'p', namespace: 'ns', uid: 'u-1', labels: { app: 'a', b: 'x y' } },
  spec: { nodeName: 'cpu-0', containers: [{ name: 'c', image: 'busybox' }], ...spec },
  status: { podIP: '198.18.4.2', hostIP: '198.18.0.1' },
});

describe('environment', () => {
  it.each([
    ['$(A)-$(B)', 'a-b'],
    ['$$(A)', '$(A)'],
    ['$(MISSING)', '$(MISSING)'],
    ['$(A', '$(A'],
    ['cost: $5', 'cost: $5'],
  ])('%s expands to %s', (input, expected) => {
    expect(
      expandReferences(
        input,
        new Map([
          ['A', 'a'],
          ['B', 'b'],
        ]),
      ),
    ).toBe(expected);
  });

  const sources = {
    configMap: (name: string) => (name === 'cm' ? { k: 'from-cm', other: 'o' } : undefined),
    secret: (name: string) => (name === 'sec' ? { password: 's3cret' } : undefined),
    allocatable: { cpu: '96', memory: '1Ti' },
  };

  it('builds env in order: base, envFrom, env (later wins), with valueFrom', () => {
    const container: Container = {
      name: 'c',
      image: 'busybox',
      resources: { limits: { memory: '512Mi' } },
      envFrom: [{ configMapRef: { name: 'cm' }, prefix: 'CM_' }],
      env: [
        { name: 'PATH', value: '/x:$(PATH)' },
        { name: 'POD', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
        { name: 'IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
        { name: 'LABEL', valueFrom: { fieldRef: { fieldPath: "metadata.labels['b']" } } },
        { name: 'MEM', valueFrom: { resourceFieldRef: { resource: 'limits.memory', divisor: '1Mi' } } },
        { name: 'CPU', valueFrom: { resourceFieldRef: { resource: 'limits.cpu' } } },
        { name: 'K', valueFrom: { configMapKeyRef: { name: 'cm', key: 'k' } } },
        { name: 'PW', valueFrom: { secretKeyRef: { name: 'sec', key: 'password' } } },
        { name: 'OPT', valueFrom: { secretKeyRef: { name: 'none', key: 'x', optional: true } } },
        { name: 'REF', value: '$(POD)@$(IP)' },
      ],
    };
    const env = Object.fromEntries(containerEnv(basePod(), container, { PATH: '/usr/bin' }, sources));
    expect(env).toEqual({
      PATH: '/x:/usr/bin',
      CM_k: 'from-cm',
      CM_other: 'o',
      POD: 'p',
      IP: '198.18.4.2',
      LABEL: 'x y',
      MEM: '512',
      CPU: '96',
      K: 'from-cm',
      PW: 's3cret',
      REF: 'p@198.18.4.2',
    });
  });

  it.each([
    ['a missing ConfigMap', { configMapKeyRef: { name: 'nope', key: 'k' } }, 'configmap "nope" not found'],
    [
      'a missing key',
      { configMapKeyRef: { name: 'cm', key: 'nokey' } },
      "couldn't find key nokey in ConfigMap cm",
    ],
    ['a missing Secret', { secretKeyRef: { name: 'nope', key: 'k' } }, 'secret "nope" not found'],
  ])('%s is a CreateContainerConfigError naming it', (_what, valueFrom, message) => {
    const container: Container = { name: 'c', image: 'i', env: [{ name: 'X', valueFrom }] };
    expect(() => containerEnv(basePod(), container, {}, sources)).toThrow(new ContainerConfigError(message));
  });

  it.each([
    ['100m', 0.1],
    ['2', 2],
    ['1Gi', 2 ** 30],
    ['1k', 1000],
  ])('quantity %s = %d', (q, n) => {
    expect(quantity(q)).toBeCloseTo(n);
  });

  it('writes docker-link variables for Services', () => {
    const env = serviceLinkEnv([
      { name: 'my-svc', clusterIP: '198.19.0.7', ports: [{ name: 'http', port: 80, protocol: 'TCP' }] },
      { name: 'headless', clusterIP: 'None', ports: [{ port: 4222 }] },
    ]);
    expect(env).toMatchObject({
      MY_SVC_SERVICE_HOST: '198.19.0.7',
      MY_SVC_SERVICE_PORT: '80',
      MY_SVC_SERVICE_PORT_HTTP: '80',
      MY_SVC_PORT: 'tcp://198.19.0.7:80',
      MY_SVC_PORT_80_TCP_ADDR: '198.19.0.7',
    });
    expect(Object.keys(env).some((k) => k.startsWith('HEADLESS'))).toBe(false);
  });
});

const record = (
  name: string,
  kind: ContainerRecord['kind'],
  state: ContainerRecord['state'],
  more: Partial<ContainerRecord> = {},
): ContainerRecord => ({
  name,
  image: 'busybox',
  kind,
  restartCount: 0,
  state,
  lastState: {},
  ready: false,
  started: false,
  ...more,
});
const running = { running: { startedAt: '2026-01-01T00:00:00Z' } };
const exited = (exitCode: number) => ({ terminated: { exitCode } });
const waiting = { waiting: { reason: 'ContainerCreating' } };

describe('pod status', () => {
  const view = (
    containers: ContainerRecord[],
    restartPolicy?: Pod['spec']['restartPolicy'],
    terminal = false,
  ): PodView => ({
    pod: basePod({ restartPolicy }),
    hostIP: '198.18.0.1',
    podIP: '198.18.4.2',
    startTime: '2026-01-01T00:00:00Z',
    sandboxReady: true,
    containers,
    terminal,
  });

  it.each<[string, ContainerRecord[], Pod['spec']['restartPolicy'], boolean, string]>([
    ['waiting to be created', [record('c', 'main', waiting)], undefined, false, 'Pending'],
    [
      'an init container still runs',
      [record('i', 'init', running), record('c', 'main', waiting)],
      undefined,
      false,
      'Pending',
    ],
    [
      'a started sidecar lets containers run',
      [record('s', 'sidecar', running, { started: true }), record('c', 'main', running)],
      undefined,
      false,
      'Running',
    ],
    [
      'Always: an exited container is restarted, the pod runs on',
      [record('c', 'main', exited(1))],
      'Always',
      false,
      'Running',
    ],
    ['Never: all exited 0', [record('c', 'main', exited(0))], 'Never', false, 'Succeeded'],
    [
      'Never: one failed',
      [record('a', 'main', exited(0)), record('b', 'main', exited(2))],
      'Never',
      false,
      'Failed',
    ],
    ['OnFailure: a failure is retried', [record('c', 'main', exited(1))], 'OnFailure', false, 'Running'],
    [
      'Never: a failed init container fails the pod',
      [record('i', 'init', exited(1)), record('c', 'main', waiting)],
      'Never',
      false,
      'Failed',
    ],
    ['deleted: terminal even with Always', [record('c', 'main', exited(137))], 'Always', true, 'Failed'],
  ])('%s → %s', (_what, containers, policy, terminal, phase) => {
    expect(podPhase(view(containers, policy, terminal))).toBe(phase);
  });

  it('is Ready only when every container (sidecars included) is ready', () => {
    const notReady = podConditions(
      view([
        record('s', 'sidecar', running, { started: true, ready: true }),
        record('c', 'main', running, { started: true }),
      ]),
    );
    expect(notReady.find((c) => c.type === 'Ready')).toMatchObject({
      status: 'False',
      reason: 'ContainersNotReady',
      message: 'containers with unready status: [c]',
    });
    const ready = podConditions(
      view([
        record('s', 'sidecar', running, { started: true, ready: true }),
        record('c', 'main', running, { started: true, ready: true }),
      ]),
    );
    expect(ready.map((c) => [c.type, c.status])).toEqual([
      ['PodReadyToStartContainers', 'True'],
      ['Initialized', 'True'],
      ['Ready', 'True'],
      ['ContainersReady', 'True'],
    ]);
  });

  it('keeps a condition time while its status holds, and writes IPs and container statuses', () => {
    const v = view([
      record('i', 'init', exited(0)),
      record('c', 'main', running, { started: true, ready: true }),
    ]);
    const first = podStatus(v, [], 't1');
    const second = podStatus(v, first.conditions, 't2');
    expect(second.conditions?.every((c) => c.lastTransitionTime === 't1')).toBe(true);
    expect(second).toMatchObject({
      podIP: '198.18.4.2',
      podIPs: [{ ip: '198.18.4.2' }],
      hostIP: '198.18.0.1',
      phase: 'Running',
    });
    expect(second.initContainerStatuses?.map((s) => s.name)).toEqual(['i']);
    expect(second.containerStatuses?.[0]).toMatchObject({
      name: 'c',
      ready: true,
      started: true,
      restartCount: 0,
    });
  });
});

describe('crash-loop back-off', () => {
  it('restarts at once, then waits 10 s doubling to 5 min, and forgets after 10 min of running', () => {
    const b = new Backoff();
    const waits = Array.from({ length: 8 }, () => b.next(1_000));
    expect(waits).toEqual([0, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]);
    expect(b.next(600_000)).toBe(0);
  });
});

describe('launch', () => {
  const spec = {
    netns: '/run/netns/sl-abc',
    hostname: 'pod-a',
    cgroup: '/sys/fs/cgroup/unified/sl-plane/u/c',
    root: '/s/root',
    upper: '/s/upper',
    work: '/s/work',
    mounts: [
      { source: "/v/it's", target: '/data', readOnly: true },
      { source: '/p/etc/hosts', target: '/etc/hosts', readOnly: false, file: true },
    ],
    traverse: ['/root/.cache/venv'],
    readOnlyRoot: true,
    uid: 1000,
    gid: 1000,
    groups: [2000],
    noNewPrivs: true,
    capabilities: [] as string[],
    workingDir: '/app',
    argv: ['node', 'server.js'],
  };

  it('quotes for sh', () => {
    expect(quote("it's")).toBe(`'it'\\''s'`);
  });

  it('enters the pod network, then its own mount and UTS namespaces', () => {
    const { file, args } = launchCommand(spec);
    expect(file).toBe('/usr/bin/nsenter');
    expect(args.slice(0, 8)).toEqual([
      '--net=/run/netns/sl-abc',
      '--',
      '/usr/bin/unshare',
      '--mount',
      '--uts',
      '--propagation',
      'private',
      '--',
    ]);
    expect(args.slice(-2)).toEqual(['node', 'server.js']);
  });

  it('joins the cgroup first, mounts the overlay root, volumes read-only where asked, and drops to the user', () => {
    const script = launchScript(spec).split('\n');
    expect(script[1]).toBe(`echo $$ > '/sys/fs/cgroup/unified/sl-plane/u/c/cgroup.procs'`);
    expect(script).toContain(`/usr/bin/mount --bind '/v/it'\\''s' '/s/root/data'`);
    expect(script).toContain(`/usr/bin/mount -o remount,bind,ro '/s/root/data'`);
    expect(script).toContain(`/usr/bin/mount -o remount,bind,ro '/s/root'`);
    expect(script.join('\n')).toMatch(
      /chmod o\+x '\/s\/root\/root' '\/s\/root\/root\/.cache' '\/s\/root\/root\/.cache\/venv'/,
    );
    expect(script.at(-1)).toBe(
      `exec /usr/bin/unshare --root='/s/root' --wd='/app' -- /usr/bin/setpriv --reuid=1000 --regid=1000 --groups=2000 --no-new-privs --bounding-set=-all --inh-caps=-all -- "$@"`,
    );
  });

  it.each([
    ['/var/run/secrets/x', '/run/secrets/x'],
    ['/etc/nats', '/etc/nats'],
    ['/opt/link/a', '/srv/real/a'],
    ['/opt/rel/a', '/opt/sub/a'],
    ['/opt/escape/a', '/a'],
  ])('resolves %s inside the root as %s', (path, expected) => {
    const links: Record<string, string> = {
      '/var/run': '/run',
      '/opt/link': '/srv/real',
      '/opt/rel': 'sub',
      '/opt/escape': '../../../..',
    };
    const lstat = ((p: string) => ({ isSymbolicLink: () => p in links })) as unknown as typeof lstatSync;
    const readlink = ((p: string) => links[p]) as unknown as typeof readlinkSync;
    expect(resolveInRoot(path, lstat, readlink)).toBe(expected);
  });

  it.each([
    ['nothing asked: the runtime default set', undefined, 14],
    ['drop ALL', { capabilities: { drop: ['ALL'] } }, 0],
    ['drop ALL, add NET_BIND_SERVICE', { capabilities: { drop: ['ALL'], add: ['NET_BIND_SERVICE'] } }, 1],
    ['drop one', { capabilities: { drop: ['CAP_KILL'] } }, 13],
  ])('capabilities: %s', (_what, context, count) => {
    expect(capabilitySet(context)).toHaveLength(count);
  });

  it('privileged means every capability', () => {
    expect(capabilitySet({ privileged: true })).toBe('all');
  });
});

describe('network', () => {
  it('names sandboxes with the plane prefix, short enough for a link', () => {
    const name = sandboxName('0f3c6c7e-5a0e-4a53-8f8c-3d2f1f0b6a11');
    expect(name).toMatch(/^sl-[0-9a-f]{11}$/);
  });

  it('gives a pod its /32, a route to the plane range only, and the host a /32 route back', () => {
    const { host, pod } = sandboxBatches('sl-x', '198.18.4.9');
    expect(host).toContain('route add 198.18.4.9/32 dev sl-x src 198.18.0.1');
    expect(pod).toContain('route add 198.18.0.0/15 via 198.18.0.1 dev eth0 src 198.18.4.9');
    expect(pod).not.toMatch(/default/);
  });

  it('forwards plane traffic only between the plane links, and takes plane addresses only from them', () => {
    const rules = firewallRules();
    expect(rules).toContain('ip saddr 198.18.0.0/15 oifname != "sl-*" drop');
    expect(rules).toContain('ip daddr 198.18.0.0/15 iifname != "sl-*" drop');
    expect(rules).toContain('ip daddr 198.18.0.0/15 iifname != { "lo", "sl-*" } drop');
  });
});

describe('probes', () => {
  it('resolves named ports', () => {
    const c: Container = { name: 'c', image: 'i', ports: [{ name: 'admin', containerPort: 9090 }] };
    expect(resolvePort(c, 'admin')).toBe(9090);
    expect(resolvePort(c, '8080')).toBe(8080);
    expect(() => resolvePort(c, 'nope')).toThrow(/no port named nope/);
  });

  it('frames a gRPC health check and reads its status', () => {
    expect([...healthRequest('svc')]).toEqual([0, 0, 0, 0, 5, 0x0a, 3, ...Buffer.from('svc')]);
    expect([...healthRequest('')]).toEqual([0, 0, 0, 0, 0]);
    expect(healthStatus(Buffer.from([0, 0, 0, 0, 2, 0x08, 1]))).toBe(1);
    expect(healthStatus(Buffer.from([0, 0, 0, 0, 0]))).toBe(0);
  });
});

describe('logs', () => {
  it.each([
    ['a\nb\nc\n', 2, 'b\nc\n'],
    ['a\nb\nc', 1, 'c'],
    ['a\n', 5, 'a\n'],
    ['a\nb\n', 0, ''],
    ['a\nb\n', -1, 'a\nb\n'],
  ])('tail(%j, %i) = %j', (text, lines, expected) => {
    expect(tail(text, lines)).toBe(expected);
  });
});

describe('kwok stages with a pod runner', () => {
  it('plays only the pods that tolerate sluice.dev/simulated, and still every node', async () => {
    const { parseAllDocuments } = await import('yaml');
    const stages = parseAllDocuments(await kwokConfig(false)).map((d) => d.toJSON());
    const pods = stages.filter((s) => s.kind === 'Stage' && s.spec.resourceRef.kind === 'Pod');
    expect(pods.map((s) => s.metadata.name)).toEqual(['pod-ready', 'pod-complete', 'pod-delete']);
    for (const s of pods) {
      expect(s.spec.selector.matchExpressions).toContainEqual({
        key: '.spec.tolerations.[].key',
        operator: 'In',
        values: ['sluice.dev/simulated'],
      });
    }
    const nodes = stages.filter((s) => s.kind === 'Stage' && s.spec.resourceRef.kind === 'Node');
    expect(nodes.length).toBe(2);
    for (const s of nodes) expect(JSON.stringify(s.spec.selector)).not.toContain('simulated');
    const all = parseAllDocuments(await kwokConfig(true)).map((d) => d.toJSON());
    expect(JSON.stringify(all)).not.toContain('sluice.dev/simulated');
  });
});
