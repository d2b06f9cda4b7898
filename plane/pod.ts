// One pod on the local plane, run as the kubelet runs it: volumes, then the sandbox (network
// namespace and pod IP), init containers one by one (native sidecars start and keep running),
// then the containers, each supervised: probes decide started/ready, exits restart per the
// pod's restartPolicy with the kubelet's back-off (first restart at once, then 10 s doubling
// to 5 min: CrashLoopBackOff), and deletion runs preStop, SIGTERM, the grace period, SIGKILL.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { CLUSTER_DOMAIN, DNS_SERVICE_IP, NODE_ADDRESS } from './addresses.ts';
import { containerCgroup, ensureCgroup, killCgroup, podCgroup, removeCgroup } from './cgroups.ts';
import { ContainerConfigError, containerEnv, expandReferences, serviceLinkEnv } from './env.ts';
import { commandLine, type ImageConfig, type ImageTable } from './images.ts';
import {
  capabilitySet,
  execCommand,
  type LaunchSpec,
  launchCommand,
  type Mount,
  resolveInRoot,
} from './launch.ts';
import { createSandbox, deleteSandbox, sandboxName } from './network.ts';
import { type ProbeTarget, probeOnce, runHook } from './probes.ts';
import { type ContainerKind, type ContainerRecord, type PodView, podStatus } from './status.ts';
import type { Condition, Container, Pod, Probe } from './types.ts';
import {
  type MountedVolume,
  materialize,
  type VolumeApi,
  type VolumeContext,
  VolumeError,
} from './volumes.ts';

export const BACKOFF_INITIAL_MS = 10_000;
export const BACKOFF_MAX_MS = 300_000;

export interface NodeInfo {
  name: string;
  allocatable: Record<string, string>;
  allocateIp(preferred?: string): string;
  releaseIp(ip: string): void;
}

export interface ServiceInfo {
  name: string;
  clusterIP: string;
  ports: { name?: string; port: number; protocol?: string }[];
}

/** What a pod needs from the runner around it. */
export interface PodHost {
  log: Logger;
  images: ImageTable;
  /** Where pods keep their files: <dir>/<pod uid>/. */
  dir: string;
  node: NodeInfo;
  api: VolumeApi & {
    services(namespace: string): Promise<ServiceInfo[]>;
    patchStatus(pod: Pod, status: unknown): Promise<void>;
    /** The final delete (grace 0, this uid only) once everything has stopped. */
    deleteNow(pod: Pod): Promise<void>;
    event(pod: Pod, type: 'Normal' | 'Warning', reason: string, message: string, container?: string): void;
  };
  /** Called when the worker is done with the pod (deleted, or gone from the API). */
  finished(uid: string): void;
}

/** The kubelet's crash-loop back-off for one container. */
export class Backoff {
  private delayMs = 0;

  /** How long to wait before the next start after an exit; `ranMs` resets it after 10 min of running. */
  next(ranMs: number): number {
    if (ranMs >= 2 * BACKOFF_MAX_MS) this.delayMs = 0;
    const wait = this.delayMs;
    this.delayMs = wait === 0 ? BACKOFF_INITIAL_MS : Math.min(wait * 2, BACKOFF_MAX_MS);
    return wait;
  }
}

interface Instance {
  child: ChildProcess;
  pid: number;
  startedAt: number;
  exited: Promise<{ code: number; signal: string | null }>;
  abort: AbortController;
  launch: LaunchSpec;
  env: Record<string, string>;
  /** Set when the runner itself stopped it (liveness, termination): the reason it gives. */
  killedFor?: string;
}

interface Slot {
  spec: Container;
  record: ContainerRecord;
  backoff: Backoff;
  instance?: Instance;
  starts: number;
  /** Resolves the first time the container counts as started (sidecars gate the next init). */
  startedOnce: Promise<void>;
  markStarted: () => void;
}

const HOSTS_HEADER =
  '# Kubernetes-managed hosts file (the local plane).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n';

function exitReason(code: number): string {
  return code === 0 ? 'Completed' : 'Error';
}

function signalNumber(signal: string | null): number {
  const numbers: Record<string, number> = {
    SIGHUP: 1,
    SIGINT: 2,
    SIGQUIT: 3,
    SIGABRT: 6,
    SIGKILL: 9,
    SIGSEGV: 11,
    SIGTERM: 15,
  };
  return signal ? (numbers[signal] ?? 0) : 0;
}

function homeOf(uid: number): string {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (Number(f[2]) === uid && f[5]) return f[5];
    }
  } catch {
    // no passwd: fall through
  }
  return '/';
}

export class PodWorker {
  pod: Pod;
  readonly uid: string;
  private readonly host: PodHost;
  private readonly dir: string;
  private readonly slots: Slot[] = [];
  private readonly volumes = new Map<string, MountedVolume>();
  private podIp?: string;
  /** The pod IP is taken from the node's pool and not yet given back (once: podIp stays for the status). */
  private ipHeld = false;
  private sandbox?: string;
  private sandboxReady = false;
  private readonly startTime = new Date().toISOString();
  private stopping = false;
  /** The pod is gone from the API: no more status writes. */
  private gone = false;
  private terminal = false;
  private readonly stopped = new AbortController();
  private conditions: Condition[] = [];
  private lastSent = '';
  private flushTimer?: NodeJS.Timeout;
  private flushing?: Promise<void>;
  private renewTimer?: NodeJS.Timeout;
  private termination?: Promise<void>;
  private readonly log: Logger;

  constructor(pod: Pod, host: PodHost) {
    this.pod = pod;
    this.uid = pod.metadata.uid;
    this.host = host;
    this.dir = join(host.dir, this.uid);
    this.log = host.log.child({ pod: `${pod.metadata.namespace}/${pod.metadata.name}` });
    this.conditions = pod.status?.conditions ?? [];
    const add = (spec: Container, kind: ContainerKind) => {
      let markStarted = () => {};
      const startedOnce = new Promise<void>((resolve) => {
        markStarted = resolve;
      });
      this.slots.push({
        spec,
        backoff: new Backoff(),
        starts: 0,
        startedOnce,
        markStarted,
        record: {
          name: spec.name,
          image: spec.image,
          kind,
          restartCount: 0,
          state: {
            waiting: {
              reason:
                kind === 'main' && pod.spec.initContainers?.length ? 'PodInitializing' : 'ContainerCreating',
            },
          },
          lastState: {},
          ready: false,
          started: false,
        },
      });
    };
    for (const c of pod.spec.initContainers ?? []) add(c, c.restartPolicy === 'Always' ? 'sidecar' : 'init');
    for (const c of pod.spec.containers) add(c, 'main');
  }

  /** A newer version of the pod from the API. */
  update(pod: Pod): void {
    this.pod = pod;
    if (pod.metadata.deletionTimestamp && !this.termination) {
      this.termination = this.terminate((pod.metadata.deletionGracePeriodSeconds ?? 30) * 1000);
    }
  }

  /** The pod is gone from the API (force-deleted): stop everything now. */
  async forget(): Promise<void> {
    this.gone = true;
    this.stopping = true;
    this.stopped.abort();
    for (const slot of this.slots) slot.instance?.abort.abort();
    await this.cleanUp(true);
    this.host.finished(this.uid);
  }

  // --- the start sequence ------------------------------------------------------------------

  async run(): Promise<void> {
    try {
      this.flushSoon();
      await this.prepareVolumes();
      if (this.stopping) return;
      for (let delay = 1_000; !this.sandboxReady; delay = Math.min(delay * 2, 30_000)) {
        if (this.stopping) return;
        try {
          await this.createSandbox();
        } catch (err) {
          this.log.warn({ err }, 'sandbox failed');
          this.host.api.event(this.pod, 'Warning', 'FailedCreatePodSandBox', errorMessage(err));
          await this.releaseSandbox();
          await this.pause(delay);
        }
      }
      for (const slot of this.slots.filter((s) => s.record.kind !== 'main')) {
        if (this.stopping) return;
        if (slot.record.kind === 'sidecar') {
          void this.supervise(slot);
          await Promise.race([slot.startedOnce, this.whenStopping()]);
        } else if (!(await this.runToCompletion(slot))) {
          return;
        }
      }
      for (const slot of this.slots.filter((s) => s.record.kind === 'main')) {
        if (this.stopping) return;
        slot.record.state = { waiting: { reason: 'ContainerCreating' } };
        await this.supervise(slot, true);
      }
    } catch (err) {
      this.log.error({ err }, 'pod start failed');
      this.host.api.event(this.pod, 'Warning', 'FailedCreatePodSandBox', errorMessage(err));
    }
  }

  private whenStopping(): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopped.signal.aborted) resolve();
      else this.stopped.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  }

  /** Waits `ms` unless the pod starts stopping first. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.stopped.signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }

  private volumeContext(): VolumeContext {
    return {
      pod: this.pod,
      api: this.host.api,
      dir: join(this.dir, 'volumes'),
      allocatable: this.host.node.allocatable,
    };
  }

  private async prepareVolumes(): Promise<void> {
    let delay = 500;
    for (const volume of this.pod.spec.volumes ?? []) {
      for (;;) {
        if (this.stopping) return;
        try {
          const ctx = this.volumeContext();
          this.volumes.set(volume.name, await materialize(ctx, volume));
          this.scheduleRenewal(ctx.renewAt);
          break;
        } catch (err) {
          const message = `MountVolume.SetUp failed for volume "${volume.name}": ${errorMessage(err)}`;
          this.host.api.event(this.pod, 'Warning', 'FailedMount', message);
          if (!(err instanceof VolumeError) || !err.retry) this.log.warn({ err }, 'volume failed');
          await this.pause(delay);
          delay = Math.min(delay * 2, 30_000);
        }
      }
    }
  }

  /** Service-account tokens (and what their projected volumes hold) are rewritten at 80% of their life. */
  private scheduleRenewal(at: Date | undefined): void {
    if (!at) return;
    clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => void this.refreshVolumes(), Math.max(at.getTime() - Date.now(), 1000));
    this.renewTimer.unref();
  }

  private async refreshVolumes(): Promise<void> {
    if (this.stopping) return;
    const ctx = this.volumeContext();
    for (const volume of this.pod.spec.volumes ?? []) {
      if (!this.volumes.get(volume.name)?.refreshable) continue;
      await materialize(ctx, volume).catch((err) =>
        this.log.warn({ err, volume: volume.name }, 'volume refresh failed'),
      );
    }
    this.scheduleRenewal(ctx.renewAt);
  }

  private hostname(): string {
    return (this.pod.spec.hostname ?? this.pod.metadata.name).slice(0, 63);
  }

  private async createSandbox(): Promise<void> {
    const etc = join(this.dir, 'etc');
    await mkdir(etc, { recursive: true });
    await mkdir(podCgroup(this.uid), { recursive: true });
    if (this.pod.spec.hostNetwork) {
      this.podIp = NODE_ADDRESS;
    } else {
      const previous = this.pod.status?.podIP;
      this.podIp = this.host.node.allocateIp(previous);
      this.ipHeld = true;
      this.log.info({ podIP: this.podIp }, 'pod IP taken');
      this.sandbox = sandboxName(this.uid);
      await createSandbox(this.sandbox, this.podIp);
    }
    const ns = this.pod.metadata.namespace;
    const name = this.hostname();
    const fqdn = this.pod.spec.subdomain
      ? `${name}.${this.pod.spec.subdomain}.${ns}.svc.${CLUSTER_DOMAIN}`
      : '';
    let hosts = `${HOSTS_HEADER}${this.podIp}\t${fqdn ? `${fqdn}\t` : ''}${name}\n`;
    for (const alias of this.pod.spec.hostAliases ?? [])
      hosts += `${alias.ip}\t${alias.hostnames.join('\t')}\n`;
    await writeFile(join(etc, 'hosts'), hosts);
    await writeFile(join(etc, 'resolv.conf'), this.resolvConf());
    await writeFile(join(etc, 'hostname'), `${name}\n`);
    this.sandboxReady = true;
    this.flushSoon();
  }

  private resolvConf(): string {
    const ns = this.pod.metadata.namespace;
    const policy = this.pod.spec.dnsPolicy ?? 'ClusterFirst';
    const config = this.pod.spec.dnsConfig;
    let nameservers = [DNS_SERVICE_IP];
    let searches = [`${ns}.svc.${CLUSTER_DOMAIN}`, `svc.${CLUSTER_DOMAIN}`, CLUSTER_DOMAIN];
    let options = ['ndots:5'];
    if (policy === 'None') {
      nameservers = [];
      searches = [];
      options = [];
    } else if (policy === 'Default' || (policy === 'ClusterFirst' && this.pod.spec.hostNetwork)) {
      // The host's resolver is outside the plane; pods on it get no name service beyond /etc/hosts.
      nameservers = [];
      searches = [];
    }
    nameservers.push(...(config?.nameservers ?? []));
    searches.push(...(config?.searches ?? []));
    for (const o of config?.options ?? []) {
      options = options.filter((x) => x.split(':')[0] !== o.name);
      options.push(o.value === undefined ? o.name : `${o.name}:${o.value}`);
    }
    return [
      ...nameservers.map((n) => `nameserver ${n}`),
      ...(searches.length ? [`search ${searches.join(' ')}`] : []),
      ...(options.length ? [`options ${options.join(' ')}`] : []),
      '',
    ].join('\n');
  }

  // --- containers ----------------------------------------------------------------------------

  private shouldRestart(slot: Slot, code: number): boolean {
    if (this.stopping || this.terminal) return false;
    if (slot.record.kind === 'sidecar') return true;
    const policy = this.pod.spec.restartPolicy ?? 'Always';
    if (slot.record.kind === 'init') return policy !== 'Never' && code !== 0;
    return policy === 'Always' || (policy === 'OnFailure' && code !== 0);
  }

  /** Starts the container and keeps restarting it as its policy says. `detach`: return once it first ran. */
  private async supervise(slot: Slot, detach = false): Promise<void> {
    let firstRun = () => {};
    const ranOnce = new Promise<void>((resolve) => {
      firstRun = resolve;
    });
    const loop = (async () => {
      for (;;) {
        if (this.stopping) return;
        const instance = await this.startInstance(slot);
        firstRun();
        if (!instance) {
          await this.pause(BACKOFF_INITIAL_MS);
          continue;
        }
        const { code } = await instance.exited;
        // As the kubelet: the dead container (not ready) is in the pod's status before it
        // restarts, so a pod whose container died leaves its Service even when the restart is at once.
        await this.flush();
        if (!this.shouldRestart(slot, code)) {
          if (slot.record.kind === 'main') void this.checkCompletion();
          return;
        }
        const wait = slot.backoff.next(Date.now() - instance.startedAt);
        slot.record.lastState = { terminated: slot.record.state.terminated! };
        if (wait > 0) {
          const message = `back-off ${wait / 1000}s restarting failed container=${slot.spec.name} pod=${this.pod.metadata.name}_${this.pod.metadata.namespace}(${this.uid})`;
          slot.record.state = { waiting: { reason: 'CrashLoopBackOff', message } };
          this.host.api.event(
            this.pod,
            'Warning',
            'BackOff',
            'Back-off restarting failed container',
            slot.spec.name,
          );
          this.flushSoon();
          await this.pause(wait);
        }
      }
    })();
    await (detach ? Promise.race([ranOnce, loop]) : loop);
  }

  /** A plain init container: runs until it exits 0 (retrying failures unless restartPolicy is Never). */
  private async runToCompletion(slot: Slot): Promise<boolean> {
    await this.supervise(slot);
    const ok = slot.record.state.terminated?.exitCode === 0;
    if (!ok && !this.stopping) {
      // restartPolicy Never and a failed init container: the pod has failed.
      this.terminal = true;
      this.flushSoon();
      await this.stopAll(0);
      await this.releaseSandbox();
    }
    return ok && !this.stopping;
  }

  private async checkCompletion(): Promise<void> {
    const mains = this.slots.filter((s) => s.record.kind === 'main');
    const policy = this.pod.spec.restartPolicy ?? 'Always';
    if (policy === 'Always' || this.stopping || this.terminal) return;
    const done = mains.every((s) => s.record.state.terminated && !s.instance);
    const willRestart = mains.some(
      (s) => s.record.state.terminated && this.shouldRestart(s, s.record.state.terminated.exitCode),
    );
    if (!done || willRestart) return;
    // Every container finished: the sidecars are stopped, the pod turns Succeeded or Failed.
    this.terminal = true;
    await this.stopAll(Math.min((this.pod.spec.terminationGracePeriodSeconds ?? 30) * 1000, 30_000));
    await this.releaseSandbox();
    this.flushSoon();
  }

  private image(slot: Slot): ImageConfig | undefined {
    const image = this.host.images.resolve(slot.spec.image);
    if (!image) {
      const message = this.host.images.missing(slot.spec.image);
      if (slot.record.state.waiting?.reason !== 'ImageNotInTable') {
        this.host.api.event(this.pod, 'Warning', 'Failed', message, slot.spec.name);
      }
      slot.record.state = { waiting: { reason: 'ImageNotInTable', message } };
      this.flushSoon();
    }
    return image;
  }

  private async buildLaunch(
    slot: Slot,
    image: ImageConfig,
  ): Promise<{ spec: LaunchSpec; env: Record<string, string> }> {
    const { pod } = this;
    const c = slot.spec;
    const podContext = pod.spec.securityContext ?? {};
    const context = c.securityContext ?? {};
    const uid = context.runAsUser ?? podContext.runAsUser ?? image.user;
    const gid =
      context.runAsGroup ?? podContext.runAsGroup ?? context.runAsUser ?? podContext.runAsUser ?? image.user;
    if ((context.runAsNonRoot ?? podContext.runAsNonRoot) && uid === 0) {
      throw new ContainerConfigError(
        `container has runAsNonRoot and image will run as root (pod: "${pod.metadata.name}_${pod.metadata.namespace}(${this.uid})", container: ${c.name})`,
      );
    }
    const groups = [
      ...new Set(
        [podContext.fsGroup, ...(podContext.supplementalGroups ?? [])].filter((g) => g !== undefined),
      ),
    ] as number[];
    const services =
      pod.spec.enableServiceLinks === false ? [] : await this.host.api.services(pod.metadata.namespace);
    const kubernetes = (await this.host.api.services('default')).filter((s) => s.name === 'kubernetes');
    const ns = pod.metadata.namespace;
    const configMaps = new Map<string, Record<string, string> | undefined>();
    const secrets = new Map<string, Record<string, string> | undefined>();
    const text = (data: Record<string, Buffer> | undefined) =>
      data && Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v.toString('utf8')]));
    for (const ref of [...(c.envFrom ?? []), ...(c.env ?? []).map((e) => e.valueFrom)]) {
      const cm =
        ref &&
        ('configMapRef' in ref
          ? ref.configMapRef
          : 'configMapKeyRef' in ref
            ? ref.configMapKeyRef
            : undefined);
      const sec =
        ref && ('secretRef' in ref ? ref.secretRef : 'secretKeyRef' in ref ? ref.secretKeyRef : undefined);
      if (cm && !configMaps.has(cm.name))
        configMaps.set(cm.name, text(await this.host.api.configMap(ns, cm.name)));
      if (sec && !secrets.has(sec.name))
        secrets.set(sec.name, text(await this.host.api.secret(ns, sec.name)));
    }
    const base: Record<string, string> = {
      ...image.env,
      HOSTNAME: this.hostname(),
      ...serviceLinkEnv(services),
      ...serviceLinkEnv(kubernetes),
    };
    // status.podIP as a kubelet knows it, from the sandbox it made: the pod object may not carry
    // it yet (the status saying so is written after the sandbox), and a fieldRef must not read ''.
    const addressed = this.podIp
      ? { ...pod, status: { ...pod.status, podIP: this.podIp, podIPs: [{ ip: this.podIp }] } }
      : pod;
    const vars = containerEnv(addressed, c, base, {
      configMap: (name) => configMaps.get(name),
      secret: (name) => secrets.get(name),
      allocatable: this.host.node.allocatable,
    });
    if (!vars.has('HOME')) vars.set('HOME', homeOf(uid));
    const expand = (list?: string[]) => list?.map((s) => expandReferences(s, vars));
    const argv = commandLine(image, expand(c.command), expand(c.args));
    if (argv.length === 0)
      throw new ContainerConfigError(`no command specified for container ${c.name} (image ${c.image})`);
    const mounts: Mount[] = [];
    for (const m of c.volumeMounts ?? []) {
      const volume = this.volumes.get(m.name);
      if (!volume) throw new ContainerConfigError(`volume ${m.name} is not defined or not mounted`);
      const sub = m.subPathExpr ? expandReferences(m.subPathExpr, vars) : m.subPath;
      if (sub && (sub.startsWith('/') || sub.split('/').includes('..'))) {
        throw new ContainerConfigError(`subPath ${sub} must be a relative path inside the volume`);
      }
      const source = sub ? join(volume.path, sub) : volume.path;
      if (sub) await mkdir(source, { recursive: true });
      mounts.push({
        source,
        target: resolveInRoot(m.mountPath),
        readOnly: Boolean(m.readOnly),
        file: volume.file,
      });
    }
    if (!pod.spec.hostNetwork) {
      for (const file of ['hosts', 'resolv.conf', 'hostname']) {
        const target = resolveInRoot(`/etc/${file}`);
        if (!mounts.some((m) => m.target === target)) {
          mounts.push({
            source: join(this.dir, 'etc', file),
            target,
            readOnly: false,
            file: true,
          });
        }
      }
    }
    const dir = join(this.dir, 'containers', c.name);
    await rm(dir, { recursive: true, force: true });
    for (const d of ['upper', 'work', 'root']) await mkdir(join(dir, d), { recursive: true });
    const spec: LaunchSpec = {
      netns: this.sandbox && `/run/netns/${this.sandbox}`,
      hostname: this.hostname(),
      cgroup: containerCgroup(this.uid, c.name),
      root: join(dir, 'root'),
      upper: join(dir, 'upper'),
      work: join(dir, 'work'),
      mounts,
      traverse: image.paths,
      readOnlyRoot: Boolean(context.readOnlyRootFilesystem),
      uid,
      gid,
      groups,
      noNewPrivs: context.allowPrivilegeEscalation === false,
      capabilities: capabilitySet(context),
      workingDir: c.workingDir ?? image.workingDir,
      argv,
    };
    return { spec, env: Object.fromEntries(vars) };
  }

  private logPath(name: string, attempt: number): string {
    return join(this.dir, 'logs', name, `${attempt}.log`);
  }

  /** Starts one run of the container; undefined when it cannot start yet (its waiting reason says why). */
  private async startInstance(slot: Slot): Promise<Instance | undefined> {
    const image = this.image(slot);
    if (!image) return undefined;
    // Whatever the last run left in the container's cgroup goes before its files do.
    await killCgroup(containerCgroup(this.uid, slot.spec.name));
    let launch: { spec: LaunchSpec; env: Record<string, string> };
    try {
      launch = await this.buildLaunch(slot, image);
    } catch (err) {
      const message = errorMessage(err);
      if (slot.record.state.waiting?.message !== message) {
        this.host.api.event(this.pod, 'Warning', 'Failed', `Error: ${message}`, slot.spec.name);
      }
      slot.record.state = { waiting: { reason: 'CreateContainerConfigError', message } };
      this.flushSoon();
      if (!(err instanceof ContainerConfigError)) this.log.warn({ err }, 'container config');
      return undefined;
    }
    const attempt = slot.starts;
    await ensureCgroup(launch.spec.cgroup);
    await mkdir(join(this.dir, 'logs', slot.spec.name), { recursive: true });
    // Checked last before spawning (no await in between): a pod being deleted starts nothing.
    if (this.stopping || this.terminal) return undefined;
    const fd = openSync(this.logPath(slot.spec.name, attempt), 'a');
    const { file, args } = launchCommand(launch.spec);
    const child = spawn(file, args, { env: launch.env, stdio: ['ignore', fd, fd], detached: true });
    closeSync(fd);
    const startedAt = Date.now();
    const exited = new Promise<{ code: number; signal: string | null }>((resolve) => {
      child.on('error', (err) => {
        this.log.error({ err, container: slot.spec.name }, 'spawn failed');
        resolve({ code: 128, signal: null });
      });
      child.on('exit', (code, signal) => resolve({ code: code ?? 128 + signalNumber(signal), signal }));
    });
    const instance: Instance = {
      child,
      pid: child.pid ?? 0,
      startedAt,
      exited,
      abort: new AbortController(),
      launch: launch.spec,
      env: launch.env,
    };
    slot.instance = instance;
    slot.starts++;
    slot.record.restartCount = slot.starts - 1;
    const containerID = `sluice://${this.uid.slice(0, 8)}-${slot.spec.name}-${attempt}`;
    slot.record.containerID = containerID;
    slot.record.state = { running: { startedAt: new Date(startedAt).toISOString() } };
    slot.record.ready = false;
    slot.record.started = false;
    this.host.api.event(this.pod, 'Normal', 'Started', `Started container ${slot.spec.name}`, slot.spec.name);
    this.flushSoon();
    void exited.then((result) => this.onExit(slot, instance, result.code, containerID));

    const hook = slot.spec.lifecycle?.postStart;
    if (hook) {
      const outcome = await runHook(this.target(slot, instance), hook, 60_000);
      if (!outcome.ok && !instance.abort.signal.aborted) {
        this.host.api.event(this.pod, 'Warning', 'FailedPostStartHook', outcome.message, slot.spec.name);
        await this.kill(slot, instance, this.grace(), 'FailedPostStartHook');
        return instance;
      }
    }
    if (!slot.spec.startupProbe && !instance.abort.signal.aborted) this.markStarted(slot);
    this.startProbes(slot, instance);
    return instance;
  }

  private markStarted(slot: Slot): void {
    slot.record.started = true;
    if (!slot.spec.readinessProbe) slot.record.ready = true;
    slot.markStarted();
    this.flushSoon();
  }

  private onExit(slot: Slot, instance: Instance, code: number, containerID: string): void {
    instance.abort.abort();
    if (slot.instance === instance) slot.instance = undefined;
    slot.record.ready = false;
    slot.record.started = false;
    slot.record.state = {
      terminated: {
        exitCode: code,
        reason: exitReason(code),
        startedAt: new Date(instance.startedAt).toISOString(),
        finishedAt: new Date().toISOString(),
        containerID,
      },
    };
    this.flushSoon();
    // The main process is gone; whatever it left behind in the container goes too.
    void killCgroup(instance.launch.cgroup).catch(() => undefined);
  }

  private target(slot: Slot, instance: Instance): ProbeTarget {
    return {
      podIp: this.podIp ?? NODE_ADDRESS,
      container: slot.spec,
      exec: (argv, timeoutMs) => this.execIn(instance, argv, timeoutMs),
    };
  }

  /** A command inside the container (exec probes and hooks). */
  execIn(instance: Instance, argv: string[], timeoutMs: number): Promise<{ code: number; output: string }> {
    const { file, args } = execCommand(instance.pid, instance.launch.cgroup, instance.launch, argv);
    return new Promise((resolve) => {
      const child = spawn(file, args, { env: instance.env, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      const add = (d: Buffer) => {
        if (output.length < 10_240) output += d;
      };
      child.stdout.on('data', add);
      child.stderr.on('data', add);
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        output += `command timed out after ${timeoutMs} ms`;
      }, timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        resolve({ code: 126, output: err.message });
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code: code ?? 137, output });
      });
    });
  }

  // --- probes --------------------------------------------------------------------------------

  private startProbes(slot: Slot, instance: Instance): void {
    const { spec } = slot;
    const signal = instance.abort.signal;
    const target = this.target(slot, instance);
    const loop = (
      probe: Probe,
      kind: 'startup' | 'liveness' | 'readiness',
      onResult: (ok: boolean, message: string) => boolean,
    ) => {
      const period = (probe.periodSeconds ?? 10) * 1000;
      const tick = async () => {
        if (signal.aborted) return;
        const gated = kind !== 'startup' && !slot.record.started;
        if (!gated) {
          const outcome = await probeOnce(target, probe).catch((err) => ({
            ok: false,
            message: errorMessage(err),
          }));
          if (signal.aborted) return;
          if (!onResult(outcome.ok, outcome.message)) return;
        }
        setTimeout(tick, gated ? 100 : period).unref();
      };
      setTimeout(tick, (probe.initialDelaySeconds ?? 0) * 1000).unref();
    };
    const counter = (probe: Probe) => {
      let successes = 0;
      let failures = 0;
      return (ok: boolean) => {
        if (ok) {
          successes++;
          failures = 0;
        } else {
          failures++;
          successes = 0;
        }
        return {
          passed: successes >= (probe.successThreshold ?? 1),
          failed: failures >= (probe.failureThreshold ?? 3),
        };
      };
    };
    if (spec.startupProbe) {
      const probe = spec.startupProbe;
      const count = counter(probe);
      loop(probe, 'startup', (ok, message) => {
        const { passed, failed } = count(ok);
        if (passed) {
          this.markStarted(slot);
          return false;
        }
        if (failed) {
          this.unhealthy(slot, instance, 'Startup', message, probe);
          return false;
        }
        return true;
      });
    }
    if (spec.livenessProbe) {
      const probe = spec.livenessProbe;
      const count = counter(probe);
      loop(probe, 'liveness', (ok, message) => {
        if (!ok)
          this.host.api.event(
            this.pod,
            'Warning',
            'Unhealthy',
            `Liveness probe failed: ${message}`,
            spec.name,
          );
        if (count(ok).failed) {
          this.unhealthy(slot, instance, 'Liveness', message, probe);
          return false;
        }
        return true;
      });
    }
    if (spec.readinessProbe) {
      const probe = spec.readinessProbe;
      const count = counter(probe);
      loop(probe, 'readiness', (ok, message) => {
        const { passed, failed } = count(ok);
        if (!ok && failed && slot.record.ready) {
          this.host.api.event(
            this.pod,
            'Warning',
            'Unhealthy',
            `Readiness probe failed: ${message}`,
            spec.name,
          );
        }
        const ready = passed ? true : failed ? false : slot.record.ready;
        if (ready !== slot.record.ready && !this.stopping) {
          slot.record.ready = ready;
          this.flushSoon();
        }
        return true;
      });
    }
  }

  private unhealthy(slot: Slot, instance: Instance, kind: string, message: string, probe: Probe): void {
    this.host.api.event(
      this.pod,
      'Normal',
      'Killing',
      `Container ${slot.spec.name} failed ${kind.toLowerCase()} probe, will be restarted`,
      slot.spec.name,
    );
    this.log.info({ container: slot.spec.name, kind, message }, 'probe failed, restarting');
    const grace =
      probe.terminationGracePeriodSeconds !== undefined
        ? probe.terminationGracePeriodSeconds * 1000
        : this.grace();
    void this.kill(slot, instance, grace, `${kind}ProbeFailed`);
  }

  private grace(): number {
    return (this.pod.spec.terminationGracePeriodSeconds ?? 30) * 1000;
  }

  /** preStop, SIGTERM, then SIGKILL to the container's whole cgroup at the deadline. */
  private async kill(slot: Slot, instance: Instance, graceMs: number, reason: string): Promise<void> {
    if (instance.killedFor) return instance.exited.then(() => undefined);
    instance.killedFor = reason;
    const deadline = Date.now() + graceMs;
    const hook = slot.spec.lifecycle?.preStop;
    if (hook && graceMs > 0) {
      const outcome = await Promise.race([
        runHook(this.target(slot, instance), hook, graceMs),
        instance.exited.then(() => ({ ok: true, message: '' })),
      ]);
      if (!outcome.ok)
        this.host.api.event(this.pod, 'Warning', 'FailedPreStopHook', outcome.message, slot.spec.name);
    }
    try {
      process.kill(instance.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    const left = deadline - Date.now();
    const timedOut = await Promise.race([
      instance.exited.then(() => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), Math.max(left, 0)).unref()),
    ]);
    if (timedOut) await killCgroup(instance.launch.cgroup);
    await instance.exited;
  }

  /** Stops every running container: the main ones together, then sidecars in reverse order. */
  private async stopAll(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    const running = (kind: ContainerKind) => this.slots.filter((s) => s.record.kind === kind && s.instance);
    await Promise.all(
      [...running('main'), ...running('init')].map((s) =>
        this.kill(s, s.instance!, deadline - Date.now(), 'Terminating'),
      ),
    );
    for (const s of running('sidecar').reverse()) {
      // Sidecars get what is left of the grace period, and at least two seconds.
      await this.kill(s, s.instance!, Math.max(deadline - Date.now(), 2_000), 'Terminating');
    }
  }

  // --- termination -----------------------------------------------------------------------------

  private async terminate(graceMs: number): Promise<void> {
    this.stopping = true;
    this.stopped.abort();
    const running = this.slots.filter((s) => s.instance);
    if (running.length) {
      this.log.info({ graceMs }, 'terminating');
      for (const s of running) {
        this.host.api.event(this.pod, 'Normal', 'Killing', `Stopping container ${s.spec.name}`, s.spec.name);
      }
    }
    await this.stopAll(graceMs);
    this.terminal = true;
    for (const s of this.slots) {
      if (!s.record.state.terminated) {
        s.record.state = s.record.state.running
          ? { terminated: { exitCode: 137, reason: 'Error', finishedAt: new Date().toISOString() } }
          : s.record.state;
      }
      s.record.ready = false;
    }
    await this.flush();
    await this.cleanUp(false);
    try {
      await this.host.api.deleteNow(this.pod);
    } catch (err) {
      this.log.warn({ err }, 'final delete failed');
    }
    this.gone = true;
    await rm(this.dir, { recursive: true, force: true });
    this.host.finished(this.uid);
  }

  private async releaseSandbox(): Promise<void> {
    if (this.sandbox) await deleteSandbox(this.sandbox);
    // Given back once: a second release (terminate, then the pod's deletion) would free an IP
    // that another pod may hold by then.
    if (this.ipHeld && this.podIp) this.host.node.releaseIp(this.podIp);
    this.ipHeld = false;
    this.sandbox = undefined;
    this.sandboxReady = false;
  }

  private async cleanUp(removeFiles: boolean): Promise<void> {
    clearTimeout(this.renewTimer);
    clearTimeout(this.flushTimer);
    await removeCgroup(podCgroup(this.uid));
    await this.releaseSandbox();
    await rm(join(this.dir, 'containers'), { recursive: true, force: true });
    if (removeFiles) await rm(this.dir, { recursive: true, force: true });
  }

  // --- status ----------------------------------------------------------------------------------

  view(): PodView {
    return {
      pod: this.pod,
      hostIP: NODE_ADDRESS,
      podIP: this.podIp,
      startTime: this.startTime,
      sandboxReady: this.sandboxReady,
      containers: this.slots.map((s) => s.record),
      terminal: this.terminal,
    };
  }

  /** The log file of a container's current (or, with `previous`, last) run. */
  logFile(container: string, previous: boolean): string | undefined {
    const slot = this.slots.find((s) => s.spec.name === container);
    if (!slot || slot.starts === 0) return undefined;
    const attempt = slot.starts - 1 - (previous ? 1 : 0);
    return attempt < 0 ? undefined : this.logPath(container, attempt);
  }

  /** Whether the container's current run is still going (a followed log ends when it is not). */
  running(container: string): boolean {
    return Boolean(this.slots.find((s) => s.spec.name === container)?.instance);
  }

  containers(): string[] {
    return this.slots.map((s) => s.spec.name);
  }

  private flushSoon(): void {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, 10);
  }

  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.gone) return;
    const status = podStatus(this.view(), this.conditions);
    const text = JSON.stringify(status);
    if (text === this.lastSent) return;
    this.flushing = (async () => {
      try {
        await this.host.api.patchStatus(this.pod, status);
        this.lastSent = text;
        this.conditions = status.conditions ?? [];
      } catch (err) {
        this.log.warn({ err }, 'status update failed');
        if (!this.stopping) setTimeout(() => this.flushSoon(), 1000).unref();
      } finally {
        this.flushing = undefined;
      }
    })();
    await this.flushing;
  }
}
