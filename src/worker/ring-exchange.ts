// One member's part of a ring step: all-gather the step's weights (each member starts with one
// slice, forwards complete slices), then reduce-scatter the gradient (send the running sum of one
// slice to the successor and add the predecessor's to another, hop after hop, until this member
// holds the complete sum of the slice it owns). Every wait has a deadline and the whole ring is
// abandoned when its signal fires (the round changed: a member was lost and the step is being
// planned again).
import * as grpc from '@grpc/grpc-js';
import type { RunRef } from '../shared/gen/tricaps/v1/fleet.js';
import { abortableSleep } from './fleet-client.js';
import {
  addInto,
  allGatherHops,
  ownedSlice,
  reduceHopIndex,
  reduceScatterHops,
  ringStepReceives,
  sliceBounds,
  type Slice,
} from '../shared/plan/ring.js';
import type { WireDType } from '../shared/tensor-codec.js';
import { NOT_READY, type PeerClients, type RingInbox } from './peer-link.js';

export interface RingPlan {
  run: RunRef;
  workerId: string;
  members: { workerId: string; peerAddress: string }[];
  position: number;
}

/** Test hooks (fault injection into real processes): poison this member's first hop, or hold the ring. */
export interface RingFaults {
  poison?: 'nan' | 'shape';
  holdAfterFirstHopMs?: number;
  /** Told when the hold begins (the worker logs it, so a test knows a reduction is in flight). */
  onHold?(): void;
}

export class RingHopError extends Error {
  constructor(
    message: string,
    /** The member this failure points at (the successor that could not be reached), if one. */
    readonly peer?: string,
  ) {
    super(message);
  }
}

/** What the inbox must expect for this member's ring step (weights all-gather, then reduce-scatter). */
export function expectationOf(plan: RingPlan, weightsLength: number, length: number) {
  const n = plan.members.length;
  return {
    run: plan.run.runId,
    round: plan.run.round,
    step: plan.run.step,
    predecessor: plan.members[(plan.position - 1 + n) % n].workerId,
    receive: ringStepReceives(plan.position, n, weightsLength, length),
  };
}

interface HopOptions {
  hopTimeoutMs: number;
  signal: AbortSignal;
}

/**
 * One hop: sends `values` (slice `send`) to the successor while taking hop `hop` from the
 * predecessor; resolves with what the predecessor sent (decoded and checked by the inbox).
 */
async function exchangeHop(
  plan: RingPlan,
  hop: number,
  send: Slice,
  values: Float32Array,
  dtype: WireDType,
  inbox: RingInbox,
  peers: PeerClients,
  o: HopOptions,
): Promise<Float32Array> {
  const n = plan.members.length;
  const successor = plan.members[(plan.position + 1) % n];
  const predecessor = plan.members[(plan.position - 1 + n) % n].workerId;
  const deadlineAt = Date.now() + o.hopTimeoutMs;
  const hopSignal = AbortSignal.any([o.signal, AbortSignal.timeout(o.hopTimeoutMs)]);
  const sent = sendHop(peers, successor, plan, hop, send, values, dtype, deadlineAt, hopSignal);
  const received = inbox.take(hop, hopSignal).catch((err) => {
    if (o.signal.aborted) throw err;
    throw new RingHopError(`no hop ${hop} from ${predecessor} within ${o.hopTimeoutMs} ms`, predecessor);
  });
  const [, got] = await Promise.all([sent, received]);
  return got;
}

/**
 * All-gathers the step's weights over the ring: `weights` holds this member's owned slice complete
 * (fetched from the coordinator, or current already); every other slice is filled in from the
 * predecessor, hop by hop, and forwarded. Always float32: the weights are the coordinator's exactly.
 */
export async function allGather(
  plan: RingPlan,
  weights: Float32Array,
  inbox: RingInbox,
  peers: PeerClients,
  o: HopOptions,
): Promise<void> {
  const n = plan.members.length;
  const bounds = sliceBounds(weights.length, n);
  const hops = allGatherHops(plan.position, n);
  for (let k = 0; k < hops.length; k++) {
    const send = bounds[hops[k].send];
    const receive = bounds[hops[k].receive];
    const values = weights.subarray(send.offset, send.offset + send.length);
    const got = await exchangeHop(plan, k, send, values, 'float32', inbox, peers, o);
    weights.set(got, receive.offset);
    inbox.recycle(got);
  }
}

/**
 * Reduces `vector` (this member's packed contribution, summed into in place) over the ring; returns
 * the slice this member owns and its complete values.
 */
export async function reduceScatter(
  plan: RingPlan,
  vector: Float32Array,
  inbox: RingInbox,
  peers: PeerClients,
  o: HopOptions & { dtype: WireDType; faults?: RingFaults },
): Promise<{ slice: Slice; values: Float32Array }> {
  const n = plan.members.length;
  const bounds = sliceBounds(vector.length, n);
  const hops = reduceScatterHops(plan.position, n);
  for (let k = 0; k < hops.length; k++) {
    const send = bounds[hops[k].send];
    const receive = bounds[hops[k].receive];
    let values = vector.subarray(send.offset, send.offset + send.length);
    if (k === 0 && o.faults?.poison === 'nan') {
      values = Float32Array.from(values);
      values[0] = Number.NaN;
    } else if (k === 0 && o.faults?.poison === 'shape') {
      values = new Float32Array(send.length + 1);
      values.set(vector.subarray(send.offset, send.offset + send.length));
    }
    const got = await exchangeHop(plan, reduceHopIndex(k, n), send, values, o.dtype, inbox, peers, o);
    addInto(vector.subarray(receive.offset, receive.offset + receive.length), got);
    inbox.recycle(got);
    if (k === 0 && o.faults?.holdAfterFirstHopMs) {
      o.faults.onHold?.();
      await abortableSleep(o.faults.holdAfterFirstHopMs, o.signal);
    }
  }
  const own = bounds[ownedSlice(plan.position, n)];
  return { slice: own, values: vector.subarray(own.offset, own.offset + own.length) };
}

async function sendHop(
  peers: PeerClients,
  successor: { workerId: string; peerAddress: string },
  plan: RingPlan,
  hop: number,
  slice: Slice,
  values: Float32Array,
  dtype: WireDType,
  deadlineAt: number,
  signal: AbortSignal,
): Promise<void> {
  // The successor may not have opened this ring yet (its assignment is on its way): retry briefly.
  for (;;) {
    try {
      await peers.hop(
        successor.peerAddress,
        { run: plan.run, fromWorker: plan.workerId, hop, slice },
        values,
        dtype,
        Math.max(1, deadlineAt - Date.now()),
        signal,
      );
      return;
    } catch (err) {
      const details = (err as { details?: string }).details ?? (err as Error).message;
      if (signal.aborted) throw err;
      if (details === NOT_READY && Date.now() < deadlineAt) {
        await abortableSleep(50, signal);
        continue;
      }
      // Unreachable or silent: the successor is the one to name (a refusal names the sender).
      const code = (err as { code?: number }).code;
      const unreachable = code === grpc.status.UNAVAILABLE || code === grpc.status.DEADLINE_EXCEEDED;
      throw new RingHopError(
        `hop ${hop} to ${successor.workerId} at ${successor.peerAddress} failed: ${details}`,
        unreachable ? successor.workerId : undefined,
      );
    }
  }
}
