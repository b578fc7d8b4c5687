// The coordinator's view of one ring reduction (--exchange ring): the members of a step's round in
// ring order, the slice each owns after the reduce-scatter, and the slices received so far. When all
// have arrived it assembles the summed vector and turns it into the one result the step averages.
// Pure state: the fleet coordinator creates one per planned round and drops it when the round ends.
import type { ShardsGradient } from '../shared/train/shard-gradients.js';
import { ownedSlice, sliceBounds, unpackReduced, type RingLayout, type Slice } from '../shared/plan/ring.js';

export interface RingMemberRef {
  id: string;
  peerAddress: string;
}

export class RingRound {
  readonly bounds: Slice[];
  /** Slices received so far (their values are copied into the vector). */
  private readonly received = new Set<number>();
  private dataSeconds = 0;
  private computeSeconds = 0;

  constructor(
    readonly step: number,
    readonly round: number,
    readonly members: RingMemberRef[],
    readonly layout: RingLayout,
    /** Where the reduced vector is assembled (a recycled array; the result's tensors are views of it). */
    private readonly vector: Float32Array = new Float32Array(layout.length),
  ) {
    if (members.length < 2) throw new Error(`RingRound: ${members.length} members; a ring needs 2`);
    if (vector.length !== layout.length)
      throw new Error(`RingRound: a vector of ${vector.length} values for a layout of ${layout.length}`);
    this.bounds = sliceBounds(layout.length, members.length);
  }

  position(workerId: string): number {
    return this.members.findIndex((m) => m.id === workerId);
  }

  includes(workerId: string): boolean {
    return this.position(workerId) >= 0;
  }

  /** The slice a member must send: the one it owns after the reduce-scatter. */
  sliceOf(workerId: string): Slice {
    return this.bounds[ownedSlice(this.position(workerId), this.members.length)];
  }

  /** Why a slice header cannot be accepted from this member (undefined: it can). */
  check(workerId: string, slice: number, offset: number, length: number): string | undefined {
    if (!this.includes(workerId)) return `${workerId} is not in the ring of step ${this.step} round ${this.round}`;
    const want = this.sliceOf(workerId);
    if (slice !== want.index || offset !== want.offset || length !== want.length)
      return `${workerId} sent slice ${slice} [${offset}, +${length}) where it owns slice ${want.index} [${want.offset}, +${want.length})`;
    if (this.received.has(want.index)) return `${workerId} sent slice ${want.index} twice`;
    return undefined;
  }

  /**
   * Stores (copies) a member's reduced slice. Its values were decoded (so finite: a non-finite value
   * is refused in decoding and names the member, whose own part it must be, since every hop was
   * checked).
   */
  accept(
    workerId: string,
    values: Float32Array,
    timings: { dataSeconds: number; computeSeconds: number },
  ): { ok: true } | { ok: false; reason: string } {
    const s = this.sliceOf(workerId);
    if (values.length !== s.length) return { ok: false, reason: `slice of ${values.length} values, ${s.length} due` };
    this.vector.set(values, s.offset);
    this.received.add(s.index);
    this.dataSeconds = Math.max(this.dataSeconds, timings.dataSeconds);
    this.computeSeconds = Math.max(this.computeSeconds, timings.computeSeconds);
    return { ok: true };
  }

  /** The member has sent its slice: it has nothing more to do this round. */
  sent(workerId: string): boolean {
    return this.includes(workerId) && this.received.has(this.sliceOf(workerId).index);
  }

  get complete(): boolean {
    return this.received.size === this.members.length;
  }

  /**
   * The step's one result: the summed vector divided out in place (gradient and statistics means,
   * views of the vector: releasing them to the pool it came from releases the vector).
   */
  result(): ShardsGradient {
    if (!this.complete) throw new Error(`RingRound: ${this.received.size} of ${this.members.length} slices`);
    const { grads, bnStats, scalars } = unpackReduced(this.layout, this.vector);
    const t = scalars.triplets;
    return {
      triplets: t,
      activeTriplets: Math.round(scalars.activeTriplets),
      loss: t > 0 ? scalars.lossSum / t : 0,
      meanPositiveDistance: t > 0 ? scalars.positiveSum / t : 0,
      meanNegativeDistance: t > 0 ? scalars.negativeSum / t : 0,
      grads,
      bnStats,
      shards: Math.round(scalars.shards),
      dataSeconds: this.dataSeconds,
      computeSeconds: this.computeSeconds,
    };
  }
}
