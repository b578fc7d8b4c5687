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

/**
 * Appends history lines. The history is a record, not state: a line that cannot be written (a full
 * disk) is dropped and counted, and training goes on; `onWriteError` hears the first failure of an
 * outage and `onRecovered` the first success after it, with the count of lines lost.
 */
export class RunHistory {
  private lost = 0;
  /** A failed append may have left a torn line: the next one starts on a fresh line. */
  private torn = false;

  constructor(
    readonly path: string,
    private readonly hooks: {
      onWriteError?(err: NodeJS.ErrnoException): void;
      onRecovered?(linesLost: number): void;
    } = {},
  ) {
    mkdirSync(dirname(path), { recursive: true });
  }

  append(line: HistoryLine): void {
    try {
      appendFileSync(this.path, `${this.torn ? '\n' : ''}${JSON.stringify(line)}\n`);
    } catch (e) {
      if (this.lost++ === 0) this.hooks.onWriteError?.(e as NodeJS.ErrnoException);
      this.torn = true;
      return;
    }
    this.torn = false;
    if (this.lost > 0) {
      this.hooks.onRecovered?.(this.lost);
      this.lost = 0;
    }
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
