import { describe, expect, it } from 'vitest';
import {
  applyAugmentation,
  augmentParams,
  AugmentConfigSchema,
  type AugmentParams,
} from '../../src/shared/data/augment.js';
import { Prefetcher } from '../../src/shared/data/prefetch.js';

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
    for (const other of [{ epoch: 3 }, { step: 4 }, { worker: 1 }, { sample: 5 }])
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

  it('leaves the image unchanged with identity parameters', () => {
    expect(Array.from(applyAugmentation(image, size, none))).toEqual(Array.from(image));
  });

  it('flips horizontally, scales brightness with clamping, rotates about the centre', () => {
    const flipped = applyAugmentation(image, size, { ...none, flip: true });
    expect(px(flipped, 0, 3)).toEqual(px(image, 7, 3));
    const bright = applyAugmentation(image, size, { ...none, brightness: 2 });
    expect(px(bright, 2, 2)).toEqual(px(image, 2, 2).map((v) => Math.min(1, v * 2)));
    const quarter = applyAugmentation(image, size, { ...none, angle: Math.PI / 2 });
    // Rotating twice by 90 degrees equals a 180-degree rotation: pixel (x, y) comes from (7-x, 7-y).
    const half = applyAugmentation(quarter, size, { ...none, angle: Math.PI / 2 });
    px(half, 1, 2).forEach((v, c) => expect(v).toBeCloseTo(px(image, 6, 5)[c], 5));
  });
});

describe('prefetcher', () => {
  it('loads the next item while the current one is used, each index once', async () => {
    const calls: number[] = [];
    const p = new Prefetcher(async (i: number) => {
      calls.push(i);
      await new Promise((r) => setTimeout(r, 300));
      return i * 10;
    });
    const first = await p.take(0);
    expect(first.value).toBe(0);
    expect(first.waitSeconds).toBeGreaterThan(0.25);
    await new Promise((r) => setTimeout(r, 600)); // "compute" while item 1 loads
    const second = await p.take(1);
    expect(second.value).toBe(10);
    // Loaded long ago: taking it costs no load time (wide margin for a loaded machine's pauses).
    expect(second.waitSeconds).toBeLessThan(0.15);
    expect(calls).toEqual([0, 1, 2]);
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
