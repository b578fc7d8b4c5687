// Capsule non-linearities. Roots have an epsilon inside (sqrt's gradient is NaN at 0), except l2Normalize,
// which scales first and defines the zero vector's case.
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
function squashOps(s: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const squared = tf.sum(tf.square(s), -1, true);
    const scale = tf.div(squared, tf.mul(tf.add(squared, 1), tf.sqrt(tf.add(squared, ROOT_EPSILON))));
    return tf.mul(s, scale);
  });
}

/** Below this a length counts as zero (float32's smallest normal numbers are ~1e-38). */
const ZERO_LENGTH = 1e-30;

/**
 * Unit vectors along the last axis: x / |x| for every x that is not exactly zero, however short
 * (capsules of length 1e-6 included: an epsilon inside the root would shrink them, and the triplet
 * margin would then mean something else); the zero vector maps to zero, with gradient zero.
 * |x| is taken as m * |x / m| with m = max |x_i|, so it neither underflows nor overflows.
 * Gradient: (g - z <z, g>) / |x|, the projection of the upstream gradient off z, scaled by 1/|x|.
 */
export function l2Normalize(x: tf.Tensor): tf.Tensor {
  const op = tf.customGrad(((xIn: tf.Tensor, save: tf.GradSaveFunc) => {
    const m = tf.max(tf.abs(xIn), -1, true);
    const scaled = tf.div(xIn, tf.maximum(m, ZERO_LENGTH)); // largest entry 1 (or all 0)
    const n = tf.sqrt(tf.sum(tf.square(scaled), -1, true)); // in [1, sqrt(d)], or 0
    const z = tf.div(scaled, tf.maximum(n, ZERO_LENGTH));
    // 1 / |x| where |x| > 0, else 0: the zero vector gets a zero gradient, not an infinite one.
    const length = tf.mul(n, m);
    const inverse = tf.div(tf.step(tf.sub(length, ZERO_LENGTH)), tf.maximum(length, ZERO_LENGTH));
    save([z, inverse]);
    return {
      value: z,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [zs, inv] = saved;
        return tf.mul(tf.sub(dy, tf.mul(zs, tf.sum(tf.mul(zs, dy), -1, true))), inv);
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(x);
}
