// The worker's side of the FleetService transport: promise-returning calls with deadlines,
// streamed weight downloads decoded against the model's shapes, and streamed uploads that respect
// gRPC flow control. No training logic lives here.
import { ExchangeMeter } from '../shared/exchange-meter.js';
import * as grpc from '@grpc/grpc-js';
import { FastFleetServiceDefinition } from '../shared/wire-fast.js';
import { callMetadata, channelCredentials, type FleetSecurity } from '../shared/fleet-security.js';
import {
  type FleetServiceClient,
  type FetchWeightsRequest,
  type EmbeddingHeader,
  type GradientHeader,
  type HeartbeatResponse,
  type NextStepResponse,
  type RegisterRequest,
  type RegisterResponse,
  type RunRef,
  type SliceHeader,
} from '../shared/gen/tricaps/v1/fleet.js';
import {
  DEFAULT_CHUNK_BYTES,
  decodeTensor,
  encodeTensor,
  type EncodedChunk,
  type WireDType,
} from '../shared/tensor-codec.js';
import { fromProtoChunk, toProtoChunk } from '../shared/wire.js';

/**
 * What a failed call means for a worker, whatever the transport said:
 *   over        the run is finished (exit 0)
 *   gone        the coordinator does not know this worker (dropped, or restarted): register again
 *   wrong-run   the call named another run than the coordinator's: register again, or refuse a pinned run
 *   stale       the answer came too late for its step: ask for new work
 *   rejected    the coordinator refused this worker's result as unusable
 *   refused     not allowed (token, certificate): a configuration error
 *   full        the run has --max-workers workers: retry later
 *   cancelled   the call was cancelled (by us on SIGTERM, or the connection dropped)
 *   unreachable no answer (down, restarting, deadline): retry until --reconnect-timeout
 */
export type CallOutcome =
  'over' | 'gone' | 'wrong-run' | 'stale' | 'rejected' | 'refused' | 'full' | 'cancelled' | 'unreachable';

export interface CallFailure {
  outcome: CallOutcome;
  /** The coordinator's own words (or the transport's). */
  details: string;
  /** The gRPC status name, for logs. */
  status: string;
}

const OUTCOMES: Partial<Record<grpc.status, CallOutcome>> = {
  [grpc.status.OUT_OF_RANGE]: 'over',
  [grpc.status.NOT_FOUND]: 'gone',
  [grpc.status.FAILED_PRECONDITION]: 'wrong-run',
  [grpc.status.ABORTED]: 'stale',
  [grpc.status.INVALID_ARGUMENT]: 'rejected',
  [grpc.status.UNAUTHENTICATED]: 'refused',
  [grpc.status.PERMISSION_DENIED]: 'refused',
  [grpc.status.RESOURCE_EXHAUSTED]: 'full',
  [grpc.status.CANCELLED]: 'cancelled',
  [grpc.status.UNAVAILABLE]: 'unreachable',
  [grpc.status.DEADLINE_EXCEEDED]: 'unreachable',
  [grpc.status.UNKNOWN]: 'unreachable',
  [grpc.status.INTERNAL]: 'unreachable',
};

/** The domain meaning of a call's error; undefined for errors that are not the call's (bugs: rethrow). */
export function callFailure(err: unknown): CallFailure | undefined {
  if (!isServiceError(err)) return undefined;
  const outcome = OUTCOMES[err.code];
  return outcome && { outcome, details: err.details, status: grpc.status[err.code] };
}

/**
 * What to do while the coordinator does not answer: wait with exponential backoff (200 ms doubling to
 * 5 s, +-25% jitter; a stop signal cuts the wait short) and give up once it has been unreachable for
 * longer than allowed (--reconnect-timeout). One per worker: every call shares what it learns.
 */
export class Backoff {
  private delayMs = 200;
  private since: number | undefined;
  private gaveUp = false;

  constructor(
    private readonly o: {
      giveUpAfterMs: number;
      signal: AbortSignal;
      /** A retry is coming (say so when it starts and once waits grow long). */
      onRetry?(failure: CallFailure, unreachableMs: number, delayMs: number): void;
      onGiveUp?(failure: CallFailure, unreachableMs: number): void;
      now?(): number;
      /** How a wait is spent (tests pass one that does not sleep). */
      sleep?(ms: number, signal: AbortSignal): Promise<void>;
    },
  ) {}

  /** A call got through: the next outage starts afresh. */
  succeeded(): void {
    this.since = undefined;
    this.delayMs = 200;
    this.gaveUp = false;
  }

  /** Notes an unanswered call; false once the coordinator has been unreachable too long. */
  failed(failure: CallFailure): boolean {
    const now = (this.o.now ?? performance.now.bind(performance))();
    this.since ??= now;
    const gone = now - this.since;
    if (gone > this.o.giveUpAfterMs) {
      if (!this.gaveUp) this.o.onGiveUp?.(failure, gone); // said once, however many calls hear it
      this.gaveUp = true;
      return false;
    }
    this.o.onRetry?.(failure, gone, this.delayMs);
    return true;
  }

  /** Stopping (SIGTERM): no more retries. */
  get stopping(): boolean {
    return this.o.signal.aborted;
  }

  /** Waits before the next try (returns at once when stopping). */
  wait(): Promise<void> {
    const ms = this.delayMs * (0.75 + Math.random() * 0.5);
    this.delayMs = Math.min(5000, this.delayMs * 2);
    const signal = this.o.signal;
    if (signal.aborted) return Promise.resolve();
    return (this.o.sleep ?? abortableSleep)(ms, signal);
  }
}

/** Holds this thread for ms, synchronously (test hooks that stand for a long synchronous compute or load). */
export function holdThread(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Waits ms, or less if the signal fires (a stop does not wait out a backoff or a simulated compute). */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Runs an idempotent call (asking for work, downloading weights), retrying while the coordinator
 * does not answer; any other failure, a stop, or the backoff's deadline ends it with the call's error.
 */
export async function retrying<T>(call: () => Promise<T>, backoff: Backoff): Promise<T> {
  for (;;) {
    try {
      const result = await call();
      backoff.succeeded();
      return result;
    } catch (err) {
      const failure = callFailure(err);
      // Stopping ends the retries (the caller leaves); so does the deadline and any other failure.
      if (failure?.outcome !== 'unreachable' || backoff.stopping || !backoff.failed(failure)) throw err;
      await backoff.wait();
    }
  }
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return (
    typeof err === 'object' &&
    err !== null &&
    'code' in err &&
    typeof (err as { code: unknown }).code === 'number' &&
    'details' in err
  );
}

/** The generated client, built over the service definition with the fast bulk serializers. */
const FastFleetServiceClient = grpc.makeGenericClientConstructor(
  FastFleetServiceDefinition,
  'tricaps.v1.FleetService',
) as unknown as new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: Partial<grpc.ClientOptions>,
) => FleetServiceClient;

export const deadline = (ms: number) => ({ deadline: Date.now() + ms });

export class FleetClient {
  readonly client: FleetServiceClient;
  /** Tensor bytes moved with the coordinator (weights down, gradients and embeddings up). */
  readonly exchange = new ExchangeMeter();

  private readonly token: string | undefined;

  constructor(
    readonly address: string,
    security: FleetSecurity = {},
  ) {
    this.token = security.joinToken;
    this.client = new FastFleetServiceClient(address, channelCredentials(security), {
      'grpc.max_receive_message_length': 8 << 20,
      // Reconnect quickly after a coordinator restart.
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2000,
      // Weight downloads: a wide receive window instead of HTTP/2's 64 KB default.
      'grpc-node.flow_control_window': 16 << 20,
    });
  }

  register(req: RegisterRequest, ms: number): Promise<RegisterResponse> {
    return new Promise((resolve, reject) =>
      this.client.register(req, this.md(), deadline(ms), (err, res) => (err ? reject(err) : resolve(res))),
    );
  }

  heartbeat(run: RunRef, workerId: string, ms: number): Promise<HeartbeatResponse> {
    return new Promise((resolve, reject) =>
      this.client.heartbeat({ run, workerId }, this.md(), deadline(ms), (err, res) =>
        err ? reject(err) : resolve(res),
      ),
    );
  }

  /** Long poll; the signal cancels it (SIGTERM). */
  nextStep(run: RunRef, workerId: string, ms: number, signal?: AbortSignal): Promise<NextStepResponse> {
    return new Promise((resolve, reject) => {
      const call = this.client.nextStep({ run, workerId }, this.md(), deadline(ms), (err, res) => {
        signal?.removeEventListener('abort', cancel);
        if (err) reject(err);
        else resolve(res);
      });
      const cancel = () => call.cancel();
      if (signal?.aborted)
        cancel(); // stopping already: an abort listener would never fire
      else signal?.addEventListener('abort', cancel, { once: true });
    });
  }

  /** @param failed the worker could not compute what it held (the reason counts against those shards) */
  leave(run: RunRef, workerId: string, reason: string, ms: number, failed = false): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.leave({ run, workerId, reason, failed }, this.md(), deadline(ms), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }

  /**
   * Downloads the current weights, every tensor whole and checked against the shape the model
   * expects (decoded into `into`'s arrays where given).
   */
  fetchWeights(
    run: RunRef,
    workerId: string,
    shapes: Map<string, number[]>,
    ms: number,
    into?: Map<string, Float32Array>,
  ): Promise<{ version: number; values: Map<string, Float32Array> }> {
    return this.download({ run, workerId, sliceOffset: 0, sliceLength: 0 }, shapes, ms, into);
  }

  /** One slice of the current weights vector (a ring member's), decoded into `into`. */
  async fetchWeightSlice(
    run: RunRef,
    workerId: string,
    offset: number,
    into: Float32Array,
    ms: number,
  ): Promise<number> {
    const req = { run, workerId, sliceOffset: offset, sliceLength: into.length };
    const { version } = await this.download(
      req,
      new Map([['weights', [into.length]]]),
      ms,
      new Map([['weights', into]]),
    );
    return version;
  }

  private download(
    req: FetchWeightsRequest,
    shapes: Map<string, number[]>,
    ms: number,
    into?: Map<string, Float32Array>,
  ): Promise<{ version: number; values: Map<string, Float32Array> }> {
    return new Promise((resolve, reject) => {
      const stream = this.client.fetchWeights(req, this.md(), deadline(ms));
      const values = new Map<string, Float32Array>();
      let pending: EncodedChunk[] = [];
      let version = -1;
      let count = 0;
      let failed = false;
      const fail = (err: Error) => {
        if (failed) return;
        failed = true;
        stream.cancel();
        reject(err);
      };
      stream.on(
        'data',
        (msg: { weightsVersion: number; tensorCount: number; chunk?: Parameters<typeof fromProtoChunk>[0] }) => {
          if (failed) return;
          try {
            if (!msg.chunk) throw new Error('weights message without a chunk');
            version = msg.weightsVersion;
            count = msg.tensorCount;
            const c = fromProtoChunk(msg.chunk);
            this.exchange.add('received', 'coordinator', c.data.byteLength);
            pending.push(c);
            if (pending.length < c.chunkCount) return;
            const shape = shapes.get(c.name);
            if (!shape)
              throw new Error(
                `the coordinator sent weights for ${c.name}, which this model does not have (different model configuration?)`,
              );
            const size = shape.reduce((a, b) => a * b, 1);
            values.set(
              c.name,
              decodeTensor(
                pending,
                { name: c.name, shape },
                { maxElements: size, maxChunks: 100_000 },
                into?.get(c.name),
              ),
            );
            pending = [];
          } catch (err) {
            fail(err as Error);
          }
        },
      );
      stream.on('error', (err) => fail(err));
      stream.on('end', () => {
        if (failed) return;
        if (values.size !== count || values.size !== shapes.size)
          fail(new Error(`weights download ended with ${values.size} of ${shapes.size} tensors`));
        else resolve({ version, values });
      });
    });
  }

  pushGradients(
    header: GradientHeader,
    tensors: [string, Float32Array, number[]][],
    dtype: WireDType,
    ms: number,
  ): Promise<{ accepted: boolean; reason: string }> {
    return this.upload((cb) => this.client.pushGradients(this.md(), deadline(ms), cb), { header }, tensors, dtype);
  }

  pushEmbeddings(
    header: EmbeddingHeader,
    embeddings: Float32Array,
    shape: [number, number],
    ms: number,
  ): Promise<{ accepted: boolean; reason: string }> {
    return this.upload(
      (cb) => this.client.pushEmbeddings(this.md(), deadline(ms), cb),
      { header },
      [['embeddings', embeddings, shape]],
      'float32',
    );
  }

  private upload<Req>(
    open: OpenUpload<Req>,
    first: Req,
    tensors: [string, Float32Array, number[]][],
    dtype: WireDType,
  ): Promise<{ accepted: boolean; reason: string }> {
    return streamTensors(open, first, tensors, dtype, (bytes) => this.exchange.add('sent', 'coordinator', bytes));
  }

  /** --exchange ring: the slice of the summed contribution this member owns. */
  pushSlice(
    header: SliceHeader,
    values: Float32Array,
    dtype: WireDType,
    ms: number,
  ): Promise<{ accepted: boolean; reason: string }> {
    return this.upload(
      (cb) => this.client.pushSlice(this.md(), deadline(ms), cb),
      { header },
      [['slice', values, [values.length]]],
      dtype,
    );
  }

  /** Names a ring peer that sent bad data or could not be reached. */
  reportPeer(
    run: RunRef,
    workerId: string,
    peerId: string,
    reason: string,
    badData: boolean,
    ms: number,
  ): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.reportPeer({ run, workerId, peerId, reason, badData }, this.md(), deadline(ms), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }

  /** Per-call metadata: the join token, when the run has one. */
  private md(): grpc.Metadata {
    return callMetadata(this.token);
  }

  close(): void {
    this.client.close();
  }
}

/** Opens a client-streamed upload whose answer goes to the callback. */
export type OpenUpload<Req> = (
  cb: (err: grpc.ServiceError | null, res?: { accepted: boolean; reason: string }) => void,
) => grpc.ClientWritableStream<Req>;

/**
 * Streams a first message (a header) and tensors in chunks over a client stream, respecting gRPC
 * flow control; stops sending when the receiver answers early (a refusal). `onBytes` counts the
 * tensor bytes sent.
 */
export function streamTensors<Req>(
  open: OpenUpload<Req>,
  first: Req,
  tensors: [string, Float32Array, number[]][],
  dtype: WireDType,
  onBytes?: (bytes: number) => void,
  signal?: AbortSignal,
): Promise<{ accepted: boolean; reason: string }> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const call = open((err, res) => {
      settled = true;
      signal?.removeEventListener('abort', cancel);
      if (err) reject(err);
      else resolve(res!);
    });
    const cancel = () => call.cancel();
    if (signal?.aborted) cancel();
    else signal?.addEventListener('abort', cancel, { once: true });
    const messages = function* () {
      yield first;
      for (const [name, values, shape] of tensors) {
        for (const c of encodeTensor(name, values, shape, dtype, DEFAULT_CHUNK_BYTES, { copy: false })) {
          onBytes?.(c.data.byteLength);
          yield { chunk: toProtoChunk(c) } as Req;
        }
      }
    };
    const it = messages();
    const pump = () => {
      for (;;) {
        if (settled) return; // the receiver answered early (a rejection): stop sending
        const next = it.next();
        if (next.done) {
          call.end();
          return;
        }
        if (!call.write(next.value)) {
          call.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}
