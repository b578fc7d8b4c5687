// Retrieval metrics for the In-shop protocol, as pure functions over distances.
// Recall@K: a query is a hit if any gallery image of its item is among its K nearest gallery images.
// Ties count against the query: a non-matching gallery image at the same distance as the best match
// ranks ahead of it (so a collapsed embedding scores 0, not 100%).

export const DEFAULT_KS = [1, 10, 20, 30, 40, 50] as const;

export interface RecallResult {
  /** Recall@K in [0, 1] per K. */
  recall: Record<number, number>;
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

/** Accumulates first-match ranks (so distances can be computed block by block). */
export class RecallAccumulator {
  private readonly hits = new Map<number, number>();
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
      for (const k of this.ks) if (rank <= k) this.hits.set(k, this.hits.get(k)! + 1);
    }
  }

  result(): RecallResult {
    const recall: Record<number, number> = {};
    for (const k of this.ks) recall[k] = this.queries ? this.hits.get(k)! / this.queries : 0;
    return { recall, queries: this.queries, queriesWithoutMatch: this.withoutMatch, gallery: this.galleryItems.length };
  }
}

export function recallAtK(distances: ArrayLike<number>, queryItems: ArrayLike<number>, galleryItems: ArrayLike<number>, ks: readonly number[] = DEFAULT_KS): RecallResult {
  const acc = new RecallAccumulator(ks, galleryItems);
  acc.addBlock(distances, queryItems);
  return acc.result();
}
