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

/** One mining shard of a step: whole items; in-batch mining and BatchNorm statistics stay inside it. */
export interface PlannedShard {
  index: number;
  imageIds: number[];
  itemIds: number[];
}

/**
 * Splits a PK batch into a fixed number of mining shards. The shard count is a property of the run,
 * not of the fleet: whatever number of workers shares a step, each shard is computed exactly as
 * planned, so losing or adding a worker changes who computes, never what is computed.
 */
export function planShards(batch: PkBatch, shardCount: number, affinity?: Map<number, number>): PlannedShard[] {
  const items = new Set(batch.itemIds).size;
  if (shardCount < 1) throw new Error(`planShards: ${shardCount} shards`);
  if (items < 2 * shardCount)
    throw new Error(
      `planShards: ${items} items cannot fill ${shardCount} shards with at least 2 items each (a shard needs a negative item)`,
    );
  return shardBatch(
    batch,
    Array.from({ length: shardCount }, (_, i) => String(i)),
    affinity,
  ).map((s, index) => ({ index, imageIds: s.imageIds, itemIds: s.itemIds }));
}

/**
 * Deals shard indexes over workers in order, in contiguous runs whose sizes differ by at most one
 * (earlier workers take the larger runs). Workers beyond the shard count get nothing.
 */
export function assignShards(shardIndexes: number[], workers: string[]): Map<string, number[]> {
  if (workers.length === 0) throw new Error('assignShards: no workers');
  const out = new Map<string, number[]>();
  const base = Math.floor(shardIndexes.length / workers.length);
  const extra = shardIndexes.length % workers.length;
  let next = 0;
  workers.forEach((w, i) => {
    const take = base + (i < extra ? 1 : 0);
    if (take > 0) out.set(w, shardIndexes.slice(next, next + take));
    next += take;
  });
  return out;
}
