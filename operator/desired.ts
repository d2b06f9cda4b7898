import { createHash } from 'node:crypto';
import { PROXY_NODE_FLAGS, proxyFlags } from '../api/v1alpha1/proxy-flags.ts';
import { API_VERSION, ingressPath, KIND, PROXY_ADMIN_PORT, PROXY_PORT } from '../api/v1alpha1/schema.ts';
import type { OperatorConfig } from './config.ts';
import type { FunctionView } from './function.ts';
import type { KubeObject, OwnerReference } from './kube.ts';
import { ownedName, SECRET } from './reconciler-io.ts';

/** What the builders need from the operator's settings (the lockdown ones off when left out). */
export type BuilderConfig = Pick<
  OperatorConfig,
  'proxyImage' | 'nats' | 'ingressClass' | 'gpuResourceName' | 'maxDrain'
> &
  Partial<
    Pick<
      OperatorConfig,
      'natsAuth' | 'networkPolicy' | 'proxyFromNamespaces' | 'adminFromNamespaces' | 'activator'
    >
  >;

export const FIELD_MANAGER = 'sluice-operator';
export const HASH_ANNOTATION = 'sluice.dev/desired-hash';
export const FUNCTION_LABEL = 'sluice.dev/function';
export const AUTH_MOUNT = '/etc/sluice/auth';
export const NATS_CREDENTIALS_MOUNT = '/etc/sluice/nats';
/** The key of the function's credentials Secret that the sidecar mounts. */
export const NATS_CREDENTIALS_KEY = 'nats.creds';
/** Node label set by NVIDIA's GPU feature discovery; `gpu.type` selects on it. */
export const GPU_PRODUCT_LABEL = 'nvidia.com/gpu.product';
/** Seconds of grace beyond the proxy's drain, for the function to exit after the proxy. */
const GRACE_MARGIN_SECONDS = 10;

export function labels(fn: FunctionView): Record<string, string> {
  const name = fn.metadata.name;
  return {
    [FUNCTION_LABEL]: name,
    'app.kubernetes.io/name': name,
    'app.kubernetes.io/instance': name,
    'app.kubernetes.io/component': 'function',
    'app.kubernetes.io/part-of': 'sluice',
    'app.kubernetes.io/managed-by': FIELD_MANAGER,
  };
}

export function ownerReference(fn: FunctionView): OwnerReference {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: fn.metadata.name,
    uid: fn.metadata.uid,
    controller: true,
    blockOwnerDeletion: true,
  };
}

function metadata(fn: FunctionView, extra: Record<string, unknown> = {}) {
  return {
    name: fn.metadata.name,
    namespace: fn.metadata.namespace,
    labels: labels(fn),
    ownerReferences: [ownerReference(fn)],
    ...extra,
  };
}

/**
 * Seconds a pod's sidecar lets its streams finish when told to stop (a scale-down, a rollout):
 * the longest a stream may last, so none is cut, up to the operator's --max-drain.
 */
export function drainSeconds(fn: FunctionView, config: BuilderConfig): number {
  return Math.min(fn.spec.streaming.maxDurationSeconds, config.maxDrain);
}

/**
 * Whether the function's sidecars connect to NATS with credentials of their own (a Secret the
 * operator issues): whenever NATS is locked down, as every sidecar reports its load there.
 */
export function wantsNatsCredentials(_fn: FunctionView, config: BuilderConfig): boolean {
  return Boolean(config.nats && config.natsAuth);
}

/** The Secret holding the function's NATS credentials: `<name>-nats-credentials`. */
export function natsCredentialsSecretName(fn: FunctionView): string {
  return ownedName(SECRET, fn.metadata.name);
}

/** The sidecar's flags in a pod: the pod's ports, the operator's NATS and drain, the mounted tokens. */
export function proxyArgs(fn: FunctionView, config: BuilderConfig): string[] {
  return proxyFlags(fn, {
    drain: drainSeconds(fn, config),
    nats: config.nats,
    authTokensFile: `${AUTH_MOUNT}/tokens`,
    natsCredentialsFile: wantsNatsCredentials(fn, config)
      ? `${NATS_CREDENTIALS_MOUNT}/${NATS_CREDENTIALS_KEY}`
      : undefined,
    // The kubelet expands $(VAR) from the container's env: an activator reaches the pod by IP.
    advertise: config.nats ? `http://$(SLUICE_POD_IP):${PROXY_PORT}` : undefined,
  });
}

/** The sidecar's Secret volumes: the auth tokens and the NATS credentials, each when wanted. */
function sidecarSecrets(fn: FunctionView, config: BuilderConfig) {
  const secrets: { volume: string; secret: string; key: string; path: string; mount: string }[] = [];
  if (fn.spec.auth) {
    secrets.push({
      volume: 'auth-tokens',
      secret: fn.spec.auth.secretName,
      key: 'tokens',
      path: 'tokens',
      mount: AUTH_MOUNT,
    });
  }
  if (wantsNatsCredentials(fn, config)) {
    secrets.push({
      volume: 'nats-credentials',
      secret: natsCredentialsSecretName(fn),
      key: NATS_CREDENTIALS_KEY,
      path: NATS_CREDENTIALS_KEY,
      // No subPath: Kubernetes then updates the file in place when the credentials are renewed.
      mount: NATS_CREDENTIALS_MOUNT,
    });
  }
  return {
    volumeMounts: secrets.length
      ? secrets.map((s) => ({ name: s.volume, mountPath: s.mount, readOnly: true }))
      : undefined,
    volumes: secrets.length
      ? secrets.map((s) => ({
          name: s.volume,
          secret: { secretName: s.secret, items: [{ key: s.key, path: s.path }] },
        }))
      : undefined,
  };
}

const restricted = {
  allowPrivilegeEscalation: false,
  capabilities: { drop: ['ALL'] },
};

function nonEmpty<T extends object>(value: T | undefined): T | undefined {
  return value && Object.keys(value).length > 0 ? value : undefined;
}

/** Quantities as the API server writes them back: strings. */
function quantities(list: Record<string, string | number> | undefined): Record<string, string> | undefined {
  return list && nonEmpty(Object.fromEntries(Object.entries(list).map(([k, v]) => [k, String(v)])));
}

/** Drops undefined fields, so the applied intent names only what Sluice decides. */
function compact<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

export function desiredDeployment(fn: FunctionView, config: BuilderConfig): KubeObject {
  const { spec } = fn;
  const gpuResource = spec.gpu.resourceName || config.gpuResourceName;
  const gpus = spec.gpu.count;
  const resources = {
    requests: quantities(spec.resources?.requests),
    limits: quantities({ ...spec.resources?.limits, ...(gpus > 0 ? { [gpuResource]: gpus } : {}) }),
  };
  const nodeSelector = nonEmpty({
    ...spec.nodeSelector,
    ...(gpus > 0 && spec.gpu.type ? { [GPU_PRODUCT_LABEL]: spec.gpu.type } : {}),
  });
  const tolerations = [
    ...(spec.tolerations ?? []),
    ...(gpus > 0 ? [{ key: gpuResource, operator: 'Exists', effect: 'NoSchedule' }] : []),
  ];
  const podLabels = labels(fn);
  const secrets = sidecarSecrets(fn, config);
  return compact({
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: metadata(fn),
    // No replicas: the reconciler adds the autoscaler's count when it applies, and changes it
    // through the scale subresource.
    spec: {
      selector: { matchLabels: { [FUNCTION_LABEL]: fn.metadata.name } },
      template: {
        metadata: { labels: podLabels },
        spec: {
          terminationGracePeriodSeconds: drainSeconds(fn, config) + GRACE_MARGIN_SECONDS,
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
          nodeSelector,
          tolerations: tolerations.length > 0 ? tolerations : undefined,
          containers: [
            {
              name: 'function',
              image: spec.image,
              command: spec.command?.length ? spec.command : undefined,
              args: spec.args?.length ? spec.args : undefined,
              env: spec.env?.length ? spec.env : undefined,
              ports: [{ name: 'function', containerPort: spec.port, protocol: 'TCP' }],
              resources: nonEmpty(compact(resources)),
              securityContext: restricted,
            },
            {
              name: 'sluice-proxy',
              image: config.proxyImage,
              // The image's entrypoint is the sluice CLI (tini -- node bin/sluice.js).
              args: ['proxy', ...proxyArgs(fn, config)],
              env: [
                { name: 'SLUICE_REPLICA', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'SLUICE_POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
                { name: 'NODE_OPTIONS', value: PROXY_NODE_FLAGS.join(' ') },
              ],
              ports: [
                { name: 'http', containerPort: PROXY_PORT, protocol: 'TCP' },
                { name: 'admin', containerPort: PROXY_ADMIN_PORT, protocol: 'TCP' },
              ],
              readinessProbe: {
                httpGet: { path: '/readyz', port: 'admin' },
                periodSeconds: 5,
                failureThreshold: 2,
              },
              livenessProbe: {
                httpGet: { path: '/healthz', port: 'admin' },
                periodSeconds: 10,
                failureThreshold: 3,
              },
              resources: { requests: { cpu: '50m', memory: '64Mi' }, limits: { memory: '256Mi' } },
              securityContext: { ...restricted, readOnlyRootFilesystem: true },
              volumeMounts: secrets.volumeMounts,
            },
          ],
          volumes: secrets.volumes,
        },
      },
    },
  });
}

const TRAEFIK_SERVERS_SCHEME = 'traefik.ingress.kubernetes.io/service.serversscheme';

export function desiredService(fn: FunctionView): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    // Traefik speaks HTTP/2 to every function (the port speaks h2c whatever spec.protocol is).
    // Over HTTP/1.1 it can cut a POST's stream just after it starts: Go's server closes the
    // client's body when the answer's head goes out, while the transport still reads it once
    // more after sending it, and then drops the connection to the pod (golang/go#40747,
    // traefik/traefik#11767). Go's HTTP/2 transport makes that read before the body's last byte
    // leaves. It reads the scheme from the Service, not the Ingress.
    metadata: metadata(fn, { annotations: { [TRAEFIK_SERVERS_SCHEME]: 'h2c' } }),
    spec: {
      type: 'ClusterIP',
      selector: { [FUNCTION_LABEL]: fn.metadata.name },
      ports: [
        {
          name: 'http',
          port: 80,
          targetPort: 'http',
          protocol: 'TCP',
          // The proxy speaks HTTP/1.1 and h2c on this port; h2c tells ingress controllers and
          // gateways to use HTTP/2 to it, which gRPC needs end to end.
          ...(h2c(fn) ? { appProtocol: 'kubernetes.io/h2c' } : {}),
        },
      ],
    },
  };
}

function h2c(fn: FunctionView): boolean {
  return fn.spec.protocol === 'h2c';
}

/** ingress-nginx settings that keep it from buffering or cutting off a long event stream. */
export function streamingAnnotations(fn: FunctionView): Record<string, string> {
  // nginx's read timeout counts silence between two reads: it must outlast the proxy's own idle
  // limit, so that the proxy (which sends a clean SSE error) is the one that ends a quiet stream.
  const readTimeout = String(fn.spec.streaming.idleTimeoutSeconds + 30);
  return {
    'nginx.ingress.kubernetes.io/proxy-buffering': 'off',
    'nginx.ingress.kubernetes.io/proxy-request-buffering': 'off',
    'nginx.ingress.kubernetes.io/proxy-http-version': '1.1',
    'nginx.ingress.kubernetes.io/proxy-read-timeout': readTimeout,
    'nginx.ingress.kubernetes.io/proxy-send-timeout': readTimeout,
    // gRPC to the sidecar (grpc_pass, over h2c); the timeouts above apply to it as well.
    ...(h2c(fn) ? { 'nginx.ingress.kubernetes.io/backend-protocol': 'GRPC' } : {}),
  };
}

/** undefined when the function asks for no Ingress. */
export function desiredIngress(fn: FunctionView, config: BuilderConfig): KubeObject | undefined {
  const { ingress } = fn.spec;
  if (!ingress.enabled) return undefined;
  const className = ingress.className || config.ingressClass;
  return compact({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'Ingress',
    metadata: metadata(fn, { annotations: streamingAnnotations(fn) }),
    spec: {
      ingressClassName: className || undefined,
      tls: ingress.tlsSecretName
        ? [{ hosts: ingress.host ? [ingress.host] : undefined, secretName: ingress.tlsSecretName }]
        : undefined,
      rules: [
        {
          host: ingress.host || undefined,
          http: {
            paths: [
              {
                path: ingressPath(fn),
                pathType: 'Prefix',
                backend: { service: { name: fn.metadata.name, port: { name: 'http' } } },
              },
            ],
          },
        },
      ],
    },
  });
}

/** Where users curl: the ingress host when set, else the in-cluster Service. */
export function functionUrl(fn: FunctionView, ingressAddress = ''): string {
  const { ingress } = fn.spec;
  if (ingress.enabled && (ingress.host || ingressAddress)) {
    const scheme = ingress.tlsSecretName ? 'https' : 'http';
    return `${scheme}://${ingress.host || ingressAddress}${ingressPath(fn)}`;
  }
  return `http://${fn.metadata.name}.${fn.metadata.namespace}.svc`;
}

/** A short digest of an object's intent, stored on it so a changed intent is seen without a diff. */
export function desiredHash(object: KubeObject): string {
  return createHash('sha256').update(JSON.stringify(object)).digest('hex').slice(0, 16);
}
