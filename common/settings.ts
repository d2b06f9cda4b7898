import { type Command, Option } from 'commander';
import { z } from 'zod';
import { SettingError } from './errors.ts';

/**
 * One setting of a command: a long flag with a `SLUICE_*` environment twin. Commander reads
 * the flag or the environment; zod validates the merged result, so a bad value names both.
 */
export interface SettingSpec {
  flag: string; // e.g. 'listen' for --listen
  env: string; // e.g. 'SLUICE_LISTEN'
  description: string;
  default?: string;
  arg?: string; // e.g. '<host:port>'; omitted for booleans
}

export function settingOption(spec: SettingSpec): Option {
  const option = new Option(spec.arg ? `--${spec.flag} ${spec.arg}` : `--${spec.flag}`, spec.description).env(
    spec.env,
  );
  if (spec.default !== undefined) option.default(spec.default);
  return option;
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Validates commander's parsed options against `schema`; the first bad field becomes a SettingError. */
export function parseSettings<S extends z.ZodType>(
  schema: S,
  specs: readonly SettingSpec[],
  options: Record<string, unknown>,
): z.output<S> {
  const result = schema.safeParse(options);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const key = String(issue.path[0] ?? '');
  const spec = specs.find((s) => camel(s.flag) === key);
  const name = spec ? `--${spec.flag} (${spec.env})` : key || 'settings';
  const given = options[key];
  throw new SettingError(
    name,
    `${issue.message}${given !== undefined ? ` (got ${JSON.stringify(given)})` : ''}`,
    {
      cause: result.error,
    },
  );
}

/** Prints a SettingError as one line and exits 2, as the spec asks for bad settings. */
export function exitOnSettingError(command: string, err: unknown): never {
  if (err instanceof SettingError) {
    process.stderr.write(`sluice ${command}: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}

/** `host:port` (IPv6 in brackets) as a listen address, parsed into its parts. */
export const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, 'expected host:port')
  .transform((value) => {
    const at = value.lastIndexOf(':');
    return { host: value.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(value.slice(at + 1)) };
  })
  .refine((a) => a.port <= 65535, 'port must be at most 65535');

/** Parses argv (without the program and subcommand) with `env` as the source of SLUICE_* twins. */
export function parseCommandOptions(
  command: Command,
  argv: string[],
  env: NodeJS.ProcessEnv,
): Record<string, unknown> {
  command.exitOverride();
  const saved = process.env;
  process.env = env; // commander reads env twins from process.env
  try {
    command.parse(argv, { from: 'user' });
  } finally {
    process.env = saved;
  }
  return command.opts();
}
