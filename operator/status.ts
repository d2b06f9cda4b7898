import type { Condition, StreamingFunctionStatus } from '../api/v1alpha1/schema.ts';
import { FUNCTION_LABEL, functionUrl } from './desired.ts';
import type { FunctionView } from './function.ts';
import type { KubeObject } from './kube.ts';

/** What the reconciler observed this time, besides the informer caches. */
export interface Observed {
  deployment: KubeObject | undefined;
  pods: KubeObject[];
  ingress: KubeObject | undefined;
  /** An object in the way that Sluice does not own ("Deployment ns/name ..."). */
  notOwned?: string;
  /** A terminal failure of this reconcile (bad spec the schema could not catch, forbidden, ...). */
  failure?: string;
  gpuResourceName: string;
  /** The autoscaler's count and the streams in flight it heard of (undefined: no autoscaler). */
  scale?: { desired: number; inFlight: number | undefined };
}

/** Replicas the function should run now: the autoscaler's count, else minReplicas. */
const wantedReplicas = (fn: FunctionView, o: Observed) => o.scale?.desired ?? fn.spec.scaling.minReplicas;

type NewCondition = Omit<Condition, 'lastTransitionTime' | 'observedGeneration'>;

function scheduledCondition(fn: FunctionView, o: Observed): NewCondition {
  const gpu = fn.spec.gpu.resourceName || o.gpuResourceName;
  for (const pod of o.pods) {
    const scheduled = (pod.status?.conditions ?? []).find((c: Condition) => c.type === 'PodScheduled');
    if (scheduled?.status === 'False' && scheduled.reason === 'Unschedulable') {
      const message = String(scheduled.message ?? '');
      return {
        type: 'Scheduled',
        status: 'False',
        reason: message.includes(`Insufficient ${gpu}`) ? 'InsufficientGPU' : 'Unschedulable',
        message,
      };
    }
  }
  const wanted = wantedReplicas(fn, o);
  if (o.pods.length === 0) {
    return wanted === 0
      ? { type: 'Scheduled', status: 'True', reason: 'NoReplicas', message: 'no replicas wanted' }
      : { type: 'Scheduled', status: 'Unknown', reason: 'NoPods', message: 'no pods yet' };
  }
  const placed = o.pods.filter((p) => p.spec?.nodeName).length;
  return placed === o.pods.length
    ? { type: 'Scheduled', status: 'True', reason: 'Scheduled', message: `${placed} pods placed on nodes` }
    : {
        type: 'Scheduled',
        status: 'Unknown',
        reason: 'Pending',
        message: `${placed}/${o.pods.length} pods placed`,
      };
}

function availableCondition(o: Observed): NewCondition {
  const available = (o.deployment?.status?.conditions ?? []).find((c: Condition) => c.type === 'Available');
  if (!available) {
    return {
      type: 'Available',
      status: 'Unknown',
      reason: 'NoDeploymentStatus',
      message: 'deployment not observed yet',
    };
  }
  return {
    type: 'Available',
    status: available.status,
    reason: available.reason || 'DeploymentAvailable',
    message: available.message ?? '',
  };
}

function readyCondition(fn: FunctionView, o: Observed, scheduled: NewCondition): NewCondition {
  if (o.notOwned) return { type: 'Ready', status: 'False', reason: 'NotOwned', message: o.notOwned };
  if (o.failure) return { type: 'Ready', status: 'False', reason: 'ReconcileError', message: o.failure };
  const d = o.deployment;
  const wanted = wantedReplicas(fn, o);
  const ready = d?.status?.readyReplicas ?? 0;
  if (!d) return { type: 'Ready', status: 'False', reason: 'Pending', message: 'deployment not created yet' };
  const rolledOut = (d.status?.observedGeneration ?? 0) >= (d.metadata?.generation ?? 0);
  const updated = d.status?.updatedReplicas ?? 0;
  if (rolledOut && wanted === 0 && (d.status?.replicas ?? 0) === 0) {
    // Nothing runs, and that is right: a request is held while a replica starts.
    return {
      type: 'Ready',
      status: 'True',
      reason: 'Ready',
      message: 'scaled to zero; a request starts a replica',
    };
  }
  if (rolledOut && ready >= wanted && updated >= wanted && (d.status?.replicas ?? 0) === wanted) {
    return { type: 'Ready', status: 'True', reason: 'Ready', message: `${ready}/${wanted} replicas ready` };
  }
  if (scheduled.status === 'False')
    return { type: 'Ready', status: 'False', reason: scheduled.reason, message: scheduled.message };
  return {
    type: 'Ready',
    status: 'False',
    reason: rolledOut ? 'ReplicasNotReady' : 'RollingOut',
    message: `${ready}/${wanted} replicas ready`,
  };
}

/** Whether replicas serve now (Knative's Active): False, reason ScaledToZero, at zero. */
function activeCondition(fn: FunctionView, o: Observed): NewCondition {
  const ready = o.deployment?.status?.readyReplicas ?? 0;
  const running = o.deployment?.status?.replicas ?? 0;
  if (ready > 0)
    return { type: 'Active', status: 'True', reason: 'Serving', message: `${ready} replicas serve` };
  if (wantedReplicas(fn, o) === 0 && running === 0) {
    return {
      type: 'Active',
      status: 'False',
      reason: 'ScaledToZero',
      message: 'no replica runs; requests are held while one starts',
    };
  }
  return {
    type: 'Active',
    status: 'Unknown',
    reason: 'Activating',
    message: 'waiting for a first replica to be ready',
  };
}

function ingressAddress(ingress: KubeObject | undefined): string {
  const lb = ingress?.status?.loadBalancer?.ingress?.[0];
  return lb?.hostname ?? lb?.ip ?? '';
}

/**
 * The status that describes what was observed. Conditions keep their lastTransitionTime while
 * their status stays the same, so recomputing an unchanged world yields an identical status.
 */
export function computeStatus(fn: FunctionView, o: Observed, now = new Date()): StreamingFunctionStatus {
  const scheduled = scheduledCondition(fn, o);
  const fresh = [readyCondition(fn, o, scheduled), availableCondition(o), scheduled, activeCondition(fn, o)];
  const previous = fn.status.conditions ?? [];
  const conditions = fresh.map((c): Condition => {
    const old = previous.find((p) => p.type === c.type);
    return {
      ...c,
      observedGeneration: fn.metadata.generation,
      lastTransitionTime:
        old && old.status === c.status ? old.lastTransitionTime : now.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    };
  });
  return {
    observedGeneration: fn.metadata.generation,
    replicas: o.deployment?.status?.replicas ?? 0,
    readyReplicas: o.deployment?.status?.readyReplicas ?? 0,
    desiredReplicas: wantedReplicas(fn, o),
    inFlight: o.scale?.inFlight,
    selector: `${FUNCTION_LABEL}=${fn.metadata.name}`,
    url: functionUrl(fn, ingressAddress(o.ingress)),
    conditions,
  };
}

/** Same content, ignoring key order. */
export function sameStatus(a: StreamingFunctionStatus, b: StreamingFunctionStatus): boolean {
  const norm = (s: StreamingFunctionStatus) =>
    JSON.stringify({
      observedGeneration: s.observedGeneration,
      replicas: s.replicas ?? 0,
      readyReplicas: s.readyReplicas ?? 0,
      desiredReplicas: s.desiredReplicas,
      inFlight: s.inFlight,
      selector: s.selector,
      url: s.url,
      conditions: (s.conditions ?? []).map((c) => [
        c.type,
        c.status,
        c.reason,
        c.message,
        c.observedGeneration,
        c.lastTransitionTime,
      ]),
    });
  return norm(a) === norm(b);
}
