// `tricaps embed`: one embedding per image from a checkpoint, for a vector store. Images come from an
// In-shop catalogue (--data, one split or all) or from files (--images GLOB); the vectors are written
// batch by batch (shared/eval/embedding-file.ts), so memory is one batch whatever the count.
import type { Command } from 'commander';
import { readdirSync, statSync } from 'node:fs';
import { extname, join, relative, resolve, sep } from 'node:path';
import { decodeImageFile } from '../shared/data/batch.js';
import { SPLITS, type Catalogue, type ImageRecord } from '../shared/data/catalogue.js';
import { openInshopCatalogue } from '../shared/data/inshop.js';
import { ENGINE_NAMES } from '../shared/engine/engine.js';
import { UsageError } from '../shared/errors.js';
import {
  EMBEDDING_FORMATS,
  EmbeddingWriter,
  metaPathOf,
  type EmbeddingFormat,
  type EmbeddingRow,
} from '../shared/eval/embedding-file.js';
import { maskedEmbeddings, unitCapsules } from '../shared/eval/evaluate.js';
import { MASK_MODES, type MaskMode } from '../shared/model/embedding.js';
import { openModel } from './eval.js';
import { choiceOption, intOption } from './options.js';
import { progressBar } from './train.js';

/** A glob's path below its fixed base as a regex: `*` and `?` within a name, `**` any folders. */
export function globRegex(relativePattern: string): RegExp {
  const body = relativePattern
    .split('/')
    .map((seg) =>
      seg === '**'
        ? '(?:[^/]+/)*'
        : `${seg
            .replace(/[.+^${}()|[\]\\]/g, '\\$&')
            .replace(/\*/g, '[^/]*')
            .replace(/\?/g, '[^/]')}/`,
    )
    .join('');
  return new RegExp(`^${body.replace(/\/$/, '')}$`);
}

/** Files matching a glob (`*`, `?` within a name, `**` across folders), sorted. */
export function expandGlob(pattern: string): string[] {
  const parts = resolve(pattern).split(sep);
  const firstWild = parts.findIndex((p) => /[*?]/.test(p));
  if (firstWild < 0) return statSync(pattern, { throwIfNoEntry: false })?.isFile() ? [resolve(pattern)] : [];
  const base = parts.slice(0, firstWild).join(sep) || sep;
  const regex = globRegex(parts.slice(firstWild).join('/'));
  const out: string[] = [];
  const walk = (dir: string) => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (regex.test(relative(base, p).split(sep).join('/'))) out.push(p);
    }
  };
  walk(base);
  return out.sort();
}

/** Image files as a catalogue without labels (for --images). */
function filesCatalogue(files: string[]): Catalogue & { paths: string[] } {
  return {
    name: `${files.length} image files`,
    categories: [],
    paths: files,
    images: files.map((_, id) => ({ id, itemId: -1, category: -1, split: 'query' as const })),
    loadImage: (id: number, size: number) => decodeImageFile(files[id], size),
  };
}

export function registerEmbedCommand(program: Command): void {
  program
    .command('embed')
    .description('write one embedding per image (float32, with path, item and predicted category) for a vector store')
    .requiredOption('--checkpoint <dir>', 'a checkpoint directory (model.json) or a checkpoint root (newest step-*)')
    .option('--data <dir>', 'In-shop catalogue root (the images of --split)')
    .option(
      '--split <s>',
      `with --data: ${[...SPLITS, 'all'].join('|')}`,
      choiceOption([...SPLITS, 'all'] as const),
      'all',
    )
    .option('--images <glob>', 'image files instead of a catalogue, e.g. "photos/**/*.jpg" (quote it)')
    .requiredOption(
      '--out <file>',
      'output file (.npy: vectors, with <name>.meta.jsonl beside; .jsonl: one line per image)',
    )
    .option(
      '--format <f>',
      `${EMBEDDING_FORMATS.join('|')} (default: from --out's extension)`,
      choiceOption(EMBEDDING_FORMATS),
    )
    .option(
      '--mask <m>',
      `capsule mask (${MASK_MODES.join('|')}); oracle needs --data`,
      choiceOption(MASK_MODES),
      'predicted',
    )
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--batch <n>', 'images per forward pass (and per write)', intOption(1, 4096), 64)
    .action(async (o) => {
      if (Boolean(o.data) === Boolean(o.images)) throw new UsageError('give either --data DIR or --images GLOB');
      const format: EmbeddingFormat =
        o.format ??
        (extname(o.out).toLowerCase() === '.jsonl'
          ? 'jsonl'
          : extname(o.out).toLowerCase() === '.npy'
            ? 'npy'
            : failFormat(o.out));
      if (o.images && o.mask === 'oracle')
        throw new UsageError('--mask oracle needs the true categories: use --data, or --mask predicted|none');
      let catalogue: Catalogue & { paths: string[]; itemNames?: string[] };
      let records: ImageRecord[];
      if (o.data) {
        catalogue = await openInshopCatalogue({ root: o.data });
        records = o.split === 'all' ? catalogue.images : catalogue.images.filter((r) => r.split === o.split);
      } else {
        const files = expandGlob(o.images);
        if (files.length === 0) throw new UsageError(`--images ${o.images}: no file matches`);
        catalogue = filesCatalogue(files);
        records = catalogue.images;
      }
      if (records.length === 0) throw new UsageError(`no images to embed (--split ${o.split} of ${o.data} is empty)`);
      const { dir, saved, engine, model } = await openModel(o.checkpoint, o.engine);
      const categories = saved.categories;
      if (o.data && catalogue.categories.length !== categories.length) {
        throw new UsageError(
          `${dir} was trained on ${categories.length} categories, ${o.data} has ${catalogue.categories.length}`,
        );
      }
      const dim = model.arch.outputShape[0] * model.arch.outputShape[1];
      const writer = await EmbeddingWriter.open(o.out, format, records.length, dim);
      const bar = progressBar('embed |{bar}| {value}/{total} images | {ips} img/s | eta {eta_formatted}');
      bar.start(records.length, 0, { ips: '-' });
      const started = performance.now();
      try {
        for (let start = 0; start < records.length; start += o.batch) {
          const chunk = records.slice(start, start + o.batch);
          const caps = await unitCapsules(model, catalogue, chunk, { batchSize: o.batch, conv: engine.conv });
          const vectors = maskedEmbeddings(
            caps,
            o.mask as MaskMode,
            chunk.map((r) => r.category),
          );
          const rows: EmbeddingRow[] = chunk.map((r, i) => ({
            path: catalogue.paths[r.id],
            item: o.data ? catalogue.itemNames![r.itemId] : null,
            category: o.data ? catalogue.categories[r.category] : null,
            predicted: categories[caps.predicted[i]],
          }));
          await writer.write(rows, vectors);
          bar.update(start + chunk.length, {
            ips: ((start + chunk.length) / ((performance.now() - started) / 1000)).toFixed(1),
          });
        }
        await writer.close();
      } catch (err) {
        writer.abort();
        throw err;
      } finally {
        bar.stop();
        model.dispose();
      }
      const files = format === 'npy' ? `${o.out} and ${metaPathOf(o.out)}` : o.out;
      console.log(
        `${records.length} embeddings of ${dim} floats (mask ${o.mask}, ${dir}, step ${saved.step}) written to ${files}`,
      );
    });
}

function failFormat(out: string): never {
  throw new UsageError(`--out ${out}: say --format npy or jsonl (or name the file .npy or .jsonl)`);
}
