// A worker's part of a step: loads and augments the images of its mining shards, computes each
// shard's gradient (mining and BatchNorm statistics inside the shard) and combines them into one
// triplet-weighted gradient, so the coordinator's weighted average over workers equals the average
// over shards whatever the number of workers. No network: the worker process and tests call it.
import * as tf from '@tensorflow/tfjs-core';
import type { Catalogue } from '../shared/data/catalogue.js';
import { loadTrainingImages } from '../shared/data/batch.js';
import type { ConvFn } from '../shared/engine/engine.js';
import type { ModelState } from '../shared/model/params.js';
import type { PlannedShard } from '../shared/plan/step-plan.js';
import { hashInts } from '../shared/rng.js';
import type { TrainConfig } from '../shared/train-config.js';
import { computeGradients } from './trainer.js';

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
}

export async function computeShardsGradient(shards: PlannedShard[], ctx: ShardContext): Promise<ShardsGradient> {
  if (shards.length === 0) throw new Error('computeShardsGradient: no shards');
  const size = ctx.model.arch.config.imageSize;
  const grads = new Map<string, Float32Array>();
  const bnStats = new Map<string, Float32Array>();
  let triplets = 0;
  let active = 0;
  let lossSum = 0;
  let dapSum = 0;
  let danSum = 0;
  let dataSeconds = 0;
  let computeSeconds = 0;
  for (const shard of shards) {
    const t0 = performance.now();
    const pixels = await loadTrainingImages(ctx.catalogue, shard.imageIds, size, ctx.cfg.augment, { seed: ctx.cfg.seed, epoch: ctx.epoch, step: ctx.step, worker: shard.index });
    const t1 = performance.now();
    const images = tf.tensor4d(pixels, [shard.imageIds.length, size, size, 3]);
    const result = computeGradients(
      ctx.model,
      { images, itemIds: shard.itemIds, categories: shard.imageIds.map((id) => ctx.catalogue.images[id].category) },
      { mining: ctx.cfg.mining, margin: ctx.cfg.margin, marginLossWeight: ctx.cfg.marginLossWeight, conv: ctx.conv, seed: hashInts(ctx.cfg.seed, ctx.epoch, ctx.step, shard.index) },
    );
    images.dispose();
    try {
      const w = result.stats.triplets;
      triplets += w;
      active += result.stats.activeTriplets;
      lossSum += w * result.stats.loss;
      dapSum += w * result.stats.meanPositiveDistance;
      danSum += w * result.stats.meanNegativeDistance;
      for (const [name, g] of result.grads) accumulate(grads, name, g.dataSync() as Float32Array, w);
      for (const [name, s] of result.bnUpdates) accumulate(bnStats, name, s.dataSync() as Float32Array, 1 / shards.length);
    } finally {
      result.dispose();
    }
    dataSeconds += (t1 - t0) / 1000;
    computeSeconds += (performance.now() - t1) / 1000;
  }
  if (triplets > 0) for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] /= triplets;
  const mean = (x: number) => (triplets > 0 ? x / triplets : 0);
  return { triplets, activeTriplets: active, loss: mean(lossSum), meanPositiveDistance: mean(dapSum), meanNegativeDistance: mean(danSum), grads, bnStats, shards: shards.length, dataSeconds, computeSeconds };
}

function accumulate(into: Map<string, Float32Array>, name: string, values: Float32Array, weight: number): void {
  let acc = into.get(name);
  if (!acc) into.set(name, (acc = new Float32Array(values.length)));
  for (let i = 0; i < values.length; i++) acc[i] += weight * values[i];
}
