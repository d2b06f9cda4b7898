import type { FunctionView } from './function.ts';
import type { KubeObject } from './kube.ts';

/** A kind of object the operator owns for each function. */
export interface OwnedKind {
  kind: string;
  apiVersion: string;
  plural: string;
  /** The object's name is the function's name and this (none: the function's name). */
  suffix?: string;
}
export const DEPLOYMENT: OwnedKind = { kind: 'Deployment', apiVersion: 'apps/v1', plural: 'deployments' };
export const SERVICE: OwnedKind = { kind: 'Service', apiVersion: 'v1', plural: 'services' };
export const INGRESS: OwnedKind = {
  kind: 'Ingress',
  apiVersion: 'networking.k8s.io/v1',
  plural: 'ingresses',
};
export const NETWORK_POLICY: OwnedKind = {
  kind: 'NetworkPolicy',
  apiVersion: 'networking.k8s.io/v1',
  plural: 'networkpolicies',
};
/** The function's NATS credentials, which its sidecars mount. */
export const SECRET: OwnedKind = {
  kind: 'Secret',
  apiVersion: 'v1',
  plural: 'secrets',
  suffix: '-nats-credentials',
};
/** Every kind, in the order Events name them. */
export const OWNED_KINDS = [DEPLOYMENT, SERVICE, INGRESS, NETWORK_POLICY, SECRET];

/** The kinds an operator with these settings owns (and so watches): the lockdown ones when on. */
export function ownedKinds(config: {
  networkPolicy?: boolean;
  nats: string;
  natsAuth?: boolean;
}): OwnedKind[] {
  return OWNED_KINDS.filter(
    (k) =>
      (k !== NETWORK_POLICY || config.networkPolicy) &&
      (k !== SECRET || Boolean(config.nats && config.natsAuth)),
  );
}

/** The name of the function's object of this kind. */
export function ownedName(kind: OwnedKind, functionName: string): string {
  return `${functionName}${kind.suffix ?? ''}`;
}
/**
 * `<name>-activator`: puts the activator behind the function's Service while no replica is ready.
 * The informer of this kind also caches the Service's own slices (the endpointslice controller
 * copies the Service's labels onto them).
 */
export const ENDPOINT_SLICE: OwnedKind = {
  kind: 'EndpointSlice',
  apiVersion: 'discovery.k8s.io/v1',
  plural: 'endpointslices',
};

/**
 * Everything the reconciler reads from and writes to the cluster: the seam between its phases
 * and Kubernetes. In production ClusterIO (informer caches + KubeClient) implements it; the
 * reconciler's outcome tables give inputs and record outputs through a fake of it. Failures are
 * the API server's (KubeApiError), so a table can play a 403 or a 404.
 */
export interface ReconcilerIO {
  /** The StreamingFunction as cached, undefined once it is gone. */
  function(namespace: string, name: string): KubeObject | undefined;
  /** The object of this kind and name, Sluice's or anyone's (cache first, then the server). */
  live(kind: OwnedKind, namespace: string, name: string): Promise<KubeObject | undefined>;
  /** The object of this kind and name among those Sluice labelled (cache only). */
  labelled(kind: OwnedKind, namespace: string, name: string): KubeObject | undefined;
  /** The function's pods (`namespace/name`), slimmed to what status needs. */
  pods(key: string): KubeObject[];
  /**
   * Ready endpoints in the EndpointSlices the endpointslice controller keeps for the function's
   * Service (`namespace/name`; cache only, without --activator always 0): what kube-proxy and
   * ingress controllers route to, which lags a pod's Ready by a moment.
   */
  serviceEndpointsReady(key: string): number;

  /** Server-side apply as the operator's field manager; returns the object as stored. */
  apply(kind: OwnedKind, object: KubeObject): Promise<KubeObject>;
  /** Deletes the object only if it is still the one with this uid. */
  delete(kind: OwnedKind, namespace: string, name: string, uid: string | undefined): Promise<void>;
  /** A JSON merge patch of the function (its finalizers). */
  patchFunction(namespace: string, name: string, patch: unknown): Promise<void>;
  patchStatus(namespace: string, name: string, status: unknown): Promise<void>;
  /** A core/v1 Event on the function; losing one is not worth failing a reconcile over. */
  event(fn: FunctionView, type: 'Normal' | 'Warning', reason: string, message: string): void;

  /** Sets the Deployment's replicas through its scale subresource. */
  scale(namespace: string, name: string, replicas: number): Promise<void>;
  /** A JSON merge patch of a pod (its deletion cost). */
  patchPod(namespace: string, name: string, patch: unknown): Promise<void>;
  /** The activator's ready addresses and port; undefined when the operator runs without one. */
  activator(): ActivatorEndpoints | undefined;
}

export interface ActivatorEndpoints {
  addresses: string[];
  port: number;
}

/** What the autoscaler wants for one function now (Autoscaler in production). */
export interface ScalePlan {
  /** Replicas the Deployment should have. */
  replicas: number;
  /** Streams in flight + queued, summed over replicas: status.inFlight. */
  inFlight: number;
  /** Why, for the Event of a change. */
  why: string;
  /** Streams in flight + queued of each replica that reported, by pod name: its deletion cost. */
  podLoad: ReadonlyMap<string, number>;
}

export interface Scaling {
  plan(fn: FunctionView, liveReplicas: number | undefined): ScalePlan;
}

/** The function's NATS credentials; CredentialIssuer in production. */
export interface NatsCredentials {
  /** The Secret to apply (the live one while its credentials are good) and when to look again. */
  secret(fn: FunctionView, live: KubeObject | undefined): Promise<{ object: KubeObject; renewInMs: number }>;
}

/** The function's JetStream streams; StreamManager in production. */
export interface MapStreams {
  /** Creates or updates them; true when anything was written. */
  ensure(fn: FunctionView): Promise<boolean>;
  remove(fn: FunctionView): Promise<void>;
}
