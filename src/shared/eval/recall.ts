// Retrieval metrics for the In-shop protocol, as pure functions over distances.
// Recall@K: a query is a hit if any gallery image of its item is among its K nearest gallery images.
// Ties count against the query: a non-matching gallery image at the same distance as the best match
// ranks ahead of it (so a collapsed embedding scores 0, not 100%).

export const DEFAULT_KS = [1, 10, 20, 30, 40, 50] as const;

export interface RecallResult {
  /** Recall@K in [0, 1] per K. */
  recall: Record<number, number>;
  /** Mean average precision at R over queries with a match. */
  mapAtR: number;
  queries: number;
  /** Queries whose item has no gallery image (excluded from the denominator). */
  queriesWithoutMatch: number;
  gallery: number;
}

/**
 * 1-based rank of the first gallery image of the query's item, or Infinity when there is none.
 * @param row distances from one query to every gallery image
 */
export function firstMatchRank(row: ArrayLike<number>, queryItem: number, galleryItems: ArrayLike<number>): number {
  let best = Infinity;
  for (let g = 0; g < row.length; g++) if (galleryItems[g] === queryItem && row[g] < best) best = row[g];
  if (best === Infinity) return Infinity;
  let ahead = 0;
  for (let g = 0; g < row.length; g++) if (galleryItems[g] !== queryItem && row[g] <= best) ahead++;
  return ahead + 1;
}

/**
 * Average precision at R for one query (R = number of gallery images of its item), the
 * "mAP@R" of Musgrave et al.: (1/R) * sum over the first R ranks of precision@i at each hit.
 * Ranks ties pessimistically like firstMatchRank. 0 when the item has no gallery image.
 */
export function averagePrecisionAtR(
  row: ArrayLike<number>,
  queryItem: number,
  galleryItems: ArrayLike<number>,
): number {
  const order = Array.from({ length: row.length }, (_, g) => g);
  const relevant = (g: number) => galleryItems[g] === queryItem;
  order.sort((a, b) => row[a] - row[b] || Number(relevant(a)) - Number(relevant(b)) || a - b);
  const r = order.reduce((n, g) => n + (relevant(g) ? 1 : 0), 0);
  if (r === 0) return 0;
  let hits = 0;
  let sum = 0;
  for (let i = 0; i < r; i++) {
    if (relevant(order[i])) {
      hits++;
      sum += hits / (i + 1);
    }
  }
  return sum / r;
}

/** Accumulates first-match ranks (so distances can be computed block by block). */
export class RecallAccumulator {
  private readonly hits = new Map<number, number>();
  private apSum = 0;
  private queries = 0;
  private withoutMatch = 0;

  constructor(
    private readonly ks: readonly number[],
    private readonly galleryItems: ArrayLike<number>,
  ) {
    for (const k of ks) {
      if (!Number.isInteger(k) || k < 1) throw new Error(`Recall@K: K must be a positive integer, got ${k}`);
      this.hits.set(k, 0);
    }
  }

  /** @param distances row-major [rows, gallery] */
  addBlock(distances: ArrayLike<number>, queryItems: ArrayLike<number>): void {
    const n = this.galleryItems.length;
    for (let q = 0; q < queryItems.length; q++) {
      const row = Array.prototype.slice.call(distances, q * n, (q + 1) * n) as number[];
      const rank = firstMatchRank(row, queryItems[q], this.galleryItems);
      if (rank === Infinity) {
        this.withoutMatch++;
        continue;
      }
      this.queries++;
      this.apSum += averagePrecisionAtR(row, queryItems[q], this.galleryItems);
      for (const k of this.ks) if (rank <= k) this.hits.set(k, this.hits.get(k)! + 1);
    }
  }

  result(): RecallResult {
    const recall: Record<number, number> = {};
    for (const k of this.ks) recall[k] = this.queries ? this.hits.get(k)! / this.queries : 0;
    return {
      recall,
      mapAtR: this.queries ? this.apSum / this.queries : 0,
      queries: this.queries,
      queriesWithoutMatch: this.withoutMatch,
      gallery: this.galleryItems.length,
    };
  }
}

export function recallAtK(
  distances: ArrayLike<number>,
  queryItems: ArrayLike<number>,
  galleryItems: ArrayLike<number>,
  ks: readonly number[] = DEFAULT_KS,
): RecallResult {
  const acc = new RecallAccumulator(ks, galleryItems);
  acc.addBlock(distances, queryItems);
  return acc.result();
}
