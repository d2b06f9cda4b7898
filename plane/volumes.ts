// A pod's volumes on disk, as the kubelet lays them out: emptyDir as a directory, ConfigMap,
// Secret, downward API and projected volumes through the atomic writer (files are symlinks
// into ..data, which is swapped in one rename, so a refresh never shows a half-written set),
// hostPath and bound PersistentVolumes as the host directory itself. Containers bind-mount them.
import { chmod, chown, lstat, mkdir, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { SluiceError } from '../common/errors.ts';
import { fieldValue, resourceValue } from './env.ts';
import type { DownwardItem, KeyToPath, Pod, ProjectedSource, Volume } from './types.ts';

export class VolumeError extends SluiceError {
  /** true: wait and try again (a claim not bound yet); false: the spec is wrong. */
  readonly retry: boolean;
  constructor(message: string, retry = false, options?: { cause?: unknown }) {
    super('ERR_PLANE_VOLUME', message, options);
    this.retry = retry;
  }
}

export interface VolumeApi {
  configMap(namespace: string, name: string): Promise<Record<string, Buffer> | undefined>;
  secret(namespace: string, name: string): Promise<Record<string, Buffer> | undefined>;
  /** A token from the TokenRequest API, bound to the pod. */
  token(
    pod: Pod,
    audience: string | undefined,
    expirationSeconds: number,
  ): Promise<{ token: string; expires: Date }>;
  /** The host directory of the claim's bound PersistentVolume. */
  claimPath(namespace: string, claim: string): Promise<string>;
}

export interface MountedVolume {
  path: string;
  /** A single file (hostPath File/FileOrCreate). */
  file: boolean;
  /** Its content comes from the API and is rewritten on refresh. */
  refreshable: boolean;
}

interface FileEntry {
  path: string;
  content: Buffer;
  mode: number;
}

function safeRelative(path: string): string {
  const clean = normalize(path);
  if (clean.startsWith('..') || clean.startsWith('/'))
    throw new VolumeError(`volume file path ${path} leaves the volume`);
  return clean;
}

/**
 * The kubelet's atomic writer: the files go into a fresh ..<stamp> directory, ..data is
 * pointed at it by one rename, and each top-level name is a symlink through ..data.
 */
export async function writeAtomic(dir: string, files: FileEntry[], group?: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const stamp = `..${new Date().toISOString().replace(/[:.]/g, '_')}.${process.hrtime.bigint()}`;
  const target = join(dir, stamp);
  await mkdir(target, { mode: 0o755 });
  for (const f of files) {
    const path = join(target, safeRelative(f.path));
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, f.content, { mode: f.mode });
    await chmod(path, f.mode);
    if (group !== undefined) await chown(path, 0, group);
  }
  if (group !== undefined) await chown(target, 0, group);
  const temporary = join(dir, '..data_tmp');
  await rm(temporary, { force: true });
  await symlink(stamp, temporary);
  await rename(temporary, join(dir, '..data'));
  const tops = new Set(files.map((f) => safeRelative(f.path).split('/')[0]!));
  for (const top of tops) {
    const link = join(dir, top);
    const existing = await lstat(link).catch(() => undefined);
    if (!existing) await symlink(join('..data', top), link);
  }
  for (const entry of await readdir(dir)) {
    if (entry.startsWith('..') && entry !== '..data' && entry !== stamp) {
      await rm(join(dir, entry), { recursive: true, force: true });
    } else if (!entry.startsWith('..') && !tops.has(entry)) {
      await rm(join(dir, entry), { force: true });
    }
  }
}

function keyed(
  data: Record<string, Buffer>,
  items: KeyToPath[] | undefined,
  mode: number,
  what: string,
  optional: boolean | undefined,
): FileEntry[] {
  if (!items?.length) return Object.entries(data).map(([key, content]) => ({ path: key, content, mode }));
  const out: FileEntry[] = [];
  for (const item of items) {
    const content = data[item.key];
    if (content === undefined) {
      if (optional) continue;
      throw new VolumeError(`${what}: no key ${item.key}`, true);
    }
    out.push({ path: item.path, content, mode: item.mode ?? mode });
  }
  return out;
}

function downward(
  pod: Pod,
  items: DownwardItem[] | undefined,
  mode: number,
  allocatable: Record<string, string>,
) {
  return (items ?? []).map((item) => {
    let value: string;
    if (item.fieldRef) value = fieldValue(pod, item.fieldRef.fieldPath);
    else if (item.resourceFieldRef) {
      const ref = item.resourceFieldRef;
      const container = [...(pod.spec.initContainers ?? []), ...pod.spec.containers].find(
        (c) => c.name === ref.containerName,
      );
      if (!container) throw new VolumeError(`downwardAPI ${item.path}: no container ${ref.containerName}`);
      value = resourceValue(container, ref.resource, ref.divisor, allocatable);
    } else throw new VolumeError(`downwardAPI ${item.path}: nothing to project`);
    return { path: item.path, content: Buffer.from(value), mode: item.mode ?? mode };
  });
}

export interface VolumeContext {
  pod: Pod;
  api: VolumeApi;
  /** The pod's volume directory (each volume a subdirectory). */
  dir: string;
  allocatable: Record<string, string>;
  /** When the soonest service-account token must be renewed. */
  renewAt?: Date;
}

async function projected(ctx: VolumeContext, sources: ProjectedSource[], mode: number): Promise<FileEntry[]> {
  const { pod, api } = ctx;
  const ns = pod.metadata.namespace;
  const files: FileEntry[] = [];
  for (const source of sources) {
    if (source.serviceAccountToken) {
      const t = source.serviceAccountToken;
      const seconds = t.expirationSeconds ?? 3600;
      const { token, expires } = await api.token(pod, t.audience, seconds);
      // The kubelet renews a token once 80% of its life has passed.
      const life = expires.getTime() - Date.now();
      const renew = new Date(Date.now() + life * 0.8);
      if (!ctx.renewAt || renew < ctx.renewAt) ctx.renewAt = renew;
      files.push({ path: t.path, content: Buffer.from(token), mode });
    } else if (source.configMap) {
      const c = source.configMap;
      const data = await api.configMap(ns, c.name);
      if (!data) {
        if (c.optional) continue;
        throw new VolumeError(`configmap "${c.name}" not found`, true);
      }
      files.push(...keyed(data, c.items, mode, `configmap ${c.name}`, c.optional));
    } else if (source.secret) {
      const s = source.secret;
      const data = await api.secret(ns, s.name);
      if (!data) {
        if (s.optional) continue;
        throw new VolumeError(`secret "${s.name}" not found`, true);
      }
      files.push(...keyed(data, s.items, mode, `secret ${s.name}`, s.optional));
    } else if (source.downwardAPI) {
      files.push(...downward(pod, source.downwardAPI.items, mode, ctx.allocatable));
    }
  }
  return files;
}

async function hostPath(path: string, type: string | undefined): Promise<MountedVolume> {
  const info = await stat(path).catch(() => undefined);
  switch (type ?? '') {
    case 'DirectoryOrCreate':
      if (!info) await mkdir(path, { recursive: true, mode: 0o755 });
      return { path, file: false, refreshable: false };
    case 'FileOrCreate':
      if (!info) {
        await mkdir(dirname(path), { recursive: true });
        await writeFile(path, '', { mode: 0o644 });
      }
      return { path, file: true, refreshable: false };
    case 'Directory':
      if (!info?.isDirectory()) throw new VolumeError(`hostPath ${path} is not a directory`, true);
      return { path, file: false, refreshable: false };
    case 'File':
      if (!info?.isFile()) throw new VolumeError(`hostPath ${path} is not a file`, true);
      return { path, file: true, refreshable: false };
    case '':
      if (!info) throw new VolumeError(`hostPath ${path} does not exist`, true);
      return { path, file: !info.isDirectory(), refreshable: false };
    default:
      if (!info) throw new VolumeError(`hostPath ${path} (${type}) does not exist`, true);
      return { path, file: !info.isDirectory(), refreshable: false };
  }
}

/** fsGroup: the group owns the volume and new files in it (setgid), and may write. */
async function applyFsGroup(path: string, group: number | undefined): Promise<void> {
  if (group === undefined) return;
  await chown(path, 0, group).catch(() => undefined);
  const info = await stat(path);
  await chmod(path, (info.mode & 0o7777) | 0o2070);
}

/** Makes (or, with `refresh`, rewrites the API-backed content of) one volume. */
export async function materialize(ctx: VolumeContext, volume: Volume): Promise<MountedVolume> {
  const { pod, api } = ctx;
  const ns = pod.metadata.namespace;
  const fsGroup = pod.spec.securityContext?.fsGroup;
  const dir = join(ctx.dir, volume.name);
  if (volume.emptyDir) {
    await mkdir(dir, { recursive: true });
    await chmod(dir, 0o777);
    await applyFsGroup(dir, fsGroup);
    return { path: dir, file: false, refreshable: false };
  }
  if (volume.configMap) {
    const c = volume.configMap;
    const data = await api.configMap(ns, c.name);
    if (!data && !c.optional) throw new VolumeError(`configmap "${c.name}" not found`, true);
    const mode = c.defaultMode ?? 0o644;
    await writeAtomic(dir, keyed(data ?? {}, c.items, mode, `configmap ${c.name}`, c.optional), fsGroup);
    return { path: dir, file: false, refreshable: true };
  }
  if (volume.secret) {
    const s = volume.secret;
    const data = await api.secret(ns, s.secretName);
    if (!data && !s.optional) throw new VolumeError(`secret "${s.secretName}" not found`, true);
    const mode = s.defaultMode ?? 0o644;
    await writeAtomic(dir, keyed(data ?? {}, s.items, mode, `secret ${s.secretName}`, s.optional), fsGroup);
    return { path: dir, file: false, refreshable: true };
  }
  if (volume.projected) {
    await writeAtomic(
      dir,
      await projected(ctx, volume.projected.sources, volume.projected.defaultMode ?? 0o644),
      fsGroup,
    );
    return { path: dir, file: false, refreshable: true };
  }
  if (volume.downwardAPI) {
    const d = volume.downwardAPI;
    await writeAtomic(dir, downward(pod, d.items, d.defaultMode ?? 0o644, ctx.allocatable), fsGroup);
    return { path: dir, file: false, refreshable: true };
  }
  if (volume.hostPath) return hostPath(volume.hostPath.path, volume.hostPath.type);
  if (volume.persistentVolumeClaim) {
    const path = await api.claimPath(ns, volume.persistentVolumeClaim.claimName);
    await applyFsGroup(path, fsGroup);
    return { path, file: false, refreshable: false };
  }
  const kind = Object.keys(volume).find((k) => k !== 'name') ?? 'unknown';
  throw new VolumeError(`volume ${volume.name}: the local plane does not support ${kind} volumes`);
}
