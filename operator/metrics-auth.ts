import { createHash } from 'node:crypto';
import type { KubeClient } from './kube.ts';

export type MetricsVerdict =
  | { allowed: true; user: string }
  | { allowed: false; code: 'unauthorized' | 'forbidden'; message: string };

interface Cached {
  verdict: MetricsVerdict;
  until: number;
}

// controller-runtime's filters.WithAuthenticationAndAuthorization caches the same way.
const ALLOW_TTL_MS = 5 * 60_000;
const DENY_TTL_MS = 30_000;
const MAX_CACHED = 1024;

/**
 * Who may read the operator's /metrics: a Kubernetes bearer token whose user (TokenReview) may
 * `get` the non-resource URL /metrics (SubjectAccessReview), as controller-runtime's metrics
 * server checks by default. Verdicts are cached by token digest, allowed ones longer, so a
 * Prometheus scraping every few seconds costs the API server two requests every five minutes.
 */
export class MetricsGate {
  readonly #client: KubeClient;
  readonly #now: () => number;
  readonly #cache = new Map<string, Cached>();

  constructor(client: KubeClient, now: () => number = Date.now) {
    this.#client = client;
    this.#now = now;
  }

  async check(authorization: string | undefined): Promise<MetricsVerdict> {
    const token = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization ?? '')?.[1];
    if (!token) {
      return {
        allowed: false,
        code: 'unauthorized',
        message: 'a Kubernetes bearer token is required for /metrics',
      };
    }
    const key = createHash('sha256').update(token).digest('base64');
    const cached = this.#cache.get(key);
    if (cached && cached.until > this.#now()) return cached.verdict;
    const verdict = await this.#review(token);
    if (this.#cache.size >= MAX_CACHED) this.#cache.clear();
    this.#cache.set(key, { verdict, until: this.#now() + (verdict.allowed ? ALLOW_TTL_MS : DENY_TTL_MS) });
    return verdict;
  }

  async #review(token: string): Promise<MetricsVerdict> {
    const review = await this.#client.request<{
      status?: {
        authenticated?: boolean;
        error?: string;
        user?: Record<string, unknown> & { username?: string };
      };
    }>('POST', '/apis/authentication.k8s.io/v1/tokenreviews', {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token } },
    });
    const user = review.status?.user;
    if (!review.status?.authenticated || !user?.username) {
      return {
        allowed: false,
        code: 'unauthorized',
        message: `the token was not accepted${review.status?.error ? `: ${review.status.error}` : ''}`,
      };
    }
    const access = await this.#client.request<{ status?: { allowed?: boolean; reason?: string } }>(
      'POST',
      '/apis/authorization.k8s.io/v1/subjectaccessreviews',
      {
        body: {
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: {
            user: user.username,
            uid: user.uid,
            groups: user.groups,
            extra: user.extra,
            nonResourceAttributes: { path: '/metrics', verb: 'get' },
          },
        },
      },
    );
    if (!access.status?.allowed) {
      return {
        allowed: false,
        code: 'forbidden',
        message: `${user.username} may not get /metrics${access.status?.reason ? ` (${access.status.reason})` : ''}; bind it to the chart's metrics-reader ClusterRole`,
      };
    }
    return { allowed: true, user: user.username };
  }
}
