import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { SluiceError } from '../common/errors.ts';

/** The one table of images the plane can run (see the comment at its top). */
export const IMAGES_FILE = join(import.meta.dirname, 'images.yaml');
export const ROOT = join(import.meta.dirname, '..');

const entrySchema = z
  .object({
    image: z.string().min(1),
    entrypoint: z.array(z.string()).optional(),
    cmd: z.array(z.string()).optional(),
    workingDir: z.string().default('/'),
    user: z.number().int().min(0).default(0),
    env: z.record(z.string(), z.string()).default({}),
    paths: z.array(z.string()).default([]),
  })
  .strict();
const tableSchema = z.object({ images: z.array(entrySchema) }).strict();

export type ImageConfig = z.infer<typeof entrySchema>;

export class ImageTableError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_IMAGE_TABLE', message, options);
  }
}

export interface Reference {
  repository: string;
  tag?: string;
  digest?: string;
}

/**
 * Splits an image reference the way Docker does: a first component with a dot, a colon or
 * `localhost` is a registry; docker.io and its `library/` namespace are implied otherwise.
 */
export function parseReference(reference: string): Reference {
  let rest = reference.trim();
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const parts = rest.split('/');
  const first = parts[0] ?? '';
  const hasRegistry =
    parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost');
  let registry = hasRegistry ? first : 'docker.io';
  if (registry === 'index.docker.io') registry = 'docker.io';
  let path = (hasRegistry ? parts.slice(1) : parts).join('/');
  if (registry === 'docker.io' && !path.includes('/')) path = `library/${path}`;
  return { repository: `${registry}/${path}`, tag, digest };
}

function expand(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\{(\w+)\}/g, (whole, name: string) => vars[name] ?? whole);
}

export class ImageTable {
  readonly file: string;
  private readonly entries: ImageConfig[];

  constructor(entries: ImageConfig[], file = IMAGES_FILE) {
    this.entries = entries;
    this.file = file;
  }

  /** Reads and checks the table; ${ROOT} and ${CACHE} are expanded here. */
  static load(file = IMAGES_FILE, vars = defaultVars()): ImageTable {
    let raw: unknown;
    try {
      raw = parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new ImageTableError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
    const result = tableSchema.safeParse(raw);
    if (!result.success) {
      const issue = result.error.issues[0]!;
      throw new ImageTableError(`${file}: ${issue.path.join('.')}: ${issue.message}`);
    }
    const entries = result.data.images.map((e) => ({
      ...e,
      entrypoint: e.entrypoint?.map((s) => expand(s, vars)),
      cmd: e.cmd?.map((s) => expand(s, vars)),
      workingDir: expand(e.workingDir, vars),
      env: Object.fromEntries(Object.entries(e.env).map(([k, v]) => [k, expand(v, vars)])),
      paths: e.paths.map((p) => expand(p, vars)),
    }));
    const relative = entries.find((e) => !e.workingDir.startsWith('/'));
    if (relative) throw new ImageTableError(`${file}: ${relative.image}: workingDir must be absolute`);
    return new ImageTable(entries, file);
  }

  /** The entry for an image reference: a tagged entry beats an untagged one; undefined when none. */
  resolve(reference: string): ImageConfig | undefined {
    const wanted = parseReference(reference);
    let match: ImageConfig | undefined;
    for (const entry of this.entries) {
      const have = parseReference(entry.image);
      if (have.repository !== wanted.repository) continue;
      if (have.tag !== undefined) {
        if (have.tag === (wanted.tag ?? 'latest')) return entry;
      } else {
        match ??= entry;
      }
    }
    return match;
  }

  /** Why a pod cannot run this image: what kubectl describe shows. */
  missing(reference: string): string {
    return `image ${reference} has no entry in ${this.file} (the local plane runs images as local commands from that table; add one, or keep the pod simulated)`;
  }
}

export function defaultVars(): Record<string, string> {
  return { ROOT, CACHE: process.env.SLUICE_CACHE ?? join(homedir(), '.cache', 'sluice') };
}

/** Docker's rule: a pod's command replaces the entrypoint, and then the image's cmd is dropped too. */
export function commandLine(image: ImageConfig, command?: string[], args?: string[]): string[] {
  if (command?.length) return [...command, ...(args ?? [])];
  return [...(image.entrypoint ?? []), ...(args?.length ? args : (image.cmd ?? []))];
}
