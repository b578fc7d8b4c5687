import { describe, expect, it } from 'vitest';
import { mineTriplets } from '../../src/shared/model/mining.js';

// 4 points on a line: items A A B B at positions 0, 1, 1.5, 4 (squared distances).
const positions = [0, 1, 1.5, 4];
const labels = [0, 0, 1, 1];
const distances = positions.flatMap((a) => positions.map((b) => (a - b) ** 2));

describe('in-batch triplet mining', () => {
  it('batch-hard takes the farthest positive and the closest negative per anchor', () => {
    const { triplets, skippedAnchors } = mineTriplets('batch-hard', { distances, labels, margin: 2 });
    expect(skippedAnchors).toBe(0);
    expect(triplets).toEqual([
      { anchor: 0, positive: 1, negative: 2 },
      { anchor: 1, positive: 0, negative: 2 },
      { anchor: 2, positive: 3, negative: 1 },
      { anchor: 3, positive: 2, negative: 1 },
    ]);
  });

  it('semi-hard keeps negatives with d(a,p) < d(a,n) <= d(a,p) + margin, the closest one', () => {
    // margin 3. anchor 0: d(0,1)=1; negatives d=2.25 (semi-hard), 16 (too far) -> negative 2.
    // anchor 1: d(1,0)=1; negatives d=0.25 (hard, not semi-hard), 9 (too far) -> none.
    // anchor 2: d(2,3)=6.25; negatives 2.25, 0.25 (both closer: hard) -> none.
    // anchor 3: d(3,2)=6.25; negatives 16 (> 6.25+3), 9 (semi-hard) -> negative 1.
    const { triplets } = mineTriplets('semi-hard', { distances, labels, margin: 3 });
    expect(mineTriplets('semi-hard', { distances, labels, margin: 2 }).triplets).toHaveLength(1);
    expect(triplets).toEqual([
      { anchor: 0, positive: 1, negative: 2 },
      { anchor: 3, positive: 2, negative: 1 },
    ]);
  });

  it('random picks valid triplets, deterministically for a seed', () => {
    const n = 12;
    const lab = Array.from({ length: n }, (_, i) => Math.floor(i / 3));
    const d = new Float32Array(n * n);
    const a = mineTriplets('random', { distances: d, labels: lab, margin: 2, seed: 5 });
    const b = mineTriplets('random', { distances: d, labels: lab, margin: 2, seed: 5 });
    const c = mineTriplets('random', { distances: d, labels: lab, margin: 2, seed: 6 });
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(a.triplets).toHaveLength(n);
    for (const t of a.triplets) {
      expect(lab[t.positive]).toBe(lab[t.anchor]);
      expect(t.positive).not.toBe(t.anchor);
      expect(lab[t.negative]).not.toBe(lab[t.anchor]);
    }
  });

  it('counts anchors that have no positive or no negative', () => {
    const { triplets, skippedAnchors } = mineTriplets('batch-hard', {
      distances: [0, 1, 1, 1, 0, 1, 1, 1, 0],
      labels: [0, 0, 1],
      margin: 1,
    });
    expect(skippedAnchors).toBe(1);
    expect(triplets).toHaveLength(2);
  });

  it('rejects a distance matrix of the wrong size', () => {
    expect(() => mineTriplets('batch-hard', { distances: [0, 1], labels: [0, 1], margin: 1 })).toThrow(
      /2 entries for 2 labels/,
    );
  });
});

describe('anchor-masked training distances', () => {
  it('compare the anchor category capsule of both images, and equal the masked flat embeddings', async () => {
    const tf = await import('@tensorflow/tfjs-core');
    await import('@tensorflow/tfjs');
    const { pairwiseSquaredDistances, useBackend } = await import('../helpers.js');
    const { anchorMaskedDistances } = await import('../../src/shared/model/loss.js');
    const { l2Normalize } = await import('../../src/shared/model/squash.js');
    await useBackend('cpu');
    const unit = l2Normalize(
      tf.randomNormal([4, 3, 5], 0, 1, 'float32', 7),
    ) as import('@tensorflow/tfjs-core').Tensor3D;
    const categories = [0, 2, 2, 1];
    const d = anchorMaskedDistances(unit, categories).arraySync();
    const u = unit.arraySync();
    for (let a = 0; a < 4; a++) {
      // Reference: mask every image with the anchor's category, flatten, squared distance.
      const masked = tf.tensor2d(u.map((caps) => caps.flatMap((v, c) => (c === categories[a] ? v : v.map(() => 0)))));
      const row = pairwiseSquaredDistances(masked).arraySync()[a];
      for (let x = 0; x < 4; x++) expect(d[a][x]).toBeCloseTo(row[x], 5);
    }
    expect(d[0][1]).not.toBeCloseTo(d[1][0], 3); // different categories: not symmetric
  });
});
