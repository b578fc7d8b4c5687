// Property-based tests (fast-check): random bytes and random valid-looking messages thrown at the
// protobuf decoders, the tensor decoder and the upload reader never crash them, never hang, and are
// never accepted unless they are exactly what was expected.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  FetchWeightsResponse,
  GradientHeader,
  PushGradientsRequest,
  WireDType,
} from '../../src/shared/gen/tricaps/v1/fleet.js';
import { decodeTensor, encodeTensor, TensorDecodeError, type EncodedChunk } from '../../src/shared/tensor-codec.js';
import { fromProtoChunk, toProtoChunk } from '../../src/shared/wire.js';
import { UploadReader } from '../../src/coordinator/fleet-service.js';
import { assertInside, isStepDirName } from '../../src/shared/paths.js';

const expectedShape = [3, 5];
const limits = { maxElements: 15, maxChunks: 64 };
// The tensor decoder and the upload reader refuse only with their own error; the protobuf reader
// with its own messages. Anything else (a RangeError from a typed array, a TypeError) is a crash.
// The protobuf reader reads fixed-width fields (float, fixed32/64) through a DataView, so a message
// cut inside one is refused with the DataView's bounds error: that is its "truncated" message (1 in
// ~50,000 random inputs, which is why CI once met it and 2,000 runs locally did not).
const decodeRefusal = (e: unknown) => e instanceof TensorDecodeError;
const protobufRefusal = (e: unknown) =>
  e instanceof Error &&
  /^(premature EOF|Offset is outside the bounds of the DataView|cant skip wire type|illegal tag|incomplete data|invalid end group tag|invalid varint|Value is (larger|smaller) than Number\.M(AX|IN)_SAFE_INTEGER|protobuf decode recursion limit exceeded|maximum recursion depth reached)/.test(
    e.message,
  );

describe('decoders under random input', () => {
  it('protobuf decoding of random bytes either yields a message or throws an error, never hangs', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => {
        for (const decode of [() => PushGradientsRequest.decode(bytes), () => FetchWeightsResponse.decode(bytes)]) {
          try {
            decode();
          } catch (e) {
            expect(protobufRefusal(e), String(e)).toBe(true);
          }
        }
      }),
      { numRuns: 2000 },
    );
  });

  it("a message cut inside a float field is refused with the reader's bounds error, not decoded", () => {
    const header = GradientHeader.encode(GradientHeader.fromPartial({ loss: 1.5 })).finish();
    let refused: unknown;
    try {
      GradientHeader.decode(header.subarray(0, header.length - 2));
    } catch (e) {
      refused = e;
    }
    expect(String(refused)).toMatch(/^RangeError: Offset is outside the bounds of the DataView/);
    expect(protobufRefusal(refused)).toBe(true);
  });

  const chunkArb = fc.record({
    name: fc.constantFrom('w', 'v', ''),
    dtype: fc.constantFrom(
      WireDType.WIRE_D_TYPE_FLOAT32,
      WireDType.WIRE_D_TYPE_FLOAT16,
      WireDType.WIRE_D_TYPE_UNSPECIFIED,
      7 as WireDType,
    ),
    shape: fc.oneof(fc.constant([3, 5]), fc.array(fc.nat(20), { maxLength: 3 })),
    chunkIndex: fc.nat(4),
    chunkCount: fc.nat(4),
    offset: fc.nat(20),
    data: fc.uint8Array({ maxLength: 80 }).map((u) => Buffer.from(u)),
  });

  it('the tensor decoder accepts a random chunk list only when it is a well-formed, finite [3, 5] tensor', () => {
    fc.assert(
      fc.property(fc.array(chunkArb, { maxLength: 5 }), (chunks) => {
        let decoded: Float32Array | undefined;
        try {
          decoded = decodeTensor(chunks.map(fromProtoChunk), { name: 'w', shape: expectedShape }, limits);
        } catch (e) {
          expect(decodeRefusal(e), String(e)).toBe(true);
          return;
        }
        // Accepted: then it must be exactly a valid stream.
        expect(decoded).toHaveLength(15);
        expect(decoded.every(Number.isFinite)).toBe(true);
        expect(chunks.every((c) => c.name === 'w' && c.shape.join() === '3,5' && c.chunkCount === chunks.length)).toBe(
          true,
        );
        expect(chunks.map((c) => c.chunkIndex)).toEqual(chunks.map((_, i) => i));
      }),
      { numRuns: 3000 },
    );
  });

  it('valid encodings always decode to the values (float32 exactly)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { minLength: 15, maxLength: 15 }),
        fc.integer({ min: 4, max: 64 }),
        (values, chunkBytes) => {
          const v = Float32Array.from(values);
          expect(
            Array.from(
              decodeTensor(
                encodeTensor('w', v, expectedShape, 'float32', chunkBytes),
                { name: 'w', shape: expectedShape },
                limits,
              ),
            ),
          ).toEqual(Array.from(v));
        },
      ),
      { numRuns: 500 },
    );
  });

  it('the upload reader never accepts an upload that does not carry exactly the expected tensors', () => {
    fc.assert(
      fc.property(fc.array(chunkArb, { maxLength: 6 }), fc.nat(3), (chunks, announced) => {
        const reader = new UploadReader((name) => (name === 'w' ? { name, shape: expectedShape } : undefined));
        try {
          for (const c of chunks) reader.add(c);
          const out = reader.finish(['w'], announced);
          expect(out.size).toBe(1);
          expect(announced).toBe(1);
          expect(out.get('w')!.every(Number.isFinite)).toBe(true);
        } catch (e) {
          expect(decodeRefusal(e), String(e)).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
  });

  // Valid streams with at most one thing wrong: the decoders must accept exactly the intact ones (so
  // the "accepted" branch runs as often as the refusals), and name what is wrong in the others.
  const MUTATIONS = [
    'none',
    'drop',
    'swap',
    'duplicate',
    'rename',
    'reshape',
    'recount',
    'reindex',
    'shift',
    'cut',
    'nonfinite',
    'retype',
  ] as const;
  type Mutation = (typeof MUTATIONS)[number];
  const NAN_BYTES = { float32: [0x00, 0x00, 0xc0, 0x7f], float16: [0x00, 0x7e] };
  const INF_BYTES = { float32: [0x00, 0x00, 0x80, 0x7f], float16: [0x00, 0x7c] };

  /** Applies one mutation at chunk `at` (modulo the count); 'none' and impossible ones leave the stream as is. */
  function mutate(chunks: EncodedChunk[], m: Mutation, at: number, element: number, nan: boolean): EncodedChunk[] {
    const out = chunks.map((c) => ({ ...c, shape: [...c.shape], data: Uint8Array.from(c.data) }));
    const k = at % out.length;
    const c = out[k];
    const per = c.dtype === 'float32' ? 4 : 2;
    switch (m) {
      case 'none':
        return out;
      case 'drop':
        return out.filter((_, i) => i !== k);
      case 'swap':
        if (out.length < 2) return mutate(chunks, 'duplicate', at, element, nan);
        [out[k], out[(k + 1) % out.length]] = [out[(k + 1) % out.length], out[k]];
        return out;
      case 'duplicate':
        return [...out.slice(0, k + 1), { ...c }, ...out.slice(k + 1)];
      case 'rename':
        c.name = c.name + 'x';
        return out;
      case 'reshape':
        c.shape = [...c.shape].reverse();
        if (c.shape.join() === chunks[k].shape.join()) c.shape = [...c.shape, 1];
        return out;
      case 'recount':
        for (const x of out) x.chunkCount += 1;
        return out;
      case 'reindex':
        c.chunkIndex += 1;
        return out;
      case 'shift':
        c.offset += 1;
        return out;
      case 'cut':
        c.data = c.data.subarray(0, c.data.length - (element % 2 === 0 ? per : 1));
        return out;
      case 'nonfinite': {
        const at = (element % (c.data.length / per)) * per;
        c.data.set((nan ? NAN_BYTES : INF_BYTES)[c.dtype], at);
        return out;
      }
      case 'retype':
        c.dtype = c.dtype === 'float32' ? 'float16' : 'float32';
        return out;
    }
  }

  const streamArb = fc.record({
    values: fc.array(fc.float({ min: -1000, max: 1000, noNaN: true }), { minLength: 15, maxLength: 15 }),
    dtype: fc.constantFrom<'float32' | 'float16'>('float32', 'float16'),
    chunkBytes: fc.integer({ min: 2, max: 64 }),
    mutation: fc.constantFrom(...MUTATIONS),
    at: fc.nat(40),
    element: fc.nat(40),
    nan: fc.boolean(),
  });

  it('the tensor decoder accepts a valid stream with nothing wrong, and refuses it with any one thing wrong', () => {
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(streamArb, ({ values, dtype, chunkBytes, mutation, at, element, nan }) => {
        const v = Float32Array.from(values);
        const intact = encodeTensor('w', v, expectedShape, dtype, chunkBytes);
        const chunks = mutate(intact, mutation, at, element, nan);
        let decoded: Float32Array | undefined;
        try {
          decoded = decodeTensor(chunks, { name: 'w', shape: expectedShape }, limits);
        } catch (e) {
          expect(decodeRefusal(e), String(e)).toBe(true);
          expect(mutation, `refused an intact stream: ${String(e)}`).not.toBe('none');
          seen.refused++;
          return;
        }
        expect(mutation, `accepted a stream with its '${mutation}' mutation`).toBe('none');
        const exact =
          dtype === 'float32'
            ? Array.from(v)
            : Array.from(decodeTensor(intact, { name: 'w', shape: expectedShape }, limits));
        expect(Array.from(decoded)).toEqual(exact);
        if (dtype === 'float16')
          decoded.forEach((x, i) => expect(Math.abs(x - v[i])).toBeLessThanOrEqual(Math.abs(v[i]) / 1024 + 1e-4));
        seen.accepted++;
      }),
      { numRuns: 1500 },
    );
    // Both branches ran, many times (about one case in twelve is intact).
    expect(seen.accepted).toBeGreaterThan(50);
    expect(seen.refused).toBeGreaterThan(1000);
  });

  it('the upload reader accepts exactly the uploads that carry every expected tensor once, intact', () => {
    const specs = new Map([
      ['w', { name: 'w', shape: expectedShape }],
      ['v', { name: 'v', shape: [2] }],
    ]);
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(
        streamArb,
        fc.constantFrom('none', 'omit v', 'v twice', 'announce 1', 'announce 3', 'v inside w'),
        ({ values, dtype, chunkBytes, mutation, at, element, nan }, upload) => {
          const w = mutate(
            encodeTensor('w', Float32Array.from(values), expectedShape, dtype, chunkBytes),
            mutation,
            at,
            element,
            nan,
          );
          const v = encodeTensor('v', Float32Array.of(1, -2), [2], dtype, 4);
          let stream = [...w, ...v];
          let announced = 2;
          if (upload === 'omit v') stream = w;
          if (upload === 'v twice') stream = [...w, ...v, ...v];
          if (upload === 'announce 1') announced = 1;
          if (upload === 'announce 3') announced = 3;
          if (upload === 'v inside w') stream = w.length > 1 ? [w[0], ...v, ...w.slice(1)] : [...w, ...v, ...v];
          const reader = new UploadReader((name) => specs.get(name));
          let out: Map<string, Float32Array>;
          try {
            for (const c of stream) reader.add(toProtoChunk(c));
            out = reader.finish(['w', 'v'], announced);
          } catch (e) {
            expect(decodeRefusal(e), String(e)).toBe(true);
            expect([mutation, upload], `refused an intact upload: ${String(e)}`).not.toEqual(['none', 'none']);
            seen.refused++;
            return;
          }
          expect([mutation, upload], 'accepted a damaged upload').toEqual(['none', 'none']);
          expect([...out.keys()].sort()).toEqual(['v', 'w']);
          expect(Array.from(out.get('v')!)).toEqual([1, -2]);
          seen.accepted++;
        },
      ),
      { numRuns: 1500 },
    );
    expect(seen.accepted).toBeGreaterThan(5);
    expect(seen.refused).toBeGreaterThan(1000);
  });

  // Paths built from the pieces that matter ('..', '.', names that start with dots, a sibling whose
  // name extends the root's), judged against segment arithmetic done here by hand.
  const ROOT = '/nonexistent-tricaps/data';
  const insideByHand = (path: string): boolean => {
    const stack: string[] = [];
    for (const seg of path.split('/')) {
      if (seg === '' || seg === '.') continue;
      if (seg === '..') stack.pop();
      else stack.push(seg);
    }
    return stack.length >= 2 && stack[0] === 'nonexistent-tricaps' && stack[1] === 'data';
  };

  it('paths: step names and confinement', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }), (s) => {
        if (isStepDirName(s)) expect(s).toMatch(/^step-\d{8}$/);
      }),
      { numRuns: 500 },
    );
    const seen = { inside: 0, outside: 0 };
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom('..', '.', '', 'data', 'database', '..hidden', '...', 'a', 'nonexistent-tricaps'), {
          maxLength: 6,
        }),
        (segs) => {
          const path = `${ROOT}/${segs.join('/')}`;
          const inside = insideByHand(path);
          seen[inside ? 'inside' : 'outside']++;
          if (inside) expect(() => assertInside(ROOT, path, '--data-root'), path).not.toThrow();
          else expect(() => assertInside(ROOT, path, '--data-root'), path).toThrow(/outside --data-root/);
        },
      ),
      { numRuns: 1000 },
    );
    expect(seen.inside).toBeGreaterThan(300);
    expect(seen.outside).toBeGreaterThan(30); // about one case in nine leaves the root
    expect(() => assertInside('/srv/data', '/srv/data/inshop', '--data-root')).not.toThrow();
    expect(() => assertInside('/srv/data', '/srv/database', '--data-root')).toThrow(
      /\/srv\/database is outside --data-root \/srv\/data/,
    );
  });
});
