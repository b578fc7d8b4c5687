// The hand-written BatchNorm backward pass against autodiff through tf.moments.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { batchNormTraining } from '../../src/shared/model/batch-norm.js';
import { relativeError, seededNormal, useBackend } from '../helpers.js';

describe('BatchNorm (training mode)', () => {
  it.each(['cpu', 'wasm'] as const)('gradients for x, gamma, beta match autodiff (%s)', async (backend) => {
    await useBackend(backend);
    const x = tf.add(tf.mul(seededNormal([3, 5, 4, 6], 1), 3), 1) as tf.Tensor4D;
    const gamma = seededNormal([6], 2);
    const beta = seededNormal([6], 3);
    const probe = seededNormal([3, 5, 4, 6], 4);
    const reference = (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
      const { mean, variance } = tf.moments(xi, [0, 1, 2]);
      return tf.sum(tf.mul(tf.add(tf.mul(tf.div(tf.sub(xi, mean), tf.sqrt(tf.add(variance, 1e-3))), g), b), probe));
    };
    const ours = (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
      const r = batchNormTraining(xi as tf.Tensor4D, g, b, 1e-3);
      tf.dispose([r.mean, r.variance]);
      return tf.sum(tf.mul(r.y, probe));
    };
    const expected = tf.grads(reference)([x, gamma, beta]);
    const actual = tf.grads(ours)([x, gamma, beta]);
    for (let i = 0; i < 3; i++) expect(relativeError(actual[i].dataSync(), expected[i].dataSync())).toBeLessThan(1e-4);
    const r = batchNormTraining(x, gamma, beta, 1e-3);
    const m = tf.moments(x, [0, 1, 2]);
    expect(relativeError(r.mean.dataSync(), m.mean.dataSync())).toBeLessThan(1e-5);
    expect(relativeError(r.variance.dataSync(), m.variance.dataSync())).toBeLessThan(1e-5);
  });
});
