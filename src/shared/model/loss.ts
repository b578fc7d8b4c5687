// Distances and losses on embeddings and capsules (the triplet loss with its mining: device-mining.ts).
//   capsule margin loss: sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2
import * as tf from '@tensorflow/tfjs-core';
import { capsuleLengths } from './embedding.js';

/**
 * Training distances with the anchor's mask (reference): every image of a triplet is masked with the
 * anchor's category, so D[a, x] = |unit(v_x)[cat(a)] - unit(v_a)[cat(a)]|^2 compares the same
 * capsule in both images. Not symmetric when categories differ.
 *   unitCapsules [n, classes, dim] (L2-normalised), categories [n] -> D [n, n]
 * (Masking each image with its own category instead would put every cross-category pair at
 * exactly 2, so random negatives would carry no gradient and embeddings collapse.)
 */
export function anchorMaskedDistances(unitCapsules: tf.Tensor3D, categories: number[]): tf.Tensor2D {
  return tf.tidy(() => {
    const [n, classes, dim] = unitCapsules.shape;
    const mask = tf.oneHot(tf.tensor1d(categories, 'int32'), classes); // [n, classes]
    const own = tf.sum(tf.mul(unitCapsules, tf.expandDims(mask, 2)), 1); // [n, dim]: U[a, cat(a)]
    const byClass = tf.reshape(tf.transpose(unitCapsules, [1, 0, 2]), [classes, n * dim]);
    const others = tf.reshape(tf.matMul(mask, byClass), [n, n, dim]); // [a, x]: U[x, cat(a)]
    return tf.sum(tf.square(tf.sub(tf.expandDims(own, 1), others)), -1) as tf.Tensor2D;
  });
}

export interface MarginLossOptions {
  mPlus?: number;
  mMinus?: number;
  lambda?: number;
}

/** Capsule margin loss averaged over the batch; labels are category indices. */
export function capsuleMarginLoss(
  capsules: tf.Tensor3D,
  labels: number[],
  { mPlus = 0.9, mMinus = 0.1, lambda = 0.5 }: MarginLossOptions = {},
): tf.Scalar {
  return tf.tidy(() => {
    const lengths = capsuleLengths(capsules);
    const target = tf.oneHot(tf.tensor1d(labels, 'int32'), capsules.shape[1]);
    const present = tf.mul(target, tf.square(tf.relu(tf.sub(mPlus, lengths))));
    const absent = tf.mul(tf.mul(tf.sub(1, target), lambda), tf.square(tf.relu(tf.sub(lengths, mMinus))));
    return tf.mean(tf.sum(tf.add(present, absent), 1)) as tf.Scalar;
  });
}
