import { describe, expect, it } from 'vitest';
import { firstMatchRank, recallAtK, RecallAccumulator } from '../../src/shared/eval/recall.js';

describe('Recall@K (In-shop definition)', () => {
  it('uses the best of several gallery images of the query item', () => {
    // gallery items: [7, 8, 7, 9]; query item 7 -> its images at distances 5 and 2; others 1 and 3.
    expect(firstMatchRank([5, 1, 2, 3], 7, [7, 8, 7, 9])).toBe(2);
    // The nearest match comes first in the gallery here: the farther one (5) must not replace it.
    expect(firstMatchRank([2, 1, 5, 3], 7, [7, 8, 7, 9])).toBe(2);
  });

  it('counts ties against the query', () => {
    expect(firstMatchRank([1, 1, 1], 7, [8, 7, 9])).toBe(3);
    // A collapsed embedding (all distances equal) never scores a hit at K=1.
    const r = recallAtK([0, 0, 0, 0], [1, 2], [1, 2], [1, 2]);
    expect(r.recall[1]).toBe(0);
    expect(r.recall[2]).toBe(1);
  });

  it('computes hand-checked recall for several queries and K larger than the gallery', () => {
    const gallery = [10, 11, 12];
    const distances = [
      0.1,
      0.5,
      0.9, // query of item 10: rank 1
      0.1,
      0.5,
      0.9, // query of item 11: rank 2
      0.1,
      0.5,
      0.9, // query of item 12: rank 3
      0.3,
      0.2,
      0.1, // query of item 13: no gallery image (excluded)
    ];
    const r = recallAtK(distances, [10, 11, 12, 13], gallery, [1, 2, 50]);
    expect(r.queries).toBe(3);
    expect(r.queriesWithoutMatch).toBe(1);
    expect(r.recall[1]).toBeCloseTo(1 / 3);
    expect(r.recall[2]).toBeCloseTo(2 / 3);
    expect(r.recall[50]).toBe(1);
    // R = 1 for each: AP 1 for the query ranked first, 0 for the others; the mean over 3 queries.
    expect(r.mapAtR).toBeCloseTo(1 / 3, 12);
  });

  it('gives the same result block by block', () => {
    const acc = new RecallAccumulator([1, 2], [10, 11]);
    acc.addBlock([0.2, 0.1], [10]);
    acc.addBlock([0.2, 0.1], [11]);
    expect(acc.result().recall).toEqual(recallAtK([0.2, 0.1, 0.2, 0.1], [10, 11], [10, 11], [1, 2]).recall);
  });

  it('rejects K below 1', () => {
    expect(() => new RecallAccumulator([0], [1])).toThrow(/positive integer/);
  });
});

describe('mAP@R', () => {
  it('averages precision over the first R ranks (hand-computed)', async () => {
    const { averagePrecisionAtR } = await import('../../src/shared/eval/recall.js');
    // Item 7 has R = 2 gallery images, ranked 1st and 3rd: (1/1 + 0) / 2 within the first R = 2 ranks.
    expect(averagePrecisionAtR([0.1, 0.2, 0.3, 0.4], 7, [7, 8, 7, 9])).toBeCloseTo(0.5);
    // Ranked 1st and 2nd: perfect.
    expect(averagePrecisionAtR([0.1, 0.2, 0.3], 7, [7, 7, 9])).toBe(1);
    // R = 1 and a tie puts the non-matching image first: nothing relevant in the first R ranks.
    expect(averagePrecisionAtR([0.5, 0.5], 7, [7, 9])).toBe(0);
    expect(averagePrecisionAtR([0.5], 7, [9])).toBe(0);
    expect(recallAtK([0.1, 0.2, 0.3, 0.4], [7], [7, 8, 7, 9], [1]).mapAtR).toBeCloseTo(0.5);
  });

  it('ranks by distance, not by gallery order (hand-computed, R = 3)', async () => {
    const { averagePrecisionAtR } = await import('../../src/shared/eval/recall.js');
    // Matches (item 7) at 0.4, 0.05, 0.3; others at 0.35, 0.1, 0.9. By distance: 0.05 match (rank 1),
    // 0.1, 0.3 match (rank 3), 0.35, 0.4 match (rank 5, past R): (1/1 + 2/3) / 3.
    expect(averagePrecisionAtR([0.35, 0.4, 0.1, 0.05, 0.3, 0.9], 7, [9, 7, 8, 7, 7, 9])).toBeCloseTo(5 / 9, 12);
  });
});

describe('ties within the stated tolerance', () => {
  it('count a near-tie (float32 rounding) against the query, as an exact tie', async () => {
    const { TIE_TOLERANCE } = await import('../../src/shared/eval/recall.js');
    expect(TIE_TOLERANCE).toBe(1e-5);
    // The match at 2, a non-match at 2 + 2e-7 (rounding): tied, so the non-match ranks first.
    expect(firstMatchRank([2, 2 + 2e-7, 3], 7, [7, 8, 9])).toBe(2);
    expect(firstMatchRank([2, 2 + 1e-3, 3], 7, [7, 8, 9])).toBe(1); // a real difference is not a tie
    expect(firstMatchRank([2, 2 + 2e-7, 3], 7, [7, 8, 9], 0)).toBe(1); // without tolerance: noise decides
    // The tolerance is relative above magnitude 1: at 2, 1.5e-5 apart is within 1e-5 x 2, a tie.
    expect(firstMatchRank([2, 2 + 1.5e-5, 3], 7, [7, 8, 9])).toBe(2);
    expect(firstMatchRank([2, 2 + 2.5e-5, 3], 7, [7, 8, 9])).toBe(1);
    expect(firstMatchRank([100, 100 + 5e-4, 3e3], 7, [7, 8, 9])).toBe(2);
    expect(firstMatchRank([0, 1e-5], 7, [7, 8])).toBe(2); // exactly the tolerance apart: still a tie
  });

  it('give the same Recall@K and mAP@R for two summation orders of the same distances', async () => {
    const { averagePrecisionAtR } = await import('../../src/shared/eval/recall.js');
    // Masked unit embeddings (one capsule of 4 kept out of 3 categories x 4 dims): images of different
    // predicted categories have disjoint supports, so their squared distance is 2 in exact arithmetic,
    // and 2 +- a few ulps in float32 depending on the order of the sum.
    let seed = 11;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
    const embed = (category: number) => {
      const v = new Float32Array(12);
      let n = 0;
      for (let i = 0; i < 4; i++) n += (v[category * 4 + i] = rand()) ** 2;
      for (let i = 0; i < 4; i++) v[category * 4 + i] = Math.fround(v[category * 4 + i] / Math.sqrt(n));
      return v;
    };
    const gallery = Array.from({ length: 60 }, (_, g) => ({ item: g % 20, e: embed((g * 7) % 3) }));
    const queries = Array.from({ length: 20 }, (_, q) => ({ item: q, e: embed((q * 5 + 1) % 3) }));
    const sum = (q: Float32Array, g: Float32Array, reverse: boolean) => {
      let s = 0;
      for (let k = 0; k < 12; k++) {
        const i = reverse ? 11 - k : k;
        s = Math.fround(s + Math.fround((q[i] - g[i]) ** 2));
      }
      return s;
    };
    const rows = (reverse: boolean) => queries.flatMap((q) => gallery.map((g) => sum(q.e, g.e, reverse)));
    const items = gallery.map((g) => g.item);
    const qItems = queries.map((q) => q.item);
    const [forward, backward] = [rows(false), rows(true)];
    expect(forward).not.toEqual(backward); // the two orders do round differently
    const a = recallAtK(forward, qItems, items);
    const b = recallAtK(backward, qItems, items);
    expect(b).toEqual(a);
    // Without the tolerance the noise shows: some query ranks differently or mAP@R moves.
    const rank = (row: number[], q: number, tolerance: number) =>
      firstMatchRank(row.slice(q * 60, q * 60 + 60), qItems[q], items, tolerance);
    const ap = (row: number[], q: number, tolerance: number) =>
      averagePrecisionAtR(row.slice(q * 60, q * 60 + 60), qItems[q], items, tolerance);
    const differs = qItems.some(
      (_, q) => rank(forward, q, 0) !== rank(backward, q, 0) || ap(forward, q, 0) !== ap(backward, q, 0),
    );
    expect(differs).toBe(true);
    expect(qItems.every((_, q) => rank(forward, q, 1e-5) === rank(backward, q, 1e-5))).toBe(true);
  });

  it('rank every match after the non-matches tied with it in mAP@R', async () => {
    const { averagePrecisionAtR } = await import('../../src/shared/eval/recall.js');
    // R = 2 matches at 1 and 2; a non-match tied at 1 (+1e-7): ranks 2 and 3 -> only 1/2 within R.
    expect(averagePrecisionAtR([1, 1 + 1e-7, 2, 5], 7, [7, 8, 7, 9])).toBeCloseTo(0.25);
    expect(averagePrecisionAtR([1, 1.5, 2, 5], 7, [7, 8, 7, 9])).toBeCloseTo(0.5);
  });
});
