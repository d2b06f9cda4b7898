import { hostname } from 'node:os';
import { Command } from 'commander';
import { z } from 'zod';
import { natsServers } from '../common/nats-servers.ts';
import {
  hostPort,
  parseCommandOptions,
  parseSettings,
  type SettingSpec,
  settingOption,
} from '../common/settings.ts';

/** Every `sluice operator` setting (SPEC §3): a flag, its SLUICE_* twin, and its default. */
export function operatorSettings(env: NodeJS.ProcessEnv = process.env) {
  return [
    {
      flag: 'kubeconfig',
      env: 'SLUICE_KUBECONFIG',
      arg: '<file>',
      default: '',
      description: 'kubeconfig (default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account)',
    },
    {
      flag: 'namespace',
      env: 'SLUICE_NAMESPACE',
      arg: '<namespace>',
      default: '',
      description: 'watch only this namespace (default: all)',
    },
    {
      flag: 'proxy-image',
      env: 'SLUICE_PROXY_IMAGE',
      arg: '<image>',
      default: 'ghcr.io/sluice-dev/sluice:0.1.0',
      description: 'image of the sluice proxy sidecar injected into every function pod',
    },
    {
      flag: 'metrics',
      env: 'SLUICE_METRICS',
      arg: '<host:port>',
      default: '0.0.0.0:8081',
      description: 'admin address (/metrics, /healthz, /readyz)',
    },
    {
      flag: 'leader-elect',
      env: 'SLUICE_LEADER_ELECT',
      arg: '<bool>',
      default: String(Boolean(env.KUBERNETES_SERVICE_HOST)),
      description: 'take a coordination.k8s.io Lease before reconciling (default: true in a cluster)',
    },
    {
      flag: 'leader-election-namespace',
      env: 'SLUICE_LEADER_ELECTION_NAMESPACE',
      arg: '<namespace>',
      default: env.POD_NAMESPACE ?? 'default',
      description: 'namespace of the Lease (default: $POD_NAMESPACE, else default)',
    },
    {
      flag: 'lease-duration',
      env: 'SLUICE_LEASE_DURATION',
      arg: '<seconds>',
      default: '15',
      description: 'a leader that has not renewed this long is replaced',
    },
    {
      flag: 'identity',
      env: 'SLUICE_IDENTITY',
      arg: '<name>',
      default: env.POD_NAME ?? `${hostname()}-${process.pid}`,
      description: 'this replica in the Lease (default: $POD_NAME, else host-pid)',
    },
    {
      flag: 'workers',
      env: 'SLUICE_WORKERS',
      arg: '<n>',
      default: '4',
      description: 'reconciles running at once (never two for the same function)',
    },
    {
      flag: 'nats',
      env: 'SLUICE_NATS',
      arg: '<url>',
      default: '',
      description: 'NATS URL passed to the sidecars and used for map streams; empty turns map off',
    },
    {
      flag: 'map-stream-replicas',
      env: 'SLUICE_MAP_STREAM_REPLICAS',
      arg: '<n>',
      default: '1',
      description: 'replicas of each function map stream: 3 on a NATS cluster of 3 or more servers',
    },
    {
      flag: 'ingress-class',
      env: 'SLUICE_INGRESS_CLASS',
      arg: '<name>',
      default: '',
      description: 'IngressClass for functions that name none',
    },
    {
      flag: 'gpu-resource-name',
      env: 'SLUICE_GPU_RESOURCE_NAME',
      arg: '<name>',
      default: 'nvidia.com/gpu',
      description: 'GPU extended resource for functions that name none',
    },
    {
      flag: 'max-drain',
      env: 'SLUICE_MAX_DRAIN',
      arg: '<seconds>',
      default: '3600',
      description:
        "most seconds a pod's sidecar lets streams finish on SIGTERM: its drain is spec.streaming.maxDurationSeconds up to this; the grace period is set above it",
    },
    {
      flag: 'activator',
      env: 'SLUICE_ACTIVATOR',
      arg: '<namespace/service>',
      default: '',
      description:
        "the activator's Service: a function with no ready replica routes to it, and it holds requests (scale from zero); empty: none",
    },
    {
      flag: 'nats-auth',
      env: 'SLUICE_NATS_AUTH',
      arg: '<bool>',
      default: 'true',
      description:
        'lock NATS down: an account per function, credentials for its sidecars (false: NATS without auth)',
    },
    {
      flag: 'nats-auth-secret',
      env: 'SLUICE_NATS_AUTH_SECRET',
      arg: '<namespace/name>',
      default: `${env.POD_NAMESPACE ?? 'default'}/sluice-nats-auth`,
      description: "Secret with the NATS keys (made on first start) and the server's trust.conf",
    },
    {
      flag: 'nats-credentials-ttl',
      env: 'SLUICE_NATS_CREDENTIALS_TTL',
      arg: '<seconds>',
      default: '86400',
      description: "lifetime of a function's NATS credentials; renewed at half of it",
    },
    {
      flag: 'network-policy',
      env: 'SLUICE_NETWORK_POLICY',
      arg: '<bool>',
      default: 'true',
      description: "a NetworkPolicy per function: only the proxy's ports take traffic from other pods",
    },
    {
      flag: 'proxy-from-namespaces',
      env: 'SLUICE_PROXY_FROM_NAMESPACES',
      arg: '<ns,...>',
      default: '',
      description: "namespaces whose pods may reach functions' proxy port (empty: any)",
    },
    {
      flag: 'admin-from-namespaces',
      env: 'SLUICE_ADMIN_FROM_NAMESPACES',
      arg: '<ns,...>',
      default: '',
      description:
        "namespaces whose pods may reach functions' admin port, e.g. monitoring (empty: none; probes pass)",
    },
    {
      flag: 'metrics-auth',
      env: 'SLUICE_METRICS_AUTH',
      arg: '<bool>',
      default: String(Boolean(env.KUBERNETES_SERVICE_HOST)),
      description:
        '/metrics only for tokens allowed get on it (TokenReview + SubjectAccessReview; default: true in a cluster)',
    },
  ] as const satisfies readonly SettingSpec[];
}

const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const bool = z.enum(['true', 'false'], { error: 'expected true or false' }).transform((v) => v === 'true');
const namespaces = z
  .string()
  .transform((v) =>
    v
      .split(',')
      .map((n) => n.trim())
      .filter(Boolean),
  )
  .refine((list) => list.every((n) => dnsLabel.test(n)), 'expected namespace names separated by commas');

export const operatorConfigSchema = z.object({
  kubeconfig: z.string(),
  namespace: z.union([z.literal(''), z.string().regex(dnsLabel, 'expected a namespace name')]),
  proxyImage: z.string().min(1, 'must not be empty'),
  metrics: hostPort,
  leaderElect: bool,
  leaderElectionNamespace: z.string().regex(dnsLabel, 'expected a namespace name'),
  leaseDuration: z.coerce.number().int().min(2).max(3600),
  identity: z.string().min(1, 'must not be empty'),
  workers: z.coerce.number().int().min(1).max(256),
  nats: natsServers,
  mapStreamReplicas: z.coerce.number().int().min(1).max(5),
  ingressClass: z.string(),
  gpuResourceName: z.string().regex(/^[a-z0-9.-]+\/[a-z0-9.-]+$/, 'expected vendor/resource'),
  maxDrain: z.coerce
    .number()
    .int()
    .min(0)
    .max(7 * 86_400),
  activator: z.union([
    z.literal(''),
    z
      .string()
      .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'expected namespace/service'),
  ]),
  natsAuth: bool,
  natsAuthSecret: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$/, 'expected namespace/name'),
  natsCredentialsTtl: z.coerce
    .number()
    .int()
    .min(10)
    .max(365 * 86400),
  networkPolicy: bool,
  proxyFromNamespaces: namespaces,
  adminFromNamespaces: namespaces,
  metricsAuth: bool,
});

export type OperatorConfig = z.output<typeof operatorConfigSchema>;

export function operatorCommand(env: NodeJS.ProcessEnv = process.env): Command {
  const command = new Command('operator').description(
    'reconcile StreamingFunctions into Deployments, Services, Ingresses and NATS streams',
  );
  for (const spec of operatorSettings(env)) command.addOption(settingOption(spec));
  return command;
}

/** Parses argv (without `node sluice operator`) and the environment; throws SettingError. */
export function loadOperatorConfig(
  argv: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): OperatorConfig {
  const options = parseCommandOptions(operatorCommand(env), argv, env);
  return parseSettings(operatorConfigSchema, operatorSettings(env), options);
}
