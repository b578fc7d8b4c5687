// Image search: rank gallery images by squared L2 distance to one query embedding, and draw the
// query with its top-k as a PNG grid (matches of the query's item framed green, others grey).
import sharp from 'sharp';

export interface SearchHit {
  rank: number;
  galleryIndex: number;
  distance: number;
}

/** Top-k gallery rows by squared distance (ties by gallery order). */
export function rankGallery(query: Float32Array, gallery: Float32Array, dim: number, k: number): SearchHit[] {
  const n = gallery.length / dim;
  const distances = new Float64Array(n);
  for (let g = 0; g < n; g++) {
    let d = 0;
    for (let j = 0; j < dim; j++) {
      const diff = query[j] - gallery[g * dim + j];
      d += diff * diff;
    }
    distances[g] = d;
  }
  const order = Array.from({ length: n }, (_, g) => g).sort((a, b) => distances[a] - distances[b] || a - b);
  return order.slice(0, k).map((g, i) => ({ rank: i + 1, galleryIndex: g, distance: distances[g] }));
}

export interface GridTile {
  pixels: Float32Array; // [size, size, 3] in [0, 1]
  /** true: same item as the query (green frame); false: other item (grey); null: the query (blue). */
  match: boolean | null;
}

/** Writes tiles in one row-major grid PNG with coloured frames. */
export async function writeGrid(path: string, tiles: GridTile[], size: number, columns = 6): Promise<void> {
  const border = Math.max(2, Math.round(size / 24));
  const cell = size + 2 * border;
  const rows = Math.ceil(tiles.length / columns);
  const width = Math.min(columns, tiles.length) * cell;
  const height = rows * cell;
  const out = Buffer.alloc(width * height * 3, 255);
  tiles.forEach((tile, t) => {
    const x0 = (t % columns) * cell;
    const y0 = Math.floor(t / columns) * cell;
    const frame = tile.match === null ? [40, 90, 220] : tile.match ? [20, 170, 60] : [170, 170, 170];
    for (let y = 0; y < cell; y++) {
      for (let x = 0; x < cell; x++) {
        const o = ((y0 + y) * width + x0 + x) * 3;
        const inner = x >= border && y >= border && x < border + size && y < border + size;
        for (let c = 0; c < 3; c++)
          out[o + c] = inner ? Math.round(tile.pixels[((y - border) * size + (x - border)) * 3 + c] * 255) : frame[c];
      }
    }
  });
  await sharp(out, { raw: { width, height, channels: 3 } })
    .png()
    .toFile(path);
}
