// Random PK batches and the two ways of mining them (host reference, on the device), for the
// device-mining tests on every backend.
import * as tf from '@tensorflow/tfjs-core';
import { deviceTripletLoss, tripletLossOf } from '../src/shared/model/device-mining.js';
import { mineTriplets, type MiningStrategy } from '../src/shared/model/mining.js';
import { Rng } from '../src/shared/rng.js';

/** A PK batch's labels and squared distances of random unit vectors (values in [0, 4]). */
export function randomBatch(
  seed: number,
  items: number,
  perItem: number,
): { labels: number[]; distances: Float32Array } {
  const rng = new Rng(seed);
  const n = items * perItem;
  const dim = 4;
  const v = Array.from({ length: n }, () => {
    const x = Array.from({ length: dim }, () => rng.normal());
    const norm = Math.hypot(...x);
    return x.map((c) => c / norm);
  });
  const distances = new Float32Array(n * n);
  for (let a = 0; a < n; a++)
    for (let b = 0; b < n; b++) distances[a * n + b] = v[a].reduce((s, c, k) => s + (c - v[b][k]) ** 2, 0);
  // Item ids need not be sorted or contiguous.
  const labels = Array.from({ length: n }, (_, i) => 100 + ((Math.floor(i / perItem) * 7) % items));
  return { labels, distances };
}

/** Loss and statistics from host-mined triplets, as numbers. */
export async function hostReference(
  strategy: MiningStrategy,
  labels: number[],
  distances: Float32Array,
  margin: number,
  seed: number,
) {
  const n = labels.length;
  const { triplets, skippedAnchors } = mineTriplets(strategy, { distances, labels, margin, seed });
  if (triplets.length === 0) return { loss: 0, stats: [0, 0, 0, 0], skippedAnchors, triplets: 0 };
  const d = tf.tensor2d(distances, [n, n]);
  const r = tripletLossOf(d, triplets, margin);
  const out = {
    loss: (await r.loss.data())[0],
    stats: Array.from(await r.stats.data()),
    skippedAnchors,
    triplets: triplets.length,
  };
  tf.dispose([d, r.loss, r.stats]);
  return out;
}

export async function deviceResult(
  strategy: MiningStrategy,
  labels: number[],
  distances: Float32Array,
  margin: number,
  seed: number,
) {
  const n = labels.length;
  const d = tf.tensor2d(distances, [n, n]);
  const r = deviceTripletLoss(d, labels, strategy, margin, seed);
  const out = {
    loss: (await r.loss.data())[0],
    stats: Array.from(await r.stats.data()),
    skippedAnchors: r.skippedAnchors,
  };
  tf.dispose([d, r.loss, r.stats]);
  return out;
}
