import { describe, expect, it } from 'vitest';
import {
  decodeTensor,
  encodeTensor,
  fromHalf,
  toHalf,
  useCodecPath,
  type EncodedChunk,
} from '../../src/shared/tensor-codec.js';
import { shardBatch } from '../../src/shared/plan/step-plan.js';
import { meanOf, weightedAverage } from '../../src/shared/plan/average.js';
import { samplePkBatch } from '../../src/shared/data/pk-sampler.js';
import { Rng } from '../../src/shared/rng.js';

const limits = { maxElements: 1 << 24, maxChunks: 1024 };
const values = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 10);

describe('tensor codec', () => {
  it('round-trips float32 exactly in chunks under the size limit', () => {
    const chunks = encodeTensor('w', values, [10, 100], 'float32', 1024);
    expect(chunks).toHaveLength(4);
    for (const c of chunks) expect(c.data.byteLength).toBeLessThanOrEqual(1024);
    expect(Array.from(decodeTensor(chunks, { name: 'w', shape: [10, 100] }, limits))).toEqual(Array.from(values));
  });

  it('float16 halves the bytes and keeps ~3 significant digits', () => {
    const chunks = encodeTensor('w', values, [1000], 'float16', 1 << 20);
    expect(chunks[0].data.byteLength).toBe(2000);
    const back = decodeTensor(chunks, { name: 'w', shape: [1000] }, limits);
    back.forEach((v, i) => expect(Math.abs(v - values[i])).toBeLessThanOrEqual(Math.abs(values[i]) * 1e-3 + 1e-6));
    for (const x of [0, 1, -2.5, 65504, 6.1e-5, 1e-7]) expect(fromHalf(toHalf(x))).toBeCloseTo(x, 3);
    // Subnormals, exactly: steps of 2^-24, rounded to nearest.
    expect(toHalf(6.1e-5)).toBe(0x03ff);
    expect(toHalf(1e-7)).toBe(0x0002);
    expect(fromHalf(0x03ff)).toBe(1023 * 2 ** -24);
    expect(fromHalf(0x8002)).toBe(-2 * 2 ** -24);
    expect(fromHalf(toHalf(1e6))).toBe(Infinity);
  });

  const good = () => encodeTensor('w', values, [1000], 'float32', 1024);
  it.each<[string, (c: EncodedChunk[]) => EncodedChunk[], RegExp]>([
    ['no chunks', () => [], /no chunks/],
    ['a missing chunk', (c) => c.slice(0, 3), /3 chunks received, 4 announced/],
    ['chunks out of order', (c) => [c[1], c[0], c[2], c[3]], /chunk 1 arrived in position 0/],
    ['a wrong shape', (c) => c.map((x) => ({ ...x, shape: [999] })), /shape \[999\] where \[1000\] was expected/],
    ['another tensor', (c) => [c[0], { ...c[1], name: 'v' }, c[2], c[3]], /chunk 1 belongs to tensor v/],
    ['a gap', (c) => [c[0], { ...c[1], offset: c[1].offset + 1 }, c[2], c[3]], /gap or overlap/],
    [
      'a torn value',
      (c) => [c[0], { ...c[1], data: c[1].data.subarray(0, 1021) }, c[2], c[3]],
      /not a whole number of float32 values/,
    ],
    [
      'a NaN',
      (c) => {
        const d = new Uint8Array(c[0].data);
        new DataView(d.buffer).setFloat32(8, Number.NaN, true);
        return [{ ...c[0], data: d }, ...c.slice(1)];
      },
      /non-finite value NaN at element 2/,
    ],
    ['too many chunks', (c) => c, /4 chunks, more than the limit of 2/],
  ])('rejects %s', (label, breakIt, message) => {
    const lim = label === 'too many chunks' ? { ...limits, maxChunks: 2 } : limits;
    expect(() => decodeTensor(breakIt(good()), { name: 'w', shape: [1000] }, lim)).toThrow(message);
  });

  it('refuses to encode values that do not fill the shape, or decode an unknown dtype', () => {
    expect(() => encodeTensor('w', values, [3, 3])).toThrow(/1000 values for shape \[3,3\]/);
    expect(() =>
      decodeTensor(
        good().map((c) => ({ ...c, dtype: 'int8' as never })),
        { name: 'w', shape: [1000] },
        limits,
      ),
    ).toThrow(/unknown dtype int8/);
  });

  it('rejects a tensor larger than the element limit before reading it', () => {
    expect(() => decodeTensor(good(), { name: 'w', shape: [1000] }, { maxElements: 100, maxChunks: 10 })).toThrow(
      /1000 elements, more than the limit of 100/,
    );
  });
});

describe('float16 rounding (IEEE 754 binary16, round to nearest even)', () => {
  const f = new Float32Array(1);
  const bits = new Uint32Array(f.buffer);
  /** The float32 next to x towards +inf (x > 0) or towards 0 (step -1). */
  const neighbour = (x: number, step: 1 | -1) => {
    f[0] = x;
    bits[0] += step;
    return f[0];
  };

  it('every finite half maps back to itself; halfway between two goes to the even one, either side to the nearer', () => {
    const bad: string[] = [];
    for (let h = 0; h < 0x7bff; h++) {
      const [a, b] = [fromHalf(h), fromHalf(h + 1)];
      const mid = (a + b) / 2;
      expect(Math.fround(mid)).toBe(mid); // a half's midpoints are float32 values
      const even = h % 2 === 0 ? h : h + 1;
      const got = [toHalf(a), toHalf(mid), toHalf(neighbour(mid, -1)), toHalf(neighbour(mid, 1)), toHalf(-mid)];
      const want = [h, even, h, h + 1, even | 0x8000];
      if (got.some((g, i) => g !== want[i])) bad.push(`${h}: got ${got} want ${want}`);
      if (bad.length > 5) break;
    }
    expect(bad).toEqual([]);
    expect(toHalf(fromHalf(0x7bff))).toBe(0x7bff);
  });

  it('overflows to infinity from the midpoint above the largest half, underflows to signed zero, keeps NaN a NaN', () => {
    expect(toHalf(65504)).toBe(0x7bff);
    expect(toHalf(65520)).toBe(0x7c00); // halfway to 2^16: the even neighbour is infinity
    expect(toHalf(neighbour(65520, -1))).toBe(0x7bff);
    expect(toHalf(1e5)).toBe(0x7c00); // exponent 16: the first one past the largest half's
    expect(toHalf(-70000)).toBe(0xfc00);
    expect(toHalf(1e30)).toBe(0x7c00);
    expect(toHalf(-1e30)).toBe(0xfc00);
    expect(toHalf(Infinity)).toBe(0x7c00);
    expect(toHalf(-Infinity)).toBe(0xfc00);
    expect(toHalf(NaN)).toBe(0x7e00);
    expect(toHalf(2 ** -25)).toBe(0); // halfway to the smallest subnormal: even is zero
    expect(toHalf(neighbour(2 ** -25, 1))).toBe(1);
    expect(toHalf(2 ** -40)).toBe(0);
    expect(toHalf(-(2 ** -40))).toBe(0x8000);
    expect(toHalf(2 ** -14)).toBe(0x0400); // the smallest normal
    expect(toHalf(neighbour(2 ** -14, -1))).toBe(0x0400); // rounds up into it
  });
});

describe('tensor codec edges', () => {
  const spec = { name: 'w', shape: [3, 5] };
  const small = Float32Array.from({ length: 15 }, (_, i) => i - 7.25);
  const chunks = (dtype: 'float32' | 'float16' = 'float32') => encodeTensor('w', small, [3, 5], dtype, 16);

  it("the portable path (a big-endian host's) writes the same bytes and reads the same values", () => {
    // Every value of `small` is exact in float16 too: both dtypes must decode to it exactly.
    const expected = Array.from(small);
    const unaligned = (cs: ReturnType<typeof chunks>) =>
      cs.map((c) => {
        const shifted = new Uint8Array(c.data.length + 1);
        shifted.set(c.data, 1);
        return { ...c, data: shifted.subarray(1) };
      });
    const host = (['float32', 'float16'] as const).map((d) => chunks(d));
    for (const cs of [...host, unaligned(host[1])])
      expect(Array.from(decodeTensor(cs, spec, limits))).toEqual(expected);
    // The host's float32 chunks can be views of the values; the portable path always writes its own.
    const isView = () =>
      encodeTensor('w', small, [3, 5], 'float32', 1 << 20, { copy: false })[0].data.buffer === small.buffer;
    expect(isView()).toBe(true);
    useCodecPath('portable');
    try {
      expect(isView()).toBe(false);
      for (const [i, dtype] of (['float32', 'float16'] as const).entries()) {
        const portable = chunks(dtype);
        expect(portable.map((c) => Array.from(c.data))).toEqual(host[i].map((c) => Array.from(c.data)));
        // Each path reads the other's chunks, unaligned bytes too.
        for (const cs of [portable, host[i], unaligned(portable)])
          expect(Array.from(decodeTensor(cs, spec, limits))).toEqual(expected);
      }
    } finally {
      useCodecPath('host');
    }
    expect(isView()).toBe(true);
  });

  it('takes exactly the chunk limit, and decodes into the array given when it fits', () => {
    const c = chunks(); // 4 chunks of at most 4 values
    expect(c).toHaveLength(4);
    expect(Array.from(decodeTensor(c, spec, { maxElements: 15, maxChunks: 4 }))).toEqual(Array.from(small));
    expect(() => decodeTensor(c, spec, { maxElements: 15, maxChunks: 3 })).toThrow(
      /4 chunks, more than the limit of 3/,
    );
    const into = new Float32Array(15);
    expect(decodeTensor(c, spec, limits, into)).toBe(into);
    const wrong = new Float32Array(14);
    expect(decodeTensor(c, spec, limits, wrong)).not.toBe(wrong);
  });

  it('refuses a shape that differs in one dimension, and a later chunk that disagrees with the first in any one thing', () => {
    const c = chunks();
    const with1 = (change: Partial<EncodedChunk>) => c.map((x, i) => (i === 1 ? { ...x, ...change } : x));
    expect(() =>
      decodeTensor(
        c.map((x) => ({ ...x, shape: [3, 6] })),
        spec,
        limits,
      ),
    ).toThrow(/shape \[3,6\] where \[3,5\] was expected/);
    // A shape that is a prefix of the expected one (all its dimensions agree, one is missing).
    expect(() =>
      decodeTensor(
        c.map((x) => ({ ...x, shape: [3] })),
        spec,
        limits,
      ),
    ).toThrow(/shape \[3\] where \[3,5\] was expected/);
    for (const change of [
      { shape: [3, 6] },
      { shape: [3, 5, 1] },
      { shape: [3] },
      { chunkCount: 5 },
      { dtype: 'float16' as const },
    ])
      expect(() => decodeTensor(with1(change), spec, limits), JSON.stringify(change)).toThrow(
        /chunk 1 disagrees with chunk 0 on dtype, shape or count/,
      );
    const last = c.length - 1;
    const grown = c.map((x, i) => (i === last ? { ...x, data: new Uint8Array([...x.data, 0, 0, 0, 0]) } : x));
    expect(() => decodeTensor(grown, spec, limits)).toThrow(/chunk 3 runs past the end of the tensor/);
  });
});

describe('step plan', () => {
  const items = new Map<number, number[]>(Array.from({ length: 20 }, (_, i) => [i, [i * 10, i * 10 + 1, i * 10 + 2]]));
  const batch = samplePkBatch({ seed: 1, epoch: 0, step: 0, itemsPerBatch: 7, imagesPerItem: 3, items });

  it('gives every worker whole items, every image exactly once, sizes within one item', () => {
    for (const n of [1, 2, 3, 7]) {
      const shards = shardBatch(
        batch,
        Array.from({ length: n }, (_, i) => `w${i}`),
      );
      expect(shards.flatMap((s) => s.imageIds).sort((a, b) => a - b)).toEqual(
        [...batch.imageIds].sort((a, b) => a - b),
      );
      const itemsPerShard = shards.map((s) => new Set(s.itemIds).size);
      expect(Math.max(...itemsPerShard) - Math.min(...itemsPerShard)).toBeLessThanOrEqual(1);
      for (const s of shards)
        for (const item of new Set(s.itemIds)) expect(s.itemIds.filter((x) => x === item)).toHaveLength(3);
      const owners = new Map<number, string>();
      for (const s of shards)
        for (const item of s.itemIds) expect(owners.get(item) ?? (owners.set(item, s.worker), s.worker)).toBe(s.worker);
    }
  });

  it('keeps an affinity group on one worker when it fits', () => {
    const ids = [...new Set(batch.itemIds)];
    const affinity = new Map([
      [ids[0], 1],
      [ids[4], 1],
      [ids[6], 1],
    ]);
    const shards = shardBatch(batch, ['a', 'b', 'c'], affinity);
    const owner = shards.find((s) => s.itemIds.includes(ids[0]))!;
    expect(owner.itemIds).toContain(ids[4]);
    expect(owner.itemIds).toContain(ids[6]);
  });

  // A batch of items 0..n-1 in that order, two images each (item i: images 10i, 10i+1).
  const plain = (n: number) => ({
    imageIds: Array.from({ length: n }, (_, i) => [10 * i, 10 * i + 1]).flat(),
    itemIds: Array.from({ length: n }, (_, i) => [i, i]).flat(),
  });
  const itemsOf = (shards: { itemIds: number[] }[]) => shards.map((s) => [...new Set(s.itemIds)]);

  it('deals single items round-robin in batch order, and keeps images with their item', () => {
    const shards = shardBatch(plain(7), ['a', 'b', 'c']);
    expect(itemsOf(shards)).toEqual([
      [0, 3, 6],
      [1, 4],
      [2, 5],
    ]);
    expect(shards[1]).toEqual({ worker: 'b', imageIds: [10, 11, 40, 41], itemIds: [1, 1, 4, 4] });
  });

  it('places the biggest group first, splits a group above a fair share, and lists items in batch order', () => {
    // Items 0..8; group 7 holds 1,2,3,5,6,7,8 (seven items, above the fair share of 3 per shard).
    const affinity = new Map([1, 2, 3, 5, 6, 7, 8].map((item) => [item, 7]));
    expect(itemsOf(shardBatch(plain(9), ['a', 'b', 'c'], affinity))).toEqual([
      [1, 2, 3],
      [5, 6, 7],
      [0, 4, 8],
    ]);
    // Two groups of two and a single: the groups go first, to the emptiest shard; the single last.
    const pairs = new Map([
      [3, 1],
      [4, 1],
      [1, 0],
      [2, 0],
    ]);
    expect(itemsOf(shardBatch(plain(5), ['a', 'b'], pairs))).toEqual([
      [0, 1, 2],
      [3, 4],
    ]);
    // Items outside the affinity never join a group, whatever the group's key.
    const small = new Map([[2, 1]]);
    expect(itemsOf(shardBatch(plain(4), ['a', 'b'], small))).toEqual([
      [0, 2],
      [1, 3],
    ]);
  });

  it('is deterministic and refuses bad worker lists', () => {
    expect(shardBatch(batch, ['a', 'b'])).toEqual(shardBatch(batch, ['a', 'b']));
    expect(() => shardBatch(batch, [])).toThrow(/no workers/);
    expect(() => shardBatch(batch, ['a', 'a'])).toThrow(/duplicate worker names/);
  });
});

describe('gradient averaging', () => {
  it('weighting shard means by triplet counts gives the mean over all triplets', () => {
    // Per-triplet "gradients" g_t; a shard reports the mean of its triplets' gradients.
    const rng = new Rng(3);
    const perTriplet = Array.from({ length: 10 }, () => Float32Array.from({ length: 5 }, () => rng.normal()));
    const mean = (xs: Float32Array[]) =>
      xs.reduce((acc, x) => acc.map((v, i) => v + x[i] / xs.length), new Float32Array(5));
    const split = [perTriplet.slice(0, 3), perTriplet.slice(3, 10), []];
    const shards = split.map((ts) => ({ triplets: ts.length, grads: new Map(ts.length ? [['w', mean(ts)]] : []) }));
    const { grads, triplets } = weightedAverage(shards);
    expect(triplets).toBe(10);
    Array.from(grads.get('w')!).forEach((v, i) => expect(v).toBeCloseTo(mean(perTriplet)[i], 5));
  });

  it('writes into the arrays it is given when they fit, overwriting what they held; allocates when not', () => {
    const shards = [
      {
        triplets: 1,
        grads: new Map([
          ['w', Float32Array.of(4, 8)],
          ['b', Float32Array.of(1)],
        ]),
      },
      {
        triplets: 3,
        grads: new Map([
          ['w', Float32Array.of(0, 4)],
          ['b', Float32Array.of(5)],
        ]),
      },
    ];
    const reused = Float32Array.of(99, 99); // last step's values: none may leak into this one
    const wrongSize = Float32Array.of(99, 99, 99);
    const { grads } = weightedAverage(
      shards,
      new Map([
        ['w', reused],
        ['b', wrongSize],
      ]),
    );
    expect(grads.get('w')).toBe(reused);
    expect(Array.from(reused)).toEqual([1, 5]); // (4 + 0 x 3) / 4, (8 + 4 x 3) / 4
    expect(grads.get('b')).not.toBe(wrongSize);
    expect(Array.from(grads.get('b')!)).toEqual([4]);
  });

  it('refuses empty or inconsistent input', () => {
    expect(() => weightedAverage([{ triplets: 0, grads: new Map() }])).toThrow(/no shard contributed/);
    expect(() =>
      weightedAverage([
        { triplets: 1, grads: new Map([['w', new Float32Array(2)]]) },
        { triplets: 1, grads: new Map() },
      ]),
    ).toThrow(/lacks gradient w/);
    expect(() =>
      weightedAverage([
        { triplets: 1, grads: new Map([['w', new Float32Array(2)]]) },
        { triplets: 1, grads: new Map([['w', new Float32Array(3)]]) },
      ]),
    ).toThrow(/3 values in one shard and 2/);
    expect(Array.from(meanOf([Float32Array.of(1, 2), Float32Array.of(3, 4)]))).toEqual([2, 3]);
    expect(() => meanOf([])).toThrow(/nothing to average/);
    expect(() => meanOf([Float32Array.of(1), Float32Array.of(1, 2)])).toThrow(/lengths/);
  });
});

describe('fast bulk serializers', () => {
  it('write exactly the bytes the generated encoders write', async () => {
    const { FetchWeightsResponse, HopRequest, PushEmbeddingsRequest, PushGradientsRequest, PushSliceRequest } =
      await import('../../src/shared/gen/tricaps/v1/fleet.js');
    const { serializeFetchWeights, serializeHop, serializePushEmbeddings, serializePushGradients, serializePushSlice } =
      await import('../../src/shared/wire-fast.js');
    const { toProtoChunk } = await import('../../src/shared/wire.js');
    const big = Float32Array.from({ length: 70_000 }, (_, i) => Math.cos(i));
    const chunks = [
      ...encodeTensor('block1/conv/kernel', big, [70_000], 'float32', 100_000, { copy: false }),
      ...encodeTensor('e', new Float32Array(0), [0]),
    ];
    for (const c of chunks.map(toProtoChunk)) {
      expect(
        Buffer.compare(
          serializePushGradients({ chunk: c }),
          Buffer.from(PushGradientsRequest.encode({ chunk: c }).finish()),
        ),
      ).toBe(0);
      expect(
        Buffer.compare(
          serializePushEmbeddings({ chunk: c }),
          Buffer.from(PushEmbeddingsRequest.encode({ chunk: c }).finish()),
        ),
      ).toBe(0);
      expect(
        Buffer.compare(serializePushSlice({ chunk: c }), Buffer.from(PushSliceRequest.encode({ chunk: c }).finish())),
      ).toBe(0);
      expect(Buffer.compare(serializeHop({ chunk: c }), Buffer.from(HopRequest.encode({ chunk: c }).finish()))).toBe(0);
      const w = { weightsVersion: 2 ** 40 + 3, tensorCount: 41, chunk: c };
      expect(Buffer.compare(serializeFetchWeights(w), Buffer.from(FetchWeightsResponse.encode(w).finish()))).toBe(0);
      expect(FetchWeightsResponse.decode(serializeFetchWeights(w))).toEqual(
        FetchWeightsResponse.decode(FetchWeightsResponse.encode(w).finish()),
      );
    }
    const header = {
      header: {
        run: { runId: 'r', round: 3, step: 9 },
        workerId: 'w1',
        contributingTriplets: 4,
        activeTriplets: 2,
        loss: 0.5,
        tensorCount: 2,
        shardIndexes: [1, 2],
        weightsVersion: 7,
        dataSeconds: 0.1,
        computeSeconds: 0.2,
        meanPositiveDistance: 0.5,
        meanNegativeDistance: 1.5,
      },
    };
    expect(
      Buffer.compare(serializePushGradients(header), Buffer.from(PushGradientsRequest.encode(header).finish())),
    ).toBe(0);
  });

  it('pass a pre-serialized weights message through unchanged (one encoding per version serves every worker)', async () => {
    const { PreSerialized, serializeFetchWeights } = await import('../../src/shared/wire-fast.js');
    const { toProtoChunk } = await import('../../src/shared/wire.js');
    const [c] = encodeTensor('w', Float32Array.of(1, 2, 3), [3]);
    const bytes = serializeFetchWeights({ weightsVersion: 5, tensorCount: 1, chunk: toProtoChunk(c) });
    const once = new PreSerialized(bytes);
    expect(serializeFetchWeights(once)).toBe(bytes);
    expect(serializeFetchWeights(once)).toBe(bytes);
  });

  it('finds the first non-finite value, or none', async () => {
    const { firstNonFinite } = await import('../../src/shared/tensor-codec.js');
    const v = Float32Array.from({ length: 1000 }, (_, i) => i - 500);
    expect(firstNonFinite(v)).toBe(-1);
    v[700] = Number.POSITIVE_INFINITY;
    v[900] = Number.NaN;
    expect(firstNonFinite(v)).toBe(700);
  });

  it('hands out views without copying when asked, copies by default', () => {
    const v = Float32Array.from([1, 2, 3, 4]);
    const view = encodeTensor('v', v, [4], 'float32', 8, { copy: false });
    const copy = encodeTensor('v', v, [4], 'float32', 8);
    v[0] = 9;
    expect(new Float32Array(view[0].data.slice().buffer)[0]).toBe(9);
    expect(new Float32Array(copy[0].data.slice().buffer)[0]).toBe(1);
  });
});

describe('float16 chunks', () => {
  it('decode the same from an odd byte offset (protobuf may hand out unaligned bytes)', () => {
    const v = Float32Array.from({ length: 257 }, (_, i) => Math.sin(i) * 100);
    const [c] = encodeTensor('h', v, [257], 'float16');
    const shifted = new Uint8Array(c.data.byteLength + 1);
    shifted.set(c.data, 1);
    const odd = { ...c, data: shifted.subarray(1) };
    expect(odd.data.byteOffset % 2).toBe(1);
    const limits2 = { maxElements: 1000, maxChunks: 4 };
    expect(Array.from(decodeTensor([odd], { name: 'h', shape: [257] }, limits2))).toEqual(
      Array.from(decodeTensor([c], { name: 'h', shape: [257] }, limits2)),
    );
    const back = decodeTensor([c], { name: 'h', shape: [257] }, limits2);
    back.forEach((x, i) => expect(x).toBe(fromHalf(toHalf(v[i]))));
  });
});
