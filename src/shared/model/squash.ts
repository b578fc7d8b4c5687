// Capsule non-linearities. Every root has an epsilon inside: sqrt's gradient is NaN at 0.
import * as tf from '@tensorflow/tfjs-core';

export const ROOT_EPSILON = 1e-7;

/** Euclidean length along the last axis, safe at zero: sqrt(sum(x^2) + eps). */
export function safeNorm(x: tf.Tensor, keepDims = false): tf.Tensor {
  return tf.sqrt(tf.add(tf.sum(tf.square(x), -1, keepDims), ROOT_EPSILON));
}

/** The fused kernel's name (engine/webgpu-kernels.ts registers it for webgpu). */
const FUSED_SQUASH = 'TricapsSquash';

/** squash(s) = |s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps), along the last axis. */
export function squash(s: tf.Tensor): tf.Tensor {
  // One dispatch (and one for its gradient) where the engine has the fused kernel.
  if (tf.getKernel(FUSED_SQUASH, tf.getBackend()) && s.dtype === 'float32')
    return tf.engine().runKernel(FUSED_SQUASH, { x: s }) as tf.Tensor;
  return squashOps(s);
}

/** squash as plain tfjs ops (every engine; the reference for the fused kernel). */
export function squashOps(s: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const squared = tf.sum(tf.square(s), -1, true);
    const scale = tf.div(squared, tf.mul(tf.add(squared, 1), tf.sqrt(tf.add(squared, ROOT_EPSILON))));
    return tf.mul(s, scale);
  });
}

/** Unit vectors along the last axis (zero vectors stay finite: they map to zero). */
export function l2Normalize(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.div(x, safeNorm(x, true)));
}
