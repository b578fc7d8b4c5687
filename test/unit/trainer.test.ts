// The split training step: compute gradients (worker) then apply them (optimizer).
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { fastGradConv } from '../../src/shared/engine/engine.js';
import { ParameterUpdater } from '../../src/coordinator/optimizer.js';
import { OptimizerConfigSchema } from '../../src/shared/optimizer-config.js';
import { computeGradients } from '../../src/shared/train/gradients.js';
import { useBackend } from '../helpers.js';
import { tinyBatch, tinyModel } from '../tiny-model.js';

describe('training step', () => {
  it('lowers the loss on a fixed batch and leaks no tensors', async () => {
    await useBackend('wasm');
    const model = tinyModel({ dropout: 0.3 });
    const batch = tinyBatch(4, 3);
    const updater = new ParameterUpdater(model, OptimizerConfigSchema.parse({ learningRate: 3e-3 }));
    const losses: number[] = [];
    const tensorCounts: number[] = [];
    for (let step = 0; step < 25; step++) {
      // Same seed every step: the same random triplets, so the objective is fixed and must fall.
      const r = computeGradients(model, batch, {
        mining: 'random',
        margin: 2,
        marginLossWeight: 0.5,
        conv: fastGradConv,
        seed: 1,
      });
      expect(r.grads.size).toBe(model.trainable.size);
      expect(r.bnUpdates.size).toBe(model.buffers.size);
      const stats = await r.readStats();
      updater.apply(r.grads, r.bnUpdates, 0);
      r.dispose();
      losses.push(stats.loss);
      tensorCounts.push(tf.memory().numTensors);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(losses.slice(-5))).toBeLessThan(0.7 * mean(losses.slice(0, 5)));
    // Adam creates its slots on the first step; after that the count must not move.
    expect(new Set(tensorCounts.slice(1)).size).toBe(1);
    updater.dispose();
    model.dispose();
  });

  it('updates BatchNorm moving statistics with momentum', async () => {
    await useBackend('cpu');
    const model = tinyModel();
    const updater = new ParameterUpdater(model, OptimizerConfigSchema.parse({}));
    const before = model.buffers.get('stem/bn/moving_variance')!.dataSync().slice();
    const r = computeGradients(model, tinyBatch(), {
      mining: 'batch-hard',
      margin: 2,
      marginLossWeight: 0,
      conv: fastGradConv,
      seed: 1,
    });
    const proposed = r.bnUpdates.get('stem/bn/moving_variance')!.dataSync().slice();
    updater.apply(r.grads, r.bnUpdates, 0);
    r.dispose();
    expect(Array.from(model.buffers.get('stem/bn/moving_variance')!.dataSync())).toEqual(Array.from(proposed));
    expect(Array.from(proposed)).not.toEqual(Array.from(before));
    updater.dispose();
    model.dispose();
  });

  it('moves the BatchNorm statistics as Keras does: momentum, and the batch variance made unbiased (n / (n - 1 - eps))', async () => {
    await useBackend('cpu');
    const model = tinyModel();
    const batch = tinyBatch();
    const { forward } = await import('../../src/shared/model/tricapsnet.js');
    const { bnUpdates } = forward(model, batch.images, { training: true });
    // The stem's pre-BN activations computed here, independently: conv 7x7 stride 2 'same' + bias.
    const pre = tf.add(
      tf.conv2d(batch.images, model.trainable.get('stem/conv/kernel') as tf.Tensor4D, 2, 'same'),
      model.trainable.get('stem/conv/bias')!,
    );
    const { mean, variance } = tf.moments(pre, [0, 1, 2]);
    const n = pre.size / pre.shape[3];
    const { bnMomentum: m, bnEpsilon: eps } = model.arch.config;
    const expectedMean = Array.from(await mean.data()).map((v) => (1 - m) * v); // moving mean starts at 0
    const expectedVar = Array.from(await variance.data()).map((v) => m * 1 + (1 - m) * v * (n / (n - (1 + eps)))); // starts at 1
    const gotMean = Array.from(await bnUpdates.get('stem/bn/moving_mean')!.data());
    const gotVar = Array.from(await bnUpdates.get('stem/bn/moving_variance')!.data());
    gotMean.forEach((v, i) => expect(v).toBeCloseTo(expectedMean[i], 6));
    gotVar.forEach((v, i) => expect(v).toBeCloseTo(expectedVar[i], 6));
    // The unbiased factor is visible at this size (n = 8 images x 8 x 8): biased would differ.
    const biased = Array.from(await variance.data()).map((v) => m + (1 - m) * v);
    expect(Math.max(...gotVar.map((v, i) => Math.abs(v - biased[i])))).toBeGreaterThan(1e-6);
    tf.dispose([pre, mean, variance, ...bnUpdates.values()]);
    model.dispose();
  });

  it('refuses gradients that do not fit the parameters', async () => {
    await useBackend('cpu');
    const model = tinyModel();
    const updater = new ParameterUpdater(model, OptimizerConfigSchema.parse({}));
    expect(() => updater.apply(new Map([['nope', tf.zeros([1])]]), new Map(), 0)).toThrow(/unknown parameter nope/);
    expect(() => updater.apply(new Map([['stem/conv/bias', tf.zeros([3])]]), new Map(), 0)).toThrow(
      /no gradient for parameter stem\/conv\/kernel/,
    );
    const all = new Map(
      [...model.trainable].map(([n, v]) => [n, n === 'stem/conv/bias' ? tf.zeros([3]) : tf.zerosLike(v)]),
    );
    expect(() => updater.apply(all, new Map(), 0)).toThrow(/gradient for stem\/conv\/bias has shape \[3\]/);
    expect(() =>
      computeGradients(
        model,
        { ...tinyBatch(), itemIds: [1] },
        { mining: 'random', margin: 2, marginLossWeight: 0, conv: fastGradConv, seed: 1 },
      ),
    ).toThrow(/1 item ids/);
    updater.dispose();
    model.dispose();
  });

  it('routing rules differ only from the third iteration', async () => {
    await useBackend('cpu');
    const { classCapsules } = await import('../../src/shared/model/class-capsules.js');
    const { squash } = await import('../../src/shared/model/squash.js');
    const u = squash(tf.mul(tf.randomNormal([2, 6, 4], 0, 1, 'float32', 1), 2)) as tf.Tensor3D;
    const w = tf.randomNormal([4, 12], 0, 1, 'float32', 2) as tf.Tensor2D;
    const run = (routingRule: 'reassign' | 'accumulate', routingIterations: number) =>
      Array.from(classCapsules(u, w, { categories: 3, classCapsuleDim: 4, routingIterations, routingRule }).dataSync());
    expect(run('reassign', 2)).toEqual(run('accumulate', 2));
    const a = run('reassign', 3);
    const b = run('accumulate', 3);
    expect(Math.max(...a.map((v, i) => Math.abs(v - b[i])))).toBeGreaterThan(1e-3);
  });
});
