import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { SettingError } from '../common/errors.ts';
import { startSluice } from '../harness/process.ts';
import { loadOperatorConfig } from '../operator/config.ts';

describe('sluice operator settings', () => {
  it('defaults (SPEC §3): all namespaces, admin on 0.0.0.0:8081, no leader election off-cluster', () => {
    const config = loadOperatorConfig([], {});
    expect(config).toMatchObject({
      kubeconfig: '',
      namespace: '',
      metrics: { host: '0.0.0.0', port: 8081 },
      leaderElect: false,
      gpuResourceName: 'nvidia.com/gpu',
      workers: 4,
      nats: '',
      mapStreamReplicas: 1,
    });
  });

  it('takes the servers of a NATS cluster, and how many copies of each map stream to keep', () => {
    const config = loadOperatorConfig(['--nats=nats://a:4222,nats://b:4222', '--map-stream-replicas=3'], {});
    expect([config.nats, config.mapStreamReplicas]).toEqual(['nats://a:4222,nats://b:4222', 3]);
  });

  it('leader election defaults on inside a cluster; identity and Lease namespace from the pod', () => {
    const config = loadOperatorConfig([], {
      KUBERNETES_SERVICE_HOST: '10.0.0.1',
      POD_NAME: 'sluice-operator-abc',
      POD_NAMESPACE: 'sluice-system',
    });
    expect(config).toMatchObject({
      leaderElect: true,
      identity: 'sluice-operator-abc',
      leaderElectionNamespace: 'sluice-system',
    });
  });

  it('flags win over their SLUICE_* twins', () => {
    const config = loadOperatorConfig(['--workers=2'], { SLUICE_WORKERS: '9', SLUICE_NAMESPACE: 'team-a' });
    expect(config.workers).toBe(2);
    expect(config.namespace).toBe('team-a');
  });

  const bad: [string, string[], Record<string, string>, string][] = [
    ['zero workers', ['--workers=0'], {}, '--workers (SLUICE_WORKERS)'],
    [
      'leader-elect not a boolean',
      [],
      { SLUICE_LEADER_ELECT: 'maybe' },
      '--leader-elect (SLUICE_LEADER_ELECT)',
    ],
    ['metrics without a port', ['--metrics=localhost'], {}, '--metrics (SLUICE_METRICS)'],
    ['namespace not a DNS label', ['--namespace=Team_A'], {}, '--namespace (SLUICE_NAMESPACE)'],
    ['nats not a nats URL', ['--nats=http://x:4222'], {}, '--nats (SLUICE_NATS)'],
    ['one of the NATS servers not a nats URL', ['--nats=nats://a:4222,b:4222'], {}, '--nats (SLUICE_NATS)'],
    ['more map stream copies than JetStream keeps', ['--map-stream-replicas=7'], {}, '--map-stream-replicas'],
    ['gpu resource without a vendor', ['--gpu-resource-name=gpu'], {}, '--gpu-resource-name'],
    ['lease too short', ['--lease-duration=1'], {}, '--lease-duration'],
  ];
  for (const [name, argv, env, setting] of bad) {
    it(`refuses ${name}`, () => {
      expect(() => loadOperatorConfig(argv, env)).toThrow(SettingError);
      expect(() => loadOperatorConfig(argv, env)).toThrow(setting);
    });
  }

  it('the CLI exits 2 with one line naming the bad setting', async () => {
    const child = startSluice(['operator', '--workers=-1']);
    const [code] = await once(child.child, 'exit');
    expect(code).toBe(2);
    const lines = child.output().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^sluice operator: invalid setting --workers \(SLUICE_WORKERS\)/);
  });

  it('an unreadable kubeconfig is a clear error, not a stack of client internals', async () => {
    const child = startSluice(['operator', '--kubeconfig=/nonexistent/kubeconfig', '--metrics=127.0.0.1:0']);
    const [code] = await once(child.child, 'exit');
    expect(code).toBe(1);
    expect(child.output().trim()).toMatch(
      /^sluice operator: cannot read kubeconfig \/nonexistent\/kubeconfig: ENOENT[^\n]*$/,
    );
  });
});
