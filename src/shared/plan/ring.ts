// The ring exchange's arithmetic, with no network: how a worker's contribution is laid out as one
// vector, how that vector is cut into slices, which slice each member sends and receives at each hop
// of a reduce-scatter and of an all-gather, and the header checks a receiver makes on every hop
// (values are checked finite by the tensor decoder). The peer
// transport moves these slices; tests run whole rings in memory against the central average.
//
// A contribution is one Float32Array: every gradient multiplied by the member's triplets (so that
// plain sums add up to the triplet-weighted sum), then the BatchNorm statistics multiplied by its
// shard count, then a tail of scalars (triplets, shards, loss and distance sums) that the same
// additions reduce. Dividing the reduced vector by its summed triplets (statistics: by its summed
// shards) gives what the central path's weighted averages give, up to float32 summation order.

export interface TensorSlot {
  name: string;
  size: number;
}

/** Scalars summed along with the tensors (each multiplied by nothing: they are already sums). */
export const RING_SCALARS = ['triplets', 'shards', 'activeTriplets', 'lossSum', 'positiveSum', 'negativeSum'] as const;
export type RingScalars = Record<(typeof RING_SCALARS)[number], number>;

export interface RingLayout {
  gradients: TensorSlot[];
  statistics: TensorSlot[];
  /** Total length: gradients, statistics, then the scalars. */
  length: number;
}

export function ringLayout(gradients: TensorSlot[], statistics: TensorSlot[]): RingLayout {
  const sum = (xs: TensorSlot[]) => xs.reduce((s, x) => s + x.size, 0);
  return { gradients, statistics, length: sum(gradients) + sum(statistics) + RING_SCALARS.length };
}

export interface MemberContribution {
  /** Triplet-weighted mean gradient per tensor (what a worker computes today). */
  grads: Map<string, Float32Array>;
  /** Mean over this member's shards of the BatchNorm statistics. */
  bnStats: Map<string, Float32Array>;
  triplets: number;
  shards: number;
  activeTriplets: number;
  /** Triplet-weighted means. */
  loss: number;
  meanPositiveDistance: number;
  meanNegativeDistance: number;
}

/** A member's contribution as one vector of sums (into `out` when given, reused across steps). */
export function packContribution(layout: RingLayout, c: MemberContribution, out?: Float32Array): Float32Array {
  const v = out && out.length === layout.length ? out : new Float32Array(layout.length);
  let at = 0;
  const put = (slots: TensorSlot[], values: Map<string, Float32Array>, weight: number, what: string) => {
    for (const s of slots) {
      const x = values.get(s.name);
      if (!x || x.length !== s.size)
        throw new Error(`packContribution: ${what} ${s.name} has ${x?.length ?? 'no'} values, the model ${s.size}`);
      for (let i = 0; i < x.length; i++) v[at + i] = weight * x[i];
      at += s.size;
    }
  };
  put(layout.gradients, c.grads, c.triplets, 'gradient');
  put(layout.statistics, c.bnStats, c.shards, 'statistic');
  const scalars: RingScalars = {
    triplets: c.triplets,
    shards: c.shards,
    activeTriplets: c.activeTriplets,
    lossSum: c.loss * c.triplets,
    positiveSum: c.meanPositiveDistance * c.triplets,
    negativeSum: c.meanNegativeDistance * c.triplets,
  };
  RING_SCALARS.forEach((k, i) => (v[at + i] = scalars[k]));
  return v;
}

/**
 * The reduced vector as the central path's averages: mean gradient, mean statistics, sums. Divides
 * `v` in place and returns views of it (no multi-megabyte copies on the coordinator's step).
 */
export function unpackReduced(
  layout: RingLayout,
  v: Float32Array,
): { grads: Map<string, Float32Array>; bnStats: Map<string, Float32Array>; scalars: RingScalars } {
  if (v.length !== layout.length) throw new Error(`unpackReduced: ${v.length} values, the layout has ${layout.length}`);
  const tail = layout.length - RING_SCALARS.length;
  const scalars = Object.fromEntries(RING_SCALARS.map((k, i) => [k, v[tail + i]])) as RingScalars;
  let at = 0;
  const take = (slots: TensorSlot[], divisor: number) =>
    new Map(
      slots.map((s) => {
        const x = v.subarray(at, at + s.size);
        for (let i = 0; i < x.length; i++) x[i] /= divisor;
        at += s.size;
        return [s.name, x] as const;
      }),
    );
  const grads = take(layout.gradients, scalars.triplets);
  const bnStats = take(layout.statistics, scalars.shards);
  return { grads, bnStats, scalars };
}

export interface Slice {
  index: number;
  offset: number;
  length: number;
}

/** Cuts length values into n slices whose sizes differ by at most one. */
export function sliceBounds(length: number, n: number): Slice[] {
  if (n < 1) throw new Error(`sliceBounds: ${n} slices`);
  const base = Math.floor(length / n);
  const extra = length % n;
  const out: Slice[] = [];
  let offset = 0;
  for (let i = 0; i < n; i++) {
    const len = base + (i < extra ? 1 : 0);
    out.push({ index: i, offset, length: len });
    offset += len;
  }
  return out;
}

const mod = (a: number, n: number) => ((a % n) + n) % n;

/**
 * Reduce-scatter, member `position` of n: at hop k (0..n-2) it sends its running sum of slice
 * `send` to its successor and adds what its predecessor sends of slice `receive`. After the last hop
 * it holds the complete sum of slice `ownedSlice(position)`. Slice s is summed in ring order starting
 * at member s, the same order every time for a given ring: results are deterministic.
 */
export function reduceScatterHops(position: number, n: number): { send: number; receive: number }[] {
  return Array.from({ length: n - 1 }, (_, k) => ({ send: mod(position - k, n), receive: mod(position - k - 1, n) }));
}

/** The slice a member holds complete after the reduce-scatter (and starts the all-gather with). */
export const ownedSlice = (position: number, n: number): number => mod(position + 1, n);

/** All-gather: at hop k the member forwards slice `send` and receives slice `receive`, complete. */
export function allGatherHops(position: number, n: number): { send: number; receive: number }[] {
  return Array.from({ length: n - 1 }, (_, k) => ({ send: mod(position + 1 - k, n), receive: mod(position - k, n) }));
}

/**
 * The slice a member receives at every hop of one ring step, by hop index: hops 0..n-2 all-gather
 * the weights (a vector of weightsLength), hops n-1..2n-3 reduce-scatter the contribution (length).
 */
export function ringStepReceives(position: number, n: number, weightsLength: number, length: number): Slice[] {
  const weights = sliceBounds(weightsLength, n);
  const sums = sliceBounds(length, n);
  return [
    ...allGatherHops(position, n).map((h) => weights[h.receive]),
    ...reduceScatterHops(position, n).map((h) => sums[h.receive]),
  ];
}

/** The hop index of the reduce-scatter's hop k (the all-gather's come first). */
export const reduceHopIndex = (k: number, n: number): number => n - 1 + k;

/** What a receiver knows a hop must be. */
export interface HopExpectation {
  run: string;
  round: number;
  step: number;
  /** The predecessor in this round's ring: the only member that may send to us. */
  from: string;
  hop: number;
  slice: Slice;
}

/** Why an incoming hop cannot be accepted (undefined: it can), naming the sender. */
export function checkHopHeader(
  got: {
    run: string;
    round: number;
    step: number;
    from: string;
    hop: number;
    slice: number;
    offset: number;
    length: number;
  },
  want: HopExpectation,
): string | undefined {
  if (got.run !== want.run) return `${got.from} sent a hop of run ${got.run}; this ring belongs to run ${want.run}`;
  if (got.from !== want.from)
    return `${got.from} is not this member's predecessor in round ${want.round} (${want.from} is)`;
  if (got.round !== want.round || got.step !== want.step)
    return `${got.from} sent a hop of step ${got.step} round ${got.round}; the ring is at step ${want.step} round ${want.round}`;
  if (got.hop !== want.hop) return `${got.from} sent hop ${got.hop} where hop ${want.hop} was due`;
  const s = want.slice;
  if (got.slice !== s.index || got.offset !== s.offset || got.length !== s.length)
    return `${got.from} sent slice ${got.slice} [${got.offset}, +${got.length}) where slice ${s.index} [${s.offset}, +${s.length}) was due`;
  return undefined;
}

/** acc += x, the ring's one arithmetic operation. */
export function addInto(acc: Float32Array, x: Float32Array): void {
  if (acc.length !== x.length) throw new Error(`addInto: ${x.length} values into ${acc.length}`);
  for (let i = 0; i < x.length; i++) acc[i] += x[i];
}

/**
 * A whole all-gather in memory: member i starts with only its owned slice of `full` (the rest NaN)
 * and forwards complete slices hop by hop. Returns every member's vector (each must equal `full`).
 */
export function allGatherInMemory(full: Float32Array, n: number): Float32Array[] {
  const bounds = sliceBounds(full.length, n);
  const work = Array.from({ length: n }, (_, i) => {
    const v = new Float32Array(full.length).fill(Number.NaN);
    const s = bounds[ownedSlice(i, n)];
    v.set(full.subarray(s.offset, s.offset + s.length), s.offset);
    return v;
  });
  for (let k = 0; k < n - 1; k++) {
    const messages = work.map((v, i) => {
      const s = bounds[allGatherHops(i, n)[k].send];
      return v.slice(s.offset, s.offset + s.length);
    });
    work.forEach((v, i) => v.set(messages[mod(i - 1, n)], bounds[allGatherHops(i, n)[k].receive].offset));
  }
  return work;
}

/**
 * A whole ring in memory: reduce-scatter over the members' vectors (in ring order), then the owned
 * slices as the coordinator assembles them. The reference the transport is tested against.
 */
export function reduceInMemory(vectors: Float32Array[]): Float32Array {
  const n = vectors.length;
  const bounds = sliceBounds(vectors[0].length, n);
  const work = vectors.map((v) => Float32Array.from(v));
  for (let k = 0; k < n - 1; k++) {
    // Every member sends at hop k what it held after hop k-1: take all messages first.
    const messages = work.map((v, i) => {
      const s = bounds[reduceScatterHops(i, n)[k].send];
      return v.slice(s.offset, s.offset + s.length);
    });
    work.forEach((v, i) => {
      const r = bounds[reduceScatterHops(i, n)[k].receive];
      const from = messages[mod(i - 1, n)];
      addInto(v.subarray(r.offset, r.offset + r.length), from);
    });
  }
  const out = new Float32Array(vectors[0].length);
  work.forEach((v, i) => {
    const s = bounds[ownedSlice(i, n)];
    out.set(v.subarray(s.offset, s.offset + s.length), s.offset);
  });
  return out;
}
