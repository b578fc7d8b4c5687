// `tricaps report`: a self-contained HTML page from a run's history.jsonl (charts as inline SVG,
// the retrieval grid as an inline PNG): loss and Recall@K over steps, where step time goes, and
// throughput per worker. Pure: history in, HTML out; nothing is fetched when the page is viewed.
import type { HistoryLine } from '../shared/run-history.js';

type Step = Extract<HistoryLine, { type: 'step' }>;
type Evaluation = Extract<HistoryLine, { type: 'evaluation' }>;
type RunStart = Extract<HistoryLine, { type: 'run' }>;

const esc = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const fmt = (x: number, digits = 3) => (Math.abs(x) >= 1000 ? x.toFixed(0) : Number(x.toPrecision(digits)).toString());

const W = 560;
const H = 260;
const PAD = { left: 56, right: 16, top: 16, bottom: 40 };
const PHASE_COLORS: Record<string, string> = {
  data: '#8da0cb',
  compute: '#66c2a5',
  exchange: '#fc8d62',
  averaging: '#e78ac3',
  optimizer: '#a6d854',
};
const SERIES_COLORS = ['#1b6ca8', '#d95f02', '#1b9e77', '#7570b3', '#e7298a', '#66a61e'];

interface Series {
  name: string;
  color: string;
  points: [number, number][];
  width?: number;
  opacity?: number;
}

function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) return [lo];
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= n) ?? step * 10;
  const out: number[] = [];
  for (let t = Math.ceil(lo / nice) * nice; t <= hi + 1e-12; t += nice) out.push(Number(t.toPrecision(12)));
  return out;
}

function lineChart(
  title: string,
  series: Series[],
  opts: { xLabel: string; yLabel: string; yMin?: number; yMax?: number },
): string {
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) return `<figure><figcaption>${esc(title)}</figcaption><p class="empty">no data</p></figure>`;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs, x0 + 1);
  const y0 = opts.yMin ?? Math.min(...ys);
  const y1 = opts.yMax ?? Math.max(...ys, y0 + 1e-9);
  const sx = (x: number) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y: number) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  const grid = ticks(y0, y1)
    .map(
      (t) =>
        `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${sy(t)}" y2="${sy(t)}" class="grid"/><text x="${PAD.left - 6}" y="${sy(t) + 4}" class="tick" text-anchor="end">${fmt(t)}</text>`,
    )
    .join('');
  const xt = ticks(x0, x1)
    .map((t) => `<text x="${sx(t)}" y="${H - PAD.bottom + 16}" class="tick" text-anchor="middle">${fmt(t)}</text>`)
    .join('');
  const lines = series
    .map(
      (s) =>
        `<polyline fill="none" stroke="${s.color}" stroke-width="${s.width ?? 2}" opacity="${s.opacity ?? 1}" points="${s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`,
    )
    .join('');
  // The legend sits under the chart, where it cannot cover a line.
  const legend = `<div class="legend">${series
    .filter((s) => s.name)
    .map((s) => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`)
    .join('')}</div>`;
  return `<figure><figcaption>${esc(title)}</figcaption><svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(title)}">${grid}${xt}<line x1="${PAD.left}" x2="${PAD.left}" y1="${PAD.top}" y2="${H - PAD.bottom}" class="axis"/><line x1="${PAD.left}" x2="${W - PAD.right}" y1="${H - PAD.bottom}" y2="${H - PAD.bottom}" class="axis"/>${lines}<text x="${(W + PAD.left) / 2}" y="${H - 6}" class="label" text-anchor="middle">${esc(opts.xLabel)}</text><text x="14" y="${H / 2}" class="label" text-anchor="middle" transform="rotate(-90 14 ${H / 2})">${esc(opts.yLabel)}</text></svg>${legend}</figure>`;
}

function stackedBars(title: string, bars: { label: string; parts: Record<string, number> }[], yLabel: string): string {
  if (bars.length === 0) return `<figure><figcaption>${esc(title)}</figcaption><p class="empty">no data</p></figure>`;
  const max = Math.max(...bars.map((b) => Object.values(b.parts).reduce((a, c) => a + c, 0)), 1e-9);
  const bw = (W - PAD.left - PAD.right) / bars.length;
  const sy = (v: number) => ((H - PAD.top - PAD.bottom - 16) * v) / max;
  const rects = bars
    .map((b, i) => {
      let y = H - PAD.bottom;
      return (
        Object.entries(b.parts)
          .map(([name, v]) => {
            const h = sy(v);
            y -= h;
            return `<rect x="${(PAD.left + i * bw + 2).toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, bw - 4).toFixed(1)}" height="${h.toFixed(1)}" fill="${PHASE_COLORS[name] ?? '#999'}"><title>${esc(`${b.label} ${name}: ${fmt(v)} s`)}</title></rect>`;
          })
          .join('') +
        (bars.length <= 12 || i % Math.ceil(bars.length / 10) === 0
          ? `<text x="${PAD.left + i * bw + bw / 2}" y="${H - PAD.bottom + 16}" class="tick" text-anchor="middle">${esc(b.label)}</text>`
          : '')
      );
    })
    .join('');
  const grid = ticks(0, max)
    .map(
      (t) =>
        `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${H - PAD.bottom - sy(t)}" y2="${H - PAD.bottom - sy(t)}" class="grid"/><text x="${PAD.left - 6}" y="${H - PAD.bottom - sy(t) + 4}" class="tick" text-anchor="end">${fmt(t)}</text>`,
    )
    .join('');
  const legend = Object.keys(PHASE_COLORS)
    .map(
      (name, i) =>
        `<rect x="${PAD.left + 8 + i * 95}" y="${PAD.top - 12}" width="10" height="10" fill="${PHASE_COLORS[name]}"/><text x="${PAD.left + 22 + i * 95}" y="${PAD.top - 3}" class="tick">${name}</text>`,
    )
    .join('');
  return `<figure><figcaption>${esc(title)}</figcaption><svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(title)}">${grid}${rects}${legend}<text x="14" y="${H / 2}" class="label" text-anchor="middle" transform="rotate(-90 14 ${H / 2})">${esc(yLabel)}</text></svg></figure>`;
}

function movingAverage(points: [number, number][], window: number): [number, number][] {
  const out: [number, number][] = [];
  let sum = 0;
  points.forEach(([x, y], i) => {
    sum += y;
    if (i >= window) sum -= points[i - window][1];
    out.push([x, sum / Math.min(i + 1, window)]);
  });
  return out;
}

export interface ReportInput {
  lines: HistoryLine[];
  /** A retrieval grid (PNG bytes) from `tricaps search --grid`, shown as is. */
  gridPng?: Uint8Array;
  title?: string;
}

export function renderReport({ lines, gridPng, title }: ReportInput): string {
  // A resumed run re-runs steps after its checkpoint: the last record of a step wins.
  const byStep = new Map<number, Step>();
  for (const l of lines) if (l.type === 'step') byStep.set(l.step, l);
  const steps = [...byStep.values()].sort((a, b) => a.step - b.step);
  // One mask's curve: the run's headline mask (its first evaluation's); others would zigzag in.
  const allEvaluations = lines.filter((l): l is Evaluation => l.type === 'evaluation');
  const evaluations = allEvaluations.filter((e) => e.mask === allEvaluations[0]?.mask);
  const starts = lines.filter((l): l is RunStart => l.type === 'run');
  const runIds = [...new Set(starts.map((s) => s.runId))];

  const loss: [number, number][] = steps.map((s) => [s.step, s.loss]);
  const lossChart = lineChart(
    'Loss per step',
    [
      { name: 'loss', color: '#9ecae1', points: loss, width: 1 },
      { name: `mean of ${Math.min(20, Math.max(1, loss.length))}`, color: '#1b6ca8', points: movingAverage(loss, 20) },
    ],
    { xLabel: 'step', yLabel: 'triplet loss' },
  );

  const ks = [...new Set(evaluations.flatMap((e) => Object.keys(e.recall)))].map(Number).sort((a, b) => a - b);
  const recallChart = lineChart(
    `Recall@K on held-out items${evaluations[0] ? ` (mask ${evaluations[0].mask})` : ''}`,
    ks.map((k, i) => ({
      name: `R@${k}`,
      color: SERIES_COLORS[i % SERIES_COLORS.length],
      points: evaluations.map((e) => [e.step, 100 * (e.recall[String(k)] ?? 0)] as [number, number]),
    })),
    { xLabel: 'step', yLabel: 'recall (%)', yMin: 0, yMax: 100 },
  );

  const windows = Math.min(20, steps.length);
  const per = Math.max(1, Math.ceil(steps.length / Math.max(1, windows)));
  const phaseBars: { label: string; parts: Record<string, number> }[] = [];
  for (let i = 0; i < steps.length; i += per) {
    const chunk = steps.slice(i, i + per);
    const parts: Record<string, number> = {};
    for (const name of Object.keys(PHASE_COLORS))
      parts[name] = chunk.reduce((a, s) => a + s.phases[name as keyof Step['phases']], 0) / chunk.length;
    phaseBars.push({ label: `${chunk[0].step}`, parts });
  }
  const phaseChart = stackedBars(
    'Where a step\u2019s time goes (mean seconds per step, by window of steps)',
    phaseBars,
    'seconds',
  );

  const perWorker = new Map<string, { images: number; seconds: number; steps: number }>();
  for (const s of steps) {
    for (const w of s.workers) {
      const acc = perWorker.get(w.id) ?? { images: 0, seconds: 0, steps: 0 };
      acc.images += w.images;
      acc.seconds += w.dataSeconds + w.computeSeconds;
      acc.steps += 1;
      perWorker.set(w.id, acc);
    }
  }
  const workerRows = [...perWorker]
    .sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true }))
    .map(
      ([id, w]) =>
        `<tr><td>${esc(id)}</td><td>${w.steps}</td><td>${fmt(w.images / Math.max(1e-9, w.seconds))}</td><td><div class="bar" style="width:${Math.round((200 * (w.images / Math.max(1e-9, w.seconds))) / Math.max(...[...perWorker.values()].map((v) => v.images / Math.max(1e-9, v.seconds))))}px"></div></td></tr>`,
    )
    .join('');

  const last10 = steps.slice(-10);
  const best = evaluations.reduce<Evaluation | undefined>(
    (b, e) => (!b || (e.recall['1'] ?? 0) > (b.recall['1'] ?? 0) ? e : b),
    undefined,
  );
  const ips = steps.length
    ? steps.reduce((a, s) => a + s.workers.reduce((n, w) => n + w.images, 0) / s.seconds, 0) / steps.length
    : 0;
  const tiles = [
    ['steps', String(steps.length ? steps[steps.length - 1].step + 1 : 0)],
    ['loss (last 10)', last10.length ? fmt(last10.reduce((a, s) => a + s.loss, 0) / last10.length) : '\u2013'],
    ['best R@1', best ? `${fmt(100 * (best.recall['1'] ?? 0))}% at step ${best.step}` : 'no evaluation'],
    ['images/s (mean)', fmt(ips)],
    ['workers seen', String(perWorker.size)],
    ['starts', `${starts.length}${starts.length > 1 ? ` (${starts.length - 1} resumed)` : ''}`],
  ]
    .map(([k, v]) => `<div class="tile"><div class="k">${esc(k)}</div><div class="v">${esc(v)}</div></div>`)
    .join('');
  const engine = starts.at(-1);
  const grid = gridPng
    ? `<img alt="retrieval grid: query framed blue, same-item results green" src="data:image/png;base64,${Buffer.from(gridPng).toString('base64')}">`
    : '<p class="empty">no grid given (make one with <code>tricaps search --grid</code> and pass <code>--grid</code>)</p>';

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title ?? `tricaps run ${runIds.join(', ')}`)}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:18px} .tile{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.k{color:#666;font-size:12px} .v{font-size:18px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px} figure{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0;padding:8px}
figcaption{font-weight:600;margin-bottom:4px} .grid{stroke:#eee} .axis{stroke:#999} .tick{font-size:11px;fill:#555} .label{font-size:12px;fill:#333}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left} .bar{height:10px;background:#66c2a5}
.legend{font-size:12px;color:#444;display:flex;gap:14px;padding-left:${PAD.left}px} .legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.empty{color:#888;font-style:italic} section{margin-top:18px} img{width:min(100%,720px);image-rendering:pixelated;border:1px solid #ddd;background:#fff}
</style></head><body>
<h1>${esc(title ?? 'tricaps training run')}</h1>
<div class="sub">run ${esc(runIds.join(', ') || 'unknown')}${engine ? ` \u00b7 engine ${esc(engine.engine)} on ${esc(engine.device)} \u00b7 ${engine.shards} shards` : ''}</div>
<div class="tiles">${tiles}</div>
<div class="charts">${lossChart}${recallChart}${phaseChart}</div>
<section><h2>Throughput per worker</h2><table><tr><th>worker</th><th>results</th><th>images/s (own data + compute)</th><th></th></tr>${workerRows || '<tr><td colspan="4" class="empty">no steps</td></tr>'}</table></section>
<section><h2>Retrieval</h2>${grid}</section>
</body></html>
`;
}
