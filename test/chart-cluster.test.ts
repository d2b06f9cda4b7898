// The chart against the local control plane: every rendered object accepted by a server-side
// dry-run, and `helm install --wait` of the default chart (operator + NATS JetStream StatefulSet on
// a PersistentVolumeClaim) until everything is ready, then `helm uninstall`. The pods here
// tolerate sluice.dev/simulated, so kwok plays them (test/e2e-plane.test.ts installs the chart
// with pods that really run); the claim is bound for real by the plane's local-path provisioner
// where the plane runs pods, else by a volume made for it.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SIMULATED_KEY } from '../plane/runner.ts';
import {
  applyObject,
  kubeconfigPath,
  kubectl,
  type Namespace,
  throwawayNamespace,
} from './support/cluster.ts';
import { CHART, helm, helmMissing, type Manifest, ROOT } from './support/helm.ts';
import { podsSimulated } from './support/plane.ts';

const missing = [
  helmMissing,
  ...['kube-scheduler', 'kube-controller-manager', 'kwok']
    .map((b) => join(ROOT, '.sluice', 'bin', b))
    .filter((path) => !existsSync(path)),
]
  .filter(Boolean)
  .join(', ');
if (missing) console.warn(`skipping chart cluster tests: missing ${missing} (run scripts/tools.sh)`);

describe.skipIf(Boolean(missing))('chart on the local control plane', () => {
  let ns: Namespace;
  beforeAll(async () => {
    ns = await throwawayNamespace('chart');
  });
  afterAll(async () => {
    await ns?.delete();
  });

  const variants: [string, string[]][] = [
    ['defaults (CRD, operator, RBAC, NATS)', []],
    ['an existing NATS and one watched namespace', ['nats.enabled=false', 'nats.url=nats://nats.infra:4222']],
    [
      'no CRD, no RBAC, an existing ServiceAccount',
      [
        'crds.enabled=false',
        'rbac.create=false',
        'serviceAccount.create=false',
        'serviceAccount.name=default',
      ],
    ],
  ];
  it.each(variants)('server-side dry-run accepts every object: %s', async (_name, set) => {
    const flags = set.flatMap((s) => ['--set', s]);
    if (set[0] === 'nats.enabled=false') flags.push('--set', `operator.watchNamespace=${ns.name}`);
    const rendered = await helm([
      'template',
      `dry-${randomBytes(2).toString('hex')}`,
      CHART,
      '-n',
      ns.name,
      ...flags,
    ]);
    expect(rendered.code).toBe(0);
    // --force-conflicts: the CRD is also applied, by another field manager, by the test run's setup.
    const dry = await kubectl(
      ['apply', '--server-side', '--force-conflicts', '--dry-run=server', '-n', ns.name, '-f', '-'],
      {
        input: rendered.stdout,
      },
    );
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    const applied = dry.stdout.trim().split('\n');
    const kinds = rendered.stdout.match(/^kind: /gm)!.length;
    expect(applied).toHaveLength(kinds);
    for (const line of applied) expect(line).toMatch(/serverside-applied \(server dry run\)$/);
  });

  describe('helm install --wait of the defaults', () => {
    const release = `chart-${randomBytes(2).toString('hex')}`;
    const pv = `${release}-nats-pv`;
    let output = '';

    const provisioned = !podsSimulated();
    beforeAll(async () => {
      // Without the plane's provisioner, a volume made for the NATS claim stands in for one.
      if (!provisioned)
        await applyObject(kubeconfigPath(), {
          apiVersion: 'v1',
          kind: 'PersistentVolume',
          metadata: { name: pv },
          spec: {
            capacity: { storage: '10Gi' },
            accessModes: ['ReadWriteOnce'],
            hostPath: { path: `/tmp/${pv}` },
            claimRef: { namespace: ns.name, name: `data-${release}-sluice-nats-0` },
          },
        });
      const install = await helm([
        'install',
        release,
        CHART,
        '--kubeconfig',
        kubeconfigPath(),
        '-n',
        ns.name,
        '--set',
        'crds.enabled=false',
        ...['operator', 'nats'].flatMap((part) => [
          '--set',
          `${part}.tolerations[0].key=${SIMULATED_KEY}`,
          '--set',
          `${part}.tolerations[0].operator=Exists`,
        ]),
        '--wait',
        '--timeout=150s',
      ]);
      output = install.stdout + install.stderr;
      if (install.code !== 0) throw new Error(`helm install failed: ${output}`);
    }, 200_000);

    afterAll(async () => {
      await helm(['uninstall', release, '--kubeconfig', kubeconfigPath(), '-n', ns.name, '--wait']);
      await kubectl(['delete', 'pvc', '--all', '-n', ns.name, '--wait=false']);
      await kubectl(['delete', 'pv', pv, '--wait=false']);
    });

    it('has the operator (2 replicas) and NATS (1, its volume bound) ready', async () => {
      const get = async (what: string) =>
        JSON.parse((await kubectl(['get', what, '-n', ns.name, '-o', 'json'])).stdout).items as Manifest[];
      const [deployment] = await get('deployments');
      expect(deployment!.metadata.name).toBe(`${release}-sluice-operator`);
      expect(deployment!.status.readyReplicas).toBe(2);
      const [sts] = await get('statefulsets');
      expect(sts!.metadata.name).toBe(`${release}-sluice-nats`);
      expect(sts!.status.readyReplicas).toBe(1);
      const [pvc] = await get('pvc');
      expect(pvc!.status.phase).toBe('Bound');
      if (provisioned) expect(pvc!.spec.storageClassName).toBe('local-path');
      else expect(pvc!.spec.volumeName).toBe(pv);
      const leaderRole = await kubectl([
        'auth',
        'can-i',
        'update',
        'leases',
        '-n',
        ns.name,
        `--as=system:serviceaccount:${ns.name}:${release}-sluice`,
      ]);
      expect(leaderRole.stdout.trim()).toBe('yes');
      const noSecrets = await kubectl([
        'auth',
        'can-i',
        'get',
        'secrets',
        '-A',
        `--as=system:serviceaccount:${ns.name}:${release}-sluice`,
      ]);
      expect(noSecrets.stdout.trim()).toBe('no');
    });

    it('prints NOTES with the next steps and the NATS address', () => {
      expect(output).toContain('NOTES:');
      expect(output).toContain('kubectl apply -f');
      expect(output).toContain('kubectl get sfn');
      expect(output).toContain('curl --no-buffer');
      expect(output).toContain(`nats://${release}-sluice-nats.${ns.name}.svc:4222`);
    });
  });
});
