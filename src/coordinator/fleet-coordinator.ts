// The coordinator's fleet logic without a transport: membership, the work of the current step,
// long-polled assignments, liveness sweeps (heartbeats, per-assignment deadlines), validation of
// results against the run, round, step and assignment they claim to answer. The gRPC service
// (fleet-service.ts) maps requests onto these methods and FleetError codes onto gRPC statuses; the
// training loop (run-coordinator.ts) drives steps with execute().
import { ringLayout } from '../shared/plan/ring.js';
import { RingRound, type RingMemberRef } from './ring-round.js';
import { BufferPool } from '../shared/buffer-pool.js';
export { BufferPool } from '../shared/buffer-pool.js';
import { ExchangeMeter } from '../shared/exchange-meter.js';
import type { TensorSpec } from '../shared/stream-service.js';
import type { Logger } from '../shared/log.js';
import type { EncodedChunk } from '../shared/tensor-codec.js';
import { median } from '../shared/stats.js';
import type { ShardsGradient } from '../shared/train/shard-gradients.js';
import type { WireDType } from '../shared/tensor-codec.js';
import { describeMember, FleetFullError, Membership, type Member } from './membership.js';
import type { Assignment, StepWork } from './step-work.js';
import type { PlannedShard } from '../shared/plan/step-plan.js';

/** Transport-independent error classes (mapped onto gRPC status codes by the service). */
export type FleetErrorCode =
  | 'invalid-argument'
  | 'wrong-run'
  | 'not-member'
  | 'stale'
  | 'full'
  | 'unavailable'
  | 'finished'
  /** A member's result cannot be used (non-finite loss, gradient norm guard): the member was removed. */
  | 'unusable';

export class FleetError extends Error {
  constructor(
    readonly code: FleetErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'FleetError';
  }
}

export interface RunRefLike {
  runId: string;
  round: number;
  step: number;
}

export type { TensorSpec } from '../shared/stream-service.js';

/** What the coordinator serves as weights and expects back as gradients. */
export interface WeightSource {
  readonly version: number;
  /** Every parameter and buffer of the current version, float32. */
  chunks(): EncodedChunk[];
  /** The same values as one vector (parameters, then buffers, in architecture order): ring slices. */
  flat(): Float32Array;
  /** Gradients expected per trainable parameter. */
  readonly gradientSpecs: TensorSpec[];
  /** New statistics expected per BatchNorm buffer. */
  readonly statSpecs: TensorSpec[];
}

/** A worker's answer to a train assignment, as the coordinator received it. */
export type TrainResult = ShardsGradient;

export interface EmbedResult {
  /** [images of the assignment's units, dim] row-major (the upload's shape was checked). */
  embeddings: Float32Array;
  dim: number;
}

export type Work = StepWork<TrainResult> | StepWork<EmbedResult>;

export interface FleetOptions {
  runId: string;
  /** Makes member ids unique to this coordinator process (see Membership). */
  memberIdSuffix?: string;
  minWorkers: number;
  maxWorkers: number;
  heartbeatIntervalMs: number;
  /** A worker silent this long is removed. */
  heartbeatTimeoutMs: number;
  /** A worker that holds an assignment this long without answering is removed. */
  assignmentTimeoutMs: number;
  /** How long NextStep waits for work before answering WAIT. */
  longPollMs: number;
  gradientDtype: WireDType;
  /** Sent to workers at registration (the training configuration as JSON). */
  configJson: string;
  /** Width of an embedding row the workers send for the hard-negative plan. */
  embeddingDim?: number;
  /** Told about membership changes (metrics, events). */
  listener?: MembershipListener;
  /** Refuse a gradient whose norm exceeds this many times the median of recent ones (0: off). */
  maxGradientNormRatio?: number;
  /**
   * How train results travel: each worker uploads its whole gradient (central), or the members of a
   * round reduce among themselves and each uploads one slice of the sum (ring; needs 2 or more
   * members with peer addresses, else the step goes central).
   */
  exchange?: 'central' | 'ring' | 'auto';
  now?: () => number;
}

import type { LossKind, RefusalKind } from '../shared/fleet-labels.js';
export type { LossKind, RefusalKind } from '../shared/fleet-labels.js';

export interface MembershipListener {
  /** A result was refused as unusable (non-finite, outlying norm, malformed). */
  rejected?(member: Member, kind: RefusalKind, reason: string): void;
  joined?(member: Member, workers: number, round: number): void;
  lost?(member: Member, kind: LossKind, reason: string, workers: number, round: number): void;
}

export type NextStepAnswer =
  | {
      action: 'train' | 'embed';
      run: RunRefLike;
      epoch: number;
      assignment: Assignment;
      shards: PlannedShard[];
      weightsVersion: number;
      /** The ring this assignment's gradient is reduced over (--exchange ring). */
      ring?: { members: RingMemberRef[]; position: number; length: number; weightsLength: number };
    }
  | { action: 'wait'; run: RunRefLike }
  | { action: 'finish'; run: RunRefLike };

export class StoppedError extends Error {}

/** The run cannot go on (the same shard fails on every worker). */
export class FleetRunError extends Error {}

const MAX_REFUSALS_PER_SHARD = 2;

export class FleetCoordinator {
  readonly membership: Membership;
  readonly buffers = new BufferPool();
  /** Tensor bytes the service moved to and from workers (weights down, gradients and embeddings up). */
  readonly exchange = new ExchangeMeter();
  private work: Work | undefined;
  private finished = false;
  private stopped = false;
  private currentStep = 0;
  private wakers = new Set<() => void>();
  private pausedSince: number | undefined;
  private lastPauseLog = Number.NEGATIVE_INFINITY;
  private pausedCount = -1;
  /** Members that have been told the run is over. */
  private readonly told = new Set<string>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastSweep = 0;
  /** Results refused per shard of the current step (a shard that fails everywhere stops the run). */
  private readonly refusals = new Map<number, { worker: string; text: string }[]>();
  private fatal: Error | undefined;
  private readonly recentNorms: number[] = [];
  /** The open ring reduction of the current step's round (--exchange ring). */
  private ring: RingRound | undefined;
  /** A step whose ring result the norm guard refused: recomputed centrally. */
  private centralStep = -1;
  private readonly now: () => number;
  /** Losses so far (metrics and tests). */
  readonly lost: { id: string; name: string; reason: string; step: number }[] = [];

  constructor(
    readonly opts: FleetOptions,
    private readonly weights: WeightSource,
    private readonly log: Logger,
  ) {
    this.membership = new Membership(opts.maxWorkers, opts.memberIdSuffix);
    this.now = opts.now ?? (() => performance.now());
  }

  get runId(): string {
    return this.opts.runId;
  }

  runRef(): RunRefLike {
    return { runId: this.opts.runId, round: this.membership.round, step: this.currentStep };
  }

  /** Starts the liveness sweeps (heartbeats and deadlines). */
  start(): void {
    const every = Math.max(50, Math.min(500, this.opts.heartbeatTimeoutMs / 4));
    this.lastSweep = this.now();
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
  }

  close(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.stopped = true;
    this.notify();
  }

  // ---- requests (called by the transport) ----

  register(req: { workerName: string; engine: string; device: string; runId: string; peerAddress?: string }): {
    member: Member;
    run: RunRefLike;
  } {
    if (req.runId && req.runId !== this.opts.runId) {
      throw new FleetError(
        'wrong-run',
        `this worker belongs to run ${req.runId}; this coordinator runs ${this.opts.runId}`,
      );
    }
    if (this.finished) throw new FleetError('finished', `run ${this.opts.runId} is over`);
    let member: Member;
    try {
      member = this.membership.register(
        req.workerName.slice(0, 128),
        req.engine.slice(0, 64),
        req.device.slice(0, 256),
        this.now(),
      );
    } catch (err) {
      if (err instanceof FleetFullError) throw new FleetError('full', err.message);
      throw err;
    }
    member.peerAddress = (req.peerAddress ?? '').slice(0, 300);
    this.log.info(
      {
        worker: member.id,
        name: member.name,
        engine: member.engine,
        device: member.device,
        workers: this.membership.size,
        round: this.membership.round,
      },
      `worker ${describeMember(member)} joined (${member.engine}, ${member.device}); ${this.membership.size} workers`,
    );
    this.opts.listener?.joined?.(member, this.membership.size, this.membership.round);
    this.notify();
    return { member, run: this.runRef() };
  }

  heartbeat(
    workerId: string,
    run: RunRefLike | undefined,
  ): { stop: boolean; run: RunRefLike; ringStep: number; ringRound: number } {
    this.checkRun(run);
    this.memberOrThrow(workerId);
    const stop = this.finished;
    if (stop) this.told.add(workerId);
    return { stop, run: this.runRef(), ringStep: this.ring?.step ?? 0, ringRound: this.ring?.round ?? 0 };
  }

  /** Long poll: the worker's next assignment, WAIT after longPollMs, or FINISH. */
  async nextStep(workerId: string, run: RunRefLike | undefined, signal?: AbortSignal): Promise<NextStepAnswer> {
    this.checkRun(run);
    this.memberOrThrow(workerId);
    const deadline = this.now() + this.opts.longPollMs;
    for (;;) {
      if (this.finished) {
        this.told.add(workerId);
        return { action: 'finish', run: this.runRef() };
      }
      if (!this.membership.get(workerId)) throw this.notMember(workerId);
      if (this.stopped) throw new FleetError('unavailable', 'the coordinator is stopping');
      const work = this.work;
      // A ring member that sent its slice waits for the others (its assignment stays in flight
      // until the ring completes; handing it out again would start a second reduction).
      const assignment = this.ring?.sent(workerId) ? undefined : work?.take(workerId, this.now());
      if (work && assignment) {
        const shards = assignment.units.map((u) => work.units[u]);
        const ring = this.ring;
        return {
          action: work.kind,
          run: { runId: this.opts.runId, round: assignment.round, step: work.step },
          epoch: work.epoch,
          assignment,
          shards,
          weightsVersion: this.weights.version,
          ring:
            work.kind === 'train' && ring && ring.round === assignment.round && ring.includes(workerId)
              ? {
                  members: ring.members,
                  position: ring.position(workerId),
                  length: ring.layout.length,
                  weightsLength: this.weights.flat().length,
                }
              : undefined,
        };
      }
      const left = deadline - this.now();
      if (left <= 0 || signal?.aborted || this.stopped) return { action: 'wait', run: this.runRef() };
      await this.changed(left, signal);
    }
  }

  weightChunks(workerId: string, run: RunRefLike | undefined): { version: number; chunks: EncodedChunk[] } {
    this.checkRun(run);
    this.memberOrThrow(workerId);
    return { version: this.weights.version, chunks: this.weights.chunks() };
  }

  /**
   * One slice of the current weights vector (a ring member fetches its own and all-gathers the rest
   * from its peers).
   */
  weightSlice(
    workerId: string,
    run: RunRefLike | undefined,
    offset: number,
    length: number,
  ): { version: number; values: Float32Array } {
    this.checkRun(run);
    this.memberOrThrow(workerId);
    const flat = this.weights.flat();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || offset + length > flat.length)
      throw new FleetError(
        'invalid-argument',
        `weights slice [${offset}, +${length}) is outside the ${flat.length} weights of this run (different model configuration?)`,
      );
    return { version: this.weights.version, values: flat.subarray(offset, offset + length) };
  }

  /** The tensors a train result must carry (gradients, then statistics), for decoding. */
  expectedTrainTensors(): TensorSpec[] {
    return [...this.weights.gradientSpecs, ...this.weights.statSpecs];
  }

  /** Splits a decoded train upload into gradients and BatchNorm statistics. */
  splitTrainTensors(tensors: Map<string, Float32Array>): {
    grads: Map<string, Float32Array>;
    bnStats: Map<string, Float32Array>;
  } {
    const grads = new Map<string, Float32Array>();
    const bnStats = new Map<string, Float32Array>();
    for (const s of this.weights.gradientSpecs) grads.set(s.name, tensors.get(s.name)!);
    for (const s of this.weights.statSpecs) bnStats.set(s.name, tensors.get(s.name)!);
    return { grads, bnStats };
  }

  /** The images of the current embedding work's units (empty when none is open). */
  embedImagesOf(units: number[]): number[] {
    const work = this.work;
    if (!work || work.kind !== 'embed') return [];
    return units.flatMap((u) => work.units[u]?.imageIds ?? []);
  }

  /**
   * Checks a result header before its tensors are read: the run, the member, the step, the round
   * and the assignment it answers, and the weights it was computed with.
   */
  checkResultHeader(
    kind: 'train' | 'embed',
    workerId: string,
    run: RunRefLike | undefined,
    units: number[],
    weightsVersion: number,
  ): void {
    this.checkRun(run);
    this.memberOrThrow(workerId);
    const work = this.work;
    if (!work || work.kind !== kind)
      throw new FleetError('stale', `no ${kind} work is open (the run is at step ${this.currentStep})`);
    const verdict = work.check(workerId, { step: run!.step, round: run!.round, units });
    if (!verdict.ok) throw new FleetError('stale', verdict.reason);
    if (weightsVersion !== this.weights.version)
      throw new FleetError(
        'stale',
        `computed with weights version ${weightsVersion}, the current version is ${this.weights.version}`,
      );
  }

  // The header checks (which also count as a sign of life) run again: the work may have moved on
  // while the upload streamed.
  // Once handed a result the coordinator owns its (pooled) arrays: refused, they go back to the pool.
  acceptTrain(workerId: string, run: RunRefLike, units: number[], weightsVersion: number, result: TrainResult): void {
    try {
      this.checkTrainHeader(workerId, run, units, weightsVersion, result.loss);
      this.checkNorm(workerId, result.grads);
      (this.work as StepWork<TrainResult>).accept(workerId, { step: run.step, round: run.round, units }, result);
    } catch (err) {
      this.buffers.release([...result.grads.values(), ...result.bnStats.values()]);
      throw err;
    }
    this.notify();
  }

  /** The checks of a train upload's header; a non-finite loss makes the result unusable. */
  checkTrainHeader(
    workerId: string,
    run: RunRefLike | undefined,
    units: number[],
    weightsVersion: number,
    loss: number,
  ): void {
    this.checkResultHeader('train', workerId, run, units, weightsVersion);
    if (!Number.isFinite(loss)) this.unusable(workerId, `loss is ${loss}`);
  }

  /** Removes the member whose result cannot be used, and refuses the result. */
  private unusable(workerId: string, reason: string): never {
    this.rejectResult(workerId, reason);
    throw new FleetError('unusable', reason);
  }

  acceptEmbeddings(
    workerId: string,
    run: RunRefLike,
    units: number[],
    weightsVersion: number,
    result: EmbedResult,
  ): void {
    this.checkResultHeader('embed', workerId, run, units, weightsVersion);
    (this.work as StepWork<EmbedResult>).accept(workerId, { step: run.step, round: run.round, units }, result);
    this.notify();
  }

  /**
   * A member's result could not be used (malformed tensors): it holds its assignment and would send
   * the same again, so it is removed and its shards re-planned. Messages from non-members change
   * nothing.
   */
  rejectResult(workerId: string, reason: string): void {
    this.refuseWork(workerId, reason, 'sent an unusable result', false);
  }

  /**
   * Removes a member whose work cannot be used (an unusable result, or shards it could not compute)
   * and counts the reason against its shards. Workers compute a shard deterministically: two workers
   * failing the same shard (or the last one present) is the shard's fault, not a worker's, and the
   * run stops with the reasons rather than drop the fleet one by one or pause for ever.
   */
  private refuseWork(workerId: string, reason: string, what: string, lastMemberStops: boolean): void {
    const work = this.work;
    const member = this.membership.get(workerId);
    if (!member || !work?.holds(workerId)) return;
    this.opts.listener?.rejected?.(
      member,
      /non-finite|loss is/.test(reason) ? 'non-finite' : /gradient norm/.test(reason) ? 'norm' : 'malformed',
      reason,
    );
    const units = work.unitsInFlight(workerId);
    this.lose(workerId, `${what}: ${reason}`, 'warn', 'unusable');
    // Shards it could not compute: with no member left, nobody will compute them and waiting would
    // pause the run for ever. (Below --min-workers but not empty, the run pauses as for any loss, the
    // cause named above, until a worker joins: one machine's broken mount must not end the run.)
    const noneLeft = lastMemberStops && this.membership.size === 0;
    for (const u of units) {
      const seen = [
        ...(this.refusals.get(u) ?? []),
        { worker: member.name || workerId, text: `${workerId}: ${reason}` },
      ];
      this.refusals.set(u, seen);
      // Workers, not member ids: one process that registers again and fails again is one worker.
      const workers = new Set(seen.map((r) => r.worker)).size;
      if ((workers >= MAX_REFUSALS_PER_SHARD || noneLeft) && !this.fatal) {
        const who = `${seen.length} worker${seen.length > 1 ? 's' : ''} (${seen.map((r) => r.text).join('; ')})`;
        this.fatal = new FleetRunError(
          lastMemberStops
            ? `step ${work.step}: shard ${u} could not be computed on ${who}; stopping the run. Check the data of this step`
            : `step ${work.step}: shard ${u} gave unusable results on ${who}; stopping the run. Lower --lr, or check the data of this step`,
        );
        this.notify();
      }
    }
  }

  /** @param failed the worker could not compute what it held: the reason counts against those shards */
  leave(workerId: string, run: RunRefLike | undefined, reason: string, failed = false): void {
    this.checkRun(run);
    if (!this.membership.get(workerId)) return;
    if (failed && this.work?.holds(workerId)) {
      this.refuseWork(workerId, reason || 'no reason given', 'could not compute its shards', true);
      return;
    }
    this.lose(workerId, `left: ${reason || 'no reason given'}`, 'info', 'left');
  }

  /**
   * Refuses a gradient whose norm is far outside the fleet's recent range (median of the last 50
   * accepted ones, after 5): a diverging or tampered worker must not move the weights.
   */
  private checkNorm(workerId: string, grads: Map<string, Float32Array>): void {
    const ratio = this.opts.maxGradientNormRatio ?? 0;
    let sq = 0;
    for (const g of grads.values()) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
    const norm = Math.sqrt(sq);
    if (ratio > 0 && this.recentNorms.length >= 5) {
      const mid = median(this.recentNorms);
      if (norm > ratio * mid)
        this.unusable(
          workerId,
          `gradient norm ${norm.toPrecision(4)} is more than ${ratio} times the recent median ${mid.toPrecision(4)} (--max-gradient-norm-ratio)`,
        );
    }
    // Zero gradients (no triplet, or every hinge satisfied) say nothing about the scale of real
    // ones; counted, a run of them would pull the median to 0 and the guard would refuse everything.
    if (norm > 0) this.recentNorms.push(norm);
    if (this.recentNorms.length > 50) this.recentNorms.shift();
  }

  // ---- the training loop's side ----

  /**
   * Runs one unit of work to completion over the fleet: plans its units over the members, waits
   * (pausing, with a log line, while fewer than --min-workers are present), re-plans the units of
   * lost workers. Throws StoppedError if close() is called meanwhile.
   */
  async execute(work: Work): Promise<void> {
    this.work = work;
    this.currentStep = work.step;
    this.refusals.clear();
    try {
      while (!work.finished) {
        if (this.fatal) throw this.fatal;
        if (this.stopped) throw new StoppedError('the coordinator is stopping');
        if (work.unplannedUnits.length > 0) {
          const members = this.membership.list();
          if (members.length < this.opts.minWorkers) {
            this.notePause(members.length, work);
          } else {
            this.noteResume();
            // A ring sums in planning order: planned by worker name (then id), a fleet of the same
            // names reduces in the same order after a coordinator restart, whoever joins first.
            const order = (this.opts.exchange ?? 'central') === 'central' ? members : [...members].sort(byName);
            work.plan(
              order.map((m) => m.id),
              this.membership.round,
            );
            this.planRing(work);
            this.notify();
          }
        }
        await this.changed(1000);
      }
    } finally {
      this.work = undefined;
      this.ring = undefined;
    }
  }

  /**
   * --exchange ring: the members holding this round's train assignments reduce among themselves, in
   * planning order. Fewer than two, or one without a peer address: the step goes central.
   */
  private planRing(work: Work): void {
    this.ring = undefined;
    const how = this.opts.exchange ?? 'central';
    if (how === 'central' || work.kind !== 'train' || this.centralStep === work.step) return;
    const round = this.membership.round;
    const members = work.holdersOf(round).map((id) => this.membership.get(id));
    if (members.length < (how === 'auto' ? 3 : 2) || members.some((m) => !m?.peerAddress)) return;
    const size = (s: TensorSpec) => s.shape.reduce((a, b) => a * b, 1);
    const layout = ringLayout(
      this.weights.gradientSpecs.map((s) => ({ name: s.name, size: size(s) })),
      this.weights.statSpecs.map((s) => ({ name: s.name, size: size(s) })),
    );
    this.ring = new RingRound(
      work.step,
      round,
      members.map((m) => ({ id: m!.id, peerAddress: m!.peerAddress! })),
      layout,
      this.buffers.take(layout.length),
    );
  }

  /**
   * The open ring cannot complete (a member was lost) or its result was refused: it is dropped with
   * its slices so far (no partial sum is ever applied) and the step planned again; its members
   * abandon it when their heartbeat shows another ring. (A join does not disturb an open ring: the
   * newcomer takes part from the next plan.) Returns the units taken back.
   */
  private dropRing(): number[] {
    const ring = this.ring;
    if (!ring) return [];
    this.ring = undefined;
    return ring.members.flatMap((m) => this.work?.revoke(m.id) ?? []);
  }

  /**
   * A ring member's reduced slice. Header checks as for a whole gradient, then the slice must be the
   * one it owns in this round's ring; a non-finite value is its own (every hop was checked on the
   * way) and removes it. The last slice completes the step's one result, which the norm guard
   * checks like any other.
   */
  acceptSlice(
    workerId: string,
    run: RunRefLike,
    units: number[],
    weightsVersion: number,
    slice: { index: number; offset: number; length: number },
    values: Float32Array,
    timings: { dataSeconds: number; computeSeconds: number },
  ): void {
    this.checkResultHeader('train', workerId, run, units, weightsVersion);
    const ring = this.ring;
    if (!ring || ring.round !== run.round)
      throw new FleetError('stale', `no ring reduction of round ${run.round} is open (step ${this.currentStep})`);
    const problem = ring.check(workerId, slice.index, slice.offset, slice.length);
    if (problem) this.unusable(workerId, problem);
    const verdict = ring.accept(workerId, values, timings);
    this.buffers.release([values]);
    if (!verdict.ok) this.unusable(workerId, verdict.reason);
    if (ring.complete) {
      const result = ring.result();
      const members = ring.members.map((m) => m.id);
      try {
        this.checkNorm(members.join(','), result.grads);
      } catch (err) {
        // A sum cannot say which member's part was out of range: the step is recomputed with whole
        // uploads (central), where the guard checks each member's gradient and removes the one.
        this.centralStep = ring.step;
        this.log.warn(
          { step: ring.step, round: ring.round },
          `ring result of step ${ring.step} refused (${(err as Error).message}); recomputing the step with whole uploads to find the member`,
        );
        this.dropRing();
        this.notify();
        throw err;
      }
      this.ring = undefined;
      const accepted = (this.work as StepWork<TrainResult>).acceptRing(members, ring.round, result);
      if (!accepted.ok) throw new FleetError('stale', accepted.reason);
    }
    this.notify();
  }

  /**
   * A ring member's complaint about a peer. Bad data (non-finite values, a wrong slice) removes the
   * peer at once; an unreachable peer is removed too, since the round cannot complete without it
   * (members are authenticated by the join token or mutual TLS: their word is taken).
   */
  reportPeer(workerId: string, run: RunRefLike | undefined, peerId: string, reason: string, badData: boolean): void {
    this.checkRun(run);
    this.memberOrThrow(workerId);
    if (!this.ring?.includes(peerId) || !this.ring.includes(workerId)) return;
    const why = `${badData ? 'sent bad ring data' : 'unreachable from its ring neighbour'} (${describeMember(this.membership.get(workerId)!)}: ${reason.slice(0, 300)})`;
    if (badData) this.rejectResult(peerId, why);
    else this.lose(peerId, why, 'warn', 'unusable');
  }

  /** Tells workers the run is over and waits (up to timeoutMs) until each has heard it. */
  async finish(timeoutMs: number): Promise<void> {
    this.finished = true;
    this.notify();
    const until = this.now() + timeoutMs;
    while (this.now() < until && this.membership.list().some((m) => !this.told.has(m.id)))
      await this.changed(Math.min(200, until - this.now()));
  }

  // ---- internals ----

  private sweep(): void {
    const now = this.now();
    const gap = now - this.lastSweep;
    this.lastSweep = now;
    if (gap > this.opts.heartbeatTimeoutMs / 2) {
      // This process was stalled (a long synchronous step, a GC pause): the heartbeats queued
      // meanwhile have not been read yet. Silence measured across our own stall proves nothing.
      for (const m of this.membership.list()) m.lastSeen = Math.max(m.lastSeen, now - this.opts.heartbeatTimeoutMs / 2);
      return;
    }
    for (const m of this.membership.silent(now, this.opts.heartbeatTimeoutMs)) {
      this.lose(
        m.id,
        `no heartbeat for ${((now - m.lastSeen) / 1000).toFixed(1)} s (limit ${(this.opts.heartbeatTimeoutMs / 1000).toFixed(1)} s)`,
        'warn',
        'heartbeat',
      );
    }
    const work = this.work;
    if (work) {
      for (const id of work.overdue(now, this.opts.assignmentTimeoutMs)) {
        this.lose(
          id,
          `stalled: no result for step ${work.step} within ${(this.opts.assignmentTimeoutMs / 1000).toFixed(1)} s`,
          'warn',
          'stalled',
        );
      }
    }
  }

  private lose(workerId: string, reason: string, level: 'warn' | 'info', kind: LossKind): void {
    const departure = this.membership.remove(workerId, reason);
    if (!departure) return;
    const back = [
      ...(this.work?.revoke(workerId) ?? []),
      ...(this.ring?.includes(workerId) ? this.dropRing() : []),
    ].sort((a, b) => a - b);
    this.lost.push({ id: workerId, name: departure.member.name, reason, step: this.currentStep });
    const replan = back.length ? `; shards [${back}] of step ${this.currentStep} go to the other workers` : '';
    this.log[level](
      {
        worker: workerId,
        name: departure.member.name,
        reason,
        step: this.currentStep,
        round: this.membership.round,
        workers: this.membership.size,
        replanned: back,
      },
      `lost worker ${describeMember(departure.member)}: ${reason}${replan}; ${this.membership.size} workers remain`,
    );
    this.opts.listener?.lost?.(departure.member, kind, reason, this.membership.size, this.membership.round);
    this.notify();
  }

  private notePause(present: number, work: Work): void {
    const now = this.now();
    if (this.pausedSince === undefined) this.pausedSince = now;
    // Log when the count changes, and every 10 s while it does not.
    if (present !== this.pausedCount || now - this.lastPauseLog >= 10_000) {
      this.lastPauseLog = now;
      this.pausedCount = present;
      // Waiting for the first workers is normal; losing them mid-run is not.
      const level = work.step > 0 || this.lost.length > 0 ? 'warn' : 'info';
      this.log[level](
        {
          step: work.step,
          workers: present,
          minWorkers: this.opts.minWorkers,
          pausedSeconds: (now - this.pausedSince) / 1000,
        },
        `paused at step ${work.step}: ${present} of --min-workers ${this.opts.minWorkers} workers present; waiting for workers to join`,
      );
    }
  }

  private noteResume(): void {
    if (this.pausedSince === undefined) return;
    this.log.info(
      { pausedSeconds: (this.now() - this.pausedSince) / 1000, workers: this.membership.size },
      `resumed with ${this.membership.size} workers`,
    );
    this.pausedSince = undefined;
    this.lastPauseLog = Number.NEGATIVE_INFINITY;
    this.pausedCount = -1;
  }

  private checkRun(run: RunRefLike | undefined): void {
    if (!run || !run.runId)
      throw new FleetError('invalid-argument', 'message without a run reference (run_id, round, step)');
    if (run.runId !== this.opts.runId)
      throw new FleetError('wrong-run', `message for run ${run.runId}; this coordinator runs ${this.opts.runId}`);
  }

  /** Any message from a member is a sign of life. */
  private memberOrThrow(workerId: string): void {
    if (!this.membership.touch(workerId, this.now())) throw this.notMember(workerId);
  }

  private notMember(workerId: string): FleetError {
    const why = this.membership.departureOf(workerId);
    return new FleetError(
      'not-member',
      `worker ${workerId || '(none)'} is not a member of run ${this.opts.runId}${why ? ` (removed: ${why})` : ''}; register again`,
    );
  }

  private notify(): void {
    const wake = [...this.wakers];
    this.wakers.clear();
    for (const w of wake) w();
  }

  /** Resolves on the next change (member, result, finish) or after ms. */
  private changed(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.wakers.add(done);
      signal?.addEventListener('abort', done);
    });
  }
}

function byName(a: Member, b: Member): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}
