import { describe, expect, it } from 'vitest';
import {
  applyAugmentation,
  augmentParams,
  AugmentConfigSchema,
  type AugmentParams,
} from '../../src/shared/data/augment.js';
import { Prefetcher } from '../../src/shared/data/prefetch.js';
import { Rng } from '../../src/shared/rng.js';

const size = 8;
const image = Float32Array.from({ length: size * size * 3 }, (_, i) => ((i * 37) % 101) / 101);
const none: AugmentParams = { angle: 0, tx: 0, ty: 0, shear: 0, zx: 1, zy: 1, brightness: 1, flip: false };
const px = (img: Float32Array, x: number, y: number) =>
  Array.from(img.subarray((y * size + x) * 3, (y * size + x) * 3 + 3));

describe('augmentation', () => {
  it('is a pure function of (seed, epoch, step, worker, sample)', () => {
    const cfg = AugmentConfigSchema.parse({});
    const key = { seed: 1, epoch: 2, step: 3, worker: 0, sample: 4 };
    expect(augmentParams(cfg, key)).toEqual(augmentParams(cfg, key));
    for (const other of [{ seed: 2 }, { epoch: 3 }, { step: 4 }, { worker: 1 }, { sample: 5 }])
      expect(augmentParams(cfg, { ...key, ...other })).not.toEqual(augmentParams(cfg, key));
  });

  it('draws within the configured ranges, and each transform switches off', () => {
    const cfg = AugmentConfigSchema.parse({});
    for (let sample = 0; sample < 50; sample++) {
      const p = augmentParams(cfg, { seed: 1, epoch: 0, step: 0, worker: 0, sample });
      expect(Math.abs(p.angle)).toBeLessThanOrEqual((30 * Math.PI) / 180);
      expect(Math.abs(p.tx)).toBeLessThanOrEqual(0.1);
      expect(Math.abs(p.ty)).toBeLessThanOrEqual(0.1);
      for (const z of [p.zx, p.zy]) {
        expect(z).toBeGreaterThanOrEqual(0.9);
        expect(z).toBeLessThanOrEqual(1.1);
      }
      expect(Math.abs(p.shear)).toBeLessThanOrEqual((0.1 * Math.PI) / 180);
      expect(p.brightness).toBeGreaterThanOrEqual(0.5);
      expect(p.brightness).toBeLessThanOrEqual(1.5);
    }
    const off = AugmentConfigSchema.parse({
      rotationDegrees: 0,
      shift: 0,
      brightness: [1, 1],
      shearDegrees: 0,
      zoom: 0,
      horizontalFlip: false,
    });
    expect(augmentParams(off, { seed: 1, epoch: 0, step: 0, worker: 0, sample: 0 })).toEqual(none);
  });

  it('draws every parameter on its own: x and y shift and zoom differ, over many seeds', () => {
    const cfg = AugmentConfigSchema.parse({});
    let zoomsDiffer = 0;
    let shiftsDiffer = 0;
    for (let seed = 0; seed < 20; seed++) {
      const p = augmentParams(cfg, { seed, epoch: 0, step: 0, worker: 0, sample: 0 });
      if (p.zx !== p.zy) zoomsDiffer++;
      if (p.tx !== p.ty) shiftsDiffer++;
    }
    expect(zoomsDiffer).toBe(20);
    expect(shiftsDiffer).toBe(20);
  });

  /** Bilinear sample of `image` at (sx, sy), the reference the transforms below are checked with. */
  const at = (sx: number, sy: number) => {
    const x0 = Math.floor(sx);
    const y0 = Math.floor(sy);
    const [fx, fy] = [sx - x0, sy - y0];
    const x1 = Math.min(size - 1, x0 + 1);
    const y1 = Math.min(size - 1, y0 + 1);
    return [0, 1, 2].map(
      (c) =>
        (px(image, x0, y0)[c] * (1 - fx) + px(image, x1, y0)[c] * fx) * (1 - fy) +
        (px(image, x0, y1)[c] * (1 - fx) + px(image, x1, y1)[c] * fx) * fy,
    );
  };
  const c = (size - 1) / 2;

  it('shifts by a fraction of the side: one pixel right and two down', () => {
    const shifted = applyAugmentation(image, size, { ...none, tx: 1 / size, ty: 2 / size });
    for (let y = 2; y < size; y++)
      for (let x = 1; x < size; x++)
        px(shifted, x, y).forEach((v, ch) => expect(v).toBeCloseTo(px(image, x - 1, y - 2)[ch], 6));
  });

  it('zooms each axis by its own factor (x kept, y magnified 2x about the centre)', () => {
    const zoomed = applyAugmentation(image, size, { ...none, zx: 1, zy: 2 });
    for (const [x, y] of [
      [2, 7],
      [5, 0],
      [6, 4],
    ])
      px(zoomed, x, y).forEach((v, ch) => expect(v, `(${x}, ${y})`).toBeCloseTo(at(x, (y - c) / 2 + c)[ch], 6));
  });

  it('zooms x by its own factor too (magnified 2x: the source is (x - c) / 2 + c)', () => {
    const zoomed = applyAugmentation(image, size, { ...none, zx: 2, zy: 1 });
    for (const [x, y] of [
      [0, 3],
      [6, 1],
      [7, 7],
    ])
      px(zoomed, x, y).forEach((v, ch) => expect(v, `(${x}, ${y})`).toBeCloseTo(at((x - c) / 2 + c, y)[ch], 6));
  });

  it('shears: output (x, y) samples x + sin(s) (y - c) / cos(s) and (y - c) / cos(s) + c', () => {
    const s = (20 * Math.PI) / 180;
    const sheared = applyAugmentation(image, size, { ...none, shear: s });
    for (const [x, y] of [
      [3, 6],
      [2, 1],
      [4, 5],
    ]) {
      const v = (y - c) / Math.cos(s);
      px(sheared, x, y).forEach((got, ch) =>
        expect(got, `(${x}, ${y})`).toBeCloseTo(at(x + Math.sin(s) * v, v + c)[ch], 6),
      );
    }
  });

  it('leaves the image unchanged with identity parameters', () => {
    expect(Array.from(applyAugmentation(image, size, none))).toEqual(Array.from(image));
  });

  it('flips horizontally, scales brightness with clamping, rotates about the centre', () => {
    const flipped = applyAugmentation(image, size, { ...none, flip: true });
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++) expect(px(flipped, x, y)).toEqual(px(image, 7 - x, y));
    const bright = applyAugmentation(image, size, { ...none, brightness: 2 });
    expect(px(bright, 2, 2)).toEqual(px(image, 2, 2).map((v) => Math.min(1, v * 2)));
    const quarter = applyAugmentation(image, size, { ...none, angle: Math.PI / 2 });
    // Rotating twice by 90 degrees equals a 180-degree rotation: pixel (x, y) comes from (7-x, 7-y).
    const half = applyAugmentation(quarter, size, { ...none, angle: Math.PI / 2 });
    px(half, 1, 2).forEach((v, c) => expect(v).toBeCloseTo(px(image, 6, 5)[c], 5));
  });
});

describe('augmentation settings and draws', () => {
  it('defaults to the reference settings, and refuses values outside each range by name', () => {
    expect(AugmentConfigSchema.parse({})).toEqual({
      enabled: true,
      rotationDegrees: 30,
      shift: 0.1,
      brightness: [0.5, 1.5],
      shearDegrees: 0.1,
      zoom: 0.1,
      horizontalFlip: true,
    });
    const edges = { rotationDegrees: 180, shift: 0.5, shearDegrees: 45, zoom: 0.9, brightness: [0, 0] };
    expect(AugmentConfigSchema.parse(edges)).toMatchObject(edges);
    for (const [key, bad] of [
      ['rotationDegrees', 181],
      ['rotationDegrees', -1],
      ['shift', 0.51],
      ['shift', -0.1],
      ['shearDegrees', 46],
      ['shearDegrees', -1],
      ['zoom', 0.95],
      ['zoom', -0.1],
      ['brightness', [-0.1, 1]],
      ['brightness', [0.5, -1]],
    ] as const) {
      const r = AugmentConfigSchema.safeParse({ [key]: bad });
      expect(r.success, `${key} ${JSON.stringify(bad)}`).toBe(false);
      expect(r.error?.issues[0]?.path[0]).toBe(key);
    }
  });

  it('draws in a fixed order from the sample key: angle, shifts, shear, zooms (1 + a draw), brightness, flip', () => {
    const cfg = AugmentConfigSchema.parse({ rotationDegrees: 20, shift: 0.2, shearDegrees: 10, zoom: 0.3 });
    const deg = Math.PI / 180;
    for (let sample = 0; sample < 40; sample++) {
      const key = { seed: 7, epoch: 1, step: 2, worker: 3, sample };
      const rng = Rng.from(7, 0xa06, 1, 2, 3, sample);
      const want = {
        angle: rng.uniform(-20, 20) * deg,
        tx: rng.uniform(-0.2, 0.2),
        ty: rng.uniform(-0.2, 0.2),
        shear: rng.uniform(-10, 10) * deg,
        zx: 1 + rng.uniform(-0.3, 0.3),
        zy: 1 + rng.uniform(-0.3, 0.3),
        brightness: rng.uniform(0.5, 1.5),
        flip: rng.next() < 0.5,
      };
      expect(augmentParams(cfg, key), `sample ${sample}`).toEqual(want);
    }
    // A fixed brightness draws nothing: the flip takes the draw brightness would have.
    const fixed = AugmentConfigSchema.parse({ brightness: [0.8, 0.8] });
    const flips = { on: 0, off: 0 };
    for (let sample = 0; sample < 200; sample++) {
      const rng = Rng.from(7, 0xa06, 0, 0, 0, sample);
      for (let i = 0; i < 6; i++) rng.next();
      const p = augmentParams(fixed, { seed: 7, epoch: 0, step: 0, worker: 0, sample });
      expect(p.brightness).toBe(0.8);
      expect(p.flip, `sample ${sample}`).toBe(rng.next() < 0.5);
      flips[p.flip ? 'on' : 'off']++;
    }
    // About half are flipped; none when flipping is off.
    expect(flips.on).toBeGreaterThan(60);
    expect(flips.off).toBeGreaterThan(60);
    const noFlip = AugmentConfigSchema.parse({ horizontalFlip: false });
    for (let sample = 0; sample < 50; sample++)
      expect(augmentParams(noFlip, { seed: 7, epoch: 0, step: 0, worker: 0, sample }).flip).toBe(false);
  });
});

describe('prefetcher', () => {
  it('loads the next item while the current one is used, each index once', async () => {
    // Each load ends when the test releases it: no sleep decides anything.
    const calls: number[] = [];
    const release = new Map<number, () => void>();
    const finished = new Map<number, Promise<void>>();
    const p = new Prefetcher(async (i: number) => {
      calls.push(i);
      let done!: () => void;
      finished.set(i, new Promise<void>((r) => (done = r)));
      await new Promise<void>((r) => release.set(i, r));
      done();
      return i * 10;
    });
    const taking = p.take(0);
    expect(calls).toEqual([0, 1]); // item 1 starts loading while item 0 is awaited
    release.get(0)!();
    expect((await taking).value).toBe(0);
    // Item 1 finishes loading while item 0 is "computed"; taking it then waits for nothing.
    release.get(1)!();
    await finished.get(1);
    const second = await p.take(1);
    expect(second.value).toBe(10);
    expect(calls).toEqual([0, 1, 2]); // no index loaded twice
    // Wide margin for a loaded machine: the load itself would have taken as long as the test chose.
    expect(second.waitSeconds).toBeLessThan(0.15);
    // Taking an item still loading waits for it.
    const third = p.take(2);
    let settled = false;
    void third.then(() => (settled = true));
    await Promise.resolve();
    expect(settled).toBe(false);
    release.get(2)!();
    expect((await third).value).toBe(20);
    release.get(3)!();
    p.clear();
  });

  it('surfaces a failed load when its item is taken', async () => {
    const p = new Prefetcher(async (i: number) => {
      if (i === 1) throw new Error('disk on fire');
      return i;
    });
    await p.take(0);
    await expect(p.take(1)).rejects.toThrow('disk on fire');
  });
});
