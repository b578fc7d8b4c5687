// A worker's part of a step: loads and augments the images of its mining shards, computes each
// shard's gradient (mining and BatchNorm statistics inside the shard) and combines them into one
// triplet-weighted gradient, so the coordinator's weighted average over workers equals the average
// over shards whatever the number of workers. No network: the worker process and tests call it.
import * as tf from '@tensorflow/tfjs-core';
import type { Catalogue } from '../data/catalogue.js';
import { loadTrainingImages } from '../data/batch.js';
import type { ConvFn } from '../engine/engine.js';
import type { ModelState } from '../model/params.js';
import type { PlannedShard } from '../plan/step-plan.js';
import { weightedAverage, type ShardGradient } from '../plan/average.js';
import { hashInts } from '../rng.js';
import type { TrainConfig } from '../train-config.js';
import { computeGradients } from './gradients.js';

export interface ShardsGradient {
  /** Triplets over all shards (the weight of this gradient in the coordinator's average). */
  triplets: number;
  activeTriplets: number;
  /** Triplet-weighted mean loss. */
  loss: number;
  /** Triplet-weighted mean anchor-positive and anchor-negative squared distances. */
  meanPositiveDistance: number;
  meanNegativeDistance: number;
  /** Triplet-weighted mean gradient per trainable parameter. */
  grads: Map<string, Float32Array>;
  /** Mean over shards of the new BatchNorm moving statistics. */
  bnStats: Map<string, Float32Array>;
  shards: number;
  dataSeconds: number;
  computeSeconds: number;
}

export interface ShardContext {
  model: ModelState;
  catalogue: Catalogue;
  cfg: Pick<TrainConfig, 'seed' | 'augment' | 'mining' | 'margin' | 'marginLossWeight'>;
  conv: ConvFn;
  step: number;
  epoch: number;
  /** The shard's pixels (default: decoded and augmented now; a prefetcher may have them ready). */
  loadImages?(shard: PlannedShard): Promise<Float32Array>;
}

export async function computeShardsGradient(shards: PlannedShard[], ctx: ShardContext): Promise<ShardsGradient> {
  if (shards.length === 0) throw new Error('computeShardsGradient: no shards');
  const size = ctx.model.arch.config.imageSize;
  const shardGrads: ShardGradient[] = [];
  const shardStats: ShardGradient[] = [];
  let triplets = 0;
  let active = 0;
  let lossSum = 0;
  let dapSum = 0;
  let danSum = 0;
  let dataSeconds = 0;
  let computeSeconds = 0;
  for (const shard of shards) {
    const t0 = performance.now();
    const pixels = ctx.loadImages
      ? await ctx.loadImages(shard)
      : await loadTrainingImages(ctx.catalogue, shard.imageIds, size, ctx.cfg.augment, {
          seed: ctx.cfg.seed,
          epoch: ctx.epoch,
          step: ctx.step,
          worker: shard.index,
        });
    const t1 = performance.now();
    const images = tf.tensor4d(pixels, [shard.imageIds.length, size, size, 3]);
    const result = computeGradients(
      ctx.model,
      { images, itemIds: shard.itemIds, categories: shard.imageIds.map((id) => ctx.catalogue.images[id].category) },
      {
        mining: ctx.cfg.mining,
        margin: ctx.cfg.margin,
        marginLossWeight: ctx.cfg.marginLossWeight,
        conv: ctx.conv,
        seed: hashInts(ctx.cfg.seed, ctx.epoch, ctx.step, shard.index),
      },
    );
    images.dispose();
    try {
      // One awaited read per shard: statistics, gradients and BN statistics together.
      const host = await result.readAll();
      const w = host.stats.triplets;
      triplets += w;
      active += host.stats.activeTriplets;
      lossSum += w * host.stats.loss;
      dapSum += w * host.stats.meanPositiveDistance;
      danSum += w * host.stats.meanNegativeDistance;
      shardGrads.push({ triplets: w, grads: host.grads });
      shardStats.push({ triplets: 1, grads: host.bnUpdates }); // plain mean over shards
    } finally {
      result.dispose();
    }
    dataSeconds += (t1 - t0) / 1000;
    computeSeconds += (performance.now() - t1) / 1000;
  }
  const mean = (x: number) => (triplets > 0 ? x / triplets : 0);
  // One shard (the usual case) is its own average: no multi-megabyte copy.
  const only = (s: ShardGradient[]) => (s.length === 1 ? s[0].grads : undefined);
  const contributing = shardGrads.filter((s) => s.triplets > 0);
  const grads =
    contributing.length === 0
      ? zerosLike(shardGrads[0].grads)
      : (only(contributing) ?? weightedAverage(contributing).grads);
  const bnStats = only(shardStats) ?? weightedAverage(shardStats).grads;
  return {
    triplets,
    activeTriplets: active,
    loss: mean(lossSum),
    meanPositiveDistance: mean(dapSum),
    meanNegativeDistance: mean(danSum),
    grads,
    bnStats,
    shards: shards.length,
    dataSeconds,
    computeSeconds,
  };
}

/** No shard found a triplet: a zero gradient of weight 0 still answers the assignment. */
function zerosLike(grads: Map<string, Float32Array>): Map<string, Float32Array> {
  return new Map([...grads].map(([name, g]) => [name, new Float32Array(g.length)]));
}
