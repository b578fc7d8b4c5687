// Worker-to-worker links of the ring exchange: a PeerService server (--peer-listen) whose inbox takes
// hops only from this worker's predecessor in its current ring (run, round, step, hop and slice
// checked, every value finite), and clients that send hops to the successor. The same join token
// and TLS settings as the coordinator's link apply. The ring's schedule lives in ring-exchange.ts.
import * as grpc from '@grpc/grpc-js';
import type { HopHeader, HopRequest, PeerServiceClient, RunRef } from '../shared/gen/tricaps/v1/fleet.js';
import { FastPeerServiceDefinition } from '../shared/wire-fast.js';
import { widenFlowControlWindows } from '../shared/http2-window.js';
import { callMetadata, channelCredentials, serverCredentials, type FleetSecurity } from '../shared/fleet-security.js';
import { checkHopHeader, type Slice } from '../shared/plan/ring.js';
import { Gate, upload, UploadReader } from '../shared/stream-service.js';
import type { ExchangeMeter } from '../shared/exchange-meter.js';
import type { WireDType } from '../shared/tensor-codec.js';
import type { Logger } from '../shared/log.js';
import { UsageError } from '../shared/errors.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { deadline, streamTensors } from './fleet-client.js';

/** What this worker's ring is, while one is open. */
export interface RingExpectation {
  run: string;
  round: number;
  step: number;
  predecessor: string;
  /** The slice due from the predecessor at each hop. */
  receive: Slice[];
}

/** The refusal a sender retries: the receiver has not opened this ring yet (it is a little behind). */
export const NOT_READY = 'not ready for this ring yet';

/** Hops received, by hop index, for the ring open now; and the first bad hop, if any. */
export class RingInbox {
  /** Arrays hops are decoded into, recycled once their values are summed or copied (recycle()). */
  private readonly pool = new BufferPool(128 << 20);
  private ring: RingExpectation | undefined;
  private readonly arrived = new Map<number, Float32Array>();
  private readonly waiters = new Map<number, (v: Float32Array) => void>();
  /** Told when the predecessor sends bad data (the worker reports it to the coordinator). */
  onBadData?: (from: string, reason: string) => void;

  open(ring: RingExpectation): void {
    this.ring = ring;
    this.pool.release(this.arrived.values());
    this.arrived.clear();
    this.waiters.clear();
  }

  close(): void {
    this.ring = undefined;
    this.pool.release(this.arrived.values());
    this.arrived.clear();
    this.waiters.clear();
  }

  /** The expectation a hop's header must meet, or why it is refused (with the status to send). */
  admit(h: HopHeader): { ok: true; slice: Slice } | { ok: false; code: grpc.status; reason: string } {
    const run = h.run;
    const ring = this.ring;
    if (!run) return { ok: false, code: grpc.status.INVALID_ARGUMENT, reason: 'hop without a run reference' };
    if (!ring || run.step > ring.step || (run.step === ring.step && run.round > ring.round))
      return { ok: false, code: grpc.status.UNAVAILABLE, reason: NOT_READY };
    const slice = ring.receive[h.hop];
    const problem = checkHopHeader(
      {
        run: run.runId,
        round: run.round,
        step: run.step,
        from: h.fromWorker,
        hop: h.hop,
        slice: h.slice,
        offset: h.offset,
        length: h.length,
      },
      {
        run: ring.run,
        round: ring.round,
        step: ring.step,
        from: ring.predecessor,
        hop: h.hop,
        slice: slice ?? { index: -1, offset: -1, length: -1 },
      },
    );
    if (problem) {
      // A wrong shape from the real predecessor of this very ring is bad data; anything else is a
      // stranger or a stale sender, refused and otherwise ignored.
      this.badContent(h, problem);
      return { ok: false, code: grpc.status.FAILED_PRECONDITION, reason: problem };
    }
    return { ok: true, slice: slice! };
  }

  /**
   * Bad content (a wrong slice, a non-finite value the decoder refused): reported when it comes from
   * this ring's predecessor, ignored from anyone else.
   */
  badContent(h: HopHeader, reason: string): void {
    const ring = this.ring;
    const fromPredecessor =
      ring &&
      h.fromWorker === ring.predecessor &&
      h.run?.runId === ring.run &&
      h.run.round === ring.round &&
      h.run.step === ring.step;
    if (fromPredecessor) this.onBadData?.(h.fromWorker, reason);
  }

  /** An array to decode a hop into. */
  allocate(size: number): Float32Array {
    return this.pool.take(size);
  }

  /** A hop's values are used up (summed or copied): their array may be decoded into again. */
  recycle(values: Float32Array): void {
    this.pool.release([values]);
  }

  /** A hop's values (decoded, so whole and finite). */
  deliver(h: HopHeader, values: Float32Array): void {
    const waiter = this.waiters.get(h.hop);
    if (waiter) {
      this.waiters.delete(h.hop);
      waiter(values);
    } else this.arrived.set(h.hop, values);
  }

  /** The values of hop `hop` from the predecessor, when they arrive (or the signal fires). */
  take(hop: number, signal: AbortSignal): Promise<Float32Array> {
    const ready = this.arrived.get(hop);
    if (ready) {
      this.arrived.delete(hop);
      return Promise.resolve(ready);
    }
    return new Promise((resolve, reject) => {
      const abort = () => {
        this.waiters.delete(hop);
        reject(signal.reason ?? new Error('aborted'));
      };
      if (signal.aborted) return abort();
      signal.addEventListener('abort', abort, { once: true });
      this.waiters.set(hop, (v) => {
        signal.removeEventListener('abort', abort);
        resolve(v);
      });
    });
  }
}

export interface PeerServer {
  address: string;
  shutdown(): Promise<void>;
}

/** Serves PeerService on listen (HOST:PORT, port 0: chosen now) into the inbox. */
export async function servePeers(
  listen: string,
  inbox: RingInbox,
  security: FleetSecurity,
  log: Logger,
  meter: ExchangeMeter,
): Promise<PeerServer> {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(listen.trim());
  if (!m) throw new UsageError(`--peer-listen ${listen}: expected HOST:PORT, e.g. 0.0.0.0:7071`);
  const gate = new Gate({ joinToken: security.joinToken, maxCallsPerPeer: 4, log });
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 8 << 20 });
  server.addService(FastPeerServiceDefinition, {
    hop: (
      call: grpc.ServerReadableStream<HopRequest, { accepted: boolean; reason: string }>,
      callback: grpc.sendUnaryData<{ accepted: boolean; reason: string }>,
    ) => {
      let slice: Slice | undefined;
      upload<HopRequest, HopHeader>(
        gate,
        60_000,
        call,
        callback,
        (h) => {
          const verdict = inbox.admit(h);
          if (!verdict.ok) throw Object.assign(new Error(verdict.reason), { grpcCode: verdict.code });
          slice = verdict.slice;
          return new UploadReader(
            (name) => (name === 'hop' ? { name, shape: [slice!.length] } : undefined),
            (size) => inbox.allocate(size),
          );
        },
        (h, reader) => {
          let values: Float32Array;
          try {
            values = reader.finish(['hop'], 1).get('hop')!;
          } catch (err) {
            // A stream that ended short was cut (its sender gave the ring up): not bad data.
            throw Object.assign(new Error(`hop ${h.hop} from ${h.fromWorker} ended early: ${(err as Error).message}`), {
              grpcCode: grpc.status.CANCELLED,
            });
          }
          inbox.deliver(h, values);
        },
        (h, reason) => inbox.badContent(h, reason),
        undefined,
        (bytes) => meter.add('received', 'peer', bytes),
        (err) => ({
          code: (err as { grpcCode?: grpc.status }).grpcCode ?? grpc.status.INTERNAL,
          details: (err as Error).message,
        }),
      );
    },
  } as grpc.UntypedServiceImplementation);
  const loopback = /^(127\.|localhost$|\[::1\]$)/.test(m[1]);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${m[1]}:${m[2]}`, serverCredentials(security, log, loopback), (err, p) =>
      err ? reject(new UsageError(`cannot listen for peers on ${listen}: ${err.message.split('\n')[0]}`)) : resolve(p),
    ),
  );
  widenFlowControlWindows(server);
  return {
    address: `${m[1]}:${port}`,
    shutdown: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 1000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

/** The generated client over the definition with the fast hop serializer. */
const FastPeerServiceClient = grpc.makeGenericClientConstructor(
  FastPeerServiceDefinition,
  'tricaps.v1.PeerService',
) as unknown as new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: Partial<grpc.ClientOptions>,
) => PeerServiceClient;

/** Clients to ring successors, one channel per address. */
export class PeerClients {
  private readonly clients = new Map<string, PeerServiceClient>();

  constructor(
    private readonly security: FleetSecurity,
    private readonly meter: ExchangeMeter,
  ) {}

  /** Sends one hop; resolves when the successor accepted it, rejects with its reason otherwise. */
  async hop(
    address: string,
    header: { run: RunRef; fromWorker: string; hop: number; slice: Slice },
    values: Float32Array,
    dtype: WireDType,
    ms: number,
    signal: AbortSignal,
  ): Promise<void> {
    let client = this.clients.get(address);
    if (!client) {
      client = new FastPeerServiceClient(address, channelCredentials(this.security), {
        'grpc.max_receive_message_length': 8 << 20,
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
      });
      this.clients.set(address, client);
    }
    const h: HopHeader = {
      run: header.run,
      fromWorker: header.fromWorker,
      hop: header.hop,
      slice: header.slice.index,
      offset: header.slice.offset,
      length: values.length,
    };
    const res = await streamTensors<HopRequest>(
      (cb) => client!.hop(callMetadata(this.security.joinToken), deadline(ms), cb),
      { header: h },
      [['hop', values, [values.length]]],
      dtype,
      (bytes) => this.meter.add('sent', 'peer', bytes),
      signal,
    );
    if (!res.accepted) throw new Error(res.reason || 'hop refused');
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
