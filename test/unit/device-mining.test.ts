// On-device mining (device-mining.ts) against the host miner (mining.ts, the reference): the same
// triplets, so the same loss and statistics, for every strategy, on random distance matrices.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { deviceTripletLoss, labelMasks } from '../../src/shared/model/device-mining.js';
import { MINING_STRATEGIES } from '../../src/shared/model/mining.js';
import { useBackend } from '../helpers.js';
import { deviceResult, hostReference, randomBatch } from '../mining-fixtures.js';

describe('on-device mining', () => {
  it.each(['cpu', 'wasm'] as const)("chooses the host miner's triplets for every strategy (%s)", async (backend) => {
    await useBackend(backend);
    let compared = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const { labels, distances } = randomBatch(seed, 3 + (seed % 4), 2 + (seed % 3));
      for (const strategy of MINING_STRATEGIES) {
        for (const margin of [0.2, 1, 2]) {
          const host = await hostReference(strategy, labels, distances, margin, seed);
          const device = await deviceResult(strategy, labels, distances, margin, seed);
          const where = `${strategy} seed ${seed} margin ${margin}`;
          expect(device.skippedAnchors, where).toBe(host.skippedAnchors);
          expect(device.stats[0], where).toBe(host.triplets);
          expect(device.stats[1], where).toBe(host.stats[1]);
          expect(device.loss, where).toBeCloseTo(host.loss, 5);
          expect(device.stats[2], where).toBeCloseTo(host.stats[2], 4);
          expect(device.stats[3], where).toBeCloseTo(host.stats[3], 4);
          compared++;
        }
      }
    }
    expect(compared).toBe(12 * 3 * 3);
  });

  it('semi-hard finds no triplet where none qualifies, and the loss is 0 with a zero gradient', async () => {
    await useBackend('cpu');
    // Items at 0 and 10 on a line: every negative is far beyond d(a,p) + margin.
    const positions = [0, 0.1, 10, 10.1];
    const distances = Float32Array.from(positions.flatMap((a) => positions.map((b) => (a - b) ** 2)));
    const d = tf.tensor2d(distances, [4, 4]);
    const g = tf.grad((x: tf.Tensor) => deviceTripletLoss(x as tf.Tensor2D, [0, 0, 1, 1], 'semi-hard', 1, 0).loss)(d);
    const r = deviceTripletLoss(d, [0, 0, 1, 1], 'semi-hard', 1, 0);
    expect(Array.from(await r.stats.data())).toEqual([0, 0, 0, 0]);
    expect((await r.loss.data())[0]).toBe(0);
    expect(Array.from(await g.data()).every((v) => v === 0)).toBe(true);
  });

  it('anchors without a positive or a negative are skipped, from the labels alone', () => {
    const m = labelMasks([1, 1, 2, 3]);
    expect(Array.from(m.usable)).toEqual([1, 1, 0, 0]);
    expect(m.usableCount).toBe(2);
    expect(Array.from(m.positive.slice(0, 4))).toEqual([0, 1, 0, 0]);
    expect(Array.from(m.negative.slice(0, 4))).toEqual([0, 0, 1, 1]);
  });

  it('refuses a distance matrix that does not fit the labels', () => {
    expect(() => deviceTripletLoss(tf.zeros([3, 3]) as tf.Tensor2D, [0, 0, 1, 1], 'batch-hard', 1, 0)).toThrow(
      /distance matrix is \[3,3\] for 4 labels/,
    );
  });
});
