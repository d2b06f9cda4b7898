import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MapNameError,
  mapNames,
  resultsStreamConfig,
  tasksStreamConfig,
  workerConsumerConfig,
} from '../common/map-streams.ts';
import { outputJsonOf, singleLineJson, taskErrorOf } from '../proxy/map/call-function.ts';
import { watchIntervalMs } from '../proxy/map/disconnect-grace.ts';
import { ResponseParser } from '../proxy/map/http-response.ts';
import { batchLine, parseBatch, type RecordLine, resultRecordText } from '../proxy/map/records.ts';
import { MapRequestError, parseMapBody } from '../proxy/map/request-body.ts';
import { type MapOrder, ResultSequencer } from '../proxy/map/sequencer.ts';
import { attemptOf, parseAckSubject, parseTaskSubject, requeueSubject } from '../proxy/map/task.ts';

type Arrival = [index: number, failed?: boolean];

function run(
  count: number,
  order: MapOrder,
  arrivals: Arrival[],
  lastEventId?: number,
): { sent: number[]; complete: boolean; failed: number } {
  const sequencer = new ResultSequencer<number>({ count, order, lastEventId });
  const sent: number[] = [];
  for (const [index, failed = false] of arrivals) sent.push(...sequencer.accept(index, failed, index));
  return { sent, complete: sequencer.complete, failed: sequencer.failed };
}

describe('ResultSequencer', () => {
  it.each<[string, number, MapOrder, Arrival[], number | undefined, number[], boolean, number]>([
    ['input order holds later results', 4, 'input', [[2], [0], [3], [1]], undefined, [0, 1, 2, 3], true, 0],
    ['input order, nothing missing yet', 3, 'input', [[1], [2]], undefined, [], false, 0],
    ['completion order passes them on', 3, 'completion', [[2], [0], [1]], undefined, [2, 0, 1], true, 0],
    [
      'a task that ran twice is sent once',
      3,
      'completion',
      [[1], [1], [0], [2], [0]],
      undefined,
      [1, 0, 2],
      true,
      0,
    ],
    ['duplicate held result is sent once', 3, 'input', [[2], [2], [1], [0]], undefined, [0, 1, 2], true, 0],
    [
      'errors count as failed, once',
      3,
      'input',
      [[0, true], [0, true], [1], [2, true]],
      undefined,
      [0, 1, 2],
      true,
      2,
    ],
    [
      'out-of-range indices are ignored',
      2,
      'input',
      [[5], [-1], [0.5], [0], [1]],
      undefined,
      [0, 1],
      true,
      0,
    ],
    ['input resume skips up to Last-Event-ID', 5, 'input', [[0], [3], [1], [2], [4]], 2, [3, 4], true, 0],
    ['completion resume skips up to its record', 4, 'completion', [[2], [0], [3], [1]], 0, [3, 1], true, 0],
    ['resume of a finished map sends nothing', 2, 'input', [[1, true], [0]], 1, [], true, 1],
    ['empty map is complete at once', 0, 'input', [], undefined, [], true, 0],
  ])('%s', (_name, count, order, arrivals, lastEventId, sent, complete, failed) => {
    expect(run(count, order, arrivals, lastEventId)).toEqual({ sent, complete, failed });
  });

  it('sends every index exactly once, in input order, for any arrival order with duplicates', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 60 })
          .chain((count) =>
            fc.tuple(
              fc.constant(count),
              fc.shuffledSubarray([...Array(count).keys()], { minLength: count, maxLength: count }),
              fc.array(fc.integer({ min: 0, max: count - 1 }), { maxLength: 20 }),
            ),
          ),
        ([count, permutation, duplicates]) => {
          const arrivals: Arrival[] = [...permutation, ...duplicates].map((i) => [i]);
          arrivals.splice(Math.floor(arrivals.length / 2), 0, ...duplicates.map((i): Arrival => [i]));
          const { sent, complete } = run(count, 'input', arrivals);
          expect(sent).toEqual([...Array(count).keys()]);
          expect(complete).toBe(true);
        },
      ),
    );
  });
});

describe('ResultSequencer.flush (a cancelled map)', () => {
  it('hands out the held records in index order, once, and leaves the rest outstanding', () => {
    const sequencer = new ResultSequencer<number>({ count: 6, order: 'input' });
    for (const index of [4, 2, 0, 5]) sequencer.accept(index, false, index);
    expect(sequencer.flush()).toEqual([2, 4, 5]);
    expect(sequencer.flush()).toEqual([]);
    expect([sequencer.outstanding, sequencer.complete]).toEqual([2, false]);
  });
});

describe('map tasks: subjects, ack subjects and attempts', () => {
  it.each<[string, string, ReturnType<typeof parseTaskSubject>]>([
    ['a first task', 'r-1.7', { requestId: 'r-1', index: 7, attemptsBefore: 0 }],
    ['a task handed back after two attempts', 'r-1.7.2', { requestId: 'r-1', index: 7, attemptsBefore: 2 }],
    ['no index', 'r-1', undefined],
    ['a negative index', 'r-1.-1', undefined],
    ['a fractional attempt count', 'r-1.7.0.5', undefined],
    ['one token too many', 'r-1.7.2.9', undefined],
    ['no request id', '.7', undefined],
  ])('%s', (_what, rest, expected) => {
    expect(parseTaskSubject(rest)).toEqual(expected);
  });

  it.each<[string, string, ReturnType<typeof parseAckSubject>]>([
    [
      'a 2.9 server (9 tokens)',
      '$JS.ACK.TASKS.sluice-workers.3.42.40.1700000000000000000.5',
      { deliveryCount: 3, streamSeq: 42 },
    ],
    [
      'a 2.10+ server (domain and account hash)',
      '$JS.ACK._.ACCHASH.TASKS.sluice-workers.1.9.9.1700000000000000000.0.rand',
      { deliveryCount: 1, streamSeq: 9 },
    ],
    ['not an ack subject', '_INBOX.abc', undefined],
  ])('%s', (_what, reply, expected) => {
    expect(parseAckSubject(reply)).toEqual(expected);
  });

  it('counts the attempts before a hand-back plus the deliveries of this message, and requeues without the current one', () => {
    const task = { requestId: 'r', index: 3, attemptsBefore: 1, deliveryCount: 2, streamSeq: 9 };
    expect(attemptOf(task)).toBe(3);
    expect(requeueSubject('sluice.ns.fn.tasks.', task)).toBe('sluice.ns.fn.tasks.r.3.2');
    const requeued = parseTaskSubject('r.3.2')!;
    expect(attemptOf({ ...requeued, deliveryCount: 1, streamSeq: 10 })).toBe(3);
    // Handed back on its first delivery: no attempts to carry, the plain subject.
    const first = { requestId: 'r', index: 3, attemptsBefore: 0, deliveryCount: 1, streamSeq: 11 };
    expect(requeueSubject('sluice.ns.fn.tasks.', first)).toBe('sluice.ns.fn.tasks.r.3');
  });
});

describe("a function's answers as map records", () => {
  it.each<[string, string, string | undefined, string]>([
    ['JSON stays as written', '{"a":[1,2]}', 'application/json', '{"a":[1,2]}'],
    [
      'JSON with line breaks becomes one line',
      '{\n  "a": 1\n}\n',
      'application/json; charset=utf-8',
      '{"a":1}',
    ],
    ['a trailing newline is dropped', '[1]\n', 'application/json', '[1]'],
    ['broken JSON becomes text', '{"a":', 'application/json', '"{\\"a\\":"'],
    ['text becomes a JSON string', 'HELLO\n', 'text/plain', '"HELLO\\n"'],
    ['no content type: text', '42', undefined, '"42"'],
  ])('%s', (_what, body, contentType, expected) => {
    expect(outputJsonOf(body, contentType)).toBe(expected);
    expect(JSON.parse(resultRecordText(1, outputJsonOf(body, contentType), '"r"', 5))).toEqual({
      index: 1,
      output: JSON.parse(expected),
      replica: 'r',
      ms: 5,
    });
  });

  it.each<[string, number, string, string | undefined, object]>([
    [
      'a JSON error body stays JSON',
      500,
      '{"error":{"code":"X"}}',
      'application/json',
      { status: 500, body: { error: { code: 'X' } } },
    ],
    ['a text error stays text', 503, 'busy\n', 'text/plain', { status: 503, message: 'busy' }],
    ['JSON that is not JSON is text', 500, '{oops', 'application/json', { status: 500, message: '{oops' }],
    [
      'an empty body says the status',
      502,
      '',
      undefined,
      { status: 502, message: 'the function answered 502' },
    ],
    [
      'a long text is cut',
      500,
      'x'.repeat(2000),
      'text/plain',
      { status: 500, message: `${'x'.repeat(1000)}…` },
    ],
  ])('%s', (_what, status, body, contentType, expected) => {
    expect(taskErrorOf(status, body, contentType)).toEqual(expected);
  });

  it('single-line JSON never contains a line break (SSE data is one line)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.boolean(), (value, pretty) => {
        const text = JSON.stringify(value, null, pretty ? 2 : 0);
        const line = singleLineJson(text)!;
        expect(line).not.toMatch(/[\r\n]/);
        expect(JSON.parse(line)).toEqual(JSON.parse(text));
      }),
    );
  });
});

describe('result batches (records.ts)', () => {
  it('parses back every line it wrote, skipping lines that are not records', () => {
    const lines: RecordLine[] = [
      { kind: 'result', index: 0, text: '{"index":0,"output":"a b"}' },
      { kind: 'error', index: 12, text: '{"index":12,"error":{"status":500,"message":"x"},"attempts":3}' },
    ];
    const data = lines.map(batchLine).join('\n');
    expect(parseBatch(data)).toEqual(lines);
    expect(parseBatch(`${data}\nx1 {}\nr {}\n\n`)).toEqual(lines);
  });
});

describe('ResponseParser (a function answer, however the socket splits it)', () => {
  const parse = (raw: string, maxBytes = 1_000, cuts: number[] = []) => {
    const bytes = Buffer.from(raw, 'latin1');
    const parser = new ResponseParser(maxBytes);
    let from = 0;
    for (const to of [...cuts, bytes.length]) {
      const result = parser.feed(bytes.subarray(from, to));
      from = to;
      if (result.kind !== 'more')
        return { ...result, ...(result.kind === 'done' ? { body: result.response.body.toString() } : {}) };
    }
    const ended = parser.end();
    return ended ? { kind: 'closed', response: ended, body: ended.body.toString() } : { kind: 'more' };
  };

  it.each<[string, string, object]>([
    [
      'content-length',
      'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}',
      {
        kind: 'done',
        body: '{"a":1}',
        response: { status: 200, contentType: 'application/json', keepAlive: true },
      },
    ],
    [
      'chunked with an extension and a trailer',
      'HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n',
      { kind: 'done', body: 'abcde', response: { status: 500, keepAlive: true } },
    ],
    [
      '100 Continue first',
      'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok',
      { kind: 'done', body: 'ok', response: { status: 201 } },
    ],
    [
      '204 without a body',
      'HTTP/1.1 204 No Content\r\n\r\n',
      { kind: 'done', body: '', response: { status: 204, keepAlive: true } },
    ],
    [
      'connection: close',
      'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx',
      { kind: 'done', body: 'x', response: { keepAlive: false } },
    ],
    [
      'HTTP/1.0 without keep-alive',
      'HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx',
      { kind: 'done', body: 'x', response: { keepAlive: false } },
    ],
    [
      'a body ended by the close',
      'HTTP/1.1 200 OK\r\n\r\nuntil end',
      { kind: 'closed', body: 'until end', response: { keepAlive: false } },
    ],
    [
      'a body over the limit (10 bytes here)',
      'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789',
      { kind: 'too_large' },
    ],
    ['a body cut short', 'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123', { kind: 'more' }],
  ])('%s', (_what, raw, expected) => {
    expect(parse(raw, 10)).toMatchObject(expected);
    // The same, whichever byte the socket splits it at.
    for (let cut = 1; cut < raw.length; cut++) expect(parse(raw, 10, [cut])).toMatchObject(expected);
  });

  it.each([
    ['not HTTP', 'SSH-2.0-OpenSSH\r\n\r\n'],
    ['a bad content-length', 'HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n'],
    ['a bad chunk size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'],
  ])('refuses %s', (_what, raw) => {
    expect(() => new ResponseParser(100).feed(Buffer.from(raw))).toThrow();
  });
});

describe('watchIntervalMs', () => {
  it.each([
    [30_000, 5_000],
    [2_000, 666],
    [0, 100],
  ])('grace %i ms: a live stream says so every %i ms', (grace, interval) => {
    expect(watchIntervalMs(grace)).toBe(interval);
  });
});

describe('parseMapBody', () => {
  const limits = { maxInputs: 3, maxInputBytes: 20 };
  const parse = (body: string) => parseMapBody(Buffer.from(body), limits);

  it.each<[string, string, number, string, RegExp]>([
    ['not JSON', '{"inputs": [1,', 400, 'invalid_json', /^body: not JSON/],
    ['not an object', '[1, 2]', 400, 'invalid_map_body', /^body: must be a JSON object with inputs/],
    ['missing inputs', '{"order": "input"}', 400, 'invalid_map_body', /^inputs: must be an array/],
    ['inputs not an array', '{"inputs": {"a": 1}}', 400, 'invalid_map_body', /^inputs: must be an array/],
    [
      'unknown order',
      '{"inputs": [], "order": "random"}',
      400,
      'invalid_map_body',
      /^order: must be "input" or "completion"/,
    ],
    [
      'keep not a boolean',
      '{"inputs": [], "keep": "yes"}',
      400,
      'invalid_map_body',
      /^keep: must be true or false/,
    ],
    ['unknown field', '{"inputs": [], "orders": "input"}', 400, 'invalid_map_body', /^orders: unknown field/],
    [
      'too many inputs',
      '{"inputs": [1, 2, 3, 4]}',
      413,
      'too_many_inputs',
      /^inputs: 4 inputs, more than the limit of 3/,
    ],
    [
      'one input too large',
      '{"inputs": [1, "xxxxxxxxxxxxxxxxxxxxxxxxx"]}',
      413,
      'input_too_large',
      /^inputs\[1\]: 27 bytes/,
    ],
  ])('%s -> %i %s', (_name, body, status, code, message) => {
    let caught: unknown;
    try {
      parse(body);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(MapRequestError);
    const err = caught as MapRequestError;
    // The wire code is what the client sees; the error's own code stays an internal ERR_* one.
    expect([err.status, err.wireCode, err.code]).toEqual([status, code, 'ERR_MAP_REQUEST']);
    expect(err.message).toMatch(message);
  });

  it('serializes each input once and applies defaults', () => {
    expect(parse('{"inputs": [1, "a", {"b": [true, null]}]}')).toEqual({
      inputs: ['1', '"a"', '{"b":[true,null]}'],
      order: 'input',
      keep: false,
    });
    expect(parse('{"inputs": [], "order": "completion", "keep": true}')).toEqual({
      inputs: [],
      order: 'completion',
      keep: true,
    });
  });
});

describe('map stream names', () => {
  it("names a function's streams and subjects", () => {
    const names = mapNames('team-a/echo');
    expect(names).toMatchObject({
      tasksStream: 'SLUICE_TASKS_team-a_echo',
      resultsStream: 'SLUICE_RESULTS_team-a_echo',
      tasksSubjects: 'sluice.team-a.echo.tasks.>',
      resultsSubjects: 'sluice.team-a.echo.results.>',
      cancelSubject: 'sluice.team-a.echo.cancel',
      workerConsumer: 'sluice-workers',
    });
    expect(names.tasksOf('r-1')).toBe('sluice.team-a.echo.tasks.r-1');
    expect(names.resultsOf('r-1')).toBe('sluice.team-a.echo.results.r-1');
    expect(() => names.resultsOf('a.b')).toThrow(MapNameError);
    expect(() => names.tasksOf('*')).toThrow(MapNameError);
  });

  it('never gives two functions the same stream or subjects', () => {
    const label = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?$/);
    fc.assert(
      fc.property(label, label, label, label, (ns1, n1, ns2, n2) => {
        fc.pre(ns1 !== ns2 || n1 !== n2);
        const a = mapNames(`${ns1}/${n1}`);
        const b = mapNames(`${ns2}/${n2}`);
        expect(a.tasksStream).not.toBe(b.tasksStream);
        expect(a.resultsStream).not.toBe(b.resultsStream);
        expect(a.tasksSubjects).not.toBe(b.tasksSubjects);
      }),
    );
  });

  it.each(['echo', 'a/b/c', 'Team/echo', 'ns/ec.ho', 'ns/-echo', `ns/${'x'.repeat(64)}`, 'ns/'])(
    'refuses %j',
    (fn) => {
      expect(() => mapNames(fn)).toThrow(MapNameError);
    },
  );

  it('derives the stream and consumer configs from spec.map', () => {
    const settings = { ackWaitSeconds: 30, maxDeliver: 3, retentionSeconds: 600 };
    expect(tasksStreamConfig('ns/fn')).toMatchObject({
      name: 'SLUICE_TASKS_ns_fn',
      subjects: ['sluice.ns.fn.tasks.>'],
      retention: 'workqueue',
      max_age: 0,
    });
    expect(resultsStreamConfig('ns/fn', settings)).toMatchObject({
      name: 'SLUICE_RESULTS_ns_fn',
      subjects: ['sluice.ns.fn.results.>'],
      retention: 'limits',
      max_age: 600e9,
      duplicate_window: 120e9, // covers 30 s x (3 + 1) deliveries
    });
    expect(resultsStreamConfig('ns/fn', { ...settings, retentionSeconds: 60 }).duplicate_window).toBe(60e9);
    // One copy unless the operator is told the NATS cluster keeps three.
    expect([
      tasksStreamConfig('ns/fn').num_replicas,
      resultsStreamConfig('ns/fn', settings).num_replicas,
    ]).toEqual([1, 1]);
    expect(tasksStreamConfig('ns/fn', { replicas: 3 }).num_replicas).toBe(3);
    expect(resultsStreamConfig('ns/fn', { ...settings, replicas: 3 }).num_replicas).toBe(3);
    expect(workerConsumerConfig('ns/fn', settings)).toMatchObject({
      durable_name: 'sluice-workers',
      ack_policy: 'explicit',
      ack_wait: 30e9,
      max_deliver: 4,
      filter_subject: 'sluice.ns.fn.tasks.>',
    });
  });
});
