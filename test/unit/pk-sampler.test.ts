import { describe, expect, it } from 'vitest';
import { samplePkBatch, stepsPerEpoch } from '../../src/shared/data/pk-sampler.js';

const items = new Map<number, number[]>(
  Array.from({ length: 10 }, (_, i) => [i, [i * 10, i * 10 + 1, i * 10 + 2, i * 10 + 3]]),
);

describe('PK sampler', () => {
  it('is a pure function of (seed, epoch, step)', () => {
    const args = { seed: 3, epoch: 1, step: 2, itemsPerBatch: 3, imagesPerItem: 2, items };
    expect(samplePkBatch(args)).toEqual(samplePkBatch(args));
    expect(samplePkBatch(args)).not.toEqual(samplePkBatch({ ...args, epoch: 2 }));
    expect(samplePkBatch(args)).not.toEqual(samplePkBatch({ ...args, step: 1 }));
    // Another seed: another order of items, and other images of the same item.
    for (let seed = 4; seed < 8; seed++) {
      const other = samplePkBatch({ ...args, seed });
      expect(other.itemIds, `seed ${seed}`).not.toEqual(samplePkBatch(args).itemIds);
    }
    const all = { ...args, itemsPerBatch: 10, imagesPerItem: 2, step: 0 };
    const images = (seed: number) => {
      const b = samplePkBatch({ ...all, seed });
      return b.itemIds.map((item, i) => [item, b.imageIds[i]] as const).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    };
    expect(images(3)).not.toEqual(images(11));
  });

  it('gives P items x K distinct images of each item', () => {
    const b = samplePkBatch({ seed: 1, epoch: 0, step: 0, itemsPerBatch: 3, imagesPerItem: 3, items });
    expect(b.imageIds).toHaveLength(9);
    for (let p = 0; p < 3; p++) {
      const item = b.itemIds[p * 3];
      const ids = b.imageIds.slice(p * 3, p * 3 + 3);
      expect(b.itemIds.slice(p * 3, p * 3 + 3)).toEqual([item, item, item]);
      expect(new Set(ids).size).toBe(3);
      for (const id of ids) expect(Math.floor(id / 10)).toBe(item);
    }
  });

  it('visits every item at most once per epoch', () => {
    const seen: number[] = [];
    for (let step = 0; step < stepsPerEpoch(10, 3); step++) {
      const b = samplePkBatch({ seed: 9, epoch: 4, step, itemsPerBatch: 3, imagesPerItem: 2, items });
      seen.push(...new Set(b.itemIds));
    }
    expect(seen).toHaveLength(9);
    expect(new Set(seen).size).toBe(9);
  });

  it('repeats images when an item has fewer than K', () => {
    const few = new Map([
      [0, [1, 2]],
      [1, [3, 4]],
    ]);
    const b = samplePkBatch({ seed: 1, epoch: 0, step: 0, itemsPerBatch: 2, imagesPerItem: 3, items: few });
    expect(b.imageIds).toHaveLength(6);
  });

  it('explains when there are too few items or the step is outside the epoch', () => {
    const single = new Map([
      [0, [1]],
      [1, [2, 3]],
    ]);
    expect(() =>
      samplePkBatch({ seed: 1, epoch: 0, step: 0, itemsPerBatch: 2, imagesPerItem: 2, items: single }),
    ).toThrow(/1 items with at least 2 images/);
    // 10 items of 3 per batch: steps 0..2; the first step past the end and one before the start.
    for (const step of [3, 5, -1])
      expect(() => samplePkBatch({ seed: 1, epoch: 0, step, itemsPerBatch: 3, imagesPerItem: 2, items })).toThrow(
        `PK sampler: step ${step} outside the epoch's 3 steps`,
      );
    expect(
      samplePkBatch({ seed: 1, epoch: 0, step: 2, itemsPerBatch: 3, imagesPerItem: 2, items }).itemIds,
    ).toHaveLength(6);
  });
});
