// A pod's status from what the runner knows about its containers, with the kubelet's rules
// for phase and conditions. Pure, so the rules are tested as a table.
import type { Condition, ContainerState, ContainerStatus, Pod, PodStatus } from './types.ts';

export type ContainerKind = 'init' | 'sidecar' | 'main';

/** What the runner tracks for one container of the pod. */
export interface ContainerRecord {
  name: string;
  image: string;
  kind: ContainerKind;
  restartCount: number;
  state: ContainerState;
  lastState: ContainerState;
  ready: boolean;
  started: boolean;
  containerID?: string;
}

export interface PodView {
  pod: Pod;
  hostIP: string;
  podIP?: string;
  startTime: string;
  sandboxReady: boolean;
  containers: ContainerRecord[];
  /** The pod is being deleted, or finished: nothing restarts any more. */
  terminal: boolean;
}

export function containerStatus(record: ContainerRecord): ContainerStatus {
  return {
    name: record.name,
    image: record.image,
    imageID: '',
    ...(record.containerID ? { containerID: record.containerID } : {}),
    ready: record.ready,
    started: record.started,
    restartCount: record.restartCount,
    state: record.state,
    lastState: record.lastState,
  };
}

const succeeded = (r: ContainerRecord) => r.state.terminated?.exitCode === 0;

/** Init containers are done: each plain one exited 0 and each sidecar has started. */
export function initialized(view: PodView): boolean {
  return view.containers
    .filter((c) => c.kind !== 'main')
    .every((c) => (c.kind === 'sidecar' ? c.started || c.restartCount > 0 : succeeded(c)));
}

/** The kubelet's getPhase, for the cases a process runner meets. */
export function podPhase(view: PodView): string {
  const policy = view.pod.spec.restartPolicy ?? 'Always';
  const inits = view.containers.filter((c) => c.kind === 'init');
  const mains = view.containers.filter((c) => c.kind === 'main');
  if (policy === 'Never' && inits.some((c) => c.state.terminated && c.state.terminated.exitCode !== 0)) {
    return 'Failed';
  }
  if (!initialized(view)) return 'Pending';
  const everRan = (c: ContainerRecord) =>
    Boolean(c.state.running || c.state.terminated || c.lastState.terminated || c.restartCount > 0);
  if (!mains.some(everRan)) return 'Pending';
  const allDone = mains.every((c) => c.state.terminated);
  if (!allDone) return 'Running';
  const allOk = mains.every(succeeded);
  if (view.terminal) return allOk ? 'Succeeded' : 'Failed';
  if (policy === 'Always') return 'Running';
  if (policy === 'OnFailure') return allOk ? 'Succeeded' : 'Running';
  return allOk ? 'Succeeded' : 'Failed';
}

function condition(type: string, ok: boolean, reason?: string, message?: string): Condition {
  return ok ? { type, status: 'True' } : { type, status: 'False', reason, message };
}

export function podConditions(view: PodView): Condition[] {
  const containers = view.containers.filter((c) => c.kind !== 'init');
  const unready = containers.filter((c) => !c.ready).map((c) => c.name);
  const init = initialized(view);
  const pendingInit = view.containers.filter(
    (c) => c.kind !== 'main' && !(c.kind === 'sidecar' ? c.started : succeeded(c)),
  );
  const phase = podPhase(view);
  const done = phase === 'Succeeded' || phase === 'Failed';
  const containersReady = !done && init && unready.length === 0;
  const gates = (view.pod.spec.readinessGates ?? []).map((g) => g.conditionType);
  const gateOk = gates.every((g) =>
    view.pod.status?.conditions?.some((c) => c.type === g && c.status === 'True'),
  );
  const readyMessage = unready.length ? `containers with unready status: [${unready.join(' ')}]` : undefined;
  return [
    condition('PodReadyToStartContainers', view.sandboxReady && !done),
    init
      ? condition('Initialized', true)
      : condition(
          'Initialized',
          false,
          'ContainersNotInitialized',
          `containers with incomplete status: [${pendingInit.map((c) => c.name).join(' ')}]`,
        ),
    condition(
      'Ready',
      containersReady && gateOk,
      done ? 'PodCompleted' : 'ContainersNotReady',
      done ? undefined : (readyMessage ?? 'the status of pod readiness gates is not "True"'),
    ),
    condition(
      'ContainersReady',
      containersReady,
      done ? 'PodCompleted' : 'ContainersNotReady',
      done ? undefined : readyMessage,
    ),
  ];
}

/**
 * The status to write. Conditions keep their lastTransitionTime from `previous` while their
 * status is unchanged, so an unchanged pod yields an identical patch (and none is sent).
 */
export function podStatus(
  view: PodView,
  previous: Condition[] = [],
  now = new Date().toISOString(),
): PodStatus {
  const conditions = podConditions(view).map((c) => {
    const before = previous.find((p) => p.type === c.type);
    return {
      ...c,
      lastProbeTime: null,
      lastTransitionTime: before?.status === c.status ? before.lastTransitionTime : now,
    };
  });
  const status: PodStatus = {
    phase: podPhase(view),
    conditions,
    hostIP: view.hostIP,
    hostIPs: [{ ip: view.hostIP }],
    startTime: view.startTime,
    initContainerStatuses: view.containers.filter((c) => c.kind !== 'main').map(containerStatus),
    containerStatuses: view.containers.filter((c) => c.kind === 'main').map(containerStatus),
  };
  if (view.podIP) {
    status.podIP = view.podIP;
    status.podIPs = [{ ip: view.podIP }];
  }
  return status;
}
