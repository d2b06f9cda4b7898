import { z } from 'zod';
import { MAX_CONCURRENCY, MAX_MAP_DELIVER } from '../../common/limits.ts';

// The one source of the StreamingFunction resource (SPEC §1), as kubebuilder keeps api/v1 apart
// from its controllers. The operator and `sluice serve` parse with it (zod applies the defaults),
// and scripts/gen-crd.ts turns it into the CRD's OpenAPI schema (operator/crd.ts), so the API
// server applies the same defaults and bounds. api/ imports nothing but common/ and zod
// (test/boundaries.test.ts). Descriptions are user-facing: `kubectl explain sfn.spec...` prints them.

export const GROUP = 'sluice.dev';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const PLURAL = 'streamingfunctions';
export const SINGULAR = 'streamingfunction';
export const KIND = 'StreamingFunction';
export const LIST_KIND = 'StreamingFunctionList';
export const SHORT_NAMES = ['sfn'];

/** The sidecar's ports inside every function pod; the function must not listen on them. */
export const PROXY_PORT = 8080;
export const PROXY_ADMIN_PORT = 9090;

/**
 * Cross-field and format rules that only the API server evaluates (CEL). They live next to the
 * fields they guard; `refine` below repeats each one so `sluice serve` refuses the same input.
 */
export interface CelRule {
  rule: string;
  message: string;
  /** Relative to the schema the rule sits on; the API server reports this path. */
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

/**
 * Documents a schema and attaches CEL rules for the CRD, each mirrored by a zod check so that
 * parsing without an API server (`sluice serve`) refuses the same input with the same message.
 */
function guarded<T extends z.ZodType>(
  schema: T,
  description: string,
  ...checks: Array<[CelRule, (value: z.output<T>) => boolean]>
): T {
  let checked = schema;
  for (const [rule, holds] of checks) {
    const path = rule.fieldPath ? rule.fieldPath.slice(1).split('.') : [];
    checked = checked.refine(holds, { message: rule.message, path }) as T;
  }
  return checked.meta({ description, 'x-kubernetes-validations': checks.map(([rule]) => rule) });
}

const DNS_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUANTITY =
  /^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$/;
// An extended resource name such as nvidia.com/gpu or amd.com/gpu (domain-prefixed).
const EXTENDED_RESOURCE = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const C_IDENTIFIER_ENV = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;
const DAY = 86_400;

const seconds = (description: string, fallback: number, min: number, max: number) =>
  z.int().min(min).max(max).default(fallback).describe(description);

/** A Kubernetes resource quantity ("500m", "2Gi", 4): int-or-string, as the core API has it. */
const quantity = z
  .union([z.int().min(0), z.string().regex(QUANTITY, 'expected a quantity such as 500m or 2Gi')])
  .meta({ description: 'A resource quantity, e.g. 500m, 2, 4Gi.', 'x-kubernetes-int-or-string': true });

const keyRef = (what: string) =>
  z
    .strictObject({
      name: z.string().min(1).describe(`Name of the ${what} in the function's namespace.`),
      key: z.string().min(1).describe(`Key within the ${what}.`),
      optional: z.boolean().optional().describe(`Whether the ${what} or its key may be missing.`),
    })
    .describe(`Selects a key of a ${what}.`);

const envVar = guarded(
  z.strictObject({
    name: z
      .string()
      .regex(C_IDENTIFIER_ENV, 'must consist of letters, digits, "_", "-" or ".", not starting with a digit')
      .describe('Name of the environment variable.'),
    value: z.string().optional().describe('Literal value. Either value or valueFrom, not both.'),
    valueFrom: guarded(
      z.strictObject({
        secretKeyRef: keyRef('Secret').optional(),
        configMapKeyRef: keyRef('ConfigMap').optional(),
        fieldRef: z
          .strictObject({
            fieldPath: z.string().min(1).describe('Pod field, e.g. metadata.name or status.podIP.'),
            apiVersion: z.string().optional().describe('Schema version of fieldPath; default v1.'),
          })
          .optional()
          .describe('Selects a field of the pod (Downward API).'),
        resourceFieldRef: z
          .strictObject({
            resource: z.string().min(1).describe('Resource to expose, e.g. limits.cpu or requests.memory.'),
            containerName: z
              .string()
              .optional()
              .describe('Container whose resource is read; default the function.'),
            divisor: quantity.optional(),
          })
          .optional()
          .describe('Selects a resource limit or request of a container.'),
      }),
      'Takes the value from a Secret, ConfigMap, pod field or resource. Exactly one source.',
      [
        {
          rule: '[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), has(self.resourceFieldRef)].filter(set, set).size() == 1',
          message: 'valueFrom needs exactly one source',
        },
        (from) => Object.values(from).filter((source) => source !== undefined).length === 1,
      ],
    ).optional(),
  }),
  'An environment variable of the function container (core/v1 EnvVar).',
  [
    {
      rule: '!(has(self.value) && has(self.valueFrom))',
      message: 'set value or valueFrom, not both',
      fieldPath: '.valueFrom',
    },
    (env) => env.value === undefined || env.valueFrom === undefined,
  ],
);

const resourceList = z
  .record(z.string(), quantity)
  .describe('Resource name (cpu, memory, ephemeral-storage, ...) to quantity.');

const resources = z
  .strictObject({
    requests: resourceList
      .optional()
      .describe('Minimum resources the scheduler reserves, e.g. {cpu: "2", memory: 8Gi}.'),
    limits: resourceList.optional().describe('Maximum resources the function container may use.'),
  })
  .describe(
    'CPU and memory for the function container (core/v1 ResourceRequirements). GPUs come from spec.gpu, not from here.',
  );

const toleration = z
  .strictObject({
    key: z.string().optional().describe('Taint key; empty with operator Exists matches every taint.'),
    operator: z.enum(['Exists', 'Equal']).optional().describe('Exists or Equal (default Equal).'),
    value: z.string().optional().describe('Taint value for operator Equal.'),
    effect: z
      .enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute'])
      .optional()
      .describe('Taint effect to match; empty matches all effects.'),
    tolerationSeconds: z
      .int()
      .min(0)
      .max(DAY * 365)
      .optional()
      .describe('For NoExecute: how long the pod stays bound after the taint appears.'),
  })
  .describe('A toleration of a node taint (core/v1 Toleration).');

const gpu = guarded(
  z
    .strictObject({
      count: z
        .int()
        .min(0)
        .max(256)
        .default(0)
        .describe(
          'GPUs per replica, set as the container limit of gpu.resourceName. 0 makes a CPU function.',
        ),
      resourceName: z
        .string()
        .regex(EXTENDED_RESOURCE, 'expected a domain-prefixed extended resource such as nvidia.com/gpu')
        .default('nvidia.com/gpu')
        .describe('Extended resource the device plugin advertises: nvidia.com/gpu, amd.com/gpu, ...'),
      type: z
        .string()
        .max(253)
        .default('')
        .describe(
          'GPU product, e.g. NVIDIA-H100-80GB-HBM3: pods get a nodeSelector on the node label nvidia.com/gpu.product. Empty: any GPU.',
        ),
    })
    .prefault({}),
  'GPUs for each replica. With count > 0 pods tolerate the GPU taint and land on GPU nodes only.',
  [
    {
      rule: "self.type == '' || self.count > 0",
      message: 'gpu.type needs gpu.count > 0',
      fieldPath: '.type',
    },
    (g) => g.type === '' || g.count > 0,
  ],
);

const scaling = guarded(
  z
    .strictObject({
      minReplicas: z
        .int()
        .min(0)
        .max(1000)
        .default(1)
        .describe(
          'Replicas the operator runs; the scale subresource (kubectl scale) sets this field. 0 stops the function.',
        ),
      maxReplicas: z
        .int()
        .min(1)
        .max(1000)
        .default(1)
        .describe('Upper bound for minReplicas and for scaling through the scale subresource.'),
      concurrency: z
        .int()
        .min(1)
        .max(MAX_CONCURRENCY)
        .default(8)
        .describe(
          'Streams and map tasks in flight per replica, enforced by the proxy. Extra requests queue.',
        ),
      queueTimeoutSeconds: seconds(
        'How long an over-limit request waits for a slot before a 503 with Retry-After.',
        30,
        0,
        3600,
      ),
    })
    .prefault({}),
  'Replica count and per-replica concurrency.',
  [
    {
      rule: 'self.minReplicas <= self.maxReplicas',
      message: 'minReplicas must not exceed maxReplicas',
      fieldPath: '.minReplicas',
    },
    (s) => s.minReplicas <= s.maxReplicas,
  ],
);

const streaming = guarded(
  z
    .strictObject({
      heartbeatSeconds: seconds(
        'Send an SSE comment (": keepalive") after this long without an event, so load balancers keep the stream open. 0 turns it off.',
        15,
        0,
        3600,
      ),
      idleTimeoutSeconds: seconds('Close a stream after the function is silent this long.', 600, 1, 7 * DAY),
      maxDurationSeconds: seconds('Hard cap on the length of one stream.', 3600, 1, 7 * DAY),
    })
    .prefault({}),
  'Limits for streamed responses (text/event-stream and other chunked bodies).',
  [
    {
      rule: 'self.idleTimeoutSeconds <= self.maxDurationSeconds',
      message: 'idleTimeoutSeconds must not exceed maxDurationSeconds',
      fieldPath: '.idleTimeoutSeconds',
    },
    (s) => s.idleTimeoutSeconds <= s.maxDurationSeconds,
  ],
  [
    {
      rule: 'self.heartbeatSeconds < self.idleTimeoutSeconds',
      message: 'heartbeatSeconds must be shorter than idleTimeoutSeconds',
      fieldPath: '.heartbeatSeconds',
    },
    (s) => s.heartbeatSeconds < s.idleTimeoutSeconds,
  ],
);

const map = z
  .strictObject({
    enabled: z
      .boolean()
      .default(true)
      .describe('Serve POST <ingress path>/_sluice/map (fan-out over NATS JetStream).'),
    path: guarded(z.string().max(1024), 'Path of the function that each map input is POSTed to as JSON.', [
      { rule: "self.startsWith('/')", message: 'must start with /' },
      (path) => path.startsWith('/'),
    ]).default('/'),
    ackWaitSeconds: seconds('A task not finished by then is handed to another replica.', 60, 1, DAY),
    maxDeliver: z
      .int()
      .min(1)
      .max(MAX_MAP_DELIVER)
      .default(3)
      .describe('Attempts before an input is reported failed.'),
    resultRetentionSeconds: seconds(
      'How long map results stay in JetStream, so a broken map stream can resume.',
      600,
      1,
      7 * DAY,
    ),
  })
  .prefault({})
  .describe('Fan-out of map calls across all replicas.');

const ingress = guarded(
  z
    .strictObject({
      enabled: z.boolean().default(true).describe('Create an Ingress for the function.'),
      host: z
        .string()
        .max(253)
        .regex(DNS_SUBDOMAIN, 'expected a DNS name such as fn.example.com')
        .optional()
        .describe('Host the Ingress matches; unset matches every host.'),
      path: guarded(
        z.string().max(1024),
        'Path prefix the function is served under; default /<name>. The proxy strips it, so the function sees paths relative to it.',
        [
          {
            rule: "self == '/' || (self.startsWith('/') && !self.endsWith('/'))",
            message: 'must start with / and not end with / (or be /)',
          },
          (path) => path === '/' || (path.startsWith('/') && !path.endsWith('/')),
        ],
      ).optional(),
      className: z.string().max(253).optional().describe('IngressClass; unset uses the cluster default.'),
      tlsSecretName: z
        .string()
        .max(253)
        .regex(DNS_SUBDOMAIN, 'expected a Secret name')
        .optional()
        .describe('Secret with the TLS certificate for host.'),
    })
    .prefault({}),
  'How the function is exposed outside the cluster.',
  [
    {
      rule: '!has(self.tlsSecretName) || has(self.host)',
      message: 'tlsSecretName needs host',
      fieldPath: '.tlsSecretName',
    },
    (i) => i.tlsSecretName === undefined || i.host !== undefined,
  ],
);

const auth = z
  .strictObject({
    secretName: z
      .string()
      .max(253)
      .regex(DNS_SUBDOMAIN, 'expected a Secret name')
      .describe(
        'Secret whose key `tokens` lists accepted bearer tokens, one a line. Requests without one get 401.',
      ),
  })
  .describe('Bearer-token authentication in the proxy.');

export const streamingFunctionSpecSchema = z
  .strictObject({
    image: z
      .string()
      .min(1)
      .max(1024)
      .regex(/^\S+$/, 'must not contain whitespace')
      .describe('Container image of the function, e.g. ghcr.io/acme/llm:1.2.'),
    command: z
      .array(z.string().describe('One word of the command.'))
      .optional()
      .describe("Container command; default the image's entrypoint."),
    args: z.array(z.string().describe('One argument.')).optional().describe('Arguments to the command.'),
    env: z
      .array(envVar)
      .max(256)
      // The API server enforces this through the list-map keys below.
      .refine((list) => new Set(list.map((env) => env.name)).size === list.length, 'duplicate env name')
      .optional()
      .describe('Environment of the function container.')
      .meta({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['name'] }),
    port: guarded(
      z.int().min(1).max(65535),
      `Port the function listens on inside the pod. ${PROXY_PORT} and ${PROXY_ADMIN_PORT} belong to the sidecar proxy.`,
      [
        {
          rule: `self != ${PROXY_PORT} && self != ${PROXY_ADMIN_PORT}`,
          message: `port ${PROXY_PORT} and ${PROXY_ADMIN_PORT} are the proxy's (public and admin)`,
        },
        (port) => port !== PROXY_PORT && port !== PROXY_ADMIN_PORT,
      ],
    ).default(9000),
    protocol: z
      .enum(['http', 'h2c'])
      .default('http')
      .describe(
        'How the function speaks on its port: http (HTTP/1.1) or h2c (HTTP/2 cleartext, as gRPC servers do). Clients may use either on the proxy; with h2c, map is off (it POSTs HTTP/1.1).',
      ),
    gpu,
    resources: resources.optional(),
    nodeSelector: z
      .record(z.string(), z.string().describe('Required value of the node label.'))
      .optional()
      .describe('Node labels the pods require, merged with what gpu implies.'),
    tolerations: z
      .array(toleration)
      .max(64)
      .optional()
      .describe('Tolerations of the pods, merged with the GPU taint toleration when gpu.count > 0.'),
    scaling,
    streaming,
    map,
    ingress,
    auth: auth.optional(),
  })
  .describe('Desired state of a streaming function.');

const condition = z
  .object({
    type: z.string().describe('Ready, Available or Scheduled.'),
    status: z.enum(['True', 'False', 'Unknown']).describe('True, False or Unknown.'),
    reason: z.string().describe('CamelCase reason, e.g. InsufficientGPU.'),
    message: z.string().describe('Human-readable details.'),
    lastTransitionTime: z.string().meta({ format: 'date-time' }).describe('When status last changed.'),
    observedGeneration: z
      .int()
      .min(0)
      .optional()
      .describe('metadata.generation this condition was computed from.'),
  })
  .describe('A metav1.Condition.');

export const streamingFunctionStatusSchema = z
  .object({
    observedGeneration: z.int().min(0).optional().describe('metadata.generation the operator last acted on.'),
    conditions: z
      .array(condition)
      .optional()
      .describe('Ready, Available and Scheduled (reason InsufficientGPU when pods cannot be placed).')
      .meta({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['type'] }),
    replicas: z.int().min(0).optional().describe('Pods of the function that exist.'),
    readyReplicas: z.int().min(0).optional().describe('Pods whose function and proxy are ready.'),
    selector: z.string().optional().describe('Label selector of the pods, for the scale subresource.'),
    url: z.string().optional().describe('Where to curl the function.'),
  })
  .describe('Observed state, written by the operator.');

/** Rules on the whole object (metadata.name becomes a Service name and a path segment). The API
 * server allows no fieldPath into metadata, so the message names the field. */
export const objectRules: CelRule[] = [
  {
    rule: "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    message:
      'metadata.name must be a DNS-1035 label (a-z, 0-9, "-", starting with a letter, at most 63 characters)',
  },
];

export type StreamingFunctionSpecInput = z.input<typeof streamingFunctionSpecSchema>;
/** The spec with every default applied. */
export type StreamingFunctionSpec = z.output<typeof streamingFunctionSpecSchema>;
export type StreamingFunctionStatus = z.output<typeof streamingFunctionStatusSchema>;
export type Condition = z.output<typeof condition>;
export type EnvVar = z.output<typeof envVar>;
export type Toleration = z.output<typeof toleration>;
export type ResourceRequirements = z.output<typeof resources>;

const metadataSchema = z.looseObject({
  name: z.string().regex(DNS_LABEL, 'must be a DNS-1035 label').max(63),
  namespace: z.string().optional(),
  uid: z.string().optional(),
  generation: z.number().optional(),
  resourceVersion: z.string().optional(),
  creationTimestamp: z.union([z.string(), z.date()]).optional(),
  deletionTimestamp: z.union([z.string(), z.date()]).optional(),
  labels: z.record(z.string(), z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  finalizers: z.array(z.string()).optional(),
});

/** A whole StreamingFunction object, as read from YAML or from the API server. */
export const streamingFunctionSchema = z.object({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal(KIND),
  metadata: metadataSchema,
  spec: streamingFunctionSpecSchema,
  status: streamingFunctionStatusSchema.optional(),
});

export type StreamingFunction = z.output<typeof streamingFunctionSchema>;
export type StreamingFunctionInput = z.input<typeof streamingFunctionSchema>;

/** Applies the defaults (the same ones the CRD gives the API server); throws a ZodError. */
export function withDefaults(spec: unknown): StreamingFunctionSpec {
  return streamingFunctionSpecSchema.parse(spec);
}

/** Parses a whole object (YAML or API server); the spec comes back with defaults applied. */
export function parseStreamingFunction(object: unknown): StreamingFunction {
  return streamingFunctionSchema.parse(object);
}

/** spec.ingress.path, or its default `/<name>` (the one default a CRD cannot express). */
export function ingressPath(fn: { metadata: { name: string }; spec: StreamingFunctionSpec }): string {
  return fn.spec.ingress.path ?? `/${fn.metadata.name}`;
}
