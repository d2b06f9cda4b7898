import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';

const run = promisify(execFile);

export const ROOT = join(import.meta.dirname, '..', '..');
export const CHART = join(ROOT, 'charts', 'sluice');
/** helm built by scripts/tools.sh from the helm.sh/helm/v3 module. */
export const HELM = join(ROOT, '.sluice', 'bin', 'helm');
export const helmMissing = existsSync(HELM) ? '' : `${HELM} is missing: run scripts/tools.sh helm`;

// biome-ignore lint/suspicious/noExplicitAny: rendered manifests are open-ended JSON
export type Manifest = Record<string, any>;

export interface HelmResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs helm; never throws for a non-zero exit, so tests can assert on refusals. */
export async function helm(args: string[], env: NodeJS.ProcessEnv = {}): Promise<HelmResult> {
  try {
    const { stdout, stderr } = await run(HELM, args, {
      env: {
        ...process.env,
        HELM_CACHE_HOME: '/tmp/sluice-helm/cache',
        HELM_CONFIG_HOME: '/tmp/sluice-helm/config',
        ...env,
      },
      maxBuffer: 32 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** `helm template` of the chart with `--set`/`--set-string` style flags; throws with helm's stderr. */
export async function render(
  flags: string[] = [],
  release = 'sluice',
  namespace = 'sluice-system',
): Promise<Manifest[]> {
  const result = await helm(['template', release, CHART, '--namespace', namespace, ...flags]);
  if (result.code !== 0) throw new Error(`helm template ${flags.join(' ')} failed: ${result.stderr}`);
  return parseManifests(result.stdout);
}

export function parseManifests(text: string): Manifest[] {
  return parseAllDocuments(text)
    .map((doc) => doc.toJS() as Manifest | null)
    .filter((m): m is Manifest => m !== null && typeof m === 'object');
}

export function find(manifests: Manifest[], kind: string, nameSuffix = ''): Manifest | undefined {
  return manifests.find((m) => m.kind === kind && String(m.metadata?.name).endsWith(nameSuffix));
}
