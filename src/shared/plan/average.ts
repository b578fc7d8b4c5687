// Averaging shard gradients into one update: each shard's mean-over-triplets gradient is weighted by
// its number of contributing triplets, so the result equals the gradient of the mean loss over all
// triplets of the global batch. Shards without triplets contribute nothing.

export interface ShardGradient {
  /** Triplets whose loss entered this shard's mean. */
  triplets: number;
  grads: Map<string, Float32Array>;
}

/**
 * @param into optional arrays to write the result into (reused across steps: fresh multi-megabyte
 *   arrays cost more in page faults than the arithmetic); missing or mis-sized ones are allocated.
 */
export function weightedAverage(
  shards: ShardGradient[],
  into?: Map<string, Float32Array>,
): { grads: Map<string, Float32Array>; triplets: number } {
  const total = shards.reduce((s, sh) => s + sh.triplets, 0);
  if (total === 0) throw new Error('weightedAverage: no shard contributed a triplet');
  const contributing = shards.filter((s) => s.triplets > 0);
  const names = [...contributing[0].grads.keys()];
  const out = new Map<string, Float32Array>();
  for (const name of names) {
    const first = contributing[0].grads.get(name)!;
    let acc = into?.get(name);
    if (!acc || acc.length !== first.length) acc = new Float32Array(first.length);
    contributing.forEach((shard, k) => {
      const g = shard.grads.get(name);
      if (!g) throw new Error(`weightedAverage: a shard lacks gradient ${name}`);
      if (g.length !== acc.length)
        throw new Error(
          `weightedAverage: gradient ${name} has ${g.length} values in one shard and ${acc.length} in another`,
        );
      scaleAdd(acc, g, shard.triplets / total, k === 0);
    });
    out.set(name, acc);
  }
  return { grads: out, triplets: total };
}

/** acc = (overwrite ? 0 : acc) + w * g, in one tight loop. */
function scaleAdd(acc: Float32Array, g: Float32Array, w: number, overwrite: boolean): void {
  const n = g.length;
  if (overwrite) for (let i = 0; i < n; i++) acc[i] = w * g[i];
  else for (let i = 0; i < n; i++) acc[i] += w * g[i];
}

/** Plain mean of per-shard statistics (BatchNorm moving averages). */
export function meanOf(values: Float32Array[]): Float32Array {
  if (values.length === 0) throw new Error('meanOf: nothing to average');
  const out = new Float32Array(values[0].length);
  for (const v of values) {
    if (v.length !== out.length) throw new Error(`meanOf: lengths ${v.length} and ${out.length} differ`);
    for (let i = 0; i < v.length; i++) out[i] += v[i] / values.length;
  }
  return out;
}
