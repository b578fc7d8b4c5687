// Server-side streaming helpers both sides of the fleet serve with (the coordinator's FleetService,
// a worker's PeerService): call admission (join token, concurrent calls per peer) and client-streamed
// uploads read chunk by chunk against the tensors expected, answered once, with a deadline.
import * as grpc from '@grpc/grpc-js';
import type { TensorChunk } from './gen/tricaps/v1/fleet.js';
import { decodeTensor, TensorDecodeError, type EncodedChunk } from './tensor-codec.js';
import { tokenProblem } from './fleet-security.js';
import { fromProtoChunk } from './wire.js';
import type { Logger } from './log.js';

/** What a tensor of an upload must be. */
export interface TensorSpec {
  name: string;
  shape: number[];
}

export interface GateOptions {
  /** Required on every call when set (see fleet-security.ts). */
  joinToken?: string;
  /** Concurrent calls one peer (address:port) may have open. */
  maxCallsPerPeer: number;
  log?: Logger;
}

/** A stream that breaks the upload protocol (INVALID_ARGUMENT, with what was wrong). */
export class StreamProtocolError extends Error {}

/** Upper bound on the chunks of one upload (our encoder sends 1 MB chunks: ~10 for SC). */
export const MAX_UPLOAD_CHUNKS = 100_000;

/** Admission of calls: the join token, and a bound on concurrent calls per peer. */
export class Gate {
  private readonly open = new Map<string, number>();
  private readonly lastLogged = new Map<string, number>();

  constructor(private readonly g: GateOptions) {}

  /** Admits a call (returning its release) or says why not. */
  admit(call: {
    getPeer(): string;
    metadata: grpc.Metadata;
  }): { release: () => void } | { refusal: Partial<grpc.ServiceError> } {
    const peer = call.getPeer();
    const problem = tokenProblem(this.g.joinToken, call.metadata);
    if (problem) {
      this.note(peer, problem.details);
      return { refusal: problem };
    }
    const n = this.open.get(peer) ?? 0;
    if (n >= this.g.maxCallsPerPeer) {
      this.note(peer, 'too many concurrent calls');
      return {
        refusal: {
          code: grpc.status.RESOURCE_EXHAUSTED,
          details: `more than ${this.g.maxCallsPerPeer} concurrent calls from ${peer}`,
        },
      };
    }
    this.open.set(peer, n + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        const left = (this.open.get(peer) ?? 1) - 1;
        if (left <= 0) this.open.delete(peer);
        else this.open.set(peer, left);
      },
    };
  }

  /** Refusals are logged at most once a minute per peer (a stray process could call in a loop). */
  private note(peer: string, why: string): void {
    const now = Date.now();
    if (now - (this.lastLogged.get(peer) ?? 0) < 60_000) return;
    this.lastLogged.set(peer, now);
    this.g.log?.warn({ peer, why }, `refused a call from ${peer}: ${why}`);
  }
}

/**
 * Reads an upload stream (a header, then tensor chunks, each tensor's chunks contiguous and in
 * order) and decodes each tensor as soon as its last chunk arrives.
 */
export class UploadReader {
  private tensors = new Map<string, Float32Array>();
  private pending: EncodedChunk[] = [];
  private chunks = 0;
  private expected: TensorSpec | undefined;
  private bytes = 0;

  constructor(
    private readonly specOf: (name: string) => TensorSpec | undefined,
    /** Where decoded tensors go (recycled arrays save the page faults of fresh ones). */
    private readonly allocate: (size: number) => Float32Array = (size) => new Float32Array(size),
  ) {}

  add(chunk: TensorChunk): void {
    if (++this.chunks > MAX_UPLOAD_CHUNKS)
      throw new TensorDecodeError(`upload of more than ${MAX_UPLOAD_CHUNKS} chunks`);
    const c = fromProtoChunk(chunk);
    if (this.pending.length === 0) {
      // The first chunk of a tensor: check it against what is expected before buffering anything.
      const spec = this.specOf(c.name);
      if (!spec) throw new TensorDecodeError(`tensor ${c.name}: not expected in this upload`);
      if (this.tensors.has(spec.name)) throw new TensorDecodeError(`tensor ${spec.name}: sent twice`);
      if (c.shape.length !== spec.shape.length || c.shape.some((d, i) => d !== spec.shape[i]))
        throw new TensorDecodeError(`tensor ${c.name}: shape [${c.shape}] where [${spec.shape}] was expected`);
      const size = spec.shape.reduce((a, b) => a * b, 1);
      if (c.chunkCount < 1 || c.chunkCount > Math.max(1, size))
        throw new TensorDecodeError(`tensor ${c.name}: ${c.chunkCount} chunks announced for ${size} values`);
      this.expected = spec;
      this.bytes = 0;
    } else if (this.pending[0].name !== c.name) {
      throw new TensorDecodeError(
        `tensor ${this.pending[0].name}: chunk of ${c.name} arrived before its ${this.pending[0].chunkCount} chunks were complete`,
      );
    }
    const spec = this.expected!;
    const size = spec.shape.reduce((a, b) => a * b, 1);
    this.bytes += c.data.byteLength;
    if (this.bytes > size * 4) throw new TensorDecodeError(`tensor ${c.name}: more bytes than ${size} values can take`);
    this.pending.push(c);
    if (this.pending.length < this.pending[0].chunkCount) return;
    this.tensors.set(
      spec.name,
      decodeTensor(this.pending, spec, { maxElements: size, maxChunks: MAX_UPLOAD_CHUNKS }, this.allocate(size)),
    );
    this.pending = [];
  }

  finish(expected: string[] | undefined, announced: number): Map<string, Float32Array> {
    if (this.pending.length)
      throw new TensorDecodeError(
        `tensor ${this.pending[0].name}: ${this.pending.length} of ${this.pending[0].chunkCount} chunks received`,
      );
    if (this.tensors.size !== announced)
      throw new TensorDecodeError(`${this.tensors.size} tensors received, the header announced ${announced}`);
    const missing = (expected ?? []).filter((n) => !this.tensors.has(n));
    if (missing.length)
      throw new TensorDecodeError(
        `missing tensors: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`,
      );
    // Handed over: whoever takes them owns the arrays now.
    const out = this.tensors;
    this.tensors = new Map();
    return out;
  }

  /** The arrays decoded so far of an upload that failed (to give back to their pool). */
  discard(): Float32Array[] {
    const arrays = [...this.tensors.values()];
    this.tensors.clear();
    return arrays;
  }
}

/**
 * Handles one client-streamed upload: header first (checked before any tensor is read), then
 * chunks; answers once, and ignores whatever arrives after an answer.
 */
export function upload<Req extends { header?: H; chunk?: TensorChunk }, H>(
  gate: Gate,
  timeoutMs: number,
  call: grpc.ServerReadableStream<Req, { accepted: boolean; reason: string }>,
  callback: grpc.sendUnaryData<{ accepted: boolean; reason: string }>,
  onHeader: (header: H) => UploadReader,
  onComplete: (header: H, reader: UploadReader) => void,
  onBadContent: (header: H, reason: string) => void,
  onDiscard: ((arrays: Float32Array[]) => void) | undefined,
  onBytes: ((bytes: number) => void) | undefined,
  /** The status of an error thrown by the handlers (protocol and decoding errors are mapped here). */
  toStatus: (err: unknown) => Partial<grpc.ServiceError>,
): void {
  const admitted = gate.admit(call);
  if ('refusal' in admitted) {
    callback(admitted.refusal);
    return;
  }
  let header: H | undefined;
  let reader: UploadReader | undefined;
  let answered = false;
  // answer() clears this timer: when it fires, nothing has been answered.
  const timer = setTimeout(() => {
    answered = true;
    admitted.release();
    callback({ code: grpc.status.DEADLINE_EXCEEDED, details: `upload not finished within ${timeoutMs} ms; cut` });
  }, timeoutMs);
  timer.unref();
  const answer = (err: unknown) => {
    if (answered) return;
    answered = true;
    clearTimeout(timer);
    admitted.release();
    if (err === undefined) {
      callback(null, { accepted: true, reason: '' });
      return;
    }
    if (err instanceof TensorDecodeError && header !== undefined) onBadContent(header, err.message);
    // Arrays decoded before the failure (not handed over) go back where they came from.
    if (reader) onDiscard?.(reader.discard());
    callback(
      err instanceof StreamProtocolError || err instanceof TensorDecodeError
        ? { code: grpc.status.INVALID_ARGUMENT, details: err.message }
        : toStatus(err),
    );
  };
  call.on('data', (msg: Req) => {
    if (answered) return;
    try {
      if (msg.header) {
        if (header !== undefined) throw new StreamProtocolError('a second header in one upload');
        header = msg.header;
        reader = onHeader(header);
      } else if (msg.chunk) {
        if (!reader) throw new StreamProtocolError('tensor chunk before the header');
        onBytes?.(msg.chunk.data.byteLength);
        reader.add(msg.chunk);
      } else {
        throw new StreamProtocolError('empty upload message');
      }
    } catch (err) {
      answer(err);
    }
  });
  call.on('end', () => {
    if (answered) return;
    try {
      if (!header || !reader) throw new StreamProtocolError('upload without a header');
      onComplete(header, reader);
      answer(undefined);
    } catch (err) {
      answer(err);
    }
  });
  call.on('error', () => answer(new StreamProtocolError('upload stream failed')));
}
