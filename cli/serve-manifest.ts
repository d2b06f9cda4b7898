import { readFile } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';
import type { z } from 'zod';
import { proxyFlags } from '../api/v1alpha1/proxy-flags.ts';
import { KIND, parseStreamingFunction, type StreamingFunction } from '../api/v1alpha1/schema.ts';
import { SluiceError } from '../common/errors.ts';

/** The manifest cannot be read, is not YAML, or breaks the CRD schema; `problems` name field paths. */
export class ManifestError extends SluiceError {
  readonly problems: string[];

  constructor(file: string, problems: string[], options?: { cause?: unknown }) {
    super('ERR_MANIFEST', `${file}: ${problems.join('; ')}`, options);
    this.problems = problems;
  }
}

/** Reads the first StreamingFunction in a YAML file and applies the CRD's defaults. */
export async function loadManifest(file: string): Promise<StreamingFunction> {
  let source: string;
  try {
    source = await readFile(file, 'utf8');
  } catch (err) {
    throw new ManifestError(file, [(err as Error).message], { cause: err });
  }
  return parseManifest(source, file);
}

export function parseManifest(source: string, file: string): StreamingFunction {
  const documents = parseAllDocuments(source);
  if (!Array.isArray(documents)) throw new ManifestError(file, ['no YAML document']);
  for (const document of documents) {
    if (document.errors.length > 0) {
      throw new ManifestError(
        file,
        document.errors.map((e) => e.message.split('\n')[0]!),
        { cause: document.errors[0] },
      );
    }
  }
  const objects = documents.map((d) => d.toJS() as unknown).filter((o) => o !== null && o !== undefined);
  // A file may hold other objects too (a Secret for auth); serve runs its StreamingFunction.
  const object =
    objects.find((o) => (o as { kind?: unknown }).kind === KIND) ??
    (objects.length === 1 ? objects[0] : undefined);
  if (object === undefined) throw new ManifestError(file, [`no ${KIND} in the file`]);
  try {
    return parseStreamingFunction(object);
  } catch (err) {
    const issues = (err as z.ZodError).issues;
    if (!Array.isArray(issues)) throw err;
    throw new ManifestError(file, issues.map(formatIssue), { cause: err });
  }
}

/** `spec.env[0].name: message`, the way kubectl reports a field. */
export function formatIssue(issue: z.core.$ZodIssue): string {
  let path = '';
  for (const key of issue.path) {
    path += typeof key === 'number' ? `[${key}]` : path === '' ? String(key) : `.${String(key)}`;
  }
  return `${path || '(root)'}: ${issue.message}`;
}

/** The function's command line: the one after `--`, else spec.command + spec.args. */
export function functionCommand(fn: StreamingFunction, override: readonly string[], file: string): string[] {
  if (override.length > 0) return [...override];
  const command = [...(fn.spec.command ?? []), ...(fn.spec.args ?? [])];
  if (command.length === 0) {
    throw new ManifestError(file, [
      "spec.command: empty, and no command after --; serve cannot run the image's entrypoint (e.g. sluice serve fn.yaml -- python3 server.py)",
    ]);
  }
  return command;
}

/** spec.env entries with literal values; `valueFrom` ones are named so serve can say they come from the shell. */
export function functionEnv(fn: StreamingFunction): { env: Record<string, string>; fromCluster: string[] } {
  const env: Record<string, string> = {};
  const fromCluster: string[] = [];
  for (const entry of fn.spec.env ?? []) {
    if (entry.valueFrom) fromCluster.push(entry.name);
    else env[entry.name] = entry.value ?? '';
  }
  return { env, fromCluster };
}

/** The `sluice proxy` command line of one local replica: loopback ports, a short drain. */
export function proxyArgs(
  fn: StreamingFunction,
  replica: { name: string; listenPort: number; adminPort: number; functionPort: number },
  natsUrl: string,
  natsCredentialsFile?: string,
): string[] {
  return [
    'proxy',
    ...proxyFlags(fn, {
      listen: `127.0.0.1:${replica.listenPort}`,
      admin: `127.0.0.1:${replica.adminPort}`,
      functionPort: replica.functionPort,
      // Ctrl-C should not wait the pod-sized drain; a few seconds lets short streams finish.
      drain: 3,
      nats: natsUrl,
      natsCredentialsFile,
      replica: replica.name,
    }),
  ];
}
