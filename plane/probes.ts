// Probe and lifecycle-hook actions as the kubelet runs them: httpGet (2xx/3xx is success),
// tcpSocket (a connection), exec (exit 0, inside the container) and grpc (the standard health
// service answers SERVING). Each has the probe's timeout; the caller keeps the thresholds.
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { connect } from 'node:net';
import type {
  Container,
  GrpcAction,
  HttpGetAction,
  LifecycleHandler,
  Probe,
  TcpSocketAction,
} from './types.ts';

export interface ProbeOutcome {
  ok: boolean;
  message: string;
}

export interface ProbeTarget {
  podIp: string;
  container: Container;
  /** Runs a command inside the container; resolves with its exit code and output. */
  exec: (argv: string[], timeoutMs: number) => Promise<{ code: number; output: string }>;
}

export function resolvePort(container: Container, port: number | string): number {
  if (typeof port === 'number') return port;
  if (/^\d+$/.test(port)) return Number(port);
  const found = container.ports?.find((p) => p.name === port);
  if (!found) throw new Error(`no port named ${port} in container ${container.name}`);
  return found.containerPort;
}

function httpGet(target: ProbeTarget, action: HttpGetAction, timeoutMs: number): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    const port = resolvePort(target.container, action.port);
    const scheme = action.scheme ?? 'HTTP';
    const headers: Record<string, string> = { 'user-agent': 'kube-probe/1.34', accept: '*/*' };
    for (const h of action.httpHeaders ?? []) headers[h.name.toLowerCase()] = h.value;
    const url = `${scheme.toLowerCase()}://${action.host || target.podIp}:${port}${action.path ?? '/'}`;
    const client = scheme === 'HTTPS' ? https : http;
    const req = client.get(
      url,
      { headers, timeout: timeoutMs, rejectUnauthorized: false, agent: false },
      (res) => {
        res.resume();
        const code = res.statusCode ?? 0;
        resolve({ ok: code >= 200 && code < 400, message: `HTTP probe failed with statuscode: ${code}` });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`Get "${url}": context deadline exceeded`)));
    req.on('error', (err) => resolve({ ok: false, message: `Get "${url}": ${err.message}` }));
  });
}

function tcpSocket(target: ProbeTarget, action: TcpSocketAction, timeoutMs: number): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    const port = resolvePort(target.container, action.port);
    const host = action.host || target.podIp;
    const socket = connect({ host, port, timeout: timeoutMs });
    socket.once('connect', () => {
      socket.destroy();
      resolve({ ok: true, message: '' });
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve({ ok: false, message: `dial tcp ${host}:${port}: i/o timeout` });
    });
    socket.once('error', (err) =>
      resolve({ ok: false, message: `dial tcp ${host}:${port}: ${err.message}` }),
    );
  });
}

/** grpc.health.v1.HealthCheckRequest{service} as one length-prefixed gRPC message. */
export function healthRequest(service: string): Buffer {
  const name = Buffer.from(service);
  const body = service ? Buffer.concat([Buffer.from([0x0a, name.length]), name]) : Buffer.alloc(0);
  const frame = Buffer.alloc(5);
  frame.writeUInt32BE(body.length, 1);
  return Buffer.concat([frame, body]);
}

/** HealthCheckResponse.status (field 1, an enum) from one gRPC message; 0 when absent. */
export function healthStatus(message: Buffer): number {
  const body = message.subarray(5);
  for (let i = 0; i + 1 < body.length; ) {
    const tag = body[i]!;
    if (tag === 0x08) return body[i + 1]!;
    i += 2;
  }
  return 0;
}

function grpc(target: ProbeTarget, action: GrpcAction, timeoutMs: number): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    const authority = `http://${target.podIp}:${action.port}`;
    const session = http2.connect(authority);
    const timer = setTimeout(
      () => finish(false, `timeout: health rpc did not complete within ${timeoutMs}ms`),
      timeoutMs,
    );
    let done = false;
    function finish(ok: boolean, message: string) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      session.destroy();
      resolve({ ok, message });
    }
    session.on('error', (err) => finish(false, `failed to connect service "${authority}": ${err.message}`));
    const stream = session.request({
      ':method': 'POST',
      ':path': '/grpc.health.v1.Health/Check',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('trailers', (trailers) => {
      const status = Number(trailers['grpc-status'] ?? 0);
      if (status !== 0) finish(false, `rpc error: code = ${status} desc = ${trailers['grpc-message'] ?? ''}`);
    });
    stream.on('end', () => {
      const serving = healthStatus(Buffer.concat(chunks)) === 1;
      finish(serving, serving ? '' : 'service unhealthy (responded with "NOT_SERVING")');
    });
    stream.on('error', (err) => finish(false, err.message));
    stream.end(healthRequest(action.service ?? ''));
  });
}

async function exec(target: ProbeTarget, argv: string[], timeoutMs: number): Promise<ProbeOutcome> {
  const { code, output } = await target.exec(argv, timeoutMs);
  return { ok: code === 0, message: output.trim() || `command ${JSON.stringify(argv)} exited with ${code}` };
}

/** One attempt of a probe. */
export function probeOnce(target: ProbeTarget, probe: Probe): Promise<ProbeOutcome> {
  const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
  if (probe.httpGet) return httpGet(target, probe.httpGet, timeoutMs);
  if (probe.tcpSocket) return tcpSocket(target, probe.tcpSocket, timeoutMs);
  if (probe.exec) return exec(target, probe.exec.command, timeoutMs);
  if (probe.grpc) return grpc(target, probe.grpc, timeoutMs);
  return Promise.resolve({ ok: false, message: 'probe has no action' });
}

/** postStart and preStop: the same actions, bounded by `timeoutMs` (the grace left, for preStop). */
export async function runHook(
  target: ProbeTarget,
  hook: LifecycleHandler,
  timeoutMs: number,
): Promise<ProbeOutcome> {
  if (hook.sleep) {
    await new Promise((r) => setTimeout(r, Math.min(hook.sleep!.seconds * 1000, timeoutMs)));
    return { ok: true, message: '' };
  }
  if (hook.exec) return exec(target, hook.exec.command, timeoutMs);
  if (hook.httpGet) return httpGet(target, hook.httpGet, timeoutMs);
  if (hook.tcpSocket) return tcpSocket(target, hook.tcpSocket, timeoutMs);
  return { ok: true, message: '' };
}
