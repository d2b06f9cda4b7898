import { FUNCTION_LABEL, labels, ownerReference } from './desired.ts';
import type { FunctionView } from './function.ts';
import type { KubeObject } from './kube.ts';
import type { ActivatorEndpoints } from './reconciler-io.ts';

/** Read by the ReplicaSet controller: among pods of the same readiness, the lowest cost goes first. */
export const DELETION_COST_ANNOTATION = 'controller.kubernetes.io/pod-deletion-cost';
/** Who manages an EndpointSlice: not the endpointslice controller, which leaves it alone then. */
export const SLICE_MANAGER = 'sluice.dev.operator';
export const SLICE_MANAGER_LABEL = 'endpointslice.kubernetes.io/managed-by';

export function activatorSliceName(fn: FunctionView): string {
  // 63 - "-activator": function names are DNS-1035 labels of at most 63 characters.
  return `${fn.metadata.name.slice(0, 53)}-activator`;
}

/**
 * An extra EndpointSlice of the function's Service that lists the activator's pods (Knative's
 * serverless service in proxy mode, without mirroring the pods' endpoints): kube-proxy and
 * ingress controllers send the Service's traffic to every slice labelled with its name, so while
 * this one lists the activator and no pod is ready, requests reach the activator, which holds
 * them. The endpointslice controller ignores slices another manager owns. Emptied (not deleted)
 * once a replica is ready, so the next scale to zero changes one object in place.
 */
export function desiredActivatorSlice(fn: FunctionView, activator: ActivatorEndpoints): KubeObject {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: activatorSliceName(fn),
      namespace: fn.metadata.namespace,
      labels: {
        ...labels(fn),
        'app.kubernetes.io/component': 'activator-path',
        'kubernetes.io/service-name': fn.metadata.name,
        [SLICE_MANAGER_LABEL]: SLICE_MANAGER,
        [FUNCTION_LABEL]: fn.metadata.name,
      },
      ownerReferences: [ownerReference(fn)],
    },
    addressType: 'IPv4',
    // The Service's port is named http (desiredService); kube-proxy matches slice ports by name.
    ports: [{ name: 'http', port: activator.port, protocol: 'TCP' }],
    endpoints: activator.addresses.map((address) => ({
      addresses: [address],
      conditions: { ready: true, serving: true, terminating: false },
    })),
  };
}
