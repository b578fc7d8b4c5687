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
import { decodeTensor, encodeTensor, TensorDecodeError } from '../../src/shared/tensor-codec.js';
import { fromProtoChunk } from '../../src/shared/wire.js';
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

  it('paths: step names and confinement', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }), (s) => {
        if (isStepDirName(s)) expect(s).toMatch(/^step-\d{8}$/);
        expect(() => assertInside('/srv/data', `/srv/data/../${s.replace(/\//g, '')}x`, '--data-root')).toThrow(
          /outside --data-root/,
        );
      }),
      { numRuns: 500 },
    );
    expect(() => assertInside('/srv/data', '/srv/data/inshop', '--data-root')).not.toThrow();
    expect(() => assertInside('/srv/data', '/srv/database', '--data-root')).toThrow(
      /\/srv\/database is outside --data-root \/srv\/data/,
    );
  });
});
