import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from '../../common/net.ts';
import { type Started, start } from '../../harness/process.ts';

export const NGINX = process.env.SLUICE_NGINX ?? '/usr/sbin/nginx';

export interface NginxOptions {
  /** `location` path, like an Ingress rule's path (Prefix). */
  location?: string;
  workerConnections?: number;
  /** Open files for the worker (default: two per connection, plus some). */
  rlimitNofile?: number;
}

/** The nginx worker's process id (the master only forks it), for measuring its memory. */
export function nginxWorkerPid(nginx: Nginx): number | undefined {
  const children = readFileSync(
    `/proc/${nginx.process.child.pid}/task/${nginx.process.child.pid}/children`,
    'utf8',
  ).trim();
  return children ? Number(children.split(/\s+/)[0]) : undefined;
}

export interface Nginx {
  port: number;
  url: string;
  process: Started;
  stop: () => Promise<void>;
}

/**
 * A real nginx in front of `upstreamPort`, configured as ingress-nginx renders a location for an
 * Ingress carrying Sluice's annotations (proxy-buffering off, 3600 s read/send timeouts,
 * HTTP/1.1 keep-alive upstream). Runs in the foreground with everything in a temp dir.
 */
export async function startNginx(upstreamPort: number, options: NginxOptions = {}): Promise<Nginx> {
  const { location = '/', workerConnections = 4096 } = options;
  const rlimitNofile = options.rlimitNofile ?? workerConnections * 2 + 64;
  const dir = await mkdtemp(join(tmpdir(), 'sluice-nginx-'));
  const port = await freePort();
  const conf = `
worker_processes 1;
worker_rlimit_nofile ${rlimitNofile};
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections ${workerConnections}; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 75s;
  upstream sluice_proxy {
    server 127.0.0.1:${upstreamPort};
    keepalive 320;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location ${location} {
      proxy_pass http://sluice_proxy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Request-ID $request_id;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_connect_timeout 5s;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
      proxy_buffer_size 4k;
      proxy_buffers 4 4k;
      proxy_request_buffering on;
      client_max_body_size 10m;
    }
  }
}
`;
  const confPath = join(dir, 'nginx.conf');
  await writeFile(confPath, conf);
  const child = start(NGINX, ['-p', dir, '-c', confPath, '-e', join(dir, 'error.log'), '-g', 'daemon off;']);
  try {
    await waitForPort(port);
  } catch (err) {
    await child.stop('SIGKILL');
    throw new Error(`nginx did not start: ${child.output()}`, { cause: err });
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    process: child,
    stop: async () => {
      await child.stop('SIGQUIT'); // graceful
      await rm(dir, { recursive: true, force: true });
    },
  };
}
