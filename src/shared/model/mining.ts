// Online triplet mining inside a PK batch (P items x K images), as pure functions over a squared
// distance matrix (the same distance the loss uses). No tensors here: tests reach it directly.
import { Rng } from '../rng.js';

export const MINING_STRATEGIES = ['random', 'batch-hard', 'semi-hard'] as const;
export type MiningStrategy = (typeof MINING_STRATEGIES)[number];

export interface Triplet {
  anchor: number;
  positive: number;
  negative: number;
}

export interface MiningInput {
  /** Row-major [n, n] squared distances (not read by `random`). */
  distances?: ArrayLike<number>;
  /** Item id per row: same id = positive pair. */
  labels: ArrayLike<number>;
  margin: number;
  seed?: number;
}

export interface MiningResult {
  triplets: Triplet[];
  /** Anchors with no positive or no negative in the batch (cannot form a triplet). */
  skippedAnchors: number;
}

function partners(labels: ArrayLike<number>, a: number): { positives: number[]; negatives: number[] } {
  const positives: number[] = [];
  const negatives: number[] = [];
  for (let j = 0; j < labels.length; j++) {
    if (j === a) continue;
    (labels[j] === labels[a] ? positives : negatives).push(j);
  }
  return { positives, negatives };
}

/** One triplet per anchor: a random positive and a random negative (the reference's sampling). */
function mineRandom({ labels, seed = 0 }: MiningInput): MiningResult {
  const rng = new Rng(seed);
  const triplets: Triplet[] = [];
  let skippedAnchors = 0;
  for (let a = 0; a < labels.length; a++) {
    const { positives, negatives } = partners(labels, a);
    if (!positives.length || !negatives.length) {
      skippedAnchors++;
      continue;
    }
    triplets.push({
      anchor: a,
      positive: positives[rng.int(positives.length)],
      negative: negatives[rng.int(negatives.length)],
    });
  }
  return { triplets, skippedAnchors };
}

/** One triplet per anchor: its farthest positive and closest negative. Ties go to the lower index. */
function mineBatchHard({ distances = [], labels }: MiningInput): MiningResult {
  const n = labels.length;
  const triplets: Triplet[] = [];
  let skippedAnchors = 0;
  for (let a = 0; a < n; a++) {
    let positive = -1;
    let negative = -1;
    for (let j = 0; j < n; j++) {
      if (j === a) continue;
      const d = distances[a * n + j];
      if (labels[j] === labels[a]) {
        if (positive < 0 || d > distances[a * n + positive]) positive = j;
      } else if (negative < 0 || d < distances[a * n + negative]) negative = j;
    }
    if (positive < 0 || negative < 0) skippedAnchors++;
    else triplets.push({ anchor: a, positive, negative });
  }
  return { triplets, skippedAnchors };
}

/**
 * For every (anchor, positive) pair, the hardest semi-hard negative: the closest n with
 * d(a,p) < d(a,n) <= d(a,p) + margin. Pairs without one contribute no triplet (FaceNet).
 */
function mineSemiHard({ distances = [], labels, margin }: MiningInput): MiningResult {
  const n = labels.length;
  const triplets: Triplet[] = [];
  let skippedAnchors = 0;
  for (let a = 0; a < n; a++) {
    const { positives, negatives } = partners(labels, a);
    if (!positives.length || !negatives.length) {
      skippedAnchors++;
      continue;
    }
    for (const p of positives) {
      const dap = distances[a * n + p];
      let best = -1;
      for (const j of negatives) {
        const dan = distances[a * n + j];
        if (dan > dap && dan <= dap + margin && (best < 0 || dan < distances[a * n + best])) best = j;
      }
      if (best >= 0) triplets.push({ anchor: a, positive: p, negative: best });
    }
  }
  return { triplets, skippedAnchors };
}

export function mineTriplets(strategy: MiningStrategy, input: MiningInput): MiningResult {
  const n = input.labels.length;
  const entries = input.distances?.length ?? 0;
  if (strategy !== 'random' && entries !== n * n)
    throw new Error(`mining: distance matrix has ${entries} entries for ${n} labels`);
  switch (strategy) {
    case 'random':
      return mineRandom(input);
    case 'batch-hard':
      return mineBatchHard(input);
    case 'semi-hard':
      return mineSemiHard(input);
  }
}
