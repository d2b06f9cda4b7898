import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_JSON_DEPTH } from '../common/limits.ts';
import { nestedDeeperThan } from '../proxy/json-depth.ts';
import { MapRequestError, parseMapBody } from '../proxy/map/request-body.ts';
import { normaliseTarget } from '../proxy/path.ts';

// Property tests of the two parsers that face raw client input: the path normaliser and the
// map body parser (its JSON depth guard included).

const segment = fc.oneof(
  fc.constantFrom(
    '.',
    '..',
    '%2e',
    '%2E%2e',
    '.%2e',
    '%2f',
    '%2F',
    '%5f',
    '%41',
    '%20',
    '%zz',
    '',
    '_sluice',
    'map',
  ),
  fc.stringMatching(/^[a-zA-Z0-9_~-]{1,6}$/),
);
const target = fc
  .tuple(fc.array(segment, { maxLength: 8 }), fc.option(fc.stringMatching(/^[a-z0-9=&%./]{0,12}$/)))
  .map(([segments, query]) => `/${segments.join('/')}${query === null ? '' : `?${query}`}`);
const pathPart = (t: string) => t.split('?')[0]!;

describe('normaliseTarget', () => {
  it.each([
    ['/echo/%2e%2e/_sluice/map', '/_sluice/map'],
    ['/other/../echo/_sluice/map', '/echo/_sluice/map'],
    ['/a//b///c', '/a/b/c'],
    ['/a/b/..', '/a/'],
    ['/a/./b/.', '/a/b/'],
    ['/../../x', '/x'],
    ['/%5fsluice/%6Dap', '/_sluice/map'],
    ['/%%32%65%%32%65/x', '/x'],
    ['/a%20b/%zz?q=/../%2e', '/a%20b/%zz?q=/../%2e'],
    ['/', '/'],
  ])('%s → %s', (input, output) => {
    expect(normaliseTarget(input)).toBe(output);
  });

  it('is idempotent', () => {
    fc.assert(fc.property(target, (t) => normaliseTarget(normaliseTarget(t)) === normaliseTarget(t)));
  });

  it('leaves no empty, dot or decodable segment, and the query untouched', () => {
    fc.assert(
      fc.property(target, (t) => {
        const out = normaliseTarget(t);
        const path = pathPart(out);
        expect(path.startsWith('/')).toBe(true);
        expect(path).not.toMatch(/\/\//);
        expect(path.split('/').slice(1)).not.toContain('.');
        expect(path.split('/').slice(1)).not.toContain('..');
        expect(path).not.toMatch(/%(2[def]|3\d|[46][1-9a-f]|[57][0-9a]|5f|7e)/i);
        expect(out.slice(path.length)).toBe(t.slice(pathPart(t).length));
      }),
    );
  });

  it('resolves like the URL standard once escapes of dots and slashes are decoded', () => {
    const plain = fc.array(fc.constantFrom('a', 'b', '.', '..', '%2e', '%2E%2E', '%2f', ''), {
      maxLength: 8,
    });
    fc.assert(
      fc.property(plain, (segments) => {
        const input = `/${segments.join('/')}`;
        const decoded = input.replace(/%2e/gi, '.').replace(/%2f/gi, '/').replace(/\/+/g, '/');
        expect(normaliseTarget(input)).toBe(new URL(decoded, 'http://x').pathname);
      }),
    );
  });
});

/** Depth of nested arrays and objects in a parsed JSON value. */
function depth(value: unknown): number {
  if (Array.isArray(value)) return 1 + Math.max(0, ...value.map(depth));
  if (value !== null && typeof value === 'object') return 1 + Math.max(0, ...Object.values(value).map(depth));
  return 0;
}

const LIMITS = { maxInputs: 1000, maxInputBytes: 1 << 20 };

describe('the map body parser', () => {
  it('nestedDeeperThan agrees with the depth of the parsed value, strings with brackets included', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), fc.nat(8), (value, limit) => {
        expect(nestedDeeperThan(JSON.stringify(value), limit)).toBe(depth(value) > limit);
      }),
    );
  });

  it('round-trips any JSON inputs, each serialised as the function will receive it', () => {
    fc.assert(
      fc.property(
        fc.array(fc.jsonValue({ maxDepth: 8 }), { maxLength: 20 }),
        fc.constantFrom('input', 'completion'),
        (inputs, order) => {
          const parsed = parseMapBody(Buffer.from(JSON.stringify({ inputs, order })), LIMITS);
          expect(parsed.order).toBe(order);
          expect(parsed.inputs).toEqual(inputs.map((v) => JSON.stringify(v)));
        },
      ),
    );
  });

  it('refuses anything else with a 4xx MapRequestError, never another exception', () => {
    const body = fc.oneof(
      fc.string(),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.jsonValue().map((v) => JSON.stringify({ inputs: v })),
      fc.nat(600).map((d) => `{"inputs":[${'['.repeat(d)}${']'.repeat(d)}]}`),
      fc.uint8Array().map((b) => Buffer.from(b).toString('latin1')),
    );
    fc.assert(
      fc.property(body, (text) => {
        try {
          parseMapBody(Buffer.from(text), LIMITS);
        } catch (err) {
          expect(err).toBeInstanceOf(MapRequestError);
          expect((err as MapRequestError).status).toBeGreaterThanOrEqual(400);
          expect((err as MapRequestError).status).toBeLessThan(500);
        }
      }),
    );
  });

  it('takes nesting up to the limit and refuses one level more with json_too_deep', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 * MAX_JSON_DEPTH }), (d) => {
        // The body object and the inputs array are two levels.
        const text = `{"inputs":[${'['.repeat(d)}${']'.repeat(d)}]}`;
        if (d + 2 <= MAX_JSON_DEPTH) expect(parseMapBody(Buffer.from(text), LIMITS).inputs).toHaveLength(1);
        else
          expect(() => parseMapBody(Buffer.from(text), LIMITS)).toThrow(
            expect.objectContaining({ wireCode: 'json_too_deep' }),
          );
      }),
    );
  });
});
