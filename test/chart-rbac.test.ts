// The pieces the end-to-end RBAC comparison (test/e2e-gpu.test.ts) stands on: how a request maps
// to the attributes RBAC authorizes, and how rules expand. Pure logic, table-style.
import { describe, expect, it } from 'vitest';
import { grants, requestAttributes } from './support/rbac.ts';

describe('requestAttributes (kube-apiserver RequestInfo rules)', () => {
  const table: [string, string, string | undefined][] = [
    ['GET', '/apis/sluice.dev/v1alpha1/streamingfunctions?limit=500', '|sluice.dev|streamingfunctions|list'],
    [
      'GET',
      '/apis/sluice.dev/v1alpha1/namespaces/a/streamingfunctions?watch=true&resourceVersion=5',
      'a|sluice.dev|streamingfunctions|watch',
    ],
    ['GET', '/api/v1/namespaces/a/pods?labelSelector=x%3Dy&watch=1', 'a||pods|watch'],
    ['GET', '/apis/apps/v1/namespaces/a/deployments/f', 'a|apps|deployments|get'],
    [
      'PATCH',
      '/apis/apps/v1/namespaces/a/deployments/f?fieldManager=m&force=true',
      'a|apps|deployments|patch',
    ],
    [
      'PATCH',
      '/apis/sluice.dev/v1alpha1/namespaces/a/streamingfunctions/f/status',
      'a|sluice.dev|streamingfunctions/status|patch',
    ],
    ['POST', '/api/v1/namespaces/a/events', 'a||events|create'],
    [
      'PUT',
      '/apis/coordination.k8s.io/v1/namespaces/s/leases/sluice-operator',
      's|coordination.k8s.io|leases|update',
    ],
    ['DELETE', '/apis/networking.k8s.io/v1/namespaces/a/ingresses/f', 'a|networking.k8s.io|ingresses|delete'],
    ['DELETE', '/api/v1/namespaces/a/pods', 'a||pods|deletecollection'],
    ['GET', '/version', undefined],
    ['GET', '/apis', undefined],
    ['GET', '/api/v1', undefined],
  ];
  it.each(table)('%s %s → %s', (method, url, expected) => {
    const a = requestAttributes(method, url);
    expect(a && `${a.namespace}|${a.apiGroup}|${a.resource}|${a.verb}`).toBe(expected);
  });
});

describe('grants', () => {
  it('expands every group × resource × verb of every rule, scoped to the Role namespace', () => {
    const set = grants('ns', [
      { apiGroups: ['', 'apps'], resources: ['services', 'deployments'], verbs: ['get'] },
      { apiGroups: ['x'], resources: ['y/status'], verbs: ['patch', 'update'] },
    ]);
    expect([...set].sort()).toEqual(
      [
        'ns||deployments|get',
        'ns||services|get',
        'ns|apps|deployments|get',
        'ns|apps|services|get',
        'ns|x|y/status|patch',
        'ns|x|y/status|update',
      ].sort(),
    );
  });
});
