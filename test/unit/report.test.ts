// The run report: self-contained HTML from a history (no network needed to view it).
import { describe, expect, it } from 'vitest';
import { renderReport } from '../../src/report/report.js';
import type { HistoryLine } from '../../src/shared/run-history.js';

const step = (s: number, loss: number, worker = 'w1'): HistoryLine => ({
  type: 'step',
  step: s,
  epoch: 0,
  loss,
  gradientNorm: 1,
  triplets: 24,
  activeTriplets: 12,
  seconds: 0.5,
  phases: { data: 0.05, compute: 0.3, exchange: 0.1, averaging: 0.02, optimizer: 0.03 },
  workers: [{ id: worker, images: 24, dataSeconds: 0.05, computeSeconds: 0.3 }],
});

describe('run report', () => {
  it('draws loss, Recall@K, phases and per-worker throughput inline, with no external resource', () => {
    const lines: HistoryLine[] = [
      { type: 'run', runId: 'r<1>', step: 0, resumedFrom: null, engine: 'wasm', device: 'cpu', shards: 2 },
      ...Array.from({ length: 30 }, (_, i) => step(i, 2 - i / 30, i % 2 ? 'w2' : 'w1')),
      { type: 'evaluation', step: 10, mask: 'oracle', recall: { '1': 0.1, '10': 0.5 }, mapAtR: 0.1 },
      { type: 'evaluation', step: 20, mask: 'oracle', recall: { '1': 0.3, '10': 0.7 }, mapAtR: 0.2 },
      // A resumed run repeats step 29: the later record wins.
      {
        type: 'run',
        runId: 'r<1>',
        step: 29,
        resumedFrom: '/ck/step-00000029',
        engine: 'wasm',
        device: 'cpu',
        shards: 2,
      },
      step(29, 0.5),
    ];
    const html = renderReport({ lines, gridPng: Uint8Array.of(137, 80, 78, 71), title: 'demo' });
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).not.toMatch(/(src|href)="https?:/);
    expect(html).toContain('r&lt;1&gt;'); // escaped
    expect((html.match(/<svg /g) ?? []).length).toBe(3);
    expect(html).toContain('30% at step 20');
    expect(html).toContain('2 (1 resumed)');
    expect(html).toMatch(/<td>w1<\/td><td>16<\/td>/); // 15 even steps + the re-run step 29
    expect(html).toMatch(/<td>w2<\/td><td>14<\/td>/);
    expect(html).toContain('data:image/png;base64,iVBORw==');
    expect(html).toContain('R@10');
  });

  it('says when there is nothing to draw', () => {
    const html = renderReport({ lines: [step(0, 1)] });
    expect(html).toContain('no data'); // no evaluations
    expect(html).toContain('no grid given');
  });

  it('draws one mask: the headline (first) mask evaluations, not a zigzag of several', () => {
    const lines: HistoryLine[] = [
      { type: 'run', runId: 'r', step: 0, resumedFrom: null, engine: 'wasm', device: 'cpu', shards: 1 },
      step(0, 2),
      { type: 'evaluation', step: 0, mask: 'predicted', recall: { '1': 0.1 }, mapAtR: 0.1 },
      { type: 'evaluation', step: 0, mask: 'oracle', recall: { '1': 0.9 }, mapAtR: 0.5 },
      { type: 'evaluation', step: 1, mask: 'predicted', recall: { '1': 0.2 }, mapAtR: 0.1 },
      { type: 'evaluation', step: 1, mask: 'oracle', recall: { '1': 0.95 }, mapAtR: 0.5 },
    ];
    const html = renderReport({ lines, title: 'masks' });
    expect(html).toContain('mask predicted');
    expect(html).toContain('best R@1</div><div class="v">20% at step 1');
  });
});

describe('run history writes', () => {
  it('a line that cannot be written is dropped and counted, never thrown; the next line starts clean', async () => {
    const { mkdtempSync, mkdirSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { RunHistory, readHistory } = await import('../../src/shared/run-history.js');
    const dir = mkdtempSync(join(tmpdir(), 'tricaps-history-'));
    try {
      const path = join(dir, 'history.jsonl');
      const events: string[] = [];
      const history = new RunHistory(path, {
        onWriteError: (e) => events.push(`error ${e.code}`),
        onRecovered: (n) => events.push(`recovered ${n}`),
      });
      history.append(step(0, 2));
      rmSync(path);
      mkdirSync(path); // appending to a directory fails, as a full disk would
      history.append(step(1, 1.9));
      history.append(step(2, 1.8));
      expect(events).toEqual(['error EISDIR']);
      rmSync(path, { recursive: true });
      history.append(step(3, 1.7));
      history.append(step(4, 1.6));
      expect(events).toEqual(['error EISDIR', 'recovered 2']);
      const { lines, skipped } = readHistory(path);
      expect(skipped).toBe(0);
      expect(lines.map((l) => (l.type === 'step' ? l.step : -1))).toEqual([3, 4]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
