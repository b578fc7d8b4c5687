// A run's history as JSON lines beside its checkpoints (history.jsonl): one line per step, per
// evaluation and per (re)start, appended as the run goes. `tricaps report` reads it.
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';

export const HISTORY_FILE = 'history.jsonl';

const Phases = z.object({
  data: z.number(),
  compute: z.number(),
  exchange: z.number(),
  averaging: z.number(),
  optimizer: z.number(),
});
export const HistoryLineSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('run'),
    runId: z.string(),
    step: z.number(),
    resumedFrom: z.string().nullable(),
    engine: z.string(),
    device: z.string(),
    shards: z.number(),
  }),
  z.object({
    type: z.literal('step'),
    step: z.number(),
    epoch: z.number(),
    loss: z.number(),
    gradientNorm: z.number(),
    triplets: z.number(),
    activeTriplets: z.number(),
    seconds: z.number(),
    phases: Phases,
    workers: z.array(
      z.object({ id: z.string(), images: z.number(), dataSeconds: z.number(), computeSeconds: z.number() }),
    ),
  }),
  z.object({
    type: z.literal('evaluation'),
    step: z.number(),
    mask: z.string(),
    recall: z.record(z.string(), z.number()),
    mapAtR: z.number(),
  }),
]);
export type HistoryLine = z.infer<typeof HistoryLineSchema>;

export class RunHistory {
  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
  }

  append(line: HistoryLine): void {
    appendFileSync(this.path, `${JSON.stringify(line)}\n`);
  }
}

/** Reads a history file; lines that do not parse (a torn last line after a crash) are counted, not fatal. */
export function readHistory(path: string): { lines: HistoryLine[]; skipped: number } {
  if (!existsSync(path)) return { lines: [], skipped: 0 };
  const lines: HistoryLine[] = [];
  let skipped = 0;
  for (const raw of readFileSync(path, 'utf8').split('\n')) {
    if (!raw.trim()) continue;
    try {
      lines.push(HistoryLineSchema.parse(JSON.parse(raw)));
    } catch {
      skipped++;
    }
  }
  return { lines, skipped };
}
