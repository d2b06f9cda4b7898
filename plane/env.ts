// A container's environment and command line as the kubelet builds them: image ENV, then the
// service links, then envFrom and env in order (later wins), each value's $(VAR) references
// expanded against what came before; then $(VAR) in command and args.
import { SluiceError } from '../common/errors.ts';
import type { Container, Pod } from './types.ts';

/** A referenced ConfigMap, Secret or key is missing: CreateContainerConfigError in the pod's status. */
export class ContainerConfigError extends SluiceError {
  constructor(message: string) {
    super('ERR_CONTAINER_CONFIG', message);
  }
}

export interface EnvSources {
  /** A ConfigMap's data (undefined: not found). */
  configMap: (name: string) => Record<string, string> | undefined;
  /** A Secret's data, already base64-decoded (undefined: not found). */
  secret: (name: string) => Record<string, string> | undefined;
  /** Node allocatable, for resourceFieldRef without a limit. */
  allocatable: Record<string, string>;
}

/**
 * Kubernetes' $(VAR) expansion: a defined VAR is replaced, $$ becomes $, anything else (an
 * undefined VAR, a lone $) is left as written.
 */
export function expandReferences(input: string, vars: Map<string, string>): string {
  let out = '';
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if (c !== '$' || i + 1 >= input.length) {
      out += c;
      continue;
    }
    const next = input[i + 1];
    if (next === '$') {
      out += '$';
      i++;
    } else if (next === '(') {
      const close = input.indexOf(')', i + 2);
      if (close < 0) {
        out += input.slice(i);
        break;
      }
      const name = input.slice(i + 2, close);
      const value = vars.get(name);
      out += value ?? input.slice(i, close + 1);
      i = close;
    } else {
      out += c;
    }
  }
  return out;
}

/** metadata.labels['a'] → labels, a */
function subscript(path: string): [string, string] | undefined {
  const m = /^metadata\.(labels|annotations)\['(.*)'\]$/.exec(path);
  return m ? [m[1]!, m[2]!] : undefined;
}

export function fieldValue(pod: Pod, path: string): string {
  const meta = pod.metadata;
  const sub = subscript(path);
  if (sub) return (sub[0] === 'labels' ? meta.labels : meta.annotations)?.[sub[1]] ?? '';
  const map = (m: Record<string, string> | undefined) =>
    Object.entries(m ?? {})
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join('\n');
  switch (path) {
    case 'metadata.name':
      return meta.name;
    case 'metadata.namespace':
      return meta.namespace;
    case 'metadata.uid':
      return meta.uid;
    case 'metadata.labels':
      return map(meta.labels);
    case 'metadata.annotations':
      return map(meta.annotations);
    case 'spec.nodeName':
      return pod.spec.nodeName ?? '';
    case 'spec.serviceAccountName':
      return pod.spec.serviceAccountName ?? 'default';
    case 'status.hostIP':
      return pod.status?.hostIP ?? '';
    case 'status.hostIPs':
      return (pod.status?.hostIPs ?? []).map((i) => i.ip).join(',');
    case 'status.podIP':
      return pod.status?.podIP ?? '';
    case 'status.podIPs':
      return (pod.status?.podIPs ?? []).map((i) => i.ip).join(',');
    default:
      throw new ContainerConfigError(`unsupported fieldRef ${path}`);
  }
}

const BINARY_SUFFIX: Record<string, number> = {
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
};
const DECIMAL_SUFFIX: Record<string, number> = { m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15 };

/** A resource quantity (100m, 1Gi, 2) as a number of base units. */
export function quantity(value: string): number {
  const m = /^([0-9.]+)([A-Za-z]*)$/.exec(value.trim());
  if (!m) throw new ContainerConfigError(`not a quantity: ${value}`);
  const factor = BINARY_SUFFIX[m[2]!] ?? DECIMAL_SUFFIX[m[2]!];
  if (factor === undefined) throw new ContainerConfigError(`not a quantity: ${value}`);
  return Number(m[1]) * factor;
}

/** resourceFieldRef: the limit (else the node's allocatable) divided by the divisor, rounded up. */
export function resourceValue(
  container: Container,
  resource: string,
  divisor: string | undefined,
  allocatable: Record<string, string>,
): string {
  const [kind, name] = resource.split('.') as [string, string | undefined];
  if (!name || (kind !== 'limits' && kind !== 'requests')) {
    throw new ContainerConfigError(`unsupported resourceFieldRef ${resource}`);
  }
  const set = kind === 'limits' ? container.resources?.limits : container.resources?.requests;
  const raw = set?.[name] ?? (kind === 'limits' ? allocatable[name] : '0');
  if (raw === undefined) throw new ContainerConfigError(`no ${resource} to refer to`);
  const value = quantity(String(raw)) / quantity(divisor ?? '1');
  return String(Math.ceil(value));
}

function keyOf(
  kind: 'configmap' | 'secret',
  data: Record<string, string> | undefined,
  name: string,
  key: string,
  optional: boolean | undefined,
): string | undefined {
  if (!data) {
    if (optional) return undefined;
    throw new ContainerConfigError(`${kind} "${name}" not found`);
  }
  if (!(key in data)) {
    if (optional) return undefined;
    throw new ContainerConfigError(
      `couldn't find key ${key} in ${kind === 'configmap' ? 'ConfigMap' : 'Secret'} ${name}`,
    );
  }
  return data[key];
}

/**
 * The container's variables in the order they take effect. `base` holds what comes first and
 * may be overridden (image ENV, service links, HOSTNAME).
 */
export function containerEnv(
  pod: Pod,
  container: Container,
  base: Record<string, string>,
  sources: EnvSources,
): Map<string, string> {
  const vars = new Map(Object.entries(base));
  for (const from of container.envFrom ?? []) {
    const prefix = from.prefix ?? '';
    const ref = from.configMapRef ?? from.secretRef;
    if (!ref) continue;
    const kind = from.configMapRef ? 'configmap' : 'secret';
    const data = kind === 'configmap' ? sources.configMap(ref.name) : sources.secret(ref.name);
    if (!data) {
      if (ref.optional) continue;
      throw new ContainerConfigError(`${kind} "${ref.name}" not found`);
    }
    for (const [k, v] of Object.entries(data)) vars.set(prefix + k, v);
  }
  for (const env of container.env ?? []) {
    let value: string | undefined;
    const from = env.valueFrom;
    if (!from) value = expandReferences(env.value ?? '', vars);
    else if (from.fieldRef) value = fieldValue(pod, from.fieldRef.fieldPath);
    else if (from.resourceFieldRef) {
      const ref = from.resourceFieldRef;
      const target = ref.containerName
        ? [...(pod.spec.initContainers ?? []), ...pod.spec.containers].find(
            (c) => c.name === ref.containerName,
          )
        : container;
      if (!target) throw new ContainerConfigError(`resourceFieldRef names no container ${ref.containerName}`);
      value = resourceValue(target, ref.resource, ref.divisor, sources.allocatable);
    } else if (from.configMapKeyRef) {
      const r = from.configMapKeyRef;
      value = keyOf('configmap', sources.configMap(r.name), r.name, r.key, r.optional);
    } else if (from.secretKeyRef) {
      const r = from.secretKeyRef;
      value = keyOf('secret', sources.secret(r.name), r.name, r.key, r.optional);
    } else {
      throw new ContainerConfigError(`env ${env.name}: unsupported valueFrom`);
    }
    if (value !== undefined) vars.set(env.name, value);
  }
  return vars;
}

/** The docker-links style variables for each Service (what enableServiceLinks turns on). */
export function serviceLinkEnv(
  services: {
    name: string;
    clusterIP: string;
    ports: { name?: string; port: number; protocol?: string }[];
  }[],
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const svc of services) {
    if (!svc.clusterIP || svc.clusterIP === 'None' || svc.ports.length === 0) continue;
    const prefix = svc.name.toUpperCase().replace(/-/g, '_');
    const first = svc.ports[0]!;
    env[`${prefix}_SERVICE_HOST`] = svc.clusterIP;
    env[`${prefix}_SERVICE_PORT`] = String(first.port);
    for (const p of svc.ports) {
      if (p.name) env[`${prefix}_SERVICE_PORT_${p.name.toUpperCase().replace(/-/g, '_')}`] = String(p.port);
      const proto = (p.protocol ?? 'TCP').toLowerCase();
      const base = `${prefix}_PORT_${p.port}_${proto.toUpperCase()}`;
      env[base] = `${proto}://${svc.clusterIP}:${p.port}`;
      env[`${base}_PROTO`] = proto;
      env[`${base}_PORT`] = String(p.port);
      env[`${base}_ADDR`] = svc.clusterIP;
    }
    env[`${prefix}_PORT`] = `${(first.protocol ?? 'TCP').toLowerCase()}://${svc.clusterIP}:${first.port}`;
  }
  return env;
}
