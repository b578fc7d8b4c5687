// Zero vectors must not produce NaN anywhere: every root has an epsilon inside.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { l2Normalize, safeNorm, squash } from '../../src/shared/model/squash.js';
import { embed } from '../../src/shared/model/embedding.js';
import { anchorMaskedDistances, capsuleMarginLoss } from '../../src/shared/model/loss.js';
import { tripletLossOf as tripletLoss } from '../../src/shared/model/device-mining.js';
import { pairwiseSquaredDistances, useBackend } from '../helpers.js';

const allFinite = (t: tf.Tensor) => Array.from(t.dataSync()).every(Number.isFinite);

describe('no NaN at zero', () => {
  it('squash, norms and normalisation are finite with finite gradients at zero', async () => {
    await useBackend('cpu');
    const zeros = tf.zeros([2, 3, 4]);
    for (const f of [squash, l2Normalize, (x: tf.Tensor) => safeNorm(x)]) {
      expect(allFinite(f(zeros))).toBe(true);
      const g = tf.grad((x: tf.Tensor) => tf.sum(f(x)))(zeros);
      expect(allFinite(g)).toBe(true);
    }
    expect(Array.from(squash(zeros).dataSync()).every((v) => v === 0)).toBe(true);
  });

  it('embeddings and both losses of all-zero capsules have finite values and gradients', async () => {
    await useBackend('cpu');
    const capsules = tf.zeros([4, 3, 4]) as tf.Tensor3D;
    const triplets = [
      { anchor: 0, positive: 1, negative: 2 },
      { anchor: 2, positive: 3, negative: 0 },
    ];
    for (const mode of ['predicted', 'oracle', 'none'] as const) {
      const g = tf.grad((c: tf.Tensor) => {
        const e = embed(c as tf.Tensor3D, mode, [0, 0, 1, 1]);
        const masked = anchorMaskedDistances(l2Normalize(c) as tf.Tensor3D, [0, 0, 1, 1]);
        return tf.addN([
          tripletLoss(pairwiseSquaredDistances(e), triplets, 2).loss,
          tripletLoss(masked, triplets, 2).loss,
          capsuleMarginLoss(c as tf.Tensor3D, [0, 0, 1, 1]),
        ]);
      })(capsules);
      expect(allFinite(g)).toBe(true);
    }
    const e = embed(capsules, 'oracle', [0, 0, 1, 1]);
    expect(tripletLoss(pairwiseSquaredDistances(e), triplets, 2).loss.dataSync()[0]).toBeCloseTo(2);
  });
});

describe('embedding masks', () => {
  it('the evaluation path (host masks) equals the tensor path for every mask', async () => {
    await useBackend('cpu');
    const { maskedEmbeddings } = await import('../../src/shared/eval/evaluate.js');
    const capsules = tf.randomNormal([5, 4, 3], 0, 1, 'float32', 9) as tf.Tensor3D;
    const labels = [0, 3, 1, 1, 2];
    const unit = l2Normalize(capsules).dataSync() as Float32Array;
    const predicted = tf.argMax(tf.sum(tf.square(capsules), -1), 1).dataSync() as Int32Array;
    for (const mode of ['predicted', 'oracle', 'none'] as const) {
      const host = maskedEmbeddings({ unit, categories: 4, dim: 3, predicted }, mode, labels);
      const tensor = embed(capsules, mode, labels).dataSync();
      expect(host.length).toBe(tensor.length);
      Array.from(tensor).forEach((v, i) => expect(host[i]).toBeCloseTo(v, 6));
    }
  });
});
