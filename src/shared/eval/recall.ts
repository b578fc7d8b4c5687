// Retrieval metrics for the In-shop protocol, as pure functions over distances.
// Recall@K: a query is a hit if any gallery image of its item is among its K nearest gallery images.
// Ties count against the query, and "tied" has an explicit tolerance: two squared distances tie when
// they differ by at most TIE_TOLERANCE x max(|a|, |b|, 1). Float32 rounding differs between engines
// and summation orders (squared distances of unit vectors are off by ~1e-7), so images masked to
// different categories, all at distance 2 +- 1e-7, would otherwise be ranked by rounding noise. A
// non-matching gallery image tied with a match ranks ahead of it, in Recall@K and mAP@R alike (so a
// collapsed embedding scores 0, not 100%).

export const DEFAULT_KS = [1, 10, 20, 30, 40, 50] as const;

/** Relative tolerance under which two distances are a tie (with 1 as the floor of the scale). */
export const TIE_TOLERANCE = 1e-5;

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

/** A gallery image at distance d ranks ahead of a match at distance best (ties pessimistically). */
const aheadOf = (d: number, best: number, tolerance: number) =>
  d <= best + tolerance * Math.max(Math.abs(d), Math.abs(best), 1);

/**
 * 1-based rank of the first gallery image of the query's item, or Infinity when there is none.
 * @param row distances from one query to every gallery image
 */
export function firstMatchRank(
  row: ArrayLike<number>,
  queryItem: number,
  galleryItems: ArrayLike<number>,
  tolerance = TIE_TOLERANCE,
): number {
  let best = Infinity;
  for (let g = 0; g < row.length; g++) if (galleryItems[g] === queryItem && row[g] < best) best = row[g];
  if (best === Infinity) return Infinity;
  let ahead = 0;
  for (let g = 0; g < row.length; g++) if (galleryItems[g] !== queryItem && aheadOf(row[g], best, tolerance)) ahead++;
  return ahead + 1;
}

/**
 * Average precision at R for one query (R = number of gallery images of its item), the "mAP@R" of
 * Musgrave et al.: (1/R) * sum over the first R ranks of precision@i at each hit. The i-th match (by
 * distance) ranks after i - 1 matches and after every non-match ahead of it (ties pessimistically,
 * as firstMatchRank). 0 when the item has no gallery image.
 */
export function averagePrecisionAtR(
  row: ArrayLike<number>,
  queryItem: number,
  galleryItems: ArrayLike<number>,
  tolerance = TIE_TOLERANCE,
): number {
  const matches: number[] = [];
  const others: number[] = [];
  for (let g = 0; g < row.length; g++) (galleryItems[g] === queryItem ? matches : others).push(row[g]);
  const r = matches.length;
  if (r === 0) return 0;
  matches.sort((a, b) => a - b);
  others.sort((a, b) => a - b);
  let sum = 0;
  let ahead = 0;
  for (let i = 0; i < r; i++) {
    while (ahead < others.length && aheadOf(others[ahead], matches[i], tolerance)) ahead++;
    const rank = i + 1 + ahead;
    if (rank > r) break;
    sum += (i + 1) / rank;
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
    private readonly tolerance = TIE_TOLERANCE,
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
      const rank = firstMatchRank(row, queryItems[q], this.galleryItems, this.tolerance);
      if (rank === Infinity) {
        this.withoutMatch++;
        continue;
      }
      this.queries++;
      this.apSum += averagePrecisionAtR(row, queryItems[q], this.galleryItems, this.tolerance);
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
  tolerance = TIE_TOLERANCE,
): RecallResult {
  const acc = new RecallAccumulator(ks, galleryItems, tolerance);
  acc.addBlock(distances, queryItems);
  return acc.result();
}
