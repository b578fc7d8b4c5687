// In-batch triplet mining and the triplet loss as one tensor program, so a training step never waits
// for the device mid-step: the distances are not read back to choose triplets. GPU engines (webgpu)
// have no cheap synchronous read, and on a real GPU a mid-step read drains the queue.
//   distances D [n, n] (anchor-masked squared distances), labels [n] (item ids, host constants)
//   -> loss (scalar), stats [4] = [triplets, active triplets, sum d(a,p), sum d(a,n)]
// Triplet choice is the same as the host miner's (mining.ts, the reference the tests compare with):
//   random      host-chosen from labels and seed (distances are not needed), picked by one-hot rows
//   batch-hard  per anchor: farthest positive, closest negative (argMax/argMin: ties to lower index)
//   semi-hard   per (anchor, positive): closest negative n with d(a,p) < d(a,n) <= d(a,p) + margin;
//               pairs without one contribute nothing (their count is data-dependent, so on device)
import * as tf from '@tensorflow/tfjs-core';
import { mineTriplets, type MiningStrategy, type Triplet } from './mining.js';

export interface DeviceTripletLoss {
  /** Mean hinge over the chosen triplets; 0 (still connected to the distances) without any. */
  loss: tf.Scalar;
  /** [triplets, active (hinge > 0), sum of d(a,p), sum of d(a,n)] over the chosen triplets. */
  stats: tf.Tensor1D;
  /** Anchors with no positive or no negative in the batch (known from the labels alone). */
  skippedAnchors: number;
}

/** Masks from the labels alone (host): positives exclude the anchor itself. */
export function labelMasks(labels: ArrayLike<number>): {
  positive: Float32Array;
  negative: Float32Array;
  usable: Float32Array;
  usableCount: number;
} {
  const n = labels.length;
  const positive = new Float32Array(n * n);
  const negative = new Float32Array(n * n);
  const usable = new Float32Array(n);
  let usableCount = 0;
  for (let a = 0; a < n; a++) {
    let pos = 0;
    let neg = 0;
    for (let j = 0; j < n; j++) {
      if (j === a) continue;
      if (labels[j] === labels[a]) {
        positive[a * n + j] = 1;
        pos++;
      } else {
        negative[a * n + j] = 1;
        neg++;
      }
    }
    if (pos > 0 && neg > 0) {
      usable[a] = 1;
      usableCount++;
    }
  }
  return { positive, negative, usable, usableCount };
}

// Larger than any squared distance of unit vectors (at most 4), small enough to stay exact in float32.
const FAR = 1e6;

/** Hinge, masked by `valid`, reduced to the loss and the statistics. */
function reduceHinge(
  dap: tf.Tensor,
  dan: tf.Tensor,
  valid: tf.Tensor,
  count: tf.Scalar,
  margin: number,
): Omit<DeviceTripletLoss, 'skippedAnchors'> {
  const hinge = tf.mul(tf.relu(tf.add(tf.sub(dap, dan), margin)), valid);
  const loss = tf.div(tf.sum(hinge), tf.maximum(count, 1)) as tf.Scalar;
  const active = tf.sum(tf.mul(tf.step(hinge), valid));
  const stats = tf.stack([count, active, tf.sum(tf.mul(dap, valid)), tf.sum(tf.mul(dan, valid))]) as tf.Tensor1D;
  return { loss, stats };
}

/** Picks D[a, x] for each triplet with one-hot rows (gather's gradient is missing on wasm). */
function pickTriplets(distances: tf.Tensor2D, triplets: Triplet[]): { dap: tf.Tensor1D; dan: tf.Tensor1D } {
  const n = distances.shape[0];
  const flat = tf.reshape(distances, [n * n, 1]);
  const pick = (index: (t: Triplet) => number): tf.Tensor1D => {
    const rows = new Float32Array(triplets.length * n * n);
    triplets.forEach((t, i) => (rows[i * n * n + index(t)] = 1));
    return tf.reshape(tf.matMul(tf.tensor2d(rows, [triplets.length, n * n]), flat), [triplets.length]) as tf.Tensor1D;
  };
  return { dap: pick((t) => t.anchor * n + t.positive), dan: pick((t) => t.anchor * n + t.negative) };
}

/** The triplet loss, mean over triplets of max(0, d(a,p) - d(a,n) + margin), for given triplets. */
export function tripletLossOf(
  distances: tf.Tensor2D,
  triplets: Triplet[],
  margin: number,
): Omit<DeviceTripletLoss, 'skippedAnchors'> {
  const { dap, dan } = pickTriplets(distances, triplets);
  return reduceHinge(dap, dan, tf.onesLike(dap), tf.scalar(triplets.length), margin);
}

/** Row-wise selection of D by one-hot indices: sum_j onehot[..., j] * D[a, j]. */
function selectByIndex(distances: tf.Tensor2D, index: tf.Tensor): tf.Tensor {
  const n = distances.shape[0];
  return tf.sum(tf.mul(tf.oneHot(index as tf.Tensor1D, n), distances), -1);
}

export function deviceTripletLoss(
  distances: tf.Tensor2D,
  labels: ArrayLike<number>,
  strategy: MiningStrategy,
  margin: number,
  seed: number,
): DeviceTripletLoss {
  const n = labels.length;
  if (distances.shape[0] !== n || distances.shape[1] !== n)
    throw new Error(`mining: distance matrix is [${distances.shape}] for ${n} labels`);
  const masks = labelMasks(labels);
  const skippedAnchors = n - masks.usableCount;
  if (strategy === 'random') {
    const { triplets } = mineTriplets('random', { labels, margin, seed });
    if (triplets.length === 0) {
      // Still a function of the distances, so the gradient exists (and is zero).
      const zero = tf.mul(tf.sum(distances), 0);
      return { loss: zero as tf.Scalar, stats: tf.zeros([4]) as tf.Tensor1D, skippedAnchors };
    }
    return { ...tripletLossOf(distances, triplets, margin), skippedAnchors };
  }
  const positive = tf.tensor2d(masks.positive, [n, n]);
  const negative = tf.tensor2d(masks.negative, [n, n]);
  if (strategy === 'batch-hard') {
    // Mining reads values only: the selection (argMax/argMin) carries no gradient.
    const hardestPositive = tf.argMax(tf.sub(tf.mul(distances, positive), tf.mul(tf.sub(1, positive), FAR)), 1);
    const hardestNegative = tf.argMin(tf.add(tf.mul(distances, negative), tf.mul(tf.sub(1, negative), FAR)), 1);
    const dap = selectByIndex(distances, hardestPositive);
    const dan = selectByIndex(distances, hardestNegative);
    return {
      ...reduceHinge(dap, dan, tf.tensor1d(masks.usable), tf.scalar(masks.usableCount), margin),
      skippedAnchors,
    };
  }
  // semi-hard: candidates [a, p, j] = negative(a, j) and d(a,p) < d(a,j) <= d(a,p) + margin.
  const dAP = tf.expandDims(distances, 2); // [a, p, 1]
  const dAJ = tf.expandDims(distances, 1); // [a, 1, j]
  // tf.step, not greater/lessEqual: the masks sit on the gradient's path (their gradient is zero,
  // but every op there needs one registered).
  const beyondPositive = tf.step(tf.sub(dAJ, dAP)); // d(a,j) > d(a,p)
  const withinMargin = tf.sub(1, tf.step(tf.sub(dAJ, tf.add(dAP, margin)))); // d(a,j) <= d(a,p) + margin
  const candidate = tf.mul(tf.expandDims(negative, 1), tf.mul(beyondPositive, withinMargin)); // [a, p, j]
  const closest = tf.argMin(tf.add(tf.mul(dAJ, candidate), tf.mul(tf.sub(1, candidate), FAR)), 2); // [a, p]
  const valid = tf.mul(positive, tf.max(candidate, 2)); // [a, p]: a positive pair with a semi-hard negative
  const dan = tf.squeeze(tf.matMul(tf.oneHot(closest as tf.Tensor2D, n), tf.expandDims(distances, 2)), [2]); // [a, p]
  return { ...reduceHinge(distances, dan, valid, tf.sum(valid) as tf.Scalar, margin), skippedAnchors };
}
