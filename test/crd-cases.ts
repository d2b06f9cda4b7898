import { API_VERSION, KIND } from '../api/v1alpha1/schema.ts';

// StreamingFunctions that must be refused, each with the field path the refusal must name.
// test/crd.test.ts runs them through zod, test/crd-apiserver.test.ts through the real API server.

export interface InvalidCase {
  why: string;
  spec: Record<string, unknown>;
  /** The field path the API server's message names (zod's issue path must lead to it). */
  path: string;
  /** Part of the message, where the rule has its own. */
  message?: string;
  name?: string;
}

const image = 'ghcr.io/acme/echo:1';

export const invalidCases: InvalidCase[] = [
  { why: 'no image', spec: {}, path: 'spec.image' },
  { why: 'image with whitespace', spec: { image: 'ghcr.io/acme/echo 1' }, path: 'spec.image' },
  {
    why: "port is the proxy's public port",
    spec: { image, port: 8080 },
    path: 'spec.port',
    message: "proxy's",
  },
  {
    why: "port is the proxy's admin port",
    spec: { image, port: 9090 },
    path: 'spec.port',
    message: "proxy's",
  },
  { why: 'port out of range', spec: { image, port: 70000 }, path: 'spec.port' },
  { why: 'protocol neither http nor h2c', spec: { image, protocol: 'grpc' }, path: 'spec.protocol' },
  {
    why: 'gpu.type without GPUs',
    spec: { image, gpu: { type: 'NVIDIA-H100-80GB-HBM3' } },
    path: 'spec.gpu.type',
    message: 'gpu.type needs gpu.count > 0',
  },
  { why: 'negative GPU count', spec: { image, gpu: { count: -1 } }, path: 'spec.gpu.count' },
  { why: 'absurd GPU count', spec: { image, gpu: { count: 1000 } }, path: 'spec.gpu.count' },
  {
    why: 'GPU resource without a domain',
    spec: { image, gpu: { count: 1, resourceName: 'gpu' } },
    path: 'spec.gpu.resourceName',
  },
  {
    why: 'minReplicas above maxReplicas',
    spec: { image, scaling: { minReplicas: 3, maxReplicas: 2 } },
    path: 'spec.scaling.minReplicas',
    message: 'minReplicas must not exceed maxReplicas',
  },
  {
    why: 'default maxReplicas below minReplicas',
    spec: { image, scaling: { minReplicas: 2 } },
    path: 'spec.scaling.minReplicas',
  },
  { why: 'zero concurrency', spec: { image, scaling: { concurrency: 0 } }, path: 'spec.scaling.concurrency' },
  {
    why: 'replicas as a string',
    spec: { image, scaling: { minReplicas: '2' } },
    path: 'spec.scaling.minReplicas',
  },
  {
    why: 'negative queue timeout',
    spec: { image, scaling: { queueTimeoutSeconds: -1 } },
    path: 'spec.scaling.queueTimeoutSeconds',
  },
  {
    why: 'idle timeout longer than the max duration',
    spec: { image, streaming: { idleTimeoutSeconds: 7200, maxDurationSeconds: 3600 } },
    path: 'spec.streaming.idleTimeoutSeconds',
    message: 'idleTimeoutSeconds must not exceed maxDurationSeconds',
  },
  {
    why: 'heartbeat no shorter than the idle timeout',
    spec: { image, streaming: { heartbeatSeconds: 30, idleTimeoutSeconds: 30 } },
    path: 'spec.streaming.heartbeatSeconds',
    message: 'heartbeatSeconds must be shorter than idleTimeoutSeconds',
  },
  {
    why: 'relative map path',
    spec: { image, map: { path: 'predict' } },
    path: 'spec.map.path',
    message: 'must start with /',
  },
  { why: 'zero map attempts', spec: { image, map: { maxDeliver: 0 } }, path: 'spec.map.maxDeliver' },
  {
    why: 'relative ingress path',
    spec: { image, ingress: { path: 'echo' } },
    path: 'spec.ingress.path',
    message: 'must start with /',
  },
  {
    why: 'ingress path with a trailing slash',
    spec: { image, ingress: { path: '/echo/' } },
    path: 'spec.ingress.path',
  },
  {
    why: 'ingress host not a DNS name',
    spec: { image, ingress: { host: 'Bad_Host' } },
    path: 'spec.ingress.host',
  },
  {
    why: 'TLS without a host',
    spec: { image, ingress: { tlsSecretName: 'echo-tls' } },
    path: 'spec.ingress.tlsSecretName',
    message: 'tlsSecretName needs host',
  },
  {
    why: 'auth Secret name not a DNS name',
    spec: { image, auth: { secretName: 'Not A Name' } },
    path: 'spec.auth.secretName',
  },
  {
    why: 'duplicate env names',
    spec: {
      image,
      env: [
        { name: 'A', value: '1' },
        { name: 'A', value: '2' },
      ],
    },
    path: 'spec.env[1]',
  },
  {
    why: 'env with value and valueFrom',
    spec: {
      image,
      env: [{ name: 'A', value: '1', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
    },
    path: 'spec.env[0].valueFrom',
    message: 'set value or valueFrom, not both',
  },
  {
    why: 'env valueFrom with two sources',
    spec: {
      image,
      env: [
        {
          name: 'A',
          valueFrom: { fieldRef: { fieldPath: 'metadata.name' }, secretKeyRef: { name: 's', key: 'k' } },
        },
      ],
    },
    path: 'spec.env[0].valueFrom',
    message: 'valueFrom needs exactly one source',
  },
  {
    why: 'env name starting with a digit',
    spec: { image, env: [{ name: '1A', value: 'x' }] },
    path: 'spec.env[0].name',
  },
  {
    why: 'unknown toleration operator',
    spec: { image, tolerations: [{ key: 'k', operator: 'Maybe' }] },
    path: 'spec.tolerations[0].operator',
  },
  {
    why: 'CPU limit not a quantity',
    spec: { image, resources: { limits: { cpu: 'lots' } } },
    path: 'spec.resources.limits.cpu',
  },
  {
    why: 'name that cannot be a Service name',
    name: 'echo.v2',
    spec: { image },
    path: 'metadata.name',
    message: 'DNS-1035 label',
  },
];

export function streamingFunction(name: string, spec: Record<string, unknown>, namespace?: string) {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, ...(namespace ? { namespace } : {}) },
    spec,
  };
}

/** A spec that sets every field, away from its default. */
export const fullSpec = {
  image,
  command: ['python', '-m', 'server'],
  args: ['--model', 'llama'],
  env: [
    { name: 'MODEL', value: 'llama' },
    { name: 'POD', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    { name: 'TOKEN', valueFrom: { secretKeyRef: { name: 'hf', key: 'token', optional: true } } },
  ],
  port: 8000,
  protocol: 'h2c',
  gpu: { count: 2, resourceName: 'nvidia.com/gpu', type: 'NVIDIA-H100-80GB-HBM3' },
  resources: { requests: { cpu: '4', memory: '32Gi' }, limits: { cpu: 8, memory: '64Gi' } },
  nodeSelector: { 'topology.kubernetes.io/zone': 'a' },
  tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'ml', effect: 'NoSchedule' }],
  scaling: { minReplicas: 2, maxReplicas: 4, concurrency: 4, queueTimeoutSeconds: 5 },
  streaming: { heartbeatSeconds: 10, idleTimeoutSeconds: 120, maxDurationSeconds: 7200 },
  map: { enabled: false, path: '/predict', ackWaitSeconds: 30, maxDeliver: 5, resultRetentionSeconds: 900 },
  ingress: {
    enabled: true,
    host: 'fn.example.com',
    path: '/llm',
    className: 'nginx',
    tlsSecretName: 'fn-tls',
  },
  auth: { secretName: 'llm-tokens' },
};
