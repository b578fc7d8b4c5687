// Client-streamed uploads without a network: the upload() handler driven by a stand-in call (the
// events grpc-js emits), the upload reader's limits, and the gate's refusal log.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { Gate, MAX_UPLOAD_CHUNKS, UploadReader, upload, type TensorSpec } from '../../src/shared/stream-service.js';
import { TensorDecodeError } from '../../src/shared/tensor-codec.js';
import { WireDType, type TensorChunk } from '../../src/shared/gen/tricaps/v1/fleet.js';
import { callMetadata } from '../../src/shared/fleet-security.js';

const chunk = (over: Partial<TensorChunk> = {}): TensorChunk => ({
  name: 'w',
  dtype: WireDType.WIRE_D_TYPE_FLOAT32,
  shape: [4],
  chunkIndex: 0,
  chunkCount: 1,
  offset: 0,
  data: Buffer.from(Float32Array.of(1, 2, 3, 4).buffer),
  ...over,
});

function logged() {
  const records: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => records.push(JSON.parse(l)) });
  return { log, records };
}

interface Header {
  tensors: string[];
}
type Req = { header?: Header; chunk?: TensorChunk };
type Answer = { accepted: boolean; reason: string };

/** A call as grpc-js hands it to a handler: events in, one callback out. */
class StandInCall extends EventEmitter {
  metadata = new grpc.Metadata();
  constructor(private readonly peer = 'ipv4:10.0.0.7:41000') {
    super();
  }
  getPeer() {
    return this.peer;
  }
  send(msg: Req) {
    this.emit('data', msg);
  }
}

/** Runs upload() on a stand-in call, recording what each hook saw and every answer. */
function start(
  opts: {
    gate?: Gate;
    timeoutMs?: number;
    complete?: (header: Header, reader: UploadReader) => void;
    toStatus?: (err: unknown) => Partial<grpc.ServiceError>;
    specs?: TensorSpec[];
  } = {},
) {
  const gate = opts.gate ?? new Gate({ maxCallsPerPeer: 1 });
  const call = new StandInCall();
  const answers: [Partial<grpc.ServiceError> | null, Answer | undefined][] = [];
  const seen = {
    headers: [] as Header[],
    completed: [] as Map<string, Float32Array>[],
    bad: [] as [Header, string][],
    discarded: [] as Float32Array[][],
    bytes: [] as number[],
  };
  const specs = new Map((opts.specs ?? [{ name: 'w', shape: [4] }]).map((s) => [s.name, s]));
  upload<Req, Header>(
    gate,
    opts.timeoutMs ?? 60_000,
    call as unknown as grpc.ServerReadableStream<Req, Answer>,
    (err, value) => answers.push([err, value]),
    (header) => {
      seen.headers.push(header);
      return new UploadReader((name) => specs.get(name));
    },
    opts.complete ?? ((header, reader) => seen.completed.push(reader.finish(header.tensors, header.tensors.length))),
    (header, reason) => seen.bad.push([header, reason]),
    (arrays) => seen.discarded.push(arrays),
    (bytes) => seen.bytes.push(bytes),
    opts.toStatus ?? ((err) => ({ code: grpc.status.INTERNAL, details: `internal: ${(err as Error).message}` })),
  );
  return { call, answers, seen, gate };
}

const header: Header = { tensors: ['w'] };

describe('upload(): one client-streamed upload, answered once', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('accepts a header and its tensors, hands them over, counts the bytes, and frees the call slot', () => {
    const { call, answers, seen, gate } = start();
    // The slot is held while the upload runs (one call per peer here).
    expect('refusal' in gate.admit(call)).toBe(true);
    call.send({ header });
    call.send({ chunk: chunk() });
    call.emit('end');
    expect(answers).toEqual([[null, { accepted: true, reason: '' }]]);
    expect(seen.headers).toEqual([header]);
    expect(Array.from(seen.completed[0].get('w')!)).toEqual([1, 2, 3, 4]);
    expect(seen.bytes).toEqual([16]);
    expect(seen.bad).toEqual([]);
    expect(seen.discarded).toEqual([]);
    expect('release' in gate.admit(call)).toBe(true);
  });

  it('refuses a call the gate refuses without reading it', () => {
    const gate = new Gate({ maxCallsPerPeer: 1, joinToken: 'the-run-token-0001' });
    const { call, answers, seen } = start({ gate });
    expect(answers).toEqual([[{ code: grpc.status.UNAUTHENTICATED, details: expect.any(String) }, undefined]]);
    expect(call.listenerCount('data')).toBe(0);
    call.send({ header });
    expect(seen.headers).toEqual([]);
    const admitted = new StandInCall();
    admitted.metadata = callMetadata('the-run-token-0001');
    expect('release' in gate.admit(admitted)).toBe(true);
  });

  it.each<[string, Req[], boolean, string]>([
    ['a chunk before the header', [{ chunk: chunk() }], false, 'tensor chunk before the header'],
    ['a second header', [{ header }, { header }], false, 'a second header in one upload'],
    ['an empty message', [{ header }, {}], false, 'empty upload message'],
    ['no header at all', [], true, 'upload without a header'],
  ])('answers INVALID_ARGUMENT to %s, once, and reads nothing after it', (_label, messages, end, details) => {
    const { call, answers, seen, gate } = start();
    for (const m of messages) call.send(m);
    if (end) call.emit('end');
    // What arrives after the answer is ignored: no second answer, no hook runs.
    call.send({ header: { tensors: ['late'] } });
    call.emit('end');
    call.emit('error', new Error('late'));
    expect(answers).toEqual([[{ code: grpc.status.INVALID_ARGUMENT, details }, undefined]]);
    expect(seen.headers.every((h) => h === header)).toBe(true);
    expect(seen.completed).toEqual([]);
    expect('release' in gate.admit(call)).toBe(true);
  });

  it('a tensor that does not decode: the content is reported against its header, arrays decoded so far go back', () => {
    const specs = [
      { name: 'w', shape: [4] },
      { name: 'v', shape: [2] },
    ];
    const { call, answers, seen } = start({ specs });
    const two = { tensors: ['w', 'v'] };
    call.send({ header: two });
    call.send({ chunk: chunk() });
    call.send({ chunk: chunk({ name: 'v', shape: [3] }) });
    call.send({ chunk: chunk({ name: 'v', shape: [2] }) }); // after the answer: ignored
    expect(answers).toEqual([
      [{ code: grpc.status.INVALID_ARGUMENT, details: 'tensor v: shape [3] where [2] was expected' }, undefined],
    ]);
    expect(seen.bad).toEqual([[two, 'tensor v: shape [3] where [2] was expected']]);
    expect(seen.discarded.map((arrays) => arrays.map((a) => Array.from(a)))).toEqual([[[1, 2, 3, 4]]]);
    expect(seen.bytes).toEqual([16, 16]);
  });

  it('maps what the handlers throw: decoding and protocol errors are INVALID_ARGUMENT, anything else is theirs to name', () => {
    const failing = (err: Error) =>
      start({
        complete: () => {
          throw err;
        },
      });
    for (const [err, status] of [
      [new TensorDecodeError('bad tensor'), { code: grpc.status.INVALID_ARGUMENT, details: 'bad tensor' }],
      [new Error('disk on fire'), { code: grpc.status.INTERNAL, details: 'internal: disk on fire' }],
    ] as const) {
      const { call, answers, seen } = failing(err);
      call.send({ header });
      call.send({ chunk: chunk() });
      call.emit('end');
      expect(answers).toEqual([[status, undefined]]);
      // Only a decoding failure is the sender's bad content.
      expect(seen.bad).toEqual(err instanceof TensorDecodeError ? [[header, 'bad tensor']] : []);
      expect(seen.discarded).toHaveLength(1);
    }
  });

  it('a stream that breaks is answered INVALID_ARGUMENT and frees its slot', () => {
    const { call, answers, gate } = start();
    call.send({ header });
    call.emit('error', new Error('RST_STREAM'));
    expect(answers).toEqual([[{ code: grpc.status.INVALID_ARGUMENT, details: 'upload stream failed' }, undefined]]);
    expect('release' in gate.admit(call)).toBe(true);
  });

  it('cuts an upload not finished within its deadline (DEADLINE_EXCEEDED), once, and frees its slot', () => {
    vi.useFakeTimers();
    const { call, answers, gate, seen } = start({ timeoutMs: 5_000 });
    call.send({ header });
    call.send({ chunk: chunk() }); // complete but for its end
    vi.advanceTimersByTime(4_999);
    expect(answers).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(answers).toEqual([
      [{ code: grpc.status.DEADLINE_EXCEEDED, details: 'upload not finished within 5000 ms; cut' }, undefined],
    ]);
    expect('release' in gate.admit(call)).toBe(true);
    call.emit('end'); // too late: the upload is not handed over
    expect(answers).toHaveLength(1);
    expect(seen.completed).toEqual([]);
    // An upload answered in time leaves no timer to answer again.
    const quick = start({ timeoutMs: 5_000 });
    quick.call.send({ header });
    quick.call.send({ chunk: chunk() });
    quick.call.emit('end');
    vi.advanceTimersByTime(10_000);
    expect(quick.answers).toEqual([[null, { accepted: true, reason: '' }]]);
  });
});

describe('upload reader', () => {
  const specs = new Map([['w', { name: 'w', shape: [4] }]]);
  const reader = () => new UploadReader((name) => specs.get(name));

  it.each<[string, Parameters<UploadReader['add']>[0][], RegExp]>([
    ['an unexpected tensor', [chunk({ name: 'x' })], /tensor x: not expected in this upload/],
    [
      'a wrong shape, before buffering',
      [chunk({ shape: [1_000_000_000] })],
      /shape \[1000000000\] where \[4\] was expected/,
    ],
    ['an absurd chunk count', [chunk({ chunkCount: 1000 })], /1000 chunks announced for 4 values/],
    [
      'more bytes than the tensor holds',
      [
        chunk({ chunkCount: 2, data: Buffer.alloc(16) }),
        chunk({ chunkCount: 2, chunkIndex: 1, data: Buffer.alloc(16) }),
      ],
      /more bytes than 4 values can take/,
    ],
    [
      'interleaved tensors',
      [chunk({ chunkCount: 2, data: Buffer.alloc(8) }), chunk({ name: 'v' })],
      /chunk of v arrived before its 2 chunks were complete/,
    ],
    ['a tensor sent twice', [chunk(), chunk()], /tensor w: sent twice/],
  ])('refuses %s', (_label, chunks, message) => {
    const r = reader();
    expect(() => chunks.forEach((c) => r.add(c))).toThrow(message);
  });

  it('accepts a complete upload and refuses an incomplete one', () => {
    const r = reader();
    r.add(chunk());
    expect(r.finish(['w'], 1).get('w')).toEqual(Float32Array.of(1, 2, 3, 4));
    const partial = reader();
    partial.add(chunk({ chunkCount: 2, data: Buffer.alloc(8) }));
    expect(() => partial.finish(['w'], 1)).toThrow(/1 of 2 chunks received/);
    expect(() => reader().finish(['w'], 0)).toThrow(/missing tensors: w/);
    expect(() => reader().finish(['w'], 3)).toThrow(/0 tensors received, the header announced 3/);
  });

  it('hands its arrays over once: finish gives them away, discard returns those of a failed upload', () => {
    const specs2 = new Map([
      ['w', { name: 'w', shape: [4] }],
      ['v', { name: 'v', shape: [4] }],
    ]);
    const failed = new UploadReader((name) => specs2.get(name));
    failed.add(chunk());
    expect(() => failed.add(chunk({ name: 'x' }))).toThrow(/not expected/);
    const left = failed.discard();
    expect(left).toHaveLength(1);
    expect(failed.discard()).toEqual([]); // never twice: a pool must not get the same array again
    const done = new UploadReader((name) => specs2.get(name));
    done.add(chunk());
    done.add(chunk({ name: 'v' }));
    expect(done.finish(['w', 'v'], 2).size).toBe(2);
    expect(done.discard()).toEqual([]); // handed over: the new owner gives them back
  });
});

describe('upload reader limits', () => {
  it(`refuses chunk ${MAX_UPLOAD_CHUNKS + 1} of an upload, and takes ${MAX_UPLOAD_CHUNKS}`, () => {
    const size = MAX_UPLOAD_CHUNKS;
    const reader = new UploadReader((name) =>
      name === 'a' ? { name, shape: [size] } : name === 'b' ? { name, shape: [1] } : undefined,
    );
    const one = Buffer.alloc(4);
    for (let i = 0; i < size; i++)
      reader.add(chunk({ name: 'a', shape: [size], chunkIndex: i, chunkCount: size, offset: i, data: one }));
    expect(() => reader.add(chunk({ name: 'b', shape: [1], data: one }))).toThrow(
      `upload of more than ${MAX_UPLOAD_CHUNKS} chunks`,
    );
    expect(reader.finish(['a'], 1).get('a')).toHaveLength(size);
  });

  it('checks the shape and the chunk count on the first chunk, before anything is buffered', () => {
    const reader = () => new UploadReader((name) => (name === 'w' ? { name, shape: [2, 2] } : undefined));
    for (const shape of [[4], [2], [2, 3], [3, 2], [2, 2, 1]])
      expect(() => reader().add(chunk({ shape, chunkCount: 2, data: Buffer.alloc(8) }))).toThrow(
        `tensor w: shape [${shape}] where [2,2] was expected`,
      );
    expect(() => reader().add(chunk({ shape: [2, 2], chunkCount: 0 }))).toThrow(
      'tensor w: 0 chunks announced for 4 values',
    );
    // Every chunk a single value is the most there can be.
    const fine = reader();
    for (let i = 0; i < 4; i++)
      fine.add(chunk({ shape: [2, 2], chunkIndex: i, chunkCount: 4, offset: i, data: Buffer.alloc(4) }));
    expect(fine.finish(['w'], 1).get('w')).toEqual(new Float32Array(4));
    expect(() => reader().add(chunk({ shape: [2, 2], chunkCount: 5 }))).toThrow('5 chunks announced for 4 values');
  });

  it('names at most five missing tensors, and how many more', () => {
    const none = () => new UploadReader(() => undefined);
    const names = (n: number) => Array.from({ length: n }, (_, i) => `t${i}`);
    expect(() => none().finish(names(5), 0)).toThrow(/^missing tensors: t0, t1, t2, t3, t4$/);
    expect(() => none().finish(names(6), 0)).toThrow(/^missing tensors: t0, t1, t2, t3, t4 and 1 more$/);
    expect(() => none().finish(names(8), 0)).toThrow(/^missing tensors: t0, t1, t2, t3, t4 and 3 more$/);
    expect(none().finish(undefined, 0).size).toBe(0); // nothing required
  });
});

describe('gate refusal log', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('logs a peer’s refusals at most once a minute, with the peer and the reason as fields', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-11-30T12:00:00Z'));
    const { log, records } = logged();
    const gate = new Gate({ maxCallsPerPeer: 1, joinToken: 'the-run-token-0001', log });
    const call = new StandInCall('ipv4:10.0.0.9:5000');
    gate.admit(call);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      peer: 'ipv4:10.0.0.9:5000',
      why: 'no join token: start the worker with --join-token or TRICAPS_JOIN_TOKEN',
    });
    vi.setSystemTime(new Date('2026-11-30T12:00:59.999Z'));
    gate.admit(call);
    expect(records).toHaveLength(1);
    vi.setSystemTime(new Date('2026-11-30T12:01:00Z'));
    gate.admit(call);
    expect(records).toHaveLength(2);
  });
});
