import { Command } from 'commander';
import { z } from 'zod';
import { MAX_CONCURRENCY, MAX_MAP_CANCEL_AFTER_DISCONNECT, MAX_MAP_DELIVER } from '../common/limits.ts';
import { natsServers } from '../common/nats-servers.ts';
import {
  hostPort,
  parseCommandOptions,
  parseSettings,
  type SettingSpec,
  settingOption,
} from '../common/settings.ts';

/** Every `sluice proxy` setting (SPEC §2): a flag, its SLUICE_* twin, and its default. */
export const proxySettings = [
  {
    flag: 'listen',
    env: 'SLUICE_LISTEN',
    arg: '<host:port>',
    default: '0.0.0.0:8080',
    description: 'public address',
  },
  {
    flag: 'admin',
    env: 'SLUICE_ADMIN',
    arg: '<host:port>',
    default: '0.0.0.0:9090',
    description: 'admin address (/healthz, /readyz, /metrics)',
  },
  {
    flag: 'upstream',
    env: 'SLUICE_UPSTREAM',
    arg: '<url>',
    default: 'http://127.0.0.1:9000',
    description: 'the function',
  },
  {
    flag: 'upstream-protocol',
    env: 'SLUICE_UPSTREAM_PROTOCOL',
    arg: '<http1|h2c>',
    default: 'http1',
    description: "the function's protocol: HTTP/1.1, or HTTP/2 cleartext (gRPC functions)",
  },
  {
    flag: 'concurrency',
    env: 'SLUICE_CONCURRENCY',
    arg: '<n>',
    default: '8',
    description: 'max requests and map tasks in flight to the function',
  },
  {
    flag: 'queue-timeout',
    env: 'SLUICE_QUEUE_TIMEOUT',
    arg: '<seconds>',
    default: '30',
    description: 'how long an over-limit request waits for a slot',
  },
  {
    flag: 'heartbeat',
    env: 'SLUICE_HEARTBEAT',
    arg: '<seconds>',
    default: '15',
    description: 'SSE keepalive comment after this much silence (0 = off)',
  },
  {
    flag: 'idle-timeout',
    env: 'SLUICE_IDLE_TIMEOUT',
    arg: '<seconds>',
    default: '600',
    description: 'end a stream after this long without a byte from the function',
  },
  {
    flag: 'max-duration',
    env: 'SLUICE_MAX_DURATION',
    arg: '<seconds>',
    default: '3600',
    description: 'hard cap on one stream',
  },
  {
    flag: 'drain',
    env: 'SLUICE_DRAIN',
    arg: '<seconds>',
    default: '20',
    description: 'on SIGTERM, how long in-flight streams may finish',
  },
  {
    flag: 'max-body',
    env: 'SLUICE_MAX_BODY',
    arg: '<bytes>',
    default: String(10 * 1024 * 1024),
    description: 'largest request body',
  },
  {
    flag: 'path-prefix',
    env: 'SLUICE_PATH_PREFIX',
    arg: '<path>',
    default: '',
    description: 'ingress path stripped before forwarding',
  },
  {
    flag: 'nats',
    env: 'SLUICE_NATS',
    arg: '<url>',
    default: '',
    description: 'NATS URL for map and load reports; empty turns both off',
  },
  {
    flag: 'map',
    env: 'SLUICE_MAP',
    arg: '<bool>',
    default: 'true',
    description: 'serve /_sluice/map and take map tasks (needs --nats)',
  },
  {
    flag: 'advertise',
    env: 'SLUICE_ADVERTISE',
    arg: '<url>',
    default: '',
    description: 'where an activator reaches the public port, sent in load reports (default: from --listen)',
  },
  {
    flag: 'function',
    env: 'SLUICE_FUNCTION',
    arg: '<namespace/name>',
    default: 'default/function',
    description: 'names the NATS streams',
  },
  {
    flag: 'replica',
    env: 'SLUICE_REPLICA',
    arg: '<name>',
    default: '',
    description: 'this replica in map results (default: hostname)',
  },
  {
    flag: 'map-path',
    env: 'SLUICE_MAP_PATH',
    arg: '<path>',
    default: '/',
    description: 'where each map input is POSTed',
  },
  {
    flag: 'map-ack-wait',
    env: 'SLUICE_MAP_ACK_WAIT',
    arg: '<seconds>',
    default: '60',
    description: 'a task not finished by then goes to another replica',
  },
  {
    flag: 'map-max-deliver',
    env: 'SLUICE_MAP_MAX_DELIVER',
    arg: '<n>',
    default: '3',
    description: 'attempts before an input is reported failed',
  },
  {
    flag: 'map-retention',
    env: 'SLUICE_MAP_RETENTION',
    arg: '<seconds>',
    default: '600',
    description: 'how long map results stay resumable',
  },
  {
    flag: 'map-cancel-after-disconnect',
    env: 'SLUICE_MAP_CANCEL_AFTER_DISCONNECT',
    arg: '<seconds>',
    default: '30',
    description: 'a map caller gone this long without resuming cancels its map (unless "keep")',
  },
  {
    flag: 'max-map-inputs',
    env: 'SLUICE_MAX_MAP_INPUTS',
    arg: '<n>',
    default: '100000',
    description: 'most inputs in one map request',
  },
  {
    flag: 'auth-tokens-file',
    env: 'SLUICE_AUTH_TOKENS_FILE',
    arg: '<file>',
    default: '',
    description: 'accepted bearer tokens, one a line',
  },
  {
    flag: 'nats-credentials',
    env: 'SLUICE_NATS_CREDENTIALS',
    arg: '<file>',
    default: '',
    description: "this function's NATS credentials (.creds), re-read at every (re)connect",
  },
  {
    flag: 'headers-timeout',
    env: 'SLUICE_HEADERS_TIMEOUT',
    arg: '<seconds>',
    default: '30',
    description: 'a request whose headers take longer to arrive gets 408',
  },
  {
    flag: 'body-timeout',
    env: 'SLUICE_BODY_TIMEOUT',
    arg: '<seconds>',
    default: '60',
    description: 'a request body silent this long (not: this long in all) gets 408',
  },
] as const satisfies readonly SettingSpec[];

const seconds = (min: number) =>
  z.coerce.number({ error: 'expected a number of seconds' }).finite().min(min, `must be at least ${min}`);
const count = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce
    .number({ error: 'expected a whole number' })
    .int('expected a whole number')
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);
const httpUrl = z.url({ protocol: /^https?$/, error: 'expected an http:// URL' });
const absolutePath = z.string().regex(/^\//, 'must start with /');

export const proxyConfigSchema = z
  .object({
    listen: hostPort,
    admin: hostPort,
    upstream: httpUrl,
    upstreamProtocol: z.enum(['http1', 'h2c'], { error: 'expected http1 or h2c' }),
    concurrency: count(1, MAX_CONCURRENCY),
    queueTimeout: seconds(0),
    heartbeat: seconds(0),
    idleTimeout: seconds(1),
    maxDuration: seconds(1),
    drain: seconds(0),
    maxBody: count(0),
    pathPrefix: z
      .string()
      .refine(
        (p) => p === '' || (p.startsWith('/') && !p.endsWith('/')),
        'must start with / and not end with /',
      ),
    nats: natsServers,
    map: z.enum(['true', 'false'], { error: 'expected true or false' }).transform((v) => v === 'true'),
    advertise: z.union([z.literal(''), httpUrl]),
    function: z
      .string()
      .regex(
        /^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-a-z0-9]*[a-z0-9])?$/,
        'expected namespace/name (DNS labels)',
      ),
    replica: z.string(),
    mapPath: absolutePath,
    mapAckWait: seconds(1),
    mapMaxDeliver: count(1, MAX_MAP_DELIVER),
    mapRetention: seconds(1),
    mapCancelAfterDisconnect: seconds(0).max(
      MAX_MAP_CANCEL_AFTER_DISCONNECT,
      `must be at most ${MAX_MAP_CANCEL_AFTER_DISCONNECT}`,
    ),
    maxMapInputs: count(1),
    authTokensFile: z.string(),
    natsCredentials: z.string(),
    headersTimeout: seconds(1),
    bodyTimeout: seconds(1),
  })
  .refine((c) => c.nats === '' || !c.map || c.upstreamProtocol === 'http1', {
    path: ['map'],
    message:
      'map POSTs each input over HTTP/1.1, which an h2c function does not speak: pass --map=false with --upstream-protocol h2c (--nats still carries the load reports)',
  });

export type ProxyConfig = z.output<typeof proxyConfigSchema>;

export function proxyCommand(): Command {
  const command = new Command('proxy').description('the streaming sidecar proxy (one per function pod)');
  for (const spec of proxySettings) command.addOption(settingOption(spec));
  return command;
}

/** Parses argv (without `node sluice proxy`) and the environment; throws SettingError. */
export function loadProxyConfig(argv: string[] = [], env: NodeJS.ProcessEnv = process.env): ProxyConfig {
  return parseSettings(proxyConfigSchema, proxySettings, parseCommandOptions(proxyCommand(), argv, env));
}
