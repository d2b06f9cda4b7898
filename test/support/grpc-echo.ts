import * as grpc from '@grpc/grpc-js';

/**
 * A real gRPC function for the proxy's tests and benchmark (grpc-js, messages as raw bytes so no
 * .proto is needed). Service `sluice.test.Echo`:
 *   Unary         echoes the request
 *   ServerStream  the request is `count[,intervalMs[,size]]`: that many messages `0`, `1`, ...
 *                 (padded to size bytes), intervalMs apart
 *   ClientStream  all request messages joined with `+`
 *   Bidi          echoes each message as it arrives; ends when the client ends
 * Every method sends back request metadata named `x-echo-*` as initial metadata and, with an
 * `-trailer` suffix, as trailing metadata; `x-status` and `x-message` set the final status and
 * `x-trailer-bytes` adds a trailer `x-big` of that many bytes.
 */
export const ECHO_SERVICE = {
  Unary: method('Unary', false, false),
  ServerStream: method('ServerStream', false, true),
  ClientStream: method('ClientStream', true, false),
  Bidi: method('Bidi', true, true),
} satisfies grpc.ServiceDefinition;

function method(
  name: string,
  requestStream: boolean,
  responseStream: boolean,
): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path: `/sluice.test.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  };
}

export const EchoClient = grpc.makeGenericClientConstructor(ECHO_SERVICE, 'Echo');
export type EchoClientInstance = InstanceType<typeof EchoClient> & {
  Unary: (
    req: Buffer,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: grpc.requestCallback<Buffer>,
  ) => grpc.ClientUnaryCall;
  ServerStream: (
    req: Buffer,
    md?: grpc.Metadata,
    opts?: grpc.CallOptions,
  ) => grpc.ClientReadableStream<Buffer>;
  ClientStream: (
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: grpc.requestCallback<Buffer>,
  ) => grpc.ClientWritableStream<Buffer>;
  Bidi: (md?: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientDuplexStream<Buffer, Buffer>;
};

export function echoClient(target: string, options: grpc.ChannelOptions = {}): EchoClientInstance {
  return new EchoClient(target, grpc.credentials.createInsecure(), options) as EchoClientInstance;
}

/** What the function saw of one call, for tests that observe the function side. */
export interface SeenCall {
  method: string;
  metadata: grpc.Metadata;
  /** Resolves with performance.now() when the function saw the call cancelled. */
  cancelled: Promise<number>;
  isCancelled: () => boolean;
  received: Buffer[];
  /** The call's deadline as the function's gRPC library sees it (Infinity: none). */
  deadline: number;
}

export interface EchoServer {
  port: number;
  target: string;
  calls: SeenCall[];
  close: () => Promise<void>;
}

type AnyCall =
  | grpc.ServerUnaryCall<Buffer, Buffer>
  | grpc.ServerReadableStream<Buffer, Buffer>
  | grpc.ServerWritableStream<Buffer, Buffer>
  | grpc.ServerDuplexStream<Buffer, Buffer>;

function echoed(metadata: grpc.Metadata, suffix: string): grpc.Metadata {
  const out = new grpc.Metadata();
  for (const [key, value] of Object.entries(metadata.getMap())) {
    if (key.startsWith('x-echo-')) out.set(`${key}${suffix}`, value as string);
  }
  return out;
}

function finalStatus(metadata: grpc.Metadata): {
  code: grpc.status;
  details: string;
  metadata: grpc.Metadata;
} {
  const trailers = echoed(metadata, '-trailer');
  const big = Number(metadata.get('x-trailer-bytes')[0] ?? 0);
  if (big > 0) trailers.set('x-big', 'b'.repeat(big));
  return {
    code: Number(metadata.get('x-status')[0] ?? 0) as grpc.status,
    details: String(metadata.get('x-message')[0] ?? ''),
    metadata: trailers,
  };
}

export async function startEchoServer(
  options: grpc.ServerOptions = {},
  listenPort = 0,
  onCancel: (call: SeenCall) => void = () => {},
): Promise<EchoServer> {
  const calls: SeenCall[] = [];
  const seen = (name: string, call: AnyCall): SeenCall => {
    let cancelledAt: (at: number) => void = () => {};
    let cancelled = false;
    const entry: SeenCall = {
      method: name,
      metadata: call.metadata,
      cancelled: new Promise((resolve) => {
        cancelledAt = resolve;
      }),
      isCancelled: () => cancelled,
      received: [],
      deadline: Number(call.getDeadline()),
    };
    (call as grpc.ServerUnaryCall<Buffer, Buffer>).on('cancelled', () => {
      cancelled = true;
      cancelledAt(performance.now());
      onCancel(entry);
    });
    calls.push(entry);
    return entry;
  };
  const server = new grpc.Server(options);
  server.addService(ECHO_SERVICE, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      seen('Unary', call).received.push(call.request);
      call.sendMetadata(echoed(call.metadata, ''));
      const status = finalStatus(call.metadata);
      if (status.code !== grpc.status.OK) callback(status);
      else callback(null, call.request, status.metadata);
    },
    ServerStream: async (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      const entry = seen('ServerStream', call);
      entry.received.push(call.request);
      const [count = 1, interval = 0, size = 0] = call.request.toString().split(',').map(Number);
      call.sendMetadata(echoed(call.metadata, ''));
      for (let n = 0; n < count && !entry.isCancelled(); n++) {
        if (interval > 0) await new Promise((r) => setTimeout(r, interval));
        if (!call.write(Buffer.from(String(n).padEnd(size, '.'))))
          await new Promise((r) => call.once('drain', r));
      }
      if (entry.isCancelled()) return;
      const status = finalStatus(call.metadata);
      if (status.code !== grpc.status.OK) call.destroy(Object.assign(new Error(status.details), status));
      else call.end(status.metadata);
    },
    ClientStream: (call: grpc.ServerReadableStream<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      const entry = seen('ClientStream', call);
      call.sendMetadata(echoed(call.metadata, ''));
      call.on('data', (message: Buffer) => entry.received.push(message));
      call.on('end', () => {
        const status = finalStatus(call.metadata);
        if (status.code !== grpc.status.OK) callback(status);
        else callback(null, Buffer.from(entry.received.map(String).join('+')), status.metadata);
      });
    },
    Bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      const entry = seen('Bidi', call);
      call.sendMetadata(echoed(call.metadata, ''));
      call.on('data', (message: Buffer) => {
        entry.received.push(message);
        call.write(message);
      });
      call.on('end', () => {
        const status = finalStatus(call.metadata);
        if (status.code !== grpc.status.OK) call.destroy(Object.assign(new Error(status.details), status));
        else call.end(status.metadata);
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${listenPort}`, grpc.ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve(bound),
    ),
  );
  return {
    port,
    target: `127.0.0.1:${port}`,
    calls,
    close: () =>
      new Promise<void>((resolve) => {
        server.forceShutdown();
        resolve();
      }),
  };
}

// As a process: the benchmark runs the function apart from the proxy and the client, and
// `sluice serve` runs it on $PORT. It prints a line for each call the client cancelled.
if (import.meta.main) {
  const server = await startEchoServer({}, Number(process.env.PORT ?? 0), (call) =>
    process.stdout.write(`cancelled ${call.method} ${call.metadata.get('x-echo-id')[0] ?? ''}\n`),
  );
  process.stdout.write(`${JSON.stringify({ port: server.port })}\n`);
}
