import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import pino from 'pino';
import { loadProxyConfig } from '../../proxy/config.ts';
import { type RunningProxy, runProxy } from '../../proxy/main.ts';

export interface ProxyUnderTest {
  proxy: RunningProxy;
  url: string;
  adminUrl: string;
  /** Parsed pino lines the proxy logged so far. */
  logs: () => Record<string, unknown>[];
}

/** A real proxy on loopback ports in this process, logging into memory. */
export async function startProxy(upstream: string, flags: string[] = []): Promise<ProxyUnderTest> {
  const config = loadProxyConfig(
    ['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', upstream, ...flags],
    {},
  );
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      callback();
    },
  });
  const proxy = await runProxy(config, pino({ level: 'info' }, sink));
  return {
    proxy,
    url: `http://127.0.0.1:${proxy.publicPort}`,
    adminUrl: `http://127.0.0.1:${proxy.adminPort}`,
    logs: () => lines,
  };
}

/** `curl --no-buffer` as a child process: stdout as it arrives, and its exit. */
export interface Curl {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<number>;
  events: () => EventSourceMessage[];
}

export function curl(url: string, args: string[] = []): Curl {
  const child = spawn('curl', ['--no-buffer', '--silent', '--show-error', ...args, url], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const events: EventSourceMessage[] = [];
  const parser = createParser({ onEvent: (e) => events.push(e) });
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    parser.feed(d);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  // 'close', not 'exit': curl may exit before its last output has been read from the pipe.
  const exit = once(child, 'close').then(([code]) => code as number);
  return { child, stdout: () => stdout, stderr: () => stderr, exit, events: () => events };
}

/** Reads one Prometheus sample value from a /metrics text (first matching series). */
export function metricValue(text: string, series: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

/** `sluice_proxy_stream_end_total` by reason, read from a proxy's /metrics. */
export async function streamEnds(adminUrl: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const ends: Record<string, number> = {};
  for (const [, reason, value] of text.matchAll(/^sluice_proxy_stream_end_total\{reason="(\w+)"\} (\d+)$/gm))
    if (Number(value) > 0) ends[reason!] = Number(value);
  return ends;
}
