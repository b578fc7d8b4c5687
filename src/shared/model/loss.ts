// Losses on embeddings and capsules.
//   triplet loss: mean over triplets of max(0, |a-p|^2 - |a-n|^2 + margin)   (squared L2)
//   capsule margin loss: sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2
import * as tf from '@tensorflow/tfjs-core';
import type { Triplet } from './mining.js';
import { capsuleLengths } from './embedding.js';

/** Squared Euclidean distances between all rows, [n, n] (exact differences: no cancellation). */
export function pairwiseSquaredDistances(embeddings: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const diff = tf.sub(tf.expandDims(embeddings, 1), tf.expandDims(embeddings, 0));
    return tf.sum(tf.square(diff), -1) as tf.Tensor2D;
  });
}

export interface TripletLossResult {
  loss: tf.Scalar;
  /** Per-triplet hinge values (for statistics). */
  hinge: tf.Tensor1D;
  positiveDistances: tf.Tensor1D;
  negativeDistances: tf.Tensor1D;
}

/**
 * Triplet loss on the embeddings of mined triplets. With no triplets the loss is 0.
 * Rows are selected by matMul with a signed one-hot matrix ((A - P) e = a - p): gather's gradient
 * needs UnsortedSegmentSum, which the wasm backend lacks.
 */
export function tripletLoss(embeddings: tf.Tensor2D, triplets: Triplet[], margin: number): TripletLossResult {
  const n = embeddings.shape[0];
  if (triplets.length === 0) {
    return { loss: tf.scalar(0), hinge: tf.zeros([0]) as tf.Tensor1D, positiveDistances: tf.zeros([0]) as tf.Tensor1D, negativeDistances: tf.zeros([0]) as tf.Tensor1D };
  }
  const selector = (other: (t: Triplet) => number): tf.Tensor2D => {
    const m = new Float32Array(triplets.length * n);
    triplets.forEach((t, i) => {
      m[i * n + t.anchor] += 1;
      m[i * n + other(t)] -= 1;
    });
    return tf.tensor2d(m, [triplets.length, n]);
  };
  const positiveDistances = tf.sum(tf.square(tf.matMul(selector((t) => t.positive), embeddings)), 1) as tf.Tensor1D;
  const negativeDistances = tf.sum(tf.square(tf.matMul(selector((t) => t.negative), embeddings)), 1) as tf.Tensor1D;
  const hinge = tf.relu(tf.add(tf.sub(positiveDistances, negativeDistances), margin)) as tf.Tensor1D;
  return { loss: tf.mean(hinge) as tf.Scalar, hinge, positiveDistances, negativeDistances };
}

export interface MarginLossOptions {
  mPlus?: number;
  mMinus?: number;
  lambda?: number;
}

/** Capsule margin loss averaged over the batch; labels are category indices. */
export function capsuleMarginLoss(capsules: tf.Tensor3D, labels: number[], { mPlus = 0.9, mMinus = 0.1, lambda = 0.5 }: MarginLossOptions = {}): tf.Scalar {
  return tf.tidy(() => {
    const lengths = capsuleLengths(capsules);
    const target = tf.oneHot(tf.tensor1d(labels, 'int32'), capsules.shape[1]);
    const present = tf.mul(target, tf.square(tf.relu(tf.sub(mPlus, lengths))));
    const absent = tf.mul(tf.mul(tf.sub(1, target), lambda), tf.square(tf.relu(tf.sub(lengths, mMinus))));
    return tf.mean(tf.sum(tf.add(present, absent), 1)) as tf.Scalar;
  });
}
