// `tricaps data synth`: writes the synthetic catalogue to disk in the DeepFashion In-shop layout, so
// that the embedded default goes through the same loader as the real data set.
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { UsageError } from '../errors.js';
import { BBOX_FILE, PARTITION_FILE } from './inshop.js';
import { INSHOP_CATEGORIES, renderGarmentWithBox, syntheticCatalogue, type SyntheticOptions } from './synthetic.js';

export interface SynthWriteOptions extends SyntheticOptions {
  out: string;
  imageSize: number;
  format?: 'png' | 'jpg';
  /** Write into a non-empty directory. */
  force?: boolean;
}

const POSES = ['1_front', '2_side', '3_back', '4_full', '5_additional'];

/** In-shop clothes_type: 1 upper body, 2 lower body, 3 full body. */
function clothesType(category: string): number {
  if (/Pants|Denim|Leggings|Shorts|Skirts/.test(category)) return 2;
  if (/Dresses|Rompers|Suiting/.test(category)) return 3;
  return 1;
}

export async function writeSyntheticInshop(
  opts: SynthWriteOptions,
): Promise<{ images: number; items: number; root: string }> {
  const { out, imageSize, format = 'png' } = opts;
  if (existsSync(out) && readdirSync(out).length > 0 && !opts.force) {
    throw new UsageError(`${out} is not empty; choose a new directory or pass --force to write into it`);
  }
  const catalogue = syntheticCatalogue(opts);
  const partition: string[] = [];
  const boxes: string[] = [];
  const viewOfItem = new Map<number, number>();
  for (const record of catalogue.images) {
    const view = viewOfItem.get(record.itemId) ?? 0;
    viewOfItem.set(record.itemId, view + 1);
    const category = INSHOP_CATEGORIES[record.category];
    const itemName = `id_${String(record.itemId + 1).padStart(8, '0')}`;
    const name = `img/${category}/${itemName}/${String(view + 1).padStart(2, '0')}_${POSES[view % POSES.length]}.${format}`;
    const { pixels, box } = renderGarmentWithBox(opts.seed, record.itemId, record.category, category, view, imageSize);
    const bytes = Buffer.alloc(pixels.length);
    for (let i = 0; i < pixels.length; i++) bytes[i] = Math.round(pixels[i] * 255);
    const image = sharp(bytes, { raw: { width: imageSize, height: imageSize, channels: 3 } });
    const path = join(out, name);
    mkdirSync(dirname(path), { recursive: true });
    await (format === 'png' ? image.png() : image.jpeg({ quality: 92 })).toFile(path);
    partition.push(`${name.padEnd(60)} ${itemName.padEnd(12)} ${record.split}`);
    boxes.push(`${name.padEnd(60)} ${clothesType(category)} ${(view % POSES.length) + 1} ${box.join(' ')}`);
  }
  mkdirSync(join(out, 'Eval'), { recursive: true });
  mkdirSync(join(out, 'Anno'), { recursive: true });
  writeFileSync(
    join(out, PARTITION_FILE),
    [String(partition.length), 'image_name item_id evaluation_status', ...partition].join('\n') + '\n',
  );
  writeFileSync(
    join(out, BBOX_FILE),
    [String(boxes.length), 'image_name clothes_type pose_type x_1 y_1 x_2 y_2', ...boxes].join('\n') + '\n',
  );
  return { images: partition.length, items: opts.items, root: out };
}
