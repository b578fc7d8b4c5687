// Serializers for the messages that carry tensor bytes (weights down; gradients, embeddings and ring
// slices up; ring hops between workers). The generated ts-proto encoders copy a 1 MB payload four to five times (writer
// growth, fork/join, finish, Buffer.from); these write the same protobuf bytes with one copy: the
// small fields through the generated encoders, then the payload field appended by hand. A test
// checks they are byte-identical to the generated ones; decoding stays generated.
import {
  FetchWeightsResponse,
  FleetServiceService,
  HopRequest,
  PeerServiceService,
  PushEmbeddingsRequest,
  PushGradientsRequest,
  PushSliceRequest,
  TensorChunk,
} from './gen/tricaps/v1/fleet.js';

const LEN = 2; // protobuf wire type for length-delimited fields
const TENSOR_CHUNK_DATA_FIELD = 7;

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

/** Bytes of `prefix` + field `field` holding `chunk` (a TensorChunk), payload copied once. */
function encodeWithChunk(prefix: Uint8Array, field: number, chunk: TensorChunk): Buffer {
  const head = TensorChunk.encode({ ...chunk, data: Buffer.alloc(0) }).finish();
  const data = chunk.data;
  const dataPart = data.length ? 1 + varintSize(data.length) + data.length : 0;
  const body = head.length + dataPart;
  const tag = (field << 3) | LEN;
  const total = prefix.length + varintSize(tag) + varintSize(body) + body;
  const out = Buffer.allocUnsafe(total);
  out.set(prefix, 0);
  let pos = writeVarint(out, prefix.length, tag);
  pos = writeVarint(out, pos, body);
  out.set(head, pos);
  pos += head.length;
  if (data.length) {
    pos = writeVarint(out, pos, (TENSOR_CHUNK_DATA_FIELD << 3) | LEN);
    pos = writeVarint(out, pos, data.length);
    out.set(data, pos);
  }
  return out;
}

export function serializePushGradients(m: PushGradientsRequest): Buffer {
  return m.chunk
    ? encodeWithChunk(new Uint8Array(0), 2, m.chunk)
    : Buffer.from(PushGradientsRequest.encode(m).finish());
}

export function serializePushEmbeddings(m: PushEmbeddingsRequest): Buffer {
  return m.chunk
    ? encodeWithChunk(new Uint8Array(0), 2, m.chunk)
    : Buffer.from(PushEmbeddingsRequest.encode(m).finish());
}

export function serializePushSlice(m: PushSliceRequest): Buffer {
  return m.chunk ? encodeWithChunk(new Uint8Array(0), 2, m.chunk) : Buffer.from(PushSliceRequest.encode(m).finish());
}

export function serializeHop(m: HopRequest): Buffer {
  return m.chunk ? encodeWithChunk(new Uint8Array(0), 2, m.chunk) : Buffer.from(HopRequest.encode(m).finish());
}

/**
 * A message serialized ahead of time: every download of one weights version sends the same bytes,
 * so they are encoded once per version instead of once per worker. grpc-js copies a message into
 * its frame as it is written, so one buffer serves any number of calls; nobody may change it.
 */
export class PreSerialized {
  constructor(readonly bytes: Buffer) {}
}

export function serializeFetchWeights(m: FetchWeightsResponse | PreSerialized): Buffer {
  if (m instanceof PreSerialized) return m.bytes;
  if (!m.chunk) return Buffer.from(FetchWeightsResponse.encode(m).finish());
  return encodeWithChunk(FetchWeightsResponse.encode({ ...m, chunk: undefined }).finish(), 3, m.chunk);
}

/** The generated service definition with the bulk messages' serializers swapped in. */
export const FastFleetServiceDefinition = {
  ...FleetServiceService,
  fetchWeights: { ...FleetServiceService.fetchWeights, responseSerialize: serializeFetchWeights },
  pushGradients: { ...FleetServiceService.pushGradients, requestSerialize: serializePushGradients },
  pushEmbeddings: { ...FleetServiceService.pushEmbeddings, requestSerialize: serializePushEmbeddings },
  pushSlice: { ...FleetServiceService.pushSlice, requestSerialize: serializePushSlice },
} as typeof FleetServiceService;

export const FastPeerServiceDefinition = {
  ...PeerServiceService,
  hop: { ...PeerServiceService.hop, requestSerialize: serializeHop },
} as typeof PeerServiceService;
