import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeApiError, KubeClient, resourcePath } from '../operator/kube.ts';
import { kubeconfigPath, type Namespace, throwawayNamespace } from './support/cluster.ts';

// The operator's own API client against the real kube-apiserver: request bodies on DELETE
// must be framed, or the server ignores them (and their preconditions) and parses the bytes
// as the next request on the kept-alive connection.
describe('KubeClient against the real API server', () => {
  let kube: KubeClient;
  let ns: Namespace;

  beforeAll(async () => {
    kube = await KubeClient.load(kubeconfigPath());
    ns = await throwawayNamespace('kube-client');
  });
  afterAll(async () => {
    kube?.close();
    await ns?.delete();
  });

  it('honours DELETE preconditions and keeps the connection usable', async () => {
    const path = resourcePath('v1', 'configmaps', ns.name);
    const created = await kube.request<{ metadata: { uid: string } }>('POST', path, {
      body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'guarded' }, data: { a: '1' } },
    });
    const one = resourcePath('v1', 'configmaps', ns.name, 'guarded');

    const refused = await kube
      .request('DELETE', one, { body: { preconditions: { uid: 'not-the-uid' } } })
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(refused).toBeInstanceOf(KubeApiError);
    expect((refused as KubeApiError).status).toBe(409);

    // The next request on the same keep-alive agent is answered normally, not with a 400.
    const still = await kube.get<{ data: Record<string, string> }>(one);
    expect(still.data).toEqual({ a: '1' });

    await kube.request('DELETE', one, { body: { preconditions: { uid: created.metadata.uid } } });
    const gone = await kube.get(one).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect((gone as KubeApiError).status).toBe(404);
  });
});
