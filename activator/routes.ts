/**
 * Which function a request that reached the activator is for. The activator stands in for every
 * function at zero behind one address (its pods are listed in each such function's Service,
 * operator/scaling.ts), so the request itself must say: by the Service name it was sent to
 * (`Host: <name>.<ns>.svc...`, in-cluster callers) or by the Ingress rule that routed it (the
 * function's ingress host and path, matched as the ingress controller matched them). Pure.
 */
export interface Route {
  /** `namespace/name`. */
  key: string;
  namespace: string;
  name: string;
  /** spec.ingress when enabled: host (empty: any) and path. */
  ingress?: { host: string; path: string };
}

/** The host without a port or a trailing dot, lower-case. */
function hostOnly(host: string): string {
  const bare = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.split(':')[0]!;
  return bare.replace(/\.$/, '').toLowerCase();
}

function underPath(path: string, prefix: string): boolean {
  return prefix === '/' || path === prefix || path.startsWith(`${prefix}/`) || path.startsWith(`${prefix}?`);
}

export class RouteTable {
  readonly #byService = new Map<string, Route>();
  readonly #byName = new Map<string, Route[]>();
  readonly #ingress: Route[] = [];

  constructor(routes: Iterable<Route>) {
    for (const route of routes) {
      this.#byService.set(`${route.name}.${route.namespace}`, route);
      this.#byName.set(route.name, [...(this.#byName.get(route.name) ?? []), route]);
      if (route.ingress) this.#ingress.push(route);
    }
    // Longest path first; a rule with a host before a hostless one of the same path.
    this.#ingress.sort(
      (a, b) =>
        b.ingress!.path.length - a.ingress!.path.length ||
        Number(Boolean(b.ingress!.host)) - Number(Boolean(a.ingress!.host)),
    );
  }

  /** The function `host` and `url` (origin-form) address, or undefined. */
  resolve(hostHeader: string | undefined, url: string): Route | undefined {
    const host = hostOnly(hostHeader ?? '');
    // <name>.<ns>, <name>.<ns>.svc, <name>.<ns>.svc.cluster.local (any cluster domain).
    const labels = host.split('.');
    if (labels.length === 2 || (labels.length >= 3 && labels[2] === 'svc')) {
      const route = this.#byService.get(`${labels[0]}.${labels[1]}`);
      if (route) return route;
    }
    const path = url.split('?')[0]!;
    for (const route of this.#ingress) {
      const { host: ruleHost, path: prefix } = route.ingress!;
      if (ruleHost && ruleHost !== host) continue;
      if (underPath(path, prefix)) return route;
    }
    // `http://<name>/` from the function's own namespace: only when the name is unambiguous.
    const byName = labels.length === 1 ? this.#byName.get(host) : undefined;
    return byName?.length === 1 ? byName[0] : undefined;
  }
}
