// Computes gradients for one batch (a worker's shard) on the current engine. No network, no
// optimizer: the result is handed to whoever applies it (the local loop or, later, the coordinator).
// Data flow: images -> forward -> unit capsules -> anchor-masked distances -> in-batch mining -> loss
// -> grads.
import * as tf from '@tensorflow/tfjs-core';
import type { ConvFn } from '../shared/engine/engine.js';
import { anchorMaskedDistances, capsuleMarginLoss, tripletLoss } from '../shared/model/loss.js';
import { l2Normalize } from '../shared/model/squash.js';
import { mineTriplets, type MiningStrategy } from '../shared/model/mining.js';
import type { ModelState } from '../shared/model/params.js';
import { paramName } from '../shared/model/params.js';
import { forward } from '../shared/model/tricapsnet.js';

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
  stats: StepStats;
  /** Gradient per trainable parameter name. */
  grads: Map<string, tf.Tensor>;
  /** New BatchNorm moving statistics per buffer name. */
  bnUpdates: Map<string, tf.Tensor>;
  dispose(): void;
}

export function computeGradients(
  model: ModelState,
  batch: TrainBatch,
  opts: LossOptions & { conv: ConvFn; seed: number },
): GradientResult {
  if (batch.images.shape[0] !== batch.itemIds.length || batch.itemIds.length !== batch.categories.length) {
    throw new Error(`batch: ${batch.images.shape[0]} images, ${batch.itemIds.length} item ids, ${batch.categories.length} categories`);
  }
  let bnUpdates = new Map<string, tf.Tensor>();
  let statsTensor: tf.Tensor | undefined;
  let mined = { triplets: 0, skippedAnchors: 0 };
  const variables = [...model.trainable.values()];
  const { value, grads } = tf.variableGrads(() => {
    const out = forward(model, batch.images, { training: true, conv: opts.conv, dropoutSeed: opts.seed });
    bnUpdates = out.bnUpdates;
    // Masked with the anchor's category (reference); the miner reads the same distances.
    const distances = anchorMaskedDistances(l2Normalize(out.capsules) as tf.Tensor3D, batch.categories);
    // Mining reads values only: the choice of triplets carries no gradient.
    const mining = mineTriplets(opts.mining, { distances: distances.dataSync(), labels: batch.itemIds, margin: opts.margin, seed: opts.seed });
    mined = { triplets: mining.triplets.length, skippedAnchors: mining.skippedAnchors };
    const triplet = tripletLoss(distances, mining.triplets, opts.margin);
    let loss = triplet.loss;
    if (opts.marginLossWeight > 0) loss = tf.add(loss, tf.mul(capsuleMarginLoss(out.capsules, batch.categories), opts.marginLossWeight));
    if (mining.triplets.length > 0) {
      statsTensor = tf.keep(
        tf.stack([tf.sum(tf.cast(tf.greater(triplet.hinge, 0), 'float32')), tf.mean(triplet.positiveDistances), tf.mean(triplet.negativeDistances)]),
      );
    }
    return loss as tf.Scalar;
  }, variables);
  const [active, dap, dan] = statsTensor ? Array.from(statsTensor.dataSync()) : [0, 0, 0];
  statsTensor?.dispose();
  const loss = value.dataSync()[0];
  value.dispose();
  const named = new Map<string, tf.Tensor>();
  for (const [variableName, g] of Object.entries(grads)) named.set(paramName(variableName), g);
  return {
    stats: { loss, triplets: mined.triplets, activeTriplets: active, meanPositiveDistance: dap, meanNegativeDistance: dan, skippedAnchors: mined.skippedAnchors },
    grads: named,
    bnUpdates,
    dispose() {
      for (const t of [...named.values(), ...bnUpdates.values()]) t.dispose();
    },
  };
}

/** Refuses a step whose loss is NaN or infinite (its gradients would spoil the weights). */
export function assertFiniteLoss(stats: StepStats, step: number): void {
  if (!Number.isFinite(stats.loss)) {
    throw new Error(`step ${step}: loss is ${stats.loss} (${stats.triplets} triplets); not applying this update. Lower --lr or check the data.`);
  }
}
