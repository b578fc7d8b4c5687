// One training step, top to bottom: plan the PK batch's mining shards -> execute them (over the
// fleet, or any StepExecutor) -> average the shard gradients by contributing triplets, in shard order
// -> check (finite loss and gradient) -> apply Adam and the BatchNorm statistics -> publish the new
// weights. Returns a StepReport; reporting it (log, metrics, NATS, history) is the caller's sink.
import type { ExchangeTotals } from '../shared/exchange-meter.js';
import * as tf from '@tensorflow/tfjs-core';
import { samplePkBatch } from '../shared/data/pk-sampler.js';
import type { ModelState } from '../shared/model/params.js';
import { weightedAverage } from '../shared/plan/average.js';
import { confusableAffinity } from '../shared/plan/hard-negatives.js';
import { planShards, type PlannedShard } from '../shared/plan/step-plan.js';
import { hashInts } from '../shared/rng.js';
import { encodeTensor, type EncodedChunk } from '../shared/tensor-codec.js';
import type { TrainConfig } from '../shared/train-config.js';
import type { EmbedResult, TensorSpec, TrainResult, WeightSource } from './fleet-coordinator.js';
import type { ParameterUpdater } from './optimizer.js';
import { StepWork } from './step-work.js';

/** Computes a step's units somewhere (the fleet coordinator; a fake in tests). */
export interface StepExecutor {
  /** Runs the work until every unit has a result (work.results), or throws (stopped, run failed). */
  execute(work: StepWork<TrainResult> | StepWork<EmbedResult>): Promise<void>;
  /** Takes back the arrays of applied results (the fleet decodes uploads into pooled buffers). */
  release(arrays: Iterable<Float32Array>): void;
  /** The membership round the step completed in. */
  readonly round: number;
  /** Tensor bytes moved with workers so far (a fleet; the single process moves none). */
  exchangeBytes?(): ExchangeTotals;
}

export interface StepReport {
  step: number;
  epoch: number;
  loss: number;
  gradientNorm: number;
  triplets: number;
  activeTriplets: number;
  workers: number;
  round: number;
  /** Wall time of the step at the coordinator: plan to optimizer done. */
  seconds: number;
  /** The slowest worker's gradient computation (the step's critical path, with its data loading). */
  workerComputeSeconds: number;
  /** That worker's data loading. */
  workerDataSeconds: number;
  averageSeconds: number;
  optimizerSeconds: number;
  /** Everything else: weights and gradients on the wire, decoding, waiting for stragglers. */
  exchangeSeconds: number;
  images: number;
  imagesPerSecond: number;
  learningRate: number;
  /** Hash of the batch's image ids (the same step of the same run has the same batch). */
  batchHash: number;
  shards: number;
  shardsComputed: number;
  /**
   * The shards each result combined, in shard order (a ring: each member's shards, in ring order):
   * the grouping decides the summation order, so two runs give bit-identical updates exactly when
   * their groupings match.
   */
  shardGroups: number[][];
  /** Tensor bytes this step moved: weights sent to workers, gradients received (0 in one process). */
  bytesSent: number;
  bytesReceived: number;
}

/** What a step leaves for the sinks besides its report: its units and who computed which. */
export type TrainWork = StepWork<TrainResult>;

/** Share of a step spent outside the slowest worker's data loading and compute. */
export function outsideComputeShare(r: StepReport): number {
  return (r.seconds - r.workerComputeSeconds - r.workerDataSeconds) / r.seconds;
}

/** The model's weights as the fleet downloads them: one host copy per applied step. */
export class ModelWeightSource implements WeightSource {
  version = 0;
  readonly gradientSpecs: TensorSpec[];
  readonly statSpecs: TensorSpec[];
  private published: { version: number; chunks: EncodedChunk[]; flat: Float32Array } | undefined;
  private spare: Float32Array | undefined;

  constructor(private readonly model: ModelState) {
    this.gradientSpecs = model.arch.params.filter((p) => p.trainable).map((p) => ({ name: p.name, shape: p.shape }));
    this.statSpecs = model.arch.params.filter((p) => !p.trainable).map((p) => ({ name: p.name, shape: p.shape }));
  }

  /**
   * Makes `values` (the weights vector, parameters then buffers; copied) version `version`; without
   * them, reads the model's current values (one awaited read of all of them, concatenated on the
   * device: no synchronous read, so the coordinator may run on any engine).
   */
  async publish(version: number, values?: Float32Array): Promise<void> {
    const entries = [...this.model.trainable, ...this.model.buffers];
    const size = entries.reduce((n, [, v]) => n + v.size, 0);
    let host: Float32Array;
    if (values) {
      if (values.length !== size) throw new Error(`publish: ${values.length} values for a model of ${size}`);
      // Two arrays in turn (a fresh multi-megabyte array costs more in page faults than the copy).
      // The previous version's may be written now: downloads serialize a version's bytes when they
      // start, and nobody is handed an old version's chunks after a new one is published.
      host = this.spare?.length === size ? this.spare : new Float32Array(size);
      host.set(values);
      this.spare = this.published?.flat;
    } else {
      const flat = tf.tidy(() => tf.concat(entries.map(([, v]) => tf.reshape(v, [-1]))));
      // The array is ours: the tensor it came from is disposed now, and no backend reuses its storage.
      host = (await flat.data()) as Float32Array;
      flat.dispose();
    }
    const chunks: EncodedChunk[] = [];
    let offset = 0;
    for (const [name, v] of entries) {
      chunks.push(
        ...encodeTensor(name, host.subarray(offset, offset + v.size), v.shape, 'float32', undefined, { copy: false }),
      );
      offset += v.size;
    }
    this.published = { version, chunks, flat: host };
    this.version = version;
  }

  chunks(): EncodedChunk[] {
    return this.current().chunks;
  }

  flat(): Float32Array {
    return this.current().flat;
  }

  private current(): { chunks: EncodedChunk[]; flat: Float32Array } {
    if (this.published?.version !== this.version) throw new Error(`weights version ${this.version} was not published`);
    return this.published;
  }
}

/** What every step of a run shares: the plan's inputs, the model and where the work runs. */
export interface StepContext {
  cfg: Pick<TrainConfig, 'seed' | 'imagesPerItem'>;
  /** Train item -> its image ids. */
  items: Map<number, number[]>;
  itemsPerBatch: number;
  stepsPerEpoch: number;
  shards: number;
  model: ModelState;
  updater: ParameterUpdater;
  /** Published after each applied step for the fleet to download; absent in a single process. */
  weights?: ModelWeightSource;
  executor: StepExecutor;
  /** Item -> embedding from the last hard-negative refresh (groups confusable items per shard). */
  embeddings?: Map<number, Float32Array>;
}

/** What planning a step reads (pure: the same plan for the same step). */
export type StepPlanInputs = Pick<
  StepContext,
  'cfg' | 'items' | 'itemsPerBatch' | 'stepsPerEpoch' | 'shards' | 'embeddings'
>;

export type StepOutcome = { applied: true; report: StepReport; work: TrainWork } | { applied: false; reason: string };

/** The plan of a step: its PK batch split into mining shards (pure in seed, epoch, step). */
export function planStep(
  ctx: StepPlanInputs,
  step: number,
): { epoch: number; shards: PlannedShard[]; batchHash: number } {
  const epoch = Math.floor(step / ctx.stepsPerEpoch);
  const batch = samplePkBatch({
    seed: ctx.cfg.seed,
    epoch,
    step: step % ctx.stepsPerEpoch,
    itemsPerBatch: ctx.itemsPerBatch,
    imagesPerItem: ctx.cfg.imagesPerItem,
    items: ctx.items,
  });
  const affinity = ctx.embeddings ? confusableAffinity(batch.itemIds, ctx.embeddings, ctx.shards) : undefined;
  return { epoch, shards: planShards(batch, ctx.shards, affinity), batchHash: hashInts(0, ...batch.imageIds) };
}

/** Buffers reused across steps (fresh multi-megabyte arrays cost more than the averaging). */
const averagedBuffers = new WeakMap<StepContext, Map<string, Float32Array>>();

export async function runStep(ctx: StepContext, step: number): Promise<StepOutcome> {
  const { epoch, shards, batchHash } = planStep(ctx, step);
  const work = new StepWork<TrainResult>('train', step, epoch, shards);
  const bytesBefore = ctx.executor.exchangeBytes?.();
  const t0 = performance.now();
  await ctx.executor.execute(work);
  const t1 = performance.now();
  const results = work.results.map((r) => r.result);
  const release = () => ctx.executor.release(results.flatMap((r) => [...r.grads.values(), ...r.bnStats.values()]));
  try {
    const triplets = results.reduce((s, r) => s + r.triplets, 0);
    if (triplets === 0) return { applied: false, reason: `step ${step}: no shard found a triplet; no update` };
    const loss = results.reduce((s, r) => s + r.loss * r.triplets, 0) / triplets;
    // Shard order, not arrival order: the same fleet gives bit-identical averages every run.
    const ordered = [...work.results].sort((a, b) => a.units[0] - b.units[0]).map((r) => r.result);
    const avg = weightedAverage(
      ordered.map((r) => ({ triplets: r.triplets, grads: r.grads })),
      averagedBuffers.get(ctx),
    );
    averagedBuffers.set(ctx, avg.grads);
    let sq = 0;
    for (const g of avg.grads.values()) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
    const gradientNorm = Math.sqrt(sq);
    // Uploads were checked one by one (finite values, norm guard); the average is checked again
    // because applying a non-finite update would spoil the weights for good.
    if (!Number.isFinite(loss) || !Number.isFinite(gradientNorm)) {
      throw new Error(
        `step ${step}: loss ${loss}, gradient norm ${gradientNorm}; not applying this update. Lower --lr or check the data.`,
      );
    }
    // Each result's statistics are the mean over its shards: weight it by its shard count. Fresh
    // arrays (they are small): the BatchNorm buffers are assigned tensors that may keep them.
    const stats = weightedAverage(ordered.map((r) => ({ triplets: r.shards, grads: r.bnStats }))).grads;
    const t2 = performance.now();
    await ctx.updater.applyHost(avg.grads, stats, epoch);
    if (ctx.weights) await ctx.weights.publish(ctx.weights.version + 1, await ctx.updater.weightsVector());
    const t3 = performance.now();
    const slowest = results.reduce((m, r) =>
      r.dataSeconds + r.computeSeconds > m.dataSeconds + m.computeSeconds ? r : m,
    );
    const seconds = (t3 - t0) / 1000;
    const images = work.units.reduce((s, u) => s + u.imageIds.length, 0);
    const report: StepReport = {
      step,
      epoch,
      loss,
      gradientNorm,
      triplets,
      activeTriplets: results.reduce((s, r) => s + r.activeTriplets, 0),
      workers: new Set(work.results.flatMap((r) => r.members ?? [r.workerId])).size,
      round: ctx.executor.round,
      seconds,
      workerComputeSeconds: slowest.computeSeconds,
      workerDataSeconds: slowest.dataSeconds,
      averageSeconds: (t2 - t1) / 1000,
      optimizerSeconds: (t3 - t2) / 1000,
      exchangeSeconds: Math.max(0, (t1 - t0) / 1000 - slowest.computeSeconds - slowest.dataSeconds),
      images,
      imagesPerSecond: images / seconds,
      learningRate: ctx.updater.learningRateAt(epoch),
      batchHash,
      shards: work.units.length,
      shardsComputed: results.reduce((n, r) => n + r.shards, 0),
      // A ring's members' units in ring order; whole uploads' units in shard order.
      shardGroups: [...work.results].sort((a, b) => a.units[0] - b.units[0]).flatMap((r) => r.groups ?? [[...r.units]]),
      ...bytesMoved(bytesBefore, ctx.executor.exchangeBytes?.()),
    };
    return { applied: true, report, work };
  } finally {
    release();
  }
}

function bytesMoved(before?: ExchangeTotals, after?: ExchangeTotals): { bytesSent: number; bytesReceived: number } {
  if (!before || !after) return { bytesSent: 0, bytesReceived: 0 };
  return { bytesSent: after.sent - before.sent, bytesReceived: after.received - before.received };
}

/** Embeds one image of every train item over the fleet and returns item -> embedding. */
export async function embedTrainItems(
  executor: StepExecutor,
  items: Map<number, number[]>,
  step: number,
  epoch: number,
): Promise<Map<number, Float32Array>> {
  const reps = [...items].filter(([, ids]) => ids.length >= 2).map(([item, ids]) => ({ item, image: ids[0] }));
  const units: PlannedShard[] = [];
  for (let i = 0; i < reps.length; i += 64) {
    const part = reps.slice(i, i + 64);
    units.push({ index: units.length, imageIds: part.map((r) => r.image), itemIds: part.map((r) => r.item) });
  }
  const work = new StepWork<EmbedResult>('embed', step, epoch, units);
  await executor.execute(work);
  const out = new Map<number, Float32Array>();
  for (const { units: us, result } of work.results) {
    const itemIds = us.flatMap((u) => units[u].itemIds);
    itemIds.forEach((item, i) => out.set(item, result.embeddings.slice(i * result.dim, (i + 1) * result.dim)));
  }
  return out;
}
