// PK batches (P items x K images of each) as a pure function of (seed, epoch, step): the same
// arguments always give the same batch, so a batch can be sharded over workers by item and a run
// resumed at any step without repeating or skipping samples.
import { Rng } from '../rng.js';

export interface PkBatch {
  imageIds: number[];
  /** Item id per image, parallel to imageIds; K consecutive entries per item. */
  itemIds: number[];
}

export interface PkSamplerArgs {
  seed: number;
  epoch: number;
  /** Step within the epoch, 0 <= step < stepsPerEpoch. */
  step: number;
  itemsPerBatch: number;
  imagesPerItem: number;
  /** Train images per item (each item needs at least 2 to form a positive). */
  items: Map<number, number[]>;
}

export function stepsPerEpoch(itemCount: number, itemsPerBatch: number): number {
  return Math.floor(itemCount / itemsPerBatch);
}

export function samplePkBatch({ seed, epoch, step, itemsPerBatch, imagesPerItem, items }: PkSamplerArgs): PkBatch {
  const usable = [...items.keys()].filter((id) => items.get(id)!.length >= 2);
  const steps = stepsPerEpoch(usable.length, itemsPerBatch);
  if (steps === 0)
    throw new Error(
      `PK sampler: ${usable.length} items with at least 2 images, fewer than the ${itemsPerBatch} items a batch needs`,
    );
  if (step < 0 || step >= steps) throw new Error(`PK sampler: step ${step} outside the epoch's ${steps} steps`);
  const order = Rng.from(seed, 0x9e11, epoch).shuffled(usable);
  const imageIds: number[] = [];
  const itemIds: number[] = [];
  for (const item of order.slice(step * itemsPerBatch, (step + 1) * itemsPerBatch)) {
    const images = items.get(item)!;
    const rng = Rng.from(seed, 0x9e12, epoch, item);
    // Without replacement while the item has enough images, then cycling through a fresh shuffle.
    const picks: number[] = [];
    while (picks.length < imagesPerItem) picks.push(...rng.shuffled(images));
    for (const id of picks.slice(0, imagesPerItem)) {
      imageIds.push(id);
      itemIds.push(item);
    }
  }
  return { imageIds, itemIds };
}
