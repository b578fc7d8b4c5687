// `tricaps data synth` and `tricaps data inspect`.
import type { Command } from 'commander';
import { describeCatalogue, openInshopCatalogue } from '../shared/data/inshop.js';
import { writeSyntheticInshop } from '../shared/data/synth-writer.js';
import { choiceOption, intOption } from './options.js';

export function registerDataCommands(program: Command): void {
  const data = program.command('data').description('make and check catalogues in the DeepFashion In-shop layout');
  data
    .command('synth')
    .description('write a synthetic clothing catalogue in the In-shop layout (deterministic for a seed)')
    .requiredOption('--out <dir>', 'directory to create')
    .option('--items <n>', 'items (half train, half query/gallery)', intOption(4, 1_000_000), 240)
    .option('--categories <n>', 'categories (In-shop has 23)', intOption(2, 23), 6)
    .option('--views <n>', 'images per item', intOption(2, 32), 4)
    .option('--image-size <n>', 'side of the square images in pixels', intOption(16, 1024), 64)
    .option('--format <f>', 'png|jpg', choiceOption(['png', 'jpg'] as const), 'png')
    .option('--seed <n>', 'seed', intOption(0, 2 ** 31), 7)
    .option('--force', 'write into a non-empty directory')
    .action(async (o) => {
      const r = await writeSyntheticInshop({
        out: o.out,
        items: o.items,
        categories: o.categories,
        views: o.views,
        imageSize: o.imageSize,
        seed: o.seed,
        format: o.format,
        force: o.force,
      });
      console.log(`wrote ${r.images} images of ${r.items} items to ${r.root}`);
    });
  data
    .command('inspect')
    .description('validate a catalogue and print images, items and categories per split')
    .requiredOption('--root <dir>', 'catalogue root (holds img/ and Eval/list_eval_partition.txt)')
    .option(
      '--on-bad-image <p>',
      'missing/corrupt images and single-image train items: fail|skip',
      choiceOption(['fail', 'skip'] as const),
      'fail',
    )
    .option('--verify-images', 'decode every image header (finds corrupt files)')
    .option('--json', 'print JSON')
    .action(async (o) => {
      const catalogue = await openInshopCatalogue({
        root: o.root,
        onBadImage: o.onBadImage,
        verifyImages: Boolean(o.verifyImages),
      });
      const d = describeCatalogue(catalogue);
      if (o.json) {
        console.log(JSON.stringify(d));
        return;
      }
      console.log(
        `${d.root}: ${d.images} images, ${d.items} items, ${d.categories.length} categories${d.bounding_boxes ? ', bounding boxes' : ''}`,
      );
      for (const [split, s] of Object.entries(d.splits))
        console.log(
          `  ${split.padEnd(8)} ${String(s.images).padStart(7)} images ${String(s.items).padStart(6)} items ${String(s.categories).padStart(3)} categories`,
        );
      if (d.skipped) {
        console.log(`skipped ${d.skipped} entries:`);
        for (const e of d.skipped_entries) console.log(`  ${e.file}:${e.line}: ${e.reason}`);
      }
    });
}
