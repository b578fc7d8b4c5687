// Computes gradients for one batch (a worker's shard) on the current engine. No network, no
// optimizer: the result is handed to whoever applies it (the local loop or, later, the coordinator).
// Data flow: images -> forward -> unit capsules -> anchor-masked distances -> in-batch mining (on the
// device) -> loss -> grads; nothing is read back until the caller asks (readStats / readAll).
import * as tf from '@tensorflow/tfjs-core';
import type { ConvFn } from '../engine/engine.js';
import { deviceTripletLoss } from '../model/device-mining.js';
import { anchorMaskedDistances, capsuleMarginLoss } from '../model/loss.js';
import { l2Normalize } from '../model/squash.js';
import type { MiningStrategy } from '../model/mining.js';
import type { ModelState } from '../model/params.js';
import { paramName } from '../model/params.js';
import { forward } from '../model/tricapsnet.js';

export interface TrainBatch {
  /** [n, S, S, 3] in [0, 1]; owned by the caller. */
  images: tf.Tensor4D;
  /** Item id per image (positives share it). */
  itemIds: number[];
  /** Category index per image (masks the anchor's capsule during training). */
  categories: number[];
}

export interface LossOptions {
  mining: MiningStrategy;
  margin: number;
  /** Weight of the auxiliary capsule margin loss (reference: 0). */
  marginLossWeight: number;
}

export interface StepStats {
  loss: number;
  triplets: number;
  /** Triplets with a positive hinge (they carry gradient). */
  activeTriplets: number;
  meanPositiveDistance: number;
  meanNegativeDistance: number;
  skippedAnchors: number;
}

export interface GradientResult {
  /** Gradient per trainable parameter name (on the engine's device). */
  grads: Map<string, tf.Tensor>;
  /** New BatchNorm moving statistics per buffer name (on the engine's device). */
  bnUpdates: Map<string, tf.Tensor>;
  /** The step's statistics: one awaited read of a 6-float tensor. */
  readStats(): Promise<StepStats>;
  /** Statistics, gradients and BN statistics in one awaited read (the fleet worker's upload). */
  readAll(): Promise<HostGradients>;
  dispose(): void;
}

export interface HostGradients {
  stats: StepStats;
  grads: Map<string, Float32Array>;
  bnUpdates: Map<string, Float32Array>;
}

/**
 * Records the whole step (forward, mining, loss, backward) without reading anything back: mining
 * runs on the device (device-mining.ts), so an asynchronous engine (webgpu) queues the step in one
 * go and the caller reads the results once, awaited.
 */
export function computeGradients(
  model: ModelState,
  batch: TrainBatch,
  opts: LossOptions & { conv: ConvFn; seed: number },
): GradientResult {
  if (batch.images.shape[0] !== batch.itemIds.length || batch.itemIds.length !== batch.categories.length) {
    throw new Error(
      `batch: ${batch.images.shape[0]} images, ${batch.itemIds.length} item ids, ${batch.categories.length} categories`,
    );
  }
  let bnUpdates = new Map<string, tf.Tensor>();
  let statsTensor: tf.Tensor1D | undefined;
  let skippedAnchors = 0;
  const variables = [...model.trainable.values()];
  const { value, grads } = tf.variableGrads(() => {
    const out = forward(model, batch.images, { training: true, conv: opts.conv, dropoutSeed: opts.seed });
    bnUpdates = out.bnUpdates;
    // Masked with the anchor's category (reference); mining reads the same distances.
    const distances = anchorMaskedDistances(l2Normalize(out.capsules) as tf.Tensor3D, batch.categories);
    const triplet = deviceTripletLoss(distances, batch.itemIds, opts.mining, opts.margin, opts.seed);
    skippedAnchors = triplet.skippedAnchors;
    let loss: tf.Scalar = triplet.loss;
    if (opts.marginLossWeight > 0)
      loss = tf.add(loss, tf.mul(capsuleMarginLoss(out.capsules, batch.categories), opts.marginLossWeight));
    // [loss, triplets, active, sum d(a,p), sum d(a,n)]: kept, read once by the caller.
    statsTensor = tf.keep(tf.concat([tf.reshape(loss, [1]), triplet.stats]) as tf.Tensor1D);
    return loss;
  }, variables);
  value.dispose();
  const named = new Map<string, tf.Tensor>();
  for (const [variableName, g] of Object.entries(grads)) named.set(paramName(variableName), g);
  const stats = statsTensor!;
  const toStats = (v: ArrayLike<number>): StepStats => {
    const triplets = v[1];
    return {
      loss: v[0],
      triplets,
      activeTriplets: v[2],
      meanPositiveDistance: triplets > 0 ? v[3] / triplets : 0,
      meanNegativeDistance: triplets > 0 ? v[4] / triplets : 0,
      skippedAnchors,
    };
  };
  return {
    grads: named,
    bnUpdates,
    async readStats() {
      return toStats(await stats.data());
    },
    async readAll() {
      // One read: the statistics, every gradient and every BN statistic, concatenated on the device.
      const order = [...named, ...bnUpdates];
      const flat = tf.tidy(() => tf.concat([stats, ...order.map(([, t]) => tf.reshape(t, [-1]))]));
      const host = (await flat.data()) as Float32Array;
      flat.dispose();
      const out: HostGradients = { stats: toStats(host), grads: new Map(), bnUpdates: new Map() };
      let offset = stats.size;
      for (const [name, t] of order) {
        (named.has(name) ? out.grads : out.bnUpdates).set(name, host.subarray(offset, offset + t.size));
        offset += t.size;
      }
      return out;
    },
    dispose() {
      for (const t of [...named.values(), ...bnUpdates.values(), stats]) t.dispose();
    },
  };
}
