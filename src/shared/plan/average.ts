// Averaging shard gradients into one update: each shard's mean-over-triplets gradient is weighted by
// its number of contributing triplets, so the result equals the gradient of the mean loss over all
// triplets of the global batch. Shards without triplets contribute nothing.

export interface ShardGradient {
  /** Triplets whose loss entered this shard's mean. */
  triplets: number;
  grads: Map<string, Float32Array>;
}

export function weightedAverage(shards: ShardGradient[]): { grads: Map<string, Float32Array>; triplets: number } {
  const total = shards.reduce((s, sh) => s + sh.triplets, 0);
  if (total === 0) throw new Error('weightedAverage: no shard contributed a triplet');
  const names = [...(shards.find((s) => s.triplets > 0)!.grads.keys())];
  const out = new Map<string, Float32Array>();
  for (const name of names) {
    let acc: Float32Array | undefined;
    for (const shard of shards) {
      if (shard.triplets === 0) continue;
      const g = shard.grads.get(name);
      if (!g) throw new Error(`weightedAverage: a shard lacks gradient ${name}`);
      if (acc && g.length !== acc.length) throw new Error(`weightedAverage: gradient ${name} has ${g.length} values in one shard and ${acc.length} in another`);
      acc ??= new Float32Array(g.length);
      const w = shard.triplets / total;
      for (let i = 0; i < g.length; i++) acc[i] += w * g[i];
    }
    out.set(name, acc!);
  }
  return { grads: out, triplets: total };
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
