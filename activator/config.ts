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

/** Every `sluice activator` setting: a flag, its SLUICE_* twin, and its default. */
export function activatorSettings(env: NodeJS.ProcessEnv = process.env) {
  return [
    {
      flag: 'listen',
      env: 'SLUICE_LISTEN',
      arg: '<host:port>',
      default: '0.0.0.0:8080',
      description: 'where functions at zero receive their traffic (their Services list this port)',
    },
    {
      flag: 'admin',
      env: 'SLUICE_ADMIN',
      arg: '<host:port>',
      default: '0.0.0.0:9090',
      description: 'admin address (/healthz, /readyz, /metrics)',
    },
    {
      flag: 'nats',
      env: 'SLUICE_NATS',
      arg: '<url>',
      default: '',
      description: 'NATS of the functions: load reports in (which replicas are ready), held requests out',
    },
    {
      flag: 'nats-credentials',
      env: 'SLUICE_NATS_CREDENTIALS',
      arg: '<file>',
      default: '',
      description:
        'NATS .creds file (locked-down NATS: the operator issues it, in <activator>-nats-credentials)',
    },
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
      description: 'serve only the StreamingFunctions of this namespace (default: all)',
    },
    {
      flag: 'identity',
      env: 'SLUICE_IDENTITY',
      arg: '<name>',
      default: env.POD_NAME ?? `${hostname()}-${process.pid}`,
      description: 'this replica in load reports (default: $POD_NAME, else host-pid)',
    },
  ] as const satisfies readonly SettingSpec[];
}

const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export const activatorConfigSchema = z.object({
  listen: hostPort,
  admin: hostPort,
  nats: natsServers.refine((v) => v !== '', 'expected a nats:// URL (the activator needs NATS)'),
  natsCredentials: z.string(),
  kubeconfig: z.string(),
  namespace: z.union([z.literal(''), z.string().regex(dnsLabel, 'expected a namespace name')]),
  identity: z.string().min(1, 'must not be empty'),
});

export type ActivatorConfig = z.output<typeof activatorConfigSchema>;

export function activatorCommand(env: NodeJS.ProcessEnv = process.env): Command {
  const command = new Command('activator').description(
    'hold the requests of functions that have no ready replica (scale from zero) and forward them once one is',
  );
  for (const spec of activatorSettings(env)) command.addOption(settingOption(spec));
  return command;
}

/** Parses argv (without `node sluice activator`) and the environment; throws SettingError. */
export function loadActivatorConfig(
  argv: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): ActivatorConfig {
  return parseSettings(
    activatorConfigSchema,
    activatorSettings(env),
    parseCommandOptions(activatorCommand(env), argv, env),
  );
}
