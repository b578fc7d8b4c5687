import { describe, expect, it } from 'vitest';
import { firstMatchRank, recallAtK, RecallAccumulator } from '../../src/shared/eval/recall.js';

describe('Recall@K (In-shop definition)', () => {
  it('uses the best of several gallery images of the query item', () => {
    // gallery items: [7, 8, 7, 9]; query item 7 -> its images at distances 5 and 2; others 1 and 3.
    expect(firstMatchRank([5, 1, 2, 3], 7, [7, 8, 7, 9])).toBe(2);
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
});
