// DeepFashion In-shop catalogues on disk (the real data set, or `tricaps data synth` output):
//   img/<GENDER>/<Category>/id_XXXXXXXX/NN_V_view.jpg|png
//   Eval/list_eval_partition.txt   line 1: row count; line 2: "image_name item_id evaluation_status";
//                                  then "<image_name> <item_id> <train|query|gallery>" (runs of spaces)
//   Anno/list_bbox_inshop.txt      optional; line 1: count; line 2: "image_name clothes_type pose_type
//                                  x_1 y_1 x_2 y_2"; then one row per image
// Categories come from the path (GENDER/Category). Problems are reported with file and line; bad
// images are fatal or skipped-and-counted (`onBadImage`), never a stack trace.
import { oneLine } from '../errors.js';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { UsageError } from '../errors.js';
import type { Catalogue, ImageRecord, Split } from './catalogue.js';
import { SPLITS } from './catalogue.js';

export const PARTITION_FILE = 'Eval/list_eval_partition.txt';
export const BBOX_FILE = 'Anno/list_bbox_inshop.txt';
const PARTITION_HEADER = ['image_name', 'item_id', 'evaluation_status'];
const BBOX_HEADER = ['image_name', 'clothes_type', 'pose_type', 'x_1', 'y_1', 'x_2', 'y_2'];

export type BadImagePolicy = 'fail' | 'skip';

export interface InshopOptions {
  root: string;
  /** Missing or undecodable images, and train items left with one image: fail, or skip and count. */
  onBadImage?: BadImagePolicy;
  /** Crop each image to its Anno bounding box before resizing (needs the bbox file). */
  bboxCrop?: boolean;
  /** Decode every image's header while opening (catches corrupt files up front). */
  verifyImages?: boolean;
}

export interface SkippedEntry {
  file: string;
  line: number;
  reason: string;
}

export interface InshopCatalogue extends Catalogue {
  root: string;
  /** Image paths relative to root, parallel to `images`. */
  paths: string[];
  /** item id strings (e.g. "id_00000002") by item index. */
  itemNames: string[];
  skipped: SkippedEntry[];
  hasBoxes: boolean;
}

interface Row {
  line: number;
  fields: string[];
}

/** Count line, header line, rows split on runs of whitespace (blank lines ignored). */
function readTable(root: string, file: string, header: string[], columns: number): Row[] {
  const path = join(root, file);
  if (!existsSync(path)) {
    throw new UsageError(
      `${path}: file not found. An In-shop catalogue needs ${PARTITION_FILE} under its root (make one with \`tricaps data synth --out DIR\`)`,
    );
  }
  const lines = readFileSync(path, 'utf8').split(/\r?\n/);
  const declared = Number(lines[0]?.trim());
  if (!Number.isInteger(declared) || declared < 0)
    throw new UsageError(`${path}:1: expected the row count, found "${lines[0] ?? ''}"`);
  const got = (lines[1] ?? '').trim().split(/\s+/);
  if (got.join(' ') !== header.join(' '))
    throw new UsageError(`${path}:2: expected the header "${header.join(' ')}", found "${lines[1] ?? ''}"`);
  const rows: Row[] = [];
  for (let i = 2; i < lines.length; i++) {
    const text = lines[i].trim();
    if (!text) continue;
    const fields = text.split(/\s+/);
    if (fields.length !== columns)
      throw new UsageError(
        `${path}:${i + 1}: expected ${columns} fields (${header.join(' ')}), found ${fields.length}: "${text}"`,
      );
    rows.push({ line: i + 1, fields });
  }
  if (rows.length !== declared)
    throw new UsageError(
      `${path}:1: declares ${declared} rows but the file has ${rows.length}; fix the count or the rows`,
    );
  return rows;
}

function categoryOf(imageName: string): string | undefined {
  const parts = imageName.split('/');
  // img / GENDER / Category / id_XXXXXXXX / file
  if (parts.length !== 5 || parts[0] !== 'img') return undefined;
  return `${parts[1]}/${parts[2]}`;
}

export async function openInshopCatalogue(opts: InshopOptions): Promise<InshopCatalogue> {
  const { root, onBadImage = 'fail', bboxCrop = false, verifyImages = false } = opts;
  if (!existsSync(root))
    throw new UsageError(
      `${root}: no such directory (give the root of an In-shop catalogue: it holds img/ and ${PARTITION_FILE})`,
    );
  const partitionPath = join(root, PARTITION_FILE);
  const rows = readTable(root, PARTITION_FILE, PARTITION_HEADER, 3);
  const boxes = new Map<string, [number, number, number, number]>();
  const hasBoxes = existsSync(join(root, BBOX_FILE));
  if (bboxCrop && !hasBoxes)
    throw new UsageError(
      `${join(root, BBOX_FILE)}: file not found; it is needed for bounding-box crops (drop --bbox-crop to use whole images)`,
    );
  if (hasBoxes) {
    for (const row of readTable(root, BBOX_FILE, BBOX_HEADER, 7)) {
      const coords = row.fields.slice(3).map(Number);
      if (coords.some((c) => !Number.isInteger(c) || c < 0) || coords[2] < coords[0] || coords[3] < coords[1]) {
        throw new UsageError(
          `${join(root, BBOX_FILE)}:${row.line}: bad bounding box "${row.fields.slice(3).join(' ')}" (want x_1 y_1 x_2 y_2, integers, x_1 <= x_2, y_1 <= y_2)`,
        );
      }
      boxes.set(row.fields[0], coords as [number, number, number, number]);
    }
  }

  const skipped: SkippedEntry[] = [];
  const bad = (line: number, reason: string, file = partitionPath) => {
    if (onBadImage === 'fail')
      throw new UsageError(`${file}:${line}: ${reason} (use --on-bad-image skip to skip such entries and count them)`);
    skipped.push({ file, line, reason });
  };

  interface Entry {
    line: number;
    name: string;
    item: string;
    split: Split;
    category: string;
  }
  const entries: Entry[] = [];
  const seen = new Set<string>();
  for (const { line, fields } of rows) {
    const [name, item, split] = fields;
    if (!(SPLITS as readonly string[]).includes(split))
      throw new UsageError(`${partitionPath}:${line}: unknown split "${split}" (expected train, query or gallery)`);
    const category = categoryOf(name);
    if (!category)
      throw new UsageError(
        `${partitionPath}:${line}: image name "${name}" is not of the form img/GENDER/Category/id_XXXXXXXX/FILE`,
      );
    if (seen.has(name)) throw new UsageError(`${partitionPath}:${line}: image "${name}" is listed twice`);
    seen.add(name);
    if (!existsSync(join(root, name))) {
      bad(line, `image ${join(root, name)} is missing`);
      continue;
    }
    if (verifyImages || onBadImage === 'skip') {
      // A full decode, as training does (a header read passes a file cut short); with
      // --on-bad-image skip every image is checked up front, so skipping is decided before any
      // batch is planned, the same way in the coordinator and every worker.
      try {
        await sharp(join(root, name)).raw().toBuffer();
      } catch (err) {
        bad(line, `image ${join(root, name)} cannot be decoded (${oneLine(err)})`);
        continue;
      }
    }
    entries.push({ line, name, item, split: split as Split, category });
  }

  // A train item needs two images to form a positive pair.
  const trainCount = new Map<string, Entry[]>();
  for (const e of entries) if (e.split === 'train') trainCount.set(e.item, [...(trainCount.get(e.item) ?? []), e]);
  const dropped = new Set<Entry>();
  for (const [item, list] of trainCount) {
    if (list.length === 1) {
      bad(list[0].line, `train item ${item} has a single image, so it cannot form a positive pair`);
      dropped.add(list[0]);
    }
  }
  const kept = entries.filter((e) => !dropped.has(e));
  for (const split of SPLITS) {
    if (!kept.some((e) => e.split === split))
      throw new UsageError(
        `${partitionPath}: the ${split} split has no usable images${skipped.length ? ` (${skipped.length} entries were skipped)` : ''}`,
      );
  }

  const categories = [...new Set(kept.map((e) => e.category))].sort();
  const itemNames = [...new Set(kept.map((e) => e.item))].sort();
  const itemIndex = new Map(itemNames.map((n, i) => [n, i]));
  const categoryIndex = new Map(categories.map((n, i) => [n, i]));
  const images: ImageRecord[] = kept.map((e, id) => ({
    id,
    itemId: itemIndex.get(e.item)!,
    category: categoryIndex.get(e.category)!,
    split: e.split,
  }));
  const paths = kept.map((e) => e.name);

  return {
    name: `In-shop(${root})`,
    root,
    categories,
    images,
    paths,
    itemNames,
    skipped,
    hasBoxes,
    async loadImage(id: number, size: number): Promise<Float32Array> {
      const path = join(root, paths[id]);
      let pipeline = sharp(path);
      const box = bboxCrop ? boxes.get(paths[id]) : undefined;
      if (box)
        pipeline = pipeline.extract({
          left: box[0],
          top: box[1],
          width: box[2] - box[0] + 1,
          height: box[3] - box[1] + 1,
        });
      let raw: Buffer;
      try {
        raw = await pipeline.resize(size, size, { fit: 'fill' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
      } catch (err) {
        throw new UsageError(
          `${path}: cannot decode image (${oneLine(err)}); run \`tricaps data inspect --root ${root} --verify-images\` to find every bad file`,
        );
      }
      const out = new Float32Array(size * size * 3);
      for (let i = 0; i < out.length; i++) out[i] = raw[i] / 255;
      return out;
    },
  };
}

/** Images, items and categories per split (for `tricaps data inspect`). */
export function describeCatalogue(c: InshopCatalogue) {
  const perSplit = Object.fromEntries(
    SPLITS.map((split) => {
      const records = c.images.filter((r) => r.split === split);
      return [
        split,
        {
          images: records.length,
          items: new Set(records.map((r) => r.itemId)).size,
          categories: new Set(records.map((r) => r.category)).size,
        },
      ];
    }),
  );
  return {
    root: c.root,
    images: c.images.length,
    items: c.itemNames.length,
    categories: c.categories,
    splits: perSplit,
    bounding_boxes: c.hasBoxes,
    skipped: c.skipped.length,
    skipped_entries: c.skipped.slice(0, 20),
  };
}
