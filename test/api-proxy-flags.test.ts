import { describe, expect, it } from 'vitest';
import { pathPrefix, proxyFlags } from '../api/v1alpha1/proxy-flags.ts';
import { withDefaults } from '../api/v1alpha1/schema.ts';
import { MAX_CONCURRENCY, MAX_MAP_DELIVER } from '../common/limits.ts';
import { loadProxyConfig } from '../proxy/config.ts';

const fn = (spec: Record<string, unknown>, name = 'echo') => ({
  metadata: { name, namespace: 'team-a' },
  spec: withDefaults({ image: 'i', ...spec }),
});

describe('pathPrefix (one rule for the operator and sluice serve)', () => {
  it.each([
    ['default: /<name>', {}, '/echo'],
    ['an ingress path', { ingress: { path: '/llm/echo' } }, '/llm/echo'],
    ['ingress path /: nothing', { ingress: { path: '/' } }, ''],
    ['no ingress: nothing', { ingress: { enabled: false, path: '/x' } }, ''],
  ])('%s', (_what, spec, expected) => {
    expect(pathPrefix(fn(spec))).toBe(expected);
  });
});

describe('proxyFlags', () => {
  it('the largest spec the API accepts gives flags the proxy accepts (one place for each limit)', () => {
    const f = fn({ scaling: { concurrency: MAX_CONCURRENCY }, map: { maxDeliver: MAX_MAP_DELIVER } });
    const config = loadProxyConfig(proxyFlags(f, { drain: 1, nats: 'nats://n:4222' }), {});
    expect([config.concurrency, config.mapMaxDeliver]).toEqual([MAX_CONCURRENCY, MAX_MAP_DELIVER]);
    expect(() => withDefaults({ image: 'i', scaling: { concurrency: MAX_CONCURRENCY + 1 } })).toThrow();
    expect(() => loadProxyConfig([`--concurrency=${MAX_CONCURRENCY + 1}`], {})).toThrow(/--concurrency/);
  });

  it.each([
    ['map on, NATS given: map flags', {}, 'nats://n:4222', true],
    ['map on, no NATS: none', {}, '', false],
    ['map off: none', { map: { enabled: false } }, 'nats://n:4222', false],
  ])('%s', (_what, spec, nats, present) => {
    const flags = proxyFlags(fn(spec), { drain: 1, nats });
    expect(flags.some((f) => f.startsWith('--nats='))).toBe(present);
    expect(flags.some((f) => f.startsWith('--map-path='))).toBe(present);
  });

  it('spec.protocol h2c: --upstream-protocol=h2c and no map (it POSTs HTTP/1.1); http: neither flag changes', () => {
    const h2c = proxyFlags(fn({ protocol: 'h2c' }), { drain: 1, nats: 'nats://n:4222' });
    expect(h2c).toContain('--upstream-protocol=h2c');
    expect(h2c.some((f) => f.startsWith('--nats='))).toBe(false);
    expect(loadProxyConfig(h2c, {}).upstreamProtocol).toBe('h2c');
    const http = proxyFlags(fn({}), { drain: 1, nats: '' });
    expect(http.some((f) => f.startsWith('--upstream-protocol'))).toBe(false);
    expect(loadProxyConfig(http, {}).upstreamProtocol).toBe('http1');
    expect(() => withDefaults({ image: 'i', protocol: 'grpc' })).toThrow();
    expect(() => loadProxyConfig(['--upstream-protocol=h2c', '--nats=nats://n:4222'], {})).toThrow(
      /--nats \(SLUICE_NATS\): map POSTs each input over HTTP\/1.1/,
    );
  });

  it('the tokens file only with spec.auth and a placement that mounts it', () => {
    const auth = { auth: { secretName: 's' } };
    const has = (flags: string[]) => flags.includes('--auth-tokens-file=/t');
    expect(has(proxyFlags(fn(auth), { drain: 1, nats: '', authTokensFile: '/t' }))).toBe(true);
    expect(has(proxyFlags(fn({}), { drain: 1, nats: '', authTokensFile: '/t' }))).toBe(false);
    expect(proxyFlags(fn(auth), { drain: 1, nats: '' }).some((f) => f.startsWith('--auth'))).toBe(false);
  });
});
