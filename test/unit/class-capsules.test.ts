// Class capsules: the hand-written gradients of the capsule transform and the routing products
// against autodiff of the same routing written with plain tfjs ops.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { classCapsules } from '../../src/shared/model/class-capsules.js';
import { squash } from '../../src/shared/model/squash.js';
import { relativeError, seededNormal, useBackend } from '../helpers.js';

/** The routing of ../shared/reference/tricapsnet.md written plainly (einsum-free, stock gradients). */
function plainRouting(
  u: tf.Tensor3D,
  w: tf.Tensor2D,
  classes: number,
  dim: number,
  iterations: number,
  rule: 'reassign' | 'accumulate',
): tf.Tensor {
  const [batch, caps, inDim] = u.shape;
  const uHat = tf.reshape(tf.matMul(tf.reshape(u, [batch * caps, inDim]), w), [batch, caps, classes, dim]);
  let b: tf.Tensor = tf.zeros([batch, caps, classes]);
  let v: tf.Tensor = tf.zeros([batch, classes, dim]);
  for (let i = 0; i < iterations; i++) {
    const c = tf.softmax(b);
    v = squash(tf.sum(tf.mul(tf.expandDims(c, 3), uHat), 1));
    if (i < iterations - 1) {
      const a = tf.sum(tf.mul(uHat, tf.expandDims(v, 1)), 3);
      b = rule === 'reassign' ? a : tf.add(b, a);
    }
  }
  return v;
}

describe('class capsules', () => {
  it.each([
    ['reassign', 3],
    ['accumulate', 3],
    ['reassign', 1],
  ] as const)(
    'routing %s x%i: values and gradients equal the plain formulation (both transform paths)',
    async (rule, iterations) => {
      for (const [backend, blockDiagonal] of [
        ['cpu', true],
        ['cpu', false],
        ['wasm', true],
        ['wasm', false],
      ] as const) {
        await useBackend(backend);
        const u = squash(tf.mul(seededNormal([3, 40, 8], 1), 1.5)) as tf.Tensor3D;
        const w = tf.mul(seededNormal([8, 5 * 6], 2), 0.3) as tf.Tensor2D;
        const probe = seededNormal([3, 5, 6], 3);
        const cfg = { categories: 5, classCapsuleDim: 6, routingIterations: iterations, routingRule: rule };
        const ours = (a: tf.Tensor, b: tf.Tensor) =>
          tf.sum(tf.mul(classCapsules(a as tf.Tensor3D, b as tf.Tensor2D, cfg, blockDiagonal), probe));
        const plain = (a: tf.Tensor, b: tf.Tensor) =>
          tf.sum(tf.mul(plainRouting(a as tf.Tensor3D, b as tf.Tensor2D, 5, 6, iterations, rule), probe));
        expect(
          relativeError(
            classCapsules(u, w, cfg, blockDiagonal).dataSync(),
            plainRouting(u, w, 5, 6, iterations, rule).dataSync(),
          ),
        ).toBeLessThan(1e-5);
        const [du, dw] = tf.grads(ours)([u, w]);
        const [pu, pw] = tf.grads(plain)([u, w]);
        expect(relativeError(du.dataSync(), pu.dataSync()), `${backend} ${blockDiagonal} du`).toBeLessThan(1e-4);
        expect(relativeError(dw.dataSync(), pw.dataSync()), `${backend} ${blockDiagonal} dW`).toBeLessThan(1e-4);
      }
    },
  );
});
