// A synthetic clothing catalogue that looks like DeepFashion In-shop: garments drawn procedurally,
// one silhouette family per category, item-specific colours and patterns, and views that differ in
// pose, scale, crop, rotation, lighting and background. Items of a category draw their colours from
// a few shared hues, so same-category look-alikes (hard negatives) exist.
// Everything is a pure function of (seed, item, view): images are rendered on demand at any size.
import { Rng } from '../rng.js';
import type { Catalogue, ImageRecord, Split } from './catalogue.js';

/** In-shop's 23 categories (gender/category). */
export const INSHOP_CATEGORIES = [
  'MEN/Denim',
  'MEN/Jackets_Vests',
  'MEN/Pants',
  'MEN/Shirts_Polos',
  'MEN/Shorts',
  'MEN/Suiting',
  'MEN/Sweaters',
  'MEN/Sweatshirts_Hoodies',
  'MEN/Tees_Tanks',
  'WOMEN/Blouses_Shirts',
  'WOMEN/Cardigans',
  'WOMEN/Denim',
  'WOMEN/Dresses',
  'WOMEN/Graphic_Tees',
  'WOMEN/Jackets_Coats',
  'WOMEN/Leggings',
  'WOMEN/Pants',
  'WOMEN/Rompers_Jumpsuits',
  'WOMEN/Shorts',
  'WOMEN/Skirts',
  'WOMEN/Sweaters',
  'WOMEN/Sweatshirts_Hoodies',
  'WOMEN/Tees_Tanks',
] as const;

type Point = [number, number];
type Polygon = Point[];

type Silhouette = 'top' | 'dress' | 'skirt' | 'pants' | 'jumpsuit';

interface CategoryShape {
  silhouette: Silhouette;
  /** Sleeve length 0 (none) .. 1 (long), body length, width and flare. */
  sleeve: number;
  length: number;
  width: number;
  flare: number;
}

function categoryShape(name: string, index: number): CategoryShape {
  const rng = Rng.from(0x5ca1e, index);
  const j = () => rng.uniform(-0.06, 0.06);
  const c = name.split('/')[1] ?? name;
  if (/Pants|Denim|Leggings/.test(c))
    return {
      silhouette: 'pants',
      sleeve: 0,
      length: 1.0 + j(),
      width: /Leggings/.test(c) ? 0.34 : 0.46 + j(),
      flare: /Denim/.test(c) ? 0.05 : 0.12,
    };
  if (/Shorts/.test(c)) return { silhouette: 'pants', sleeve: 0, length: 0.45 + j(), width: 0.5 + j(), flare: 0.15 };
  if (/Skirts/.test(c)) return { silhouette: 'skirt', sleeve: 0, length: 0.7 + j(), width: 0.4, flare: 0.35 + j() };
  if (/Dresses/.test(c)) return { silhouette: 'dress', sleeve: 0.2, length: 1.05 + j(), width: 0.36, flare: 0.3 + j() };
  if (/Rompers|Suiting/.test(c))
    return { silhouette: 'jumpsuit', sleeve: /Suiting/.test(c) ? 1 : 0.25, length: 1.1, width: 0.42 + j(), flare: 0.1 };
  const sleeve = /Tanks/.test(c) ? 0.1 : /Tees|Polos/.test(c) ? 0.35 : 1;
  return {
    silhouette: 'top',
    sleeve,
    length: 0.75 + j(),
    width: /Jackets|Coats|Hoodies/.test(c) ? 0.52 : 0.44 + j(),
    flare: /Blouses|Cardigans/.test(c) ? 0.1 : 0,
  };
}

/** Polygons in garment coordinates (x right, y down, both roughly in [-1, 1]). */
function silhouettePolygons(s: CategoryShape): Polygon[] {
  const w = s.width;
  const top = -0.8;
  const polys: Polygon[] = [];
  const sleeves = (shoulderY: number) => {
    if (s.sleeve <= 0.05) return;
    const len = 0.2 + 0.6 * s.sleeve;
    polys.push([
      [-w, shoulderY],
      [-w - 0.18 - 0.25 * s.sleeve, shoulderY + len],
      [-w - 0.02 - 0.12 * s.sleeve, shoulderY + len + 0.08],
      [-w + 0.02, shoulderY + 0.3],
    ]);
    polys.push([
      [w, shoulderY],
      [w + 0.18 + 0.25 * s.sleeve, shoulderY + len],
      [w + 0.02 + 0.12 * s.sleeve, shoulderY + len + 0.08],
      [w - 0.02, shoulderY + 0.3],
    ]);
  };
  switch (s.silhouette) {
    case 'top':
      polys.push([
        [-w * 0.55, top],
        [-0.1, top + 0.08],
        [0.1, top + 0.08],
        [w * 0.55, top],
        [w, top + 0.1],
        [w + s.flare, top + s.length * 2],
        [-w - s.flare, top + s.length * 2],
        [-w, top + 0.1],
      ]);
      sleeves(top + 0.1);
      break;
    case 'dress':
      polys.push([
        [-w * 0.6, top],
        [w * 0.6, top],
        [w, top + 0.55],
        [w * 0.8, top + 0.7],
        [w + s.flare * 1.4, top + s.length * 1.7],
        [-w - s.flare * 1.4, top + s.length * 1.7],
        [-w * 0.8, top + 0.7],
        [-w, top + 0.55],
      ]);
      sleeves(top + 0.05);
      break;
    case 'skirt':
      polys.push([
        [-w, -0.5],
        [w, -0.5],
        [w + s.flare, -0.5 + s.length * 1.6],
        [-w - s.flare, -0.5 + s.length * 1.6],
      ]);
      break;
    case 'pants': {
      const y0 = -0.8;
      const y1 = y0 + s.length * 1.6;
      polys.push([
        [-w, y0],
        [w, y0],
        [w, y0 + 0.35],
        [-w, y0 + 0.35],
      ]);
      polys.push([
        [-w, y0 + 0.3],
        [-0.03, y0 + 0.3],
        [-0.06 + s.flare * 0.2, y1],
        [-w - s.flare, y1],
      ]);
      polys.push([
        [0.03, y0 + 0.3],
        [w, y0 + 0.3],
        [w + s.flare, y1],
        [0.06 - s.flare * 0.2, y1],
      ]);
      break;
    }
    case 'jumpsuit':
      polys.push([
        [-w * 0.6, top],
        [w * 0.6, top],
        [w, top + 0.15],
        [w, top + 0.8],
        [-w, top + 0.8],
        [-w, top + 0.15],
      ]);
      polys.push([
        [-w, top + 0.75],
        [-0.03, top + 0.75],
        [-0.08, top + s.length * 1.6],
        [-w - s.flare, top + s.length * 1.6],
      ]);
      polys.push([
        [0.03, top + 0.75],
        [w, top + 0.75],
        [w + s.flare, top + s.length * 1.6],
        [0.08, top + s.length * 1.6],
      ]);
      sleeves(top + 0.12);
      break;
  }
  return polys;
}

function insidePolygon(x: number, y: number, poly: Polygon): boolean {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i];
    const [xj, yj] = poly[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function hsvToRgb(h: number, s: number, v: number): [number, number, number] {
  const f = (n: number) => {
    const k = (n + h * 6) % 6;
    return v - v * s * Math.max(0, Math.min(k, 4 - k, 1));
  };
  return [f(5), f(3), f(1)];
}

const PATTERNS = ['solid', 'hstripes', 'vstripes', 'diagonal', 'checks', 'dots', 'colorblock'] as const;

interface ItemLook {
  category: number;
  primary: [number, number, number];
  secondary: [number, number, number];
  pattern: (typeof PATTERNS)[number];
  frequency: number;
  phase: number;
  /** Stripe/dot thickness 0.2..0.6 of a period. */
  duty: number;
}

function itemLook(seed: number, item: number, category: number): ItemLook {
  const rng = Rng.from(seed, 0x17e4, item);
  // Three shared hues per category: items of a category are often near each other in colour.
  const catRng = Rng.from(seed, 0xca7, category);
  const hues = [catRng.next(), catRng.next(), catRng.next()];
  const hue = (hues[rng.int(3)] + rng.uniform(-0.04, 0.04) + 1) % 1;
  const primary = hsvToRgb(hue, rng.uniform(0.35, 0.95), rng.uniform(0.35, 0.95));
  const secondary =
    rng.next() < 0.5
      ? hsvToRgb((hue + rng.uniform(0.3, 0.7)) % 1, rng.uniform(0.2, 0.9), rng.uniform(0.3, 1))
      : hsvToRgb(hue, rng.uniform(0, 0.3), rng.uniform(0.8, 1));
  return {
    category,
    primary,
    secondary,
    pattern: PATTERNS[rng.int(PATTERNS.length)],
    frequency: rng.uniform(3, 9),
    phase: rng.next(),
    duty: rng.uniform(0.2, 0.6),
  };
}

function patternMix(look: ItemLook, x: number, y: number): number {
  const f = look.frequency;
  const frac = (t: number) => t - Math.floor(t);
  switch (look.pattern) {
    case 'solid':
      return 0;
    case 'hstripes':
      return frac(y * f + look.phase) < look.duty ? 1 : 0;
    case 'vstripes':
      return frac(x * f + look.phase) < look.duty ? 1 : 0;
    case 'diagonal':
      return frac((x + y) * f * 0.7 + look.phase) < look.duty ? 1 : 0;
    case 'checks':
      return (Math.floor(x * f * 0.5 + look.phase) + Math.floor(y * f * 0.5)) % 2 === 0 ? 1 : 0;
    case 'dots': {
      const dx = frac(x * f * 0.6 + look.phase) - 0.5;
      const dy = frac(y * f * 0.6) - 0.5;
      return dx * dx + dy * dy < look.duty * look.duty * 0.25 ? 1 : 0;
    }
    case 'colorblock':
      return y > look.phase * 0.8 - 0.2 ? 1 : 0;
  }
}

/** Renders one view of an item: [size, size, 3] HWC in [0, 1]. */
export function renderGarment(
  seed: number,
  item: number,
  category: number,
  categoryName: string,
  view: number,
  size: number,
): Float32Array {
  return renderGarmentWithBox(seed, item, category, categoryName, view, size).pixels;
}

/** A rendered view and the garment's bounding box [x1, y1, x2, y2] in pixels (inclusive). */
export function renderGarmentWithBox(
  seed: number,
  item: number,
  category: number,
  categoryName: string,
  view: number,
  size: number,
): { pixels: Float32Array; box: [number, number, number, number] } {
  const box: [number, number, number, number] = [size, size, -1, -1];
  const look = itemLook(seed, item, category);
  const polys = silhouettePolygons(categoryShape(categoryName, category));
  const rng = Rng.from(seed, 0x71e3, item, view);
  const scale = rng.uniform(0.72, 1.0);
  const angle = rng.uniform(-0.3, 0.3);
  const [sx, sy] = [rng.uniform(-0.12, 0.12), rng.uniform(-0.1, 0.1)];
  const flip = rng.next() < 0.5 ? -1 : 1;
  const brightness = rng.uniform(0.7, 1.2);
  const light: Point = [rng.uniform(-1, 1), rng.uniform(-1, 1)];
  const bg = hsvToRgb(rng.next(), rng.uniform(0, 0.25), rng.uniform(0.55, 0.95));
  const bgTilt = rng.uniform(-0.15, 0.15);
  const noise = Rng.from(seed, 0x0153, item, view, size);
  const cos = Math.cos(angle);
  const sin = Math.sin(angle);
  const out = new Float32Array(size * size * 3);
  for (let py = 0; py < size; py++) {
    for (let px = 0; px < size; px++) {
      const u = ((px + 0.5) / size) * 2 - 1;
      const v = ((py + 0.5) / size) * 2 - 1;
      // Inverse view transform: image -> garment coordinates (zoomed out a little to fit).
      const tx = (u - sx) / scale;
      const ty = (v - sy) / scale;
      const gx = (cos * tx + sin * ty) * 1.15 * flip;
      const gy = (-sin * tx + cos * ty) * 1.15;
      let rgb: [number, number, number];
      let inside = false;
      for (const poly of polys)
        if (insidePolygon(gx, gy, poly)) {
          inside = true;
          break;
        }
      if (inside) {
        box[0] = Math.min(box[0], px);
        box[1] = Math.min(box[1], py);
        box[2] = Math.max(box[2], px);
        box[3] = Math.max(box[3], py);
        const mix = patternMix(look, gx * flip, gy);
        const shade = 0.85 + 0.15 * (gx * light[0] + gy * light[1]) * 0.5;
        rgb = [0, 1, 2].map((c) => (look.primary[c] * (1 - mix) + look.secondary[c] * mix) * shade) as [
          number,
          number,
          number,
        ];
      } else {
        const g = 1 + bgTilt * v;
        rgb = [bg[0] * g, bg[1] * g, bg[2] * g];
      }
      const o = (py * size + px) * 3;
      for (let c = 0; c < 3; c++)
        out[o + c] = Math.min(1, Math.max(0, rgb[c] * brightness + (noise.next() - 0.5) * 0.04));
    }
  }
  if (box[2] < 0) box.splice(0, 4, 0, 0, size - 1, size - 1); // garment out of frame: whole image
  return { pixels: out, box };
}

export interface SyntheticOptions {
  items: number;
  categories: number;
  /** Images per item (train items need at least 2, test items one query and one gallery). */
  views: number;
  seed: number;
  /** Fraction of items used for training; the rest are split into query and gallery images. */
  trainFraction?: number;
}

/** An in-memory synthetic catalogue following the In-shop protocol (train items disjoint from test). */
export function syntheticCatalogue({
  items,
  categories,
  views,
  seed,
  trainFraction = 0.5,
}: SyntheticOptions): Catalogue {
  if (categories > INSHOP_CATEGORIES.length)
    throw new Error(`synthetic catalogue: at most ${INSHOP_CATEGORIES.length} categories`);
  if (views < 2) throw new Error('synthetic catalogue: every item needs at least 2 views');
  const categoryNames = INSHOP_CATEGORIES.slice(0, categories).map(String);
  const rng = Rng.from(seed, 0xca7a);
  const order = rng.shuffled([...Array(items).keys()]);
  const trainCount = Math.round(items * trainFraction);
  const isTrain = new Set(order.slice(0, trainCount));
  const images: ImageRecord[] = [];
  const views_: { item: number; view: number }[] = [];
  for (let item = 0; item < items; item++) {
    const category = item % categories;
    for (let view = 0; view < views; view++) {
      const split: Split = isTrain.has(item) ? 'train' : view % 2 === 0 ? 'query' : 'gallery';
      images.push({ id: images.length, itemId: item, category, split });
      views_.push({ item, view });
    }
  }
  return {
    name: `synthetic(items=${items}, categories=${categories}, views=${views}, seed=${seed})`,
    categories: categoryNames,
    images,
    async loadImage(id: number, size: number) {
      const record = images[id];
      if (!record) throw new Error(`synthetic catalogue: no image ${id}`);
      return renderGarment(seed, record.itemId, record.category, categoryNames[record.category], views_[id].view, size);
    },
  };
}
