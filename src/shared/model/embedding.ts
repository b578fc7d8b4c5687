// Retrieval embeddings from class capsules: each capsule L2-normalised, all but one category's
// capsule masked to zero, flattened to [batch, categories * dim].
//   mask "label":     the given category (training: the anchor's label; evaluation: "oracle")
//   mask "predicted": the longest capsule (honest inference, the default)
//   mask "none":      all capsules kept
import * as tf from '@tensorflow/tfjs-core';
import { l2Normalize, safeNorm } from './squash.js';

export const MASK_MODES = ['predicted', 'oracle', 'none'] as const;
export type MaskMode = (typeof MASK_MODES)[number];

/** Capsule lengths [batch, categories]. */
export function capsuleLengths(capsules: tf.Tensor3D): tf.Tensor2D {
  return safeNorm(capsules) as tf.Tensor2D;
}

/** Index of the longest capsule per image. */
export function predictedCategories(capsules: tf.Tensor3D): tf.Tensor1D {
  return tf.tidy(() => tf.argMax(capsuleLengths(capsules), 1) as tf.Tensor1D);
}

export function embed(capsules: tf.Tensor3D, mode: MaskMode, labels?: tf.Tensor1D | number[]): tf.Tensor2D {
  return tf.tidy(() => {
    const [batch, classes, dim] = capsules.shape;
    const unit = l2Normalize(capsules);
    if (mode === 'none') return tf.reshape(unit, [batch, classes * dim]) as tf.Tensor2D;
    let categories: tf.Tensor1D;
    if (mode === 'oracle') {
      if (labels === undefined) throw new Error('embed: mask "oracle" needs category labels');
      categories = (Array.isArray(labels) ? tf.tensor1d(labels, 'int32') : labels) as tf.Tensor1D;
    } else {
      categories = predictedCategories(capsules);
    }
    const mask = tf.expandDims(tf.oneHot(tf.cast(categories, 'int32'), classes), 2); // [batch, classes, 1]
    return tf.reshape(tf.mul(unit, mask), [batch, classes * dim]) as tf.Tensor2D;
  });
}
