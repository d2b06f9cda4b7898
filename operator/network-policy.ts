import { PROXY_ADMIN_PORT, PROXY_PORT } from '../api/v1alpha1/schema.ts';
import { type BuilderConfig, FUNCTION_LABEL, labels, ownerReference } from './desired.ts';
import type { FunctionView } from './function.ts';
import type { KubeObject } from './kube.ts';

/** Pods of these namespaces (by the label Kubernetes sets on every namespace). */
function fromNamespaces(names: readonly string[]) {
  return [
    {
      namespaceSelector: {
        matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: [...names] }],
      },
    },
  ];
}

/**
 * The function's pods take traffic from other pods only on the sidecar's ports: the public
 * port from anywhere (or from `proxyFromNamespaces` and the activator's namespace), the admin port from `adminFromNamespaces`
 * (monitoring). The function's own port is in no rule, so nothing reaches the function without
 * passing the sidecar's auth and limits (the sidecar calls it over the pod's loopback, which no
 * policy filters). Kubelet probes come from the node, which policies let through. Egress is
 * left open: functions fetch models and reach NATS. undefined when policies are turned off.
 */
export function desiredNetworkPolicy(fn: FunctionView, config: BuilderConfig): KubeObject | undefined {
  if (!config.networkPolicy) return undefined;
  // The activator forwards held requests to the pods' proxy port: its namespace is always let in.
  const activatorNamespace = config.activator?.split('/')[0];
  const named = config.proxyFromNamespaces ?? [];
  const proxyFrom =
    named.length > 0 && activatorNamespace && !named.includes(activatorNamespace)
      ? [...named, activatorNamespace]
      : named;
  const adminFrom = config.adminFromNamespaces ?? [];
  const tcp = (port: number) => [{ protocol: 'TCP', port }];
  const ingress: Record<string, unknown>[] = [
    proxyFrom.length > 0
      ? { ports: tcp(PROXY_PORT), from: fromNamespaces(proxyFrom) }
      : { ports: tcp(PROXY_PORT) },
  ];
  if (adminFrom.length > 0) ingress.push({ ports: tcp(PROXY_ADMIN_PORT), from: fromNamespaces(adminFrom) });
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: {
      name: fn.metadata.name,
      namespace: fn.metadata.namespace,
      labels: labels(fn),
      ownerReferences: [ownerReference(fn)],
    },
    spec: {
      podSelector: { matchLabels: { [FUNCTION_LABEL]: fn.metadata.name } },
      policyTypes: ['Ingress'],
      ingress,
    },
  };
}
