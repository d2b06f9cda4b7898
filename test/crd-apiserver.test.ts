import { ApiException } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GROUP, PLURAL, VERSION, withDefaults } from '../api/v1alpha1/schema.ts';
import { waitFor } from '../common/net.ts';
import { fullSpec, invalidCases, streamingFunction } from './crd-cases.ts';
import { clients, kubectl, type Namespace, throwawayNamespace } from './support/cluster.ts';

// The generated CRD in the real kube-apiserver (applied by test/global-setup.ts): bad resources
// are refused by the server itself, naming the field; defaults come from the server.

const { custom } = clients();
let ns: Namespace;

beforeAll(async () => {
  ns = await throwawayNamespace('crd');
});
afterAll(async () => {
  await ns?.delete();
});

function create(name: string, spec: Record<string, unknown>) {
  return custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    plural: PLURAL,
    namespace: ns.name,
    body: streamingFunction(name, spec, ns.name),
  });
}

async function read(name: string) {
  return (await custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    plural: PLURAL,
    namespace: ns.name,
    name,
  })) as { spec: Record<string, unknown>; status?: Record<string, unknown> };
}

/** The API server's refusal: HTTP status and the Status object's message. */
async function refusal(promise: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await promise;
  } catch (err) {
    if (!(err instanceof ApiException)) throw err;
    const body = typeof err.body === 'string' ? JSON.parse(err.body) : err.body;
    return { code: err.code, message: String(body.message) };
  }
  throw new Error('the API server accepted it');
}

describe('the API server refuses invalid StreamingFunctions, naming the field', () => {
  it.each(invalidCases.map((c, i) => ({ ...c, index: i })))(
    '$why → $path',
    async ({ spec, path, message, name, index }) => {
      const refused = await refusal(create(name ?? `bad-${index}`, spec));
      expect(refused.code).toBe(422);
      expect(refused.message).toContain(path);
      if (message) expect(refused.message).toContain(message);
    },
  );
});

describe('valid StreamingFunctions round-trip', () => {
  it('a minimal one comes back with the defaults zod applies, filled in by the server', async () => {
    await create('minimal', { image: 'ghcr.io/acme/echo:1' });
    const stored = await read('minimal');
    expect(stored.spec).toEqual(withDefaults({ image: 'ghcr.io/acme/echo:1' }));
  });

  it('a full one comes back as written', async () => {
    await create('full', fullSpec);
    expect((await read('full')).spec).toEqual(fullSpec);
  });

  it('a partial object gets its missing siblings defaulted', async () => {
    await create('partial', { image: 'i', gpu: { count: 1 }, scaling: { maxReplicas: 3 } });
    const { spec } = await read('partial');
    expect(spec.gpu).toEqual({ count: 1, resourceName: 'nvidia.com/gpu', type: '' });
    expect(spec.scaling).toEqual({
      minReplicas: 1,
      maxReplicas: 3,
      concurrency: 8,
      targetConcurrency: 0,
      scaleDownDelaySeconds: 60,
      coldStartTimeoutSeconds: 600,
      queueTimeoutSeconds: 30,
    });
  });
});

describe('kubectl', () => {
  it('explain sfn.spec.gpu documents every field', async () => {
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    const out = await waitFor(
      async () => {
        const r = await kubectl(['explain', 'sfn.spec.gpu']);
        return r.code === 0 && r.stdout;
      },
      { timeoutMs: 20_000, what: 'kubectl explain sfn.spec.gpu' },
    );
    expect(out).toContain('KIND:       StreamingFunction');
    for (const field of ['count\t<integer>', 'resourceName\t<string>', 'type\t<string>'])
      expect(out).toContain(field);
    expect(out).toContain('nvidia.com/gpu.product');
    expect(out).toContain('Default: nvidia.com/gpu');
  });

  it('get sfn prints GPU, Ready, Replicas, URL and Age from spec and status', async () => {
    await create('columns', { image: 'i', gpu: { count: 4 } });
    const status = {
      replicas: 1,
      readyReplicas: 1,
      selector: 'sluice.dev/function=columns',
      url: 'http://fn.example.com/columns',
      conditions: [
        {
          type: 'Ready',
          status: 'True',
          reason: 'Available',
          message: '',
          lastTransitionTime: new Date().toISOString(),
        },
      ],
    };
    const patched = await kubectl([
      'patch',
      'sfn',
      'columns',
      '-n',
      ns.name,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status }),
    ]);
    expect(patched.stderr).toBe('');
    const table = await kubectl(['get', 'sfn', 'columns', '-n', ns.name]);
    const [header, row] = table.stdout.trim().split('\n');
    expect(header?.split(/\s+/)).toEqual(['NAME', 'GPU', 'READY', 'REPLICAS', 'URL', 'AGE']);
    expect(row?.split(/\s+/).slice(0, 5)).toEqual([
      'columns',
      '4',
      'True',
      '1',
      'http://fn.example.com/columns',
    ]);
    // category all
    expect((await kubectl(['get', 'all', '-n', ns.name])).stdout).toContain(
      'streamingfunction.sluice.dev/columns',
    );
  });

  it('status is a subresource: a spec write does not change it', async () => {
    await create('status-only', { image: 'i' });
    await kubectl([
      'patch',
      'sfn',
      'status-only',
      '-n',
      ns.name,
      '--type=merge',
      '-p',
      '{"status":{"url":"http://x"}}',
    ]);
    expect((await read('status-only')).status).toBeUndefined();
  });

  it('scale sets spec.scaling.minReplicas, within maxReplicas', async () => {
    await create('scaled', { image: 'i', scaling: { maxReplicas: 3 } });
    const up = await kubectl(['scale', 'sfn', 'scaled', '-n', ns.name, '--replicas=3']);
    expect(up.code).toBe(0);
    expect((await read('scaled')).spec.scaling).toMatchObject({ minReplicas: 3 });
    const tooMany = await kubectl(['scale', 'sfn', 'scaled', '-n', ns.name, '--replicas=4']);
    expect(tooMany.code).not.toBe(0);
    expect(tooMany.stderr).toContain('spec.scaling.minReplicas');
    expect((await read('scaled')).spec.scaling).toMatchObject({ minReplicas: 3 });
    const zero = await kubectl(['scale', 'sfn', 'scaled', '-n', ns.name, '--replicas=0']);
    expect(zero.code).toBe(0);
    expect((await read('scaled')).spec.scaling).toMatchObject({ minReplicas: 0 });
  });
});
