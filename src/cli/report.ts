// `tricaps report --run DIR --out report.html`: the run's history as a static page.
import type { Command } from 'commander';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../shared/errors.js';
import { HISTORY_FILE, readHistory } from '../shared/run-history.js';
import { renderReport } from '../report/report.js';

export function registerReportCommand(program: Command): void {
  program
    .command('report')
    .description(
      'write a self-contained HTML page of a run: loss and Recall@K curves, step phases, throughput per worker, a retrieval grid',
    )
    .requiredOption('--run <dir>', 'the run\u2019s --checkpoint-dir (holds history.jsonl)')
    .requiredOption('--out <file>', 'HTML file to write')
    .option('--grid <png>', 'retrieval grid to show (from `tricaps search --grid`)')
    .option('--title <text>', 'page title')
    .action((o) => {
      const path = join(o.run, HISTORY_FILE);
      if (!existsSync(path))
        throw new UsageError(
          `${path}: no run history here; train with --checkpoint-dir ${o.run} (and --workers 1 or more) first`,
        );
      const { lines, skipped } = readHistory(path);
      if (!lines.some((l) => l.type === 'step')) throw new UsageError(`${path}: no steps recorded yet`);
      if (o.grid && !existsSync(o.grid)) throw new UsageError(`--grid ${o.grid}: no such file`);
      writeFileSync(o.out, renderReport({ lines, gridPng: o.grid ? readFileSync(o.grid) : undefined, title: o.title }));
      console.log(
        `report written to ${o.out} (${lines.length} history lines${skipped ? `, ${skipped} unreadable skipped` : ''})`,
      );
    });
}
