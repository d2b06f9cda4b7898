import type { Logger } from '../common/log.ts';
import { KubeApiError, type KubeClient, type KubeList, type KubeObject, type WatchEvent } from './kube.ts';

export type ChangeType = 'added' | 'modified' | 'deleted';

export interface InformerOptions<T extends KubeObject> {
  /** Collection path, e.g. /apis/apps/v1/deployments or /apis/apps/v1/namespaces/ns/deployments. */
  path: string;
  labelSelector?: string;
  onChange: (object: T, change: ChangeType) => void;
  log: Logger;
  /** Server-side watch timeout; a quiet watch is renewed from the last resourceVersion. */
  watchSeconds?: number;
  /** Shapes each object before it is cached (default: drop managedFields, which nothing reads). */
  transform?: (object: T) => T;
  /** An index key for byIndex(), e.g. the function a pod belongs to; undefined leaves it out. */
  indexBy?: (object: T) => string | undefined;
}

function withoutManagedFields<T extends KubeObject>(object: T): T {
  if (object.metadata?.managedFields) delete object.metadata.managedFields;
  return object;
}

const key = (o: KubeObject) => `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;

/**
 * A list-then-watch cache of one kind, as client-go's reflector does it: list, then watch from
 * the list's resourceVersion (with bookmarks, so a quiet watch keeps a fresh version); a
 * `410 Gone` (the version was compacted away) re-lists and reports only what changed; any
 * other failure retries with capped exponential backoff while the cache keeps serving reads.
 */
export class Informer<T extends KubeObject> {
  private readonly client: KubeClient;
  private readonly options: InformerOptions<T>;
  private readonly objects = new Map<string, T>();
  private readonly index = new Map<string, Set<string>>();
  private resourceVersion = '';
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private syncedOnce = false;
  relists = 0;

  private readonly transform: (object: T) => T;

  constructor(client: KubeClient, options: InformerOptions<T>) {
    this.client = client;
    this.options = options;
    this.transform = options.transform ?? withoutManagedFields;
  }

  get synced(): boolean {
    return this.syncedOnce;
  }

  get(namespace: string, name: string): T | undefined {
    return this.objects.get(`${namespace}/${name}`);
  }

  list(): T[] {
    return [...this.objects.values()];
  }

  /** Objects whose indexBy() key is `value`, without scanning the cache. */
  byIndex(value: string): T[] {
    return [...(this.index.get(value) ?? [])].map((k) => this.objects.get(k)!);
  }

  private put(k: string, object: T): void {
    this.remove(k);
    this.objects.set(k, object);
    const value = this.options.indexBy?.(object);
    if (value === undefined) return;
    const keys = this.index.get(value) ?? new Set<string>();
    keys.add(k);
    this.index.set(value, keys);
  }

  private remove(k: string): void {
    const old = this.objects.get(k);
    if (!old) return;
    this.objects.delete(k);
    const value = this.options.indexBy?.(old);
    if (value === undefined) return;
    const keys = this.index.get(value);
    keys?.delete(k);
    if (keys?.size === 0) this.index.delete(value);
  }

  /** Resolves once the first list is in the cache; the watch goes on in the background. */
  async start(): Promise<void> {
    await this.relist();
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  private async relist(): Promise<void> {
    const seen = new Set<string>();
    let continueToken: string | undefined;
    let version = '';
    do {
      const page = await this.client.get<KubeList<T>>(this.options.path, {
        labelSelector: this.options.labelSelector,
        limit: 500,
        continue: continueToken,
      });
      for (const raw of page.items) {
        const item = this.transform(raw);
        const k = key(item);
        seen.add(k);
        const old = this.objects.get(k);
        this.put(k, item);
        if (!old) this.options.onChange(item, 'added');
        else if (old.metadata?.resourceVersion !== item.metadata?.resourceVersion)
          this.options.onChange(item, 'modified');
      }
      continueToken = page.metadata.continue || undefined;
      version = page.metadata.resourceVersion ?? '';
    } while (continueToken);
    for (const [k, old] of this.objects) {
      if (!seen.has(k)) {
        this.remove(k);
        this.options.onChange(old, 'deleted');
      }
    }
    this.resourceVersion = version;
    this.relists++;
    this.syncedOnce = true;
  }

  private handle(event: WatchEvent<T>): void {
    const { type } = event;
    if (type === 'ERROR') {
      const status = event.object as unknown as { code?: number; reason?: string; message?: string };
      throw new KubeApiError(
        'WATCH',
        this.options.path,
        status.code ?? 0,
        status.reason ?? '',
        status.message ?? '',
      );
    }
    this.resourceVersion = event.object.metadata?.resourceVersion ?? this.resourceVersion;
    if (type === 'BOOKMARK') return;
    const object = this.transform(event.object);
    const k = key(object);
    if (type === 'DELETED') {
      this.remove(k);
      this.options.onChange(object, 'deleted');
    } else {
      const existed = this.objects.has(k);
      this.put(k, object);
      this.options.onChange(object, existed ? 'modified' : 'added');
    }
  }

  private async run(): Promise<void> {
    const { signal } = this.abort;
    let delay = 0;
    while (!signal.aborted) {
      try {
        if (!this.resourceVersion) await this.relist();
        await this.client.watch<T>(
          this.options.path,
          {
            labelSelector: this.options.labelSelector,
            resourceVersion: this.resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds: this.options.watchSeconds ?? 300,
          },
          (event) => this.handle(event),
          signal,
        );
        delay = 0;
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof KubeApiError && err.status === 410) {
          this.options.log.info({ path: this.options.path }, 'watch version expired, re-listing');
          this.resourceVersion = '';
          continue;
        }
        delay = Math.min(delay ? delay * 2 : 200, 30_000);
        this.options.log.warn({ err, path: this.options.path, retryInMs: delay }, 'watch failed');
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          signal.addEventListener('abort', () => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    }
  }
}
