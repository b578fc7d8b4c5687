// Tensors <-> chunks of raw little-endian bytes, for streaming over gRPC (grpc-js rejects messages
// over 4 MB by default). float32 travels as is; float16 halves the bytes and is widened back to
// float32 for accumulation. Decoding validates everything it is given: a chunk stream must describe
// one tensor of the expected size, in order, with no gaps, overlaps or non-finite values.

export type WireDType = 'float32' | 'float16';

export interface EncodedChunk {
  name: string;
  dtype: WireDType;
  shape: number[];
  chunkIndex: number;
  chunkCount: number;
  /** Index of the first element carried by this chunk. */
  offset: number;
  data: Uint8Array;
}

/** Default chunk payload: well under grpc-js's 4 MB message limit. */
export const DEFAULT_CHUNK_BYTES = 1 << 20;

const bytesPer = (dtype: WireDType) => (dtype === 'float32' ? 4 : 2);
// On little-endian hosts (all we run on) float32 chunks are plain byte copies; elsewhere DataView.
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
let LITTLE_ENDIAN = HOST_LITTLE_ENDIAN;

/**
 * For tests: 'portable' makes the codec take the DataView path a big-endian host would (so that path
 * is exercised on the little-endian machines we have); 'host' restores the host's own.
 */
export function useCodecPath(path: 'host' | 'portable'): void {
  LITTLE_ENDIAN = path === 'host' && HOST_LITTLE_ENDIAN;
}

// float32 <-> float16 (IEEE 754 binary16), round to nearest even.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function toHalf(value: number): number {
  f32[0] = value;
  return halfBits(u32[0]);
}

/** float32 bits -> float16 bits, round to nearest even. */
function halfBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow -> 0
    mant |= 0x800000;
    const shift = 14 - e;
    const half = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rest > mid || (rest === mid && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
}

export function fromHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * Splits a tensor into chunks. With copy: false, float32 chunks on little-endian hosts are views of
 * `values` (no copy): the caller must not change `values` until the chunks have been sent.
 */
export function encodeTensor(
  name: string,
  values: Float32Array,
  shape: number[],
  dtype: WireDType = 'float32',
  chunkBytes = DEFAULT_CHUNK_BYTES,
  opts: { copy?: boolean } = {},
): EncodedChunk[] {
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== values.length) throw new Error(`tensor ${name}: ${values.length} values for shape [${shape}]`);
  const per = bytesPer(dtype);
  const perChunk = Math.max(1, Math.floor(chunkBytes / per));
  const chunkCount = Math.max(1, Math.ceil(size / perChunk));
  const chunks: EncodedChunk[] = [];
  for (let c = 0; c < chunkCount; c++) {
    const start = c * perChunk;
    const end = Math.min(size, start + perChunk);
    let data: Uint8Array;
    if (dtype === 'float32' && LITTLE_ENDIAN) {
      const view = new Uint8Array(values.buffer, values.byteOffset + start * 4, (end - start) * 4);
      data = opts.copy === false ? view : view.slice();
    } else if (LITTLE_ENDIAN) {
      // float16: straight from the float32 bits into a 16-bit array.
      const bits = new Uint32Array(values.buffer, values.byteOffset + start * 4, end - start);
      const half = new Uint16Array(end - start);
      for (let i = 0; i < half.length; i++) half[i] = halfBits(bits[i]);
      data = new Uint8Array(half.buffer);
    } else {
      data = new Uint8Array((end - start) * per);
      const view = new DataView(data.buffer);
      for (let i = start; i < end; i++) {
        if (dtype === 'float32') view.setFloat32((i - start) * 4, values[i], true);
        else view.setUint16((i - start) * 2, toHalf(values[i]), true);
      }
    }
    chunks.push({ name, dtype, shape: [...shape], chunkIndex: c, chunkCount, offset: start, data });
  }
  return chunks;
}

/** Every float16 bit pattern widened to float32 (decoding is a table lookup). */
const HALF_TO_FLOAT = Float32Array.from({ length: 65536 }, (_, h) => fromHalf(h));

/** Index of the first NaN or infinity, or -1. One multiply-add pass (x * 0 is NaN only for them). */
export function firstNonFinite(values: Float32Array): number {
  let probe = 0;
  for (let i = 0; i < values.length; i++) probe += values[i] * 0;
  return probe === 0 ? -1 : values.findIndex((v) => !Number.isFinite(v));
}

export class TensorDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TensorDecodeError';
  }
}

export interface DecodeLimits {
  /** Largest tensor accepted, in elements. */
  maxElements: number;
  /** Largest number of chunks accepted for one tensor. */
  maxChunks: number;
}

/**
 * Reassembles one tensor from its chunks (in order) and checks it against the expected shape.
 * Throws TensorDecodeError naming the problem; never returns a partial or non-finite tensor.
 */
export function decodeTensor(
  chunks: EncodedChunk[],
  expected: { name: string; shape: number[] },
  limits: DecodeLimits,
  into?: Float32Array,
): Float32Array {
  const fail = (why: string): never => {
    throw new TensorDecodeError(`tensor ${expected.name}: ${why}`);
  };
  if (chunks.length === 0) fail('no chunks');
  if (chunks.length > limits.maxChunks) fail(`${chunks.length} chunks, more than the limit of ${limits.maxChunks}`);
  const first = chunks[0];
  const size = expected.shape.reduce((a, b) => a * b, 1);
  if (size > limits.maxElements) fail(`${size} elements, more than the limit of ${limits.maxElements}`);
  if (first.shape.length !== expected.shape.length || first.shape.some((d, i) => d !== expected.shape[i]))
    fail(`shape [${first.shape}] where [${expected.shape}] was expected`);
  if (first.dtype !== 'float32' && first.dtype !== 'float16') fail(`unknown dtype ${String(first.dtype)}`);
  if (first.chunkCount !== chunks.length) fail(`${chunks.length} chunks received, ${first.chunkCount} announced`);
  const per = bytesPer(first.dtype);
  const out = into && into.length === size ? into : new Float32Array(size);
  let next = 0;
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i];
    if (c.name !== expected.name) fail(`chunk ${i} belongs to tensor ${c.name}`);
    if (
      c.dtype !== first.dtype ||
      c.chunkCount !== first.chunkCount ||
      c.shape.length !== first.shape.length ||
      c.shape.some((d, k) => d !== first.shape[k])
    )
      fail(`chunk ${i} disagrees with chunk 0 on dtype, shape or count`);
    if (c.chunkIndex !== i) fail(`chunk ${c.chunkIndex} arrived in position ${i}`);
    if (c.offset !== next) fail(`chunk ${i} starts at element ${c.offset}, expected ${next} (gap or overlap)`);
    if (c.data.byteLength % per !== 0)
      fail(`chunk ${i} has ${c.data.byteLength} bytes, not a whole number of ${first.dtype} values`);
    const count = c.data.byteLength / per;
    if (next + count > size) fail(`chunk ${i} runs past the end of the tensor`);
    if (per === 4 && LITTLE_ENDIAN) {
      new Uint8Array(out.buffer, out.byteOffset + next * 4, c.data.byteLength).set(c.data);
    } else if (LITTLE_ENDIAN) {
      const aligned = c.data.byteOffset % 2 === 0 ? c.data : c.data.slice();
      const half = new Uint16Array(aligned.buffer, aligned.byteOffset, count);
      for (let k = 0; k < count; k++) out[next + k] = HALF_TO_FLOAT[half[k]];
    } else {
      const view = new DataView(c.data.buffer, c.data.byteOffset, c.data.byteLength);
      for (let k = 0; k < count; k++)
        out[next + k] = per === 4 ? view.getFloat32(k * 4, true) : HALF_TO_FLOAT[view.getUint16(k * 2, true)];
    }
    next += count;
  }
  const bad = firstNonFinite(out);
  if (bad >= 0) fail(`non-finite value ${out[bad]} at element ${bad}`);
  if (next !== size) fail(`${next} of ${size} elements received`);
  return out;
}
