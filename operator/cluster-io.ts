import { API_VERSION, KIND, PLURAL } from '../api/v1alpha1/schema.ts';
import type { Logger } from '../common/log.ts';
import { FIELD_MANAGER } from './desired.ts';
import type { FunctionView } from './function.ts';
import type { Informer } from './informer.ts';
import { isNotFound, type KubeClient, type KubeObject, resourcePath } from './kube.ts';
import {
  type ActivatorEndpoints,
  ENDPOINT_SLICE,
  type OwnedKind,
  type ReconcilerIO,
} from './reconciler-io.ts';
import { SLICE_MANAGER, SLICE_MANAGER_LABEL } from './scaling.ts';

const functionPath = (namespace: string, name: string, subresource = '') =>
  resourcePath(API_VERSION, PLURAL, namespace, name, subresource);
const objectPath = (kind: OwnedKind, namespace: string | undefined, name: string | undefined) =>
  resourcePath(kind.apiVersion, kind.plural, namespace, name);

/** The reconciler's reads from informer caches (and the server when a cache cannot know), its writes through the KubeClient. */
export class ClusterIO implements ReconcilerIO {
  readonly #client: KubeClient;
  readonly #functions: Informer<KubeObject>;
  readonly #owned: Map<string, Informer<KubeObject>>;
  readonly #pods: Informer<KubeObject>;
  readonly #activator: () => ActivatorEndpoints | undefined;
  readonly #log: Logger;

  constructor(options: {
    client: KubeClient;
    functions: Informer<KubeObject>;
    owned: Map<string, Informer<KubeObject>>;
    pods: Informer<KubeObject>;
    /** The activator's endpoints (its Service's EndpointSlices); undefined without --activator. */
    activator?: () => ActivatorEndpoints | undefined;
    log: Logger;
  }) {
    this.#client = options.client;
    this.#functions = options.functions;
    this.#owned = options.owned;
    this.#pods = options.pods;
    this.#activator = options.activator ?? (() => undefined);
    this.#log = options.log;
  }

  function(namespace: string, name: string): KubeObject | undefined {
    return this.#functions.get(namespace, name);
  }

  async live(kind: OwnedKind, namespace: string, name: string): Promise<KubeObject | undefined> {
    const cached = this.labelled(kind, namespace, name);
    if (cached) return cached;
    // Not in the cache: it may still exist without our labels (someone else's object).
    try {
      return await this.#client.get<KubeObject>(objectPath(kind, namespace, name));
    } catch (err) {
      if (!isNotFound(err)) throw err;
      return undefined;
    }
  }

  labelled(kind: OwnedKind, namespace: string, name: string): KubeObject | undefined {
    return this.#owned.get(kind.kind)?.get(namespace, name);
  }

  pods(key: string): KubeObject[] {
    return this.#pods.byIndex(key);
  }

  serviceEndpointsReady(key: string): number {
    const slices = this.#owned.get(ENDPOINT_SLICE.kind)?.byIndex(key) ?? [];
    return slices
      .filter((s) => s.metadata?.labels?.[SLICE_MANAGER_LABEL] !== SLICE_MANAGER)
      .flatMap((s) => (s.endpoints ?? []) as { conditions?: { ready?: boolean } }[])
      .filter((e) => e.conditions?.ready !== false).length;
  }

  apply(kind: OwnedKind, object: KubeObject): Promise<KubeObject> {
    const path = objectPath(kind, object.metadata?.namespace, object.metadata?.name);
    return this.#client.apply<KubeObject>(path, object, FIELD_MANAGER, true);
  }

  async delete(kind: OwnedKind, namespace: string, name: string, uid: string | undefined): Promise<void> {
    await this.#client.request('DELETE', objectPath(kind, namespace, name), {
      body: { preconditions: { uid } },
    });
  }

  async patchFunction(namespace: string, name: string, patch: unknown): Promise<void> {
    await this.#client.mergePatch(functionPath(namespace, name), patch);
  }

  async patchStatus(namespace: string, name: string, status: unknown): Promise<void> {
    await this.#client.mergePatch(functionPath(namespace, name, 'status'), { status });
  }

  async scale(namespace: string, name: string, replicas: number): Promise<void> {
    await this.#client.mergePatch(
      resourcePath('apps/v1', 'deployments', namespace, name, 'scale'),
      { spec: { replicas } },
      { fieldManager: FIELD_MANAGER },
    );
  }

  async patchPod(namespace: string, name: string, patch: unknown): Promise<void> {
    await this.#client.mergePatch(resourcePath('v1', 'pods', namespace, name), patch, {
      fieldManager: FIELD_MANAGER,
    });
  }

  activator(): ActivatorEndpoints | undefined {
    return this.#activator();
  }

  event(fn: FunctionView, type: 'Normal' | 'Warning', reason: string, message: string): void {
    const now = new Date().toISOString();
    const { namespace, name, uid } = fn.metadata;
    this.#client
      .request('POST', resourcePath('v1', 'events', namespace), {
        body: {
          apiVersion: 'v1',
          kind: 'Event',
          metadata: { generateName: `${name}.`, namespace },
          involvedObject: { apiVersion: API_VERSION, kind: KIND, name, namespace, uid },
          type,
          reason,
          message: message.slice(0, 1024),
          source: { component: FIELD_MANAGER },
          reportingComponent: FIELD_MANAGER,
          reportingInstance: FIELD_MANAGER,
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
        },
      })
      .catch((err) => this.#log.warn({ err, reason }, 'could not record an event'));
  }
}
