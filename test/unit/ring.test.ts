// The ring exchange's arithmetic in memory: schedules that fit together, the packed contribution,
// and a reduce-scatter that gives the central path's weighted averages (summation order aside).
import { describe, expect, it } from 'vitest';
import { weightedAverage } from '../../src/shared/plan/average.js';
import {
  addInto,
  allGatherHops,
  allGatherInMemory,
  reduceHopIndex,
  ringStepReceives,
  checkHopHeader,
  ownedSlice,
  packContribution,
  reduceInMemory,
  reduceScatterHops,
  ringLayout,
  sliceBounds,
  unpackReduced,
  type MemberContribution,
} from '../../src/shared/plan/ring.js';
import { Rng } from '../../src/shared/rng.js';

// Layouts are built inside the tests, never while the file is collected: Stryker's per-test coverage
// credits a mutant only to the tests that run its code, and code run at collection is credited to none,
// so a wrong ringLayout() would go unjudged by this file.
const modelLayout = () =>
  ringLayout(
    [
      { name: 'conv/kernel', size: 1000 },
      { name: 'caps/W', size: 3333 },
    ],
    [
      { name: 'bn/moving_mean', size: 16 },
      { name: 'bn/moving_variance', size: 16 },
    ],
  );

function member(seed: number, triplets: number, shards: number): MemberContribution {
  const layout = modelLayout();
  const rng = new Rng(seed);
  const fill = (n: number, f = () => rng.normal()) => Float32Array.from({ length: n }, f);
  return {
    grads: new Map(layout.gradients.map((s) => [s.name, fill(s.size)])),
    bnStats: new Map(layout.statistics.map((s) => [s.name, fill(s.size, () => rng.uniform(0.5, 2))])),
    triplets,
    shards,
    activeTriplets: Math.floor(triplets / 2),
    loss: rng.uniform(0.5, 2),
    meanPositiveDistance: rng.uniform(0, 1),
    meanNegativeDistance: rng.uniform(1, 2),
  };
}

describe('ring schedules', () => {
  it('slices cover the vector once, sizes within one of each other', () => {
    for (const [len, n] of [
      [10, 3],
      [4355, 7],
      [5, 5],
      [3, 4],
    ]) {
      const b = sliceBounds(len, n);
      expect(b.reduce((s, x) => s + x.length, 0)).toBe(len);
      b.forEach((x, i) => i > 0 && expect(x.offset).toBe(b[i - 1].offset + b[i - 1].length));
      expect(Math.max(...b.map((x) => x.length)) - Math.min(...b.map((x) => x.length))).toBeLessThanOrEqual(1);
    }
  });

  it('what a member sends at each hop is what its successor expects; every member ends with every slice', () => {
    for (let n = 2; n <= 9; n++) {
      for (let i = 0; i < n; i++) {
        const next = (i + 1) % n;
        reduceScatterHops(i, n).forEach((h, k) => expect(reduceScatterHops(next, n)[k].receive).toBe(h.send));
        allGatherHops(i, n).forEach((h, k) => expect(allGatherHops(next, n)[k].receive).toBe(h.send));
        // A member sends at hop k + 1 the slice it received at hop k (its running sum, or a complete slice).
        for (let k = 1; k < n - 1; k++) {
          expect(reduceScatterHops(i, n)[k].send).toBe(reduceScatterHops(i, n)[k - 1].receive);
          expect(allGatherHops(i, n)[k].send).toBe(allGatherHops(i, n)[k - 1].receive);
        }
        expect(reduceScatterHops(i, n).at(-1)!.receive).toBe(ownedSlice(i, n));
        expect(allGatherHops(i, n)[0].send).toBe(ownedSlice(i, n));
        const got = new Set([ownedSlice(i, n), ...allGatherHops(i, n).map((h) => h.receive)]);
        expect(got.size).toBe(n);
      }
      // The owned slices are a permutation: the coordinator gets each slice from exactly one member.
      expect(new Set(Array.from({ length: n }, (_, i) => ownedSlice(i, n))).size).toBe(n);
    }
  });
});

describe('ring reduction', () => {
  it('gives the central weighted averages (float32 summation order aside), deterministically', () => {
    const layout = modelLayout();
    for (const n of [2, 3, 5, 8]) {
      const members = Array.from({ length: n }, (_, i) => member(100 * n + i, 3 + 5 * i, 1 + (i % 2)));
      const vectors = members.map((m) => packContribution(layout, m));
      const reduced = reduceInMemory(vectors);
      expect(reduceInMemory(vectors)).toEqual(reduced); // same ring, same bits
      const { grads, bnStats, scalars } = unpackReduced(layout, reduced);
      const central = weightedAverage(members.map((m) => ({ triplets: m.triplets, grads: m.grads })));
      for (const [name, g] of central.grads) {
        const r = grads.get(name)!;
        let maxErr = 0;
        let scale = 0;
        for (let i = 0; i < g.length; i++) {
          maxErr = Math.max(maxErr, Math.abs(r[i] - g[i]));
          scale = Math.max(scale, Math.abs(g[i]));
        }
        // Stated tolerance: a few float32 ulps of the largest value (summation order differs).
        expect(maxErr, `${name}, ${n} members`).toBeLessThan(1e-6 * scale * n);
      }
      const shards = members.reduce((s, m) => s + m.shards, 0);
      for (const [name, st] of bnStats) {
        const want = members.reduce((acc, m) => acc + (m.bnStats.get(name)![3] * m.shards) / shards, 0);
        expect(st[3]).toBeCloseTo(want, 5);
      }
      const triplets = members.reduce((s, m) => s + m.triplets, 0);
      expect(scalars.triplets).toBe(triplets);
      expect(scalars.shards).toBe(shards);
      expect(scalars.lossSum / scalars.triplets).toBeCloseTo(
        members.reduce((s, m) => s + m.loss * m.triplets, 0) / triplets,
        5,
      );
    }
  });

  it('an all-gather from one owned slice each gives every member the whole weights vector, bit for bit', () => {
    for (const n of [2, 3, 7]) {
      const full = Float32Array.from({ length: 1001 }, (_, i) => Math.sin(i) * 1e-3 + i);
      for (const v of allGatherInMemory(full, n)) expect(v).toEqual(full);
    }
  });

  it("a ring step's hops: the weights' all-gather first (hops 0..n-2), then the reduce-scatter", () => {
    const n = 4;
    const receives = ringStepReceives(1, n, 100, 23);
    expect(receives).toHaveLength(2 * (n - 1));
    const w = sliceBounds(100, n);
    const g = sliceBounds(23, n);
    expect(receives.slice(0, n - 1)).toEqual(allGatherHops(1, n).map((h) => w[h.receive]));
    expect(receives.slice(n - 1)).toEqual(reduceScatterHops(1, n).map((h) => g[h.receive]));
    expect(reduceHopIndex(0, n)).toBe(n - 1);
  });

  it('refuses contributions that do not fit the model', () => {
    const layout = modelLayout();
    const m = member(1, 3, 1);
    m.grads.set('caps/W', new Float32Array(5));
    expect(() => packContribution(layout, m)).toThrow(/gradient caps\/W has 5 values, the model 3333/);
    expect(() => unpackReduced(layout, new Float32Array(3))).toThrow(/3 values, the layout has/);
  });
});

describe('hop checks', () => {
  const want = { run: 'r1', round: 4, step: 9, from: 'w2-aa', hop: 1, slice: { index: 2, offset: 20, length: 10 } };
  const good = { run: 'r1', round: 4, step: 9, from: 'w2-aa', hop: 1, slice: 2, offset: 20, length: 10 };
  it('accept the predecessor of this round at the hop due, and name everything else', () => {
    expect(checkHopHeader(good, want)).toBeUndefined();
    expect(checkHopHeader({ ...good, run: 'other' }, want)).toBe(
      'w2-aa sent a hop of run other; this ring belongs to run r1',
    );
    expect(checkHopHeader({ ...good, from: 'w9-bb' }, want)).toBe(
      "w9-bb is not this member's predecessor in round 4 (w2-aa is)",
    );
    expect(checkHopHeader({ ...good, round: 3 }, want)).toMatch(/step 9 round 3; the ring is at step 9 round 4/);
    expect(checkHopHeader({ ...good, hop: 0 }, want)).toBe('w2-aa sent hop 0 where hop 1 was due');
    expect(checkHopHeader({ ...good, length: 11 }, want)).toBe(
      'w2-aa sent slice 2 [20, +11) where slice 2 [20, +10) was due',
    );
  });
});

describe('ring details', () => {
  const smallLayout = () => ringLayout([{ name: 'g', size: 3 }], [{ name: 's', size: 2 }]);
  const contribution = (): MemberContribution => ({
    grads: new Map([['g', Float32Array.of(1, -2, 0.5)]]),
    bnStats: new Map([['s', Float32Array.of(4, 8)]]),
    triplets: 4,
    shards: 2,
    activeTriplets: 3,
    loss: 0.25,
    meanPositiveDistance: 0.5,
    meanNegativeDistance: 1.5,
  });

  it('lays out the gradients, then the statistics, then the six scalars', () => {
    expect(smallLayout().length).toBe(3 + 2 + 6);
    expect(modelLayout().length).toBe(1000 + 3333 + 16 + 16 + 6);
  });

  it('packs sums: gradients x triplets, statistics x shards, then the scalars as sums', () => {
    const small = smallLayout();
    expect(Array.from(packContribution(small, contribution()))).toEqual([4, -8, 2, 8, 16, 4, 2, 3, 1, 2, 6]);
    const reused = new Float32Array(small.length);
    expect(packContribution(small, contribution(), reused)).toBe(reused);
    const wrongSize = new Float32Array(3);
    expect(packContribution(small, contribution(), wrongSize)).not.toBe(wrongSize);
    const back = unpackReduced(small, packContribution(small, contribution()));
    expect(Array.from(back.grads.get('g')!)).toEqual([1, -2, 0.5]);
    expect(Array.from(back.bnStats.get('s')!)).toEqual([4, 8]);
    expect(back.scalars).toEqual({
      triplets: 4,
      shards: 2,
      activeTriplets: 3,
      lossSum: 1,
      positiveSum: 2,
      negativeSum: 6,
    });
  });

  it('numbers the reduce-scatter hops after the all-gather ones, and cuts at least one slice', () => {
    expect([0, 1, 2].map((k) => reduceHopIndex(k, 4))).toEqual([3, 4, 5]);
    expect(sliceBounds(10, 1)).toEqual([{ index: 0, offset: 0, length: 10 }]);
    expect(() => sliceBounds(10, 0)).toThrow(/sliceBounds: 0 slices/);
  });

  it('adds only vectors of the same length', () => {
    const acc = Float32Array.of(1, 2);
    expect(() => addInto(acc, Float32Array.of(1))).toThrow(/addInto: 1 values into 2/);
    addInto(acc, Float32Array.of(0.5, -2));
    expect(Array.from(acc)).toEqual([1.5, 0]);
  });

  it('a hop must match the expectation in every field, and the refusal names the field', () => {
    const want = { run: 'r', round: 3, step: 7, from: 'w1', hop: 2, slice: { index: 1, offset: 10, length: 5 } };
    const good = { run: 'r', round: 3, step: 7, from: 'w1', hop: 2, slice: 1, offset: 10, length: 5 };
    expect(checkHopHeader(good, want)).toBeUndefined();
    const cases: [Partial<typeof good>, RegExp][] = [
      [{ run: 'q' }, /w1 sent a hop of run q; this ring belongs to run r/],
      [{ from: 'w9' }, /w9 is not this member's predecessor in round 3 \(w1 is\)/],
      [{ round: 4 }, /sent a hop of step 7 round 4; the ring is at step 7 round 3/],
      [{ step: 6 }, /sent a hop of step 6 round 3; the ring is at step 7 round 3/],
      [{ hop: 3 }, /sent hop 3 where hop 2 was due/],
      [{ slice: 2 }, /sent slice 2 \[10, \+5\) where slice 1 \[10, \+5\) was due/],
      [{ offset: 11 }, /sent slice 1 \[11, \+5\) where/],
      [{ length: 4 }, /sent slice 1 \[10, \+4\) where/],
    ];
    for (const [change, message] of cases) expect(checkHopHeader({ ...good, ...change }, want)).toMatch(message);
  });
});
