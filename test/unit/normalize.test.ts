// L2 normalisation of capsules: unit length however short the capsule (lengths 1e-6 and 1e-3 are
// what mean routing produces), zero for the zero vector, and the exact gradient (g - z<z,g>)/|x|.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { l2Normalize } from '../../src/shared/model/squash.js';
import { embed } from '../../src/shared/model/embedding.js';
import { seededNormal, useBackend } from '../helpers.js';

describe('l2Normalize', () => {
  it.each(['cpu', 'wasm'] as const)(
    'gives unit vectors for lengths 1e-6 to 1e3 and zero for zero (%s)',
    async (backend) => {
      await useBackend(backend);
      const lengths = [1e-6, 1e-3, 1, 1e3, 0];
      const direction = seededNormal([5, 16], 1);
      const unitDir = tf.div(direction, tf.norm(direction, 'euclidean', -1, true));
      const x = tf.mul(unitDir, tf.tensor(lengths, [5, 1]));
      const z = (await l2Normalize(x).array()) as number[][];
      const norms = z.map((row) => Math.hypot(...row));
      for (let i = 0; i < 4; i++) expect(Math.abs(norms[i] - 1), `length ${lengths[i]}`).toBeLessThan(1e-6);
      expect(z[4].every((v) => v === 0)).toBe(true);
      // Direction kept: z equals the unit direction.
      const expected = (await unitDir.array()) as number[][];
      for (let i = 0; i < 4; i++) z[i].forEach((v, k) => expect(v).toBeCloseTo(expected[i][k], 5));
    },
  );

  it('has the gradient (g - z<z,g>)/|x|, also for a capsule of length 1e-6, and zero at zero', async () => {
    await useBackend('cpu');
    const x = tf.mul(seededNormal([3, 8], 2), tf.tensor([1e-6 / 3, 1, 0], [3, 1]));
    const probe = seededNormal([3, 8], 3);
    const [g] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(l2Normalize(t), probe)))([x]);
    const xs = (await x.array()) as number[][];
    const ps = (await probe.array()) as number[][];
    const gs = (await g.array()) as number[][];
    for (let r = 0; r < 2; r++) {
      // Float64 reference of the analytic gradient.
      const len = Math.hypot(...xs[r]);
      const z = xs[r].map((v) => v / len);
      const dot = z.reduce((s, v, k) => s + v * ps[r][k], 0);
      const expected = ps[r].map((p, k) => (p - z[k] * dot) / len);
      const scale = Math.max(...expected.map(Math.abs));
      gs[r].forEach((v, k) => expect(Math.abs(v - expected[k]) / scale, `row ${r}`).toBeLessThan(1e-4));
    }
    expect(gs[2].every((v) => v === 0)).toBe(true);
  });

  it('masked embeddings of short capsules are unit length (the triplet margin means what it says)', async () => {
    await useBackend('cpu');
    const capsules = tf.mul(seededNormal([4, 3, 4], 4), 1e-5) as tf.Tensor3D;
    const e = (await embed(capsules, 'oracle', [0, 1, 2, 0]).array()) as number[][];
    for (const row of e) expect(Math.hypot(...row)).toBeCloseTo(1, 5);
  });
});
