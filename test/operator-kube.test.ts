import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import { waitFor } from '../common/net.ts';
import { type ChangeType, Informer } from '../operator/informer.ts';
import { KubeApiError, KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
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

  it('a compact informer (objects kept as JSON) follows adds, changes and deletes, handing out copies', async () => {
    const path = resourcePath('v1', 'configmaps', ns.name);
    const changes: [string, ChangeType][] = [];
    const informer = new Informer<KubeObject>(kube, {
      path,
      labelSelector: 'test=compact',
      onChange: (o, change) => changes.push([o.metadata!.name!, change]),
      log: createLogger('informer', 'silent'),
      compact: true,
    });
    await informer.start();
    try {
      const body = (data: string) => ({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'kept', labels: { test: 'compact' } },
        data: { v: data },
      });
      await kube.request('POST', path, { body: body('1') });
      const first = await waitFor(() => informer.get(ns.name, 'kept'));
      expect(first.data).toEqual({ v: '1' });
      expect(first.metadata?.managedFields).toBeUndefined();
      first.data!.v = 'changed by a reader';
      expect(informer.get(ns.name, 'kept')!.data).toEqual({ v: '1' }); // the cache is not the reader's

      await kube.mergePatch(resourcePath('v1', 'configmaps', ns.name, 'kept'), { data: { v: '2' } });
      await waitFor(() => informer.get(ns.name, 'kept')?.data?.v === '2');
      expect(informer.list().map((o) => o.data)).toEqual([{ v: '2' }]);

      await kube.request('DELETE', resourcePath('v1', 'configmaps', ns.name, 'kept'));
      await waitFor(() => informer.get(ns.name, 'kept') === undefined);
      expect(changes).toEqual([
        ['kept', 'added'],
        ['kept', 'modified'],
        ['kept', 'deleted'],
      ]);
    } finally {
      await informer.stop();
    }
  });
});
