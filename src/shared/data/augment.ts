// Training-time augmentation as in the reference (Keras ImageDataGenerator semantics): rotation
// (+-degrees), width/height shift (fraction of the side), brightness factor range, shear (degrees,
// as Keras), zoom (each axis in [1-z, 1+z]), horizontal flip. Each is switched off by setting it to
// 0 / false. Parameters are a pure function of (seed, epoch, step, worker, sample), so a batch can be
// rebuilt exactly on another worker or after a resume.
//   pixels [size, size, 3] HWC in [0, 1] -> same shape; edges filled with the nearest pixel (Keras).
import { z } from 'zod';
import { Rng } from '../rng.js';

export const AugmentConfigSchema = z.object({
  enabled: z.boolean().default(true),
  rotationDegrees: z.number().min(0).max(180).default(30),
  shift: z.number().min(0).max(0.5).default(0.1),
  brightness: z.tuple([z.number().min(0), z.number().min(0)]).default([0.5, 1.5]),
  shearDegrees: z.number().min(0).max(45).default(0.1),
  zoom: z.number().min(0).max(0.9).default(0.1),
  horizontalFlip: z.boolean().default(true),
});
export type AugmentConfig = z.infer<typeof AugmentConfigSchema>;

export interface AugmentParams {
  angle: number; // radians
  tx: number; // fraction of the side
  ty: number;
  shear: number; // radians
  zx: number;
  zy: number;
  brightness: number;
  flip: boolean;
}

export interface SampleKey {
  seed: number;
  epoch: number;
  step: number;
  worker: number;
  sample: number;
}

export function augmentParams(cfg: AugmentConfig, k: SampleKey): AugmentParams {
  const rng = Rng.from(k.seed, 0xa06, k.epoch, k.step, k.worker, k.sample);
  const sym = (r: number) => rng.uniform(-r, r);
  const deg = Math.PI / 180;
  return {
    angle: sym(cfg.rotationDegrees) * deg,
    tx: sym(cfg.shift),
    ty: sym(cfg.shift),
    shear: sym(cfg.shearDegrees) * deg,
    zx: 1 + sym(cfg.zoom),
    zy: 1 + sym(cfg.zoom),
    brightness:
      cfg.brightness[0] === cfg.brightness[1] ? cfg.brightness[0] : rng.uniform(cfg.brightness[0], cfg.brightness[1]),
    flip: cfg.horizontalFlip && rng.next() < 0.5,
  };
}

/** Applies one augmentation (bilinear resampling about the image centre). */
export function applyAugmentation(pixels: Float32Array, size: number, p: AugmentParams): Float32Array {
  const out = new Float32Array(pixels.length);
  const c = (size - 1) / 2;
  const cos = Math.cos(p.angle);
  const sin = Math.sin(p.angle);
  const shearCos = Math.cos(p.shear);
  const shearTan = Math.sin(p.shear);
  // Output pixel -> source pixel: inverse of (zoom, shear, rotation, shift) about the centre.
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let u = (p.flip ? size - 1 - x : x) - c - p.tx * size;
      let v = y - c - p.ty * size;
      // inverse rotation
      [u, v] = [cos * u + sin * v, -sin * u + cos * v];
      // inverse shear (x' = x - tan*y, y' = y / cos)
      v = v / shearCos;
      u = u + shearTan * v;
      // inverse zoom
      const sx = Math.min(size - 1, Math.max(0, u / p.zx + c));
      const sy = Math.min(size - 1, Math.max(0, v / p.zy + c));
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const x1 = Math.min(size - 1, x0 + 1);
      const y1 = Math.min(size - 1, y0 + 1);
      const fx = sx - x0;
      const fy = sy - y0;
      const o = (y * size + x) * 3;
      for (let ch = 0; ch < 3; ch++) {
        const a = pixels[(y0 * size + x0) * 3 + ch];
        const b = pixels[(y0 * size + x1) * 3 + ch];
        const d = pixels[(y1 * size + x0) * 3 + ch];
        const e = pixels[(y1 * size + x1) * 3 + ch];
        const value = (a * (1 - fx) + b * fx) * (1 - fy) + (d * (1 - fx) + e * fx) * fy;
        out[o + ch] = Math.min(1, Math.max(0, value * p.brightness));
      }
    }
  }
  return out;
}
