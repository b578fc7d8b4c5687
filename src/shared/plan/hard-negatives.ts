// The hard-negative plan: from item embeddings (refreshed now and then by the fleet), group the
// items of a batch so that confusable ones (close in embedding space) land in the same mining shard,
// where they can serve as each other's negatives. Pure: same embeddings, same groups.

/** Squared L2 distance between two equal-length vectors. */
function squaredDistance(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

/**
 * Greedy grouping of a batch's items into groups of ceil(items / shards): the first ungrouped item
 * (in batch order) takes its nearest ungrouped neighbours. Items without an embedding form groups
 * of their own. The result is the affinity map shardBatch/planShards take.
 */
export function confusableAffinity(
  items: number[],
  embeddings: Map<number, Float32Array>,
  shardCount: number,
): Map<number, number> {
  const unique = [...new Set(items)];
  const groupSize = Math.max(1, Math.ceil(unique.length / Math.max(1, shardCount)));
  const affinity = new Map<number, number>();
  const open = unique.filter((i) => embeddings.has(i));
  let group = 0;
  while (open.length) {
    const seed = open.shift()!;
    const e = embeddings.get(seed)!;
    const nearest = open
      .map((item, order) => ({ item, order, d: squaredDistance(e, embeddings.get(item)!) }))
      .sort((a, b) => a.d - b.d || a.order - b.order)
      .slice(0, groupSize - 1)
      .map((x) => x.item);
    for (const item of [seed, ...nearest]) affinity.set(item, group);
    for (const item of nearest) open.splice(open.indexOf(item), 1);
    group++;
  }
  return affinity;
}

/** Mean squared distance between items that share a shard (lower: more confusable shards). */
export function meanWithinShardDistance(shardItems: number[][], embeddings: Map<number, Float32Array>): number {
  let sum = 0;
  let pairs = 0;
  for (const items of shardItems) {
    const u = [...new Set(items)].filter((i) => embeddings.has(i));
    for (let a = 0; a < u.length; a++) {
      for (let b = a + 1; b < u.length; b++) {
        sum += squaredDistance(embeddings.get(u[a])!, embeddings.get(u[b])!);
        pairs++;
      }
    }
  }
  return pairs ? sum / pairs : 0;
}
