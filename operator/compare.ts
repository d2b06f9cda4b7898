/**
 * Whether the live object already carries everything the desired one says. The API server
 * adds defaults (imagePullPolicy, clusterIP, ...) and drops empty values, and writes quantities
 * in canonical form ("0.5" comes back as "500m"), so this is a subset check with quantity
 * equality, not a deep equal.
 */
export function covers(desired: unknown, live: unknown): boolean {
  if (desired === undefined || desired === null) return true;
  if (Array.isArray(desired)) {
    if (desired.length === 0) return live === undefined || (Array.isArray(live) && live.length === 0);
    return (
      Array.isArray(live) && live.length === desired.length && desired.every((d, i) => covers(d, live[i]))
    );
  }
  if (typeof desired === 'object') {
    const entries = Object.entries(desired);
    if (entries.length === 0) return live === undefined || (typeof live === 'object' && live !== null);
    if (typeof live !== 'object' || live === null || Array.isArray(live)) return false;
    return entries.every(([k, v]) => covers(v, (live as Record<string, unknown>)[k]));
  }
  if (desired === live) return true;
  if (desired === '') return live === undefined;
  if (typeof desired === 'string' && typeof live === 'string') {
    const a = parseQuantity(desired);
    const b = parseQuantity(live);
    return a !== undefined && b !== undefined && Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b));
  }
  return false;
}

const SUFFIX: Record<string, number> = {
  '': 1,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A Kubernetes resource quantity ("500m", "1.5Gi", "2e3") as a number; undefined if it is not one. */
export function parseQuantity(text: string): number | undefined {
  const match = /^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/.exec(text);
  if (!match) return undefined;
  return Number(match[1]) * SUFFIX[match[2] ?? '']!;
}
