// Codec chunks <-> generated protobuf messages (the only place that maps between the two).
import { type TensorChunk, WireDType } from './gen/tricaps/v1/fleet.js';
import type { EncodedChunk, WireDType as CodecDType } from './tensor-codec.js';
import { TensorDecodeError } from './tensor-codec.js';

export function toProtoDType(d: CodecDType): WireDType {
  return d === 'float32' ? WireDType.WIRE_D_TYPE_FLOAT32 : WireDType.WIRE_D_TYPE_FLOAT16;
}

export function toProtoChunk(c: EncodedChunk): TensorChunk {
  return {
    name: c.name,
    dtype: toProtoDType(c.dtype),
    shape: c.shape,
    chunkIndex: c.chunkIndex,
    chunkCount: c.chunkCount,
    offset: c.offset,
    data: Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength),
  };
}

export function fromProtoChunk(m: TensorChunk): EncodedChunk {
  let dtype: CodecDType;
  if (m.dtype === WireDType.WIRE_D_TYPE_FLOAT32) dtype = 'float32';
  else if (m.dtype === WireDType.WIRE_D_TYPE_FLOAT16) dtype = 'float16';
  else throw new TensorDecodeError(`tensor ${m.name}: unsupported wire dtype ${m.dtype}`);
  return {
    name: m.name,
    dtype,
    shape: m.shape,
    chunkIndex: m.chunkIndex,
    chunkCount: m.chunkCount,
    offset: m.offset,
    data: m.data,
  };
}
