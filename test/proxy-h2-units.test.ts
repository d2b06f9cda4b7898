import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  encodeGrpcMessage,
  formatGrpcTimeout,
  GRPC_STATUS,
  GrpcMessageTracker,
  grpcStatusName,
  isGrpcContentType,
  parseGrpcTimeout,
} from '../common/grpc.ts';
import { grpcErrorTrailers, WIRE_ERRORS, WIRE_GRPC_STATUS } from '../common/wire-errors.ts';
import { downstreamHeaders, upstreamRequestHeaders } from '../proxy/h2/headers.ts';
import { grpcFrame } from './support/h2-function.ts';

describe('grpc-timeout', () => {
  it.each([
    ['100m', 100],
    ['1S', 1000],
    ['2M', 120_000],
    ['1H', 3_600_000],
    ['5000u', 5],
    ['3000000n', 3],
    ['99999999m', 99_999_999],
    ['123456789m', undefined], // 9 digits
    ['10', undefined],
    ['10s', undefined],
    ['', undefined],
    [undefined, undefined],
  ])('%s -> %s ms', (value, ms) => {
    expect(parseGrpcTimeout(value)).toBe(ms);
  });

  it('formats whole milliseconds that parse back to the same value (or the largest that fits)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 99_999_999 }), (ms) => {
        expect(parseGrpcTimeout(formatGrpcTimeout(ms))).toBe(ms);
      }),
    );
    expect(formatGrpcTimeout(12.9)).toBe('12m');
    expect(formatGrpcTimeout(-5)).toBe('0m');
    expect(formatGrpcTimeout(3_600_000_000)).toBe('3600000S');
  });
});

describe('grpc-message and status', () => {
  it.each([
    ['plain words', 'plain words'],
    ['100% sure', '100%25 sure'],
    ['naïve\n', 'na%C3%AFve%0A'],
  ])('%j -> %j', (message, encoded) => {
    expect(encodeGrpcMessage(message)).toBe(encoded);
    expect(decodeURIComponent(encoded)).toBe(message);
  });

  it.each([
    ['application/grpc', true],
    ['application/grpc+proto', true],
    ['application/grpc; charset=utf-8', true],
    ['application/grpc-web', false],
    ['application/grpcx', false],
    ['text/event-stream', false],
    [undefined, false],
  ])('%s is gRPC: %s', (contentType, expected) => {
    expect(isGrpcContentType(contentType)).toBe(expected);
  });

  it('names statuses, unknown ones as UNKNOWN', () => {
    expect(grpcStatusName('0')).toBe('OK');
    expect(grpcStatusName(16)).toBe('UNAUTHENTICATED');
    expect(grpcStatusName('99')).toBe('UNKNOWN');
    expect(grpcStatusName(undefined)).toBe('UNKNOWN');
  });
});

describe('WIRE_GRPC_STATUS', () => {
  it('gives every wire code a gRPC status; the ones the issue names are fixed', () => {
    expect(Object.keys(WIRE_GRPC_STATUS).sort()).toEqual(Object.keys(WIRE_ERRORS).sort());
    expect(GRPC_STATUS[WIRE_GRPC_STATUS.upstream_unavailable]).toBe(14);
    expect(GRPC_STATUS[WIRE_GRPC_STATUS.queue_timeout]).toBe(8);
    expect(GRPC_STATUS[WIRE_GRPC_STATUS.unauthorized]).toBe(16);
    expect(GRPC_STATUS[WIRE_GRPC_STATUS.deadline_exceeded]).toBe(4);
  });

  it('builds the trailers of a call the proxy ends', () => {
    expect(grpcErrorTrailers('queue_timeout', 'all 8 slots busy')).toEqual({
      'grpc-status': '8',
      'grpc-message': 'all 8 slots busy',
      'sluice-error-code': 'queue_timeout',
    });
  });
});

describe('GrpcMessageTracker', () => {
  it('counts messages however the frames split them, and sees the largest length', () => {
    const messages = [Buffer.alloc(0), Buffer.from('a'), Buffer.alloc(70_000, 1), Buffer.from('hello')];
    const wire = Buffer.concat(messages.map((m) => grpcFrame(m)));
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: wire.length - 1 }), { maxLength: 12 }), (cuts) => {
        const tracker = new GrpcMessageTracker();
        const points = [0, ...cuts.sort((a, b) => a - b), wire.length];
        let counted = 0;
        for (let i = 1; i < points.length; i++)
          counted += tracker.push(wire.subarray(points[i - 1], points[i]));
        expect(counted).toBe(4);
        expect(tracker.messages).toBe(4);
        expect(tracker.largest).toBe(70_000);
        expect(tracker.atBoundary).toBe(true);
      }),
    );
    const half = new GrpcMessageTracker();
    half.push(wire.subarray(0, 8));
    expect(half.atBoundary).toBe(false);
  });
});

describe('HTTP/2 request headers for the function', () => {
  it('keeps the end-to-end fields and TE: trailers, moves Host to :authority, adds X-Forwarded-*', () => {
    const headers = upstreamRequestHeaders({
      method: 'POST',
      url: '/pkg.Svc/Method',
      remoteAddress: '10.0.0.7',
      headers: {
        host: 'fn.example',
        te: 'trailers',
        connection: 'keep-alive, x-hop',
        'x-hop': 'drop me',
        'content-type': 'application/grpc',
        'grpc-timeout': '5S',
        expect: '100-continue',
        'x-forwarded-for': '203.0.113.1',
      },
    });
    expect(headers).toEqual({
      ':method': 'POST',
      ':path': '/pkg.Svc/Method',
      ':scheme': 'http',
      ':authority': 'fn.example',
      te: 'trailers',
      'content-type': 'application/grpc',
      'grpc-timeout': '5S',
      'x-forwarded-for': '203.0.113.1, 10.0.0.7',
      'x-forwarded-host': 'fn.example',
      'x-forwarded-proto': 'http',
    });
  });

  it('takes an HTTP/2 request: its pseudo-headers are rebuilt, never copied', () => {
    const headers = upstreamRequestHeaders({
      method: 'GET',
      url: '/stripped',
      remoteAddress: undefined,
      headers: {
        ':method': 'GET',
        ':path': '/prefix/stripped',
        ':authority': 'a:1',
        ':scheme': 'http',
        te: 'gzip',
      },
    });
    expect(headers[':path']).toBe('/stripped');
    expect(headers[':authority']).toBe('a:1');
    expect(headers.te).toBeUndefined();
  });

  it('passes response headers and trailers without pseudo-headers or hop-by-hop fields', () => {
    expect(
      downstreamHeaders({
        ':status': '200',
        'content-type': 'application/grpc',
        'grpc-status': '0',
        'keep-alive': '5',
      }),
    ).toEqual({ 'content-type': 'application/grpc', 'grpc-status': '0' });
  });
});
