// The step plan: which worker computes which part of a global PK batch. Pure functions, so the
// coordinator, tests and a resumed run all derive the same plan from (seed, epoch, step, workers).
// Whole items go to one worker (all K views of an item together), so every shard can mine its own
// triplets; items are dealt so shard sizes differ by at most one item.
import type { PkBatch } from '../data/pk-sampler.js';

export interface Shard {
  worker: string;
  imageIds: number[];
  itemIds: number[];
}

/**
 * Splits a PK batch over workers (in the given order). Items are dealt round-robin in batch order.
 * @param affinity optional item -> group: items of one group go to the same worker when possible
 *   (a hard-negative plan puts confusable items in one group so they meet in one shard).
 */
export function shardBatch(batch: PkBatch, workers: string[], affinity?: Map<number, number>): Shard[] {
  if (workers.length === 0) throw new Error('shardBatch: no workers');
  if (new Set(workers).size !== workers.length) throw new Error('shardBatch: duplicate worker names');
  const itemOrder: number[] = [];
  const imagesOf = new Map<number, number[]>();
  batch.itemIds.forEach((item, i) => {
    if (!imagesOf.has(item)) {
      imagesOf.set(item, []);
      itemOrder.push(item);
    }
    imagesOf.get(item)!.push(batch.imageIds[i]);
  });
  // Group items (affinity), keep groups whole, biggest first, each to the currently smallest shard.
  const groups = new Map<number, number[]>();
  itemOrder.forEach((item, i) => {
    const key = affinity?.get(item) ?? -1 - i;
    groups.set(key, [...(groups.get(key) ?? []), item]);
  });
  const ordered = [...groups.values()].sort((a, b) => b.length - a.length);
  const load = workers.map(() => 0);
  const assigned: number[][] = workers.map(() => []);
  for (const group of ordered) {
    let target = 0;
    for (let w = 1; w < workers.length; w++) if (load[w] < load[target]) target = w;
    // A group larger than a fair share is split so no shard exceeds ceil(items / workers).
    const cap = Math.ceil(itemOrder.length / workers.length);
    for (const item of group) {
      if (load[target] >= cap) {
        target = 0;
        for (let w = 1; w < workers.length; w++) if (load[w] < load[target]) target = w;
      }
      assigned[target].push(item);
      load[target]++;
    }
  }
  return workers.map((worker, w) => {
    const items = assigned[w].sort((a, b) => itemOrder.indexOf(a) - itemOrder.indexOf(b));
    return {
      worker,
      imageIds: items.flatMap((item) => imagesOf.get(item)!),
      itemIds: items.flatMap((item) => imagesOf.get(item)!.map(() => item)),
    };
  });
}
