// The alerts we ship, evaluated by Prometheus's own rule engine (`promtool test rules`): for every
// alert, input series where it must fire (with its labels and annotations) and where it must stay
// quiet (a healthy run, a run paused by an operator, a run that has finished). The rules are read
// from the PrometheusRule the kustomize base ships, never from a copy.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';

type Obj = Record<string, any>;

const RUN = 'r1';
const rule = parseAllDocuments(readFileSync('deploy/kubernetes/base/monitoring.yaml', 'utf8'))
  .map((d) => d.toJS() as Obj)
  .find((o) => o.kind === 'PrometheusRule')!;
const alerts: Obj[] = rule.spec.groups.flatMap((g: Obj) => g.rules.filter((r: Obj) => r.alert));
const dashboard = JSON.parse(readFileSync('deploy/grafana/tricaps.json', 'utf8'));

/** The alert's annotations as Alertmanager would get them for `labels` (only $labels is templated). */
function annotations(alert: string, labels: Record<string, string>): Record<string, string> {
  const a = alerts.find((x) => x.alert === alert)!;
  return Object.fromEntries(
    Object.entries(a.annotations as Record<string, string>).map(([k, v]) => [
      k,
      v.replace(/\{\{ \$labels\.(\w+) \}\}/g, (_, l: string) => labels[l] ?? ''),
    ]),
  );
}

interface Case {
  alert: string;
  /** What the case shows: fires, or why it must not. */
  title: string;
  series: Record<string, string>;
  at: string;
  /** The labels of each alert expected (severity and alertname added); none: must not fire. */
  fires: Record<string, string>[];
}

const severity = (alert: string) => alerts.find((a) => a.alert === alert)!.labels.severity as string;
const s = (metric: string, labels: Record<string, string> = {}) =>
  `${metric}{${Object.entries({ run: RUN, ...labels })
    .map(([k, v]) => `${k}="${v}"`)
    .join(',')}}`;

// Minute-by-minute series (interval 1m); promtool's clock starts at 0, so a timestamp gauge of 0 is
// a step applied at the start and '0+60x80' one applied every minute.
const CASES: Case[] = [
  {
    alert: 'TricapsRunStalled',
    title: 'fires: no step for 15 minutes with workers present',
    series: {
      [s('tricaps_last_step_timestamp_seconds')]: '0x40',
      [s('tricaps_world_size')]: '2x40',
      [s('tricaps_paused')]: '0x40',
    },
    at: '25m',
    fires: [{ run: RUN }],
  },
  {
    alert: 'TricapsRunStalled',
    title: 'quiet: a healthy run steps every minute',
    series: {
      [s('tricaps_last_step_timestamp_seconds')]: '0+60x40',
      [s('tricaps_world_size')]: '2x40',
      [s('tricaps_paused')]: '0x40',
    },
    at: '25m',
    fires: [],
  },
  {
    alert: 'TricapsRunStalled',
    title: 'quiet: paused by an operator',
    series: {
      [s('tricaps_last_step_timestamp_seconds')]: '0x40',
      [s('tricaps_world_size')]: '2x40',
      [s('tricaps_paused')]: '1x40',
    },
    at: '25m',
    fires: [],
  },
  {
    alert: 'TricapsRunStalled',
    title: 'quiet: the run finished (its coordinator and series are gone)',
    series: {
      [s('tricaps_last_step_timestamp_seconds')]: '0+60x10',
      [s('tricaps_world_size')]: '2x10',
      [s('tricaps_paused')]: '0x10',
    },
    at: '25m',
    fires: [],
  },
  {
    alert: 'TricapsRunStalled',
    title: 'quiet: no workers (waiting for the fleet, not stalled)',
    series: {
      [s('tricaps_last_step_timestamp_seconds')]: '0x40',
      [s('tricaps_world_size')]: '0x40',
      [s('tricaps_paused')]: '0x40',
    },
    at: '25m',
    fires: [],
  },
  {
    alert: 'TricapsWorkerLost',
    title: 'fires: a worker missed its heartbeats (the counter started at 0)',
    series: {
      [s('tricaps_worker_losses_total', { reason: 'heartbeat' })]: '0 0 0 1 1 1 1 1',
      [s('tricaps_worker_losses_total', { reason: 'left' })]: '0x8',
    },
    at: '5m',
    fires: [{ run: RUN, reason: 'heartbeat' }],
  },
  {
    alert: 'TricapsWorkerLost',
    title: 'quiet: a healthy run loses nobody',
    series: {
      [s('tricaps_worker_losses_total', { reason: 'heartbeat' })]: '0x8',
      [s('tricaps_worker_losses_total', { reason: 'left' })]: '0x8',
    },
    at: '5m',
    fires: [],
  },
  {
    alert: 'TricapsWorkerLost',
    title: 'quiet: a worker that left on purpose (SIGTERM, scale-down) is not lost',
    series: {
      [s('tricaps_worker_losses_total', { reason: 'heartbeat' })]: '0x8',
      [s('tricaps_worker_losses_total', { reason: 'left' })]: '0 0 1 1 1 1 1 1',
    },
    at: '5m',
    fires: [],
  },
  {
    alert: 'TricapsWorkerLost',
    title: 'quiet: a run that finished 20 minutes ago',
    series: { [s('tricaps_worker_losses_total', { reason: 'heartbeat' })]: '0 1 1 1 1' },
    at: '25m',
    fires: [],
  },
  {
    alert: 'TricapsWorkerLost',
    title: 'why counters start at 0: one born at 1 shows no increase, so the first loss would be missed',
    series: { [s('tricaps_worker_losses_total', { reason: 'heartbeat' })]: '_ _ _ 1 1 1 1 1' },
    at: '5m',
    fires: [],
  },
  {
    alert: 'TricapsLossNotFinite',
    title: 'fires: the loss is NaN',
    series: { [s('tricaps_loss')]: '0.5 0.4 NaN NaN' },
    at: '3m',
    fires: [{ run: RUN }],
  },
  {
    alert: 'TricapsLossNotFinite',
    title: "fires: a worker's gradient was refused as non-finite",
    series: {
      [s('tricaps_loss')]: '0.5x6',
      [s('tricaps_rejected_updates_total', { reason: 'non-finite', worker: 'w2-ab' })]: '0 0 1 1 1 1',
      [s('tricaps_rejected_updates_total', { reason: 'norm', worker: 'w2-ab' })]: '0x6',
    },
    at: '4m',
    fires: [{ run: RUN, reason: 'non-finite', worker: 'w2-ab' }],
  },
  {
    alert: 'TricapsLossNotFinite',
    title: 'quiet: finite losses, only an outlying norm refused (not a NaN)',
    series: {
      [s('tricaps_loss')]: '0.5x6',
      [s('tricaps_rejected_updates_total', { reason: 'non-finite', worker: 'w2-ab' })]: '0x6',
      [s('tricaps_rejected_updates_total', { reason: 'norm', worker: 'w2-ab' })]: '0 0 1 1 1 1',
    },
    at: '4m',
    fires: [],
  },
  {
    alert: 'TricapsLossNotFinite',
    title: 'quiet: a run whose loss was NaN and that has finished',
    series: { [s('tricaps_loss')]: 'NaN NaN' },
    at: '20m',
    fires: [],
  },
  {
    alert: 'TricapsCheckpointStale',
    title: 'fires: no checkpoint for over an hour',
    series: { [s('tricaps_checkpoint_last_success_timestamp_seconds')]: '0x80', [s('tricaps_paused')]: '0x80' },
    at: '75m',
    fires: [{ run: RUN }],
  },
  {
    alert: 'TricapsCheckpointStale',
    title: 'quiet: checkpoints every minute',
    series: { [s('tricaps_checkpoint_last_success_timestamp_seconds')]: '0+60x80', [s('tricaps_paused')]: '0x80' },
    at: '75m',
    fires: [],
  },
  {
    alert: 'TricapsCheckpointStale',
    title: 'quiet: paused by an operator for over an hour',
    series: { [s('tricaps_checkpoint_last_success_timestamp_seconds')]: '0x80', [s('tricaps_paused')]: '1x80' },
    at: '75m',
    fires: [],
  },
  {
    alert: 'TricapsCheckpointStale',
    title: 'quiet: a run that finished',
    series: { [s('tricaps_checkpoint_last_success_timestamp_seconds')]: '0x30', [s('tricaps_paused')]: '0x30' },
    at: '75m',
    fires: [],
  },
  {
    alert: 'TricapsThroughputDrop',
    title: 'fires: throughput at a fifth of the last hour for 20 minutes',
    series: { [s('tricaps_images_per_second')]: '100x60 20x20', [s('tricaps_paused')]: '0x80' },
    at: '80m',
    fires: [{ run: RUN }],
  },
  {
    alert: 'TricapsThroughputDrop',
    title: 'quiet: steady throughput',
    series: { [s('tricaps_images_per_second')]: '100x80', [s('tricaps_paused')]: '0x80' },
    at: '80m',
    fires: [],
  },
  {
    alert: 'TricapsThroughputDrop',
    title: 'quiet: paused by an operator',
    series: { [s('tricaps_images_per_second')]: '100x60 20x20', [s('tricaps_paused')]: '0x60 1x20' },
    at: '80m',
    fires: [],
  },
  {
    alert: 'TricapsThroughputDrop',
    title: 'quiet: a run that finished',
    series: { [s('tricaps_images_per_second')]: '100x60', [s('tricaps_paused')]: '0x60' },
    at: '80m',
    fires: [],
  },
];

function testFile(cases: Case[]): string {
  return stringify({
    rule_files: ['rules.yml'],
    evaluation_interval: '1m',
    tests: cases.map((c) => ({
      name: `${c.alert}: ${c.title}`,
      interval: '1m',
      input_series: Object.entries(c.series).map(([series, values]) => ({ series, values })),
      alert_rule_test: [
        {
          eval_time: c.at,
          alertname: c.alert,
          exp_alerts: c.fires.map((labels) => ({
            exp_labels: { severity: severity(c.alert), ...labels },
            exp_annotations: annotations(c.alert, labels),
          })),
        },
      ],
    })),
  });
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tricaps-alerts-'));
  writeFileSync(join(dir, 'rules.yml'), stringify({ groups: rule.spec.groups }));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function promtool(cases: Case[]): { code: number | null; out: string } {
  writeFileSync(join(dir, 'tests.yml'), testFile(cases));
  const r = spawnSync('promtool', ['test', 'rules', join(dir, 'tests.yml')], { encoding: 'utf8' });
  if (r.error) throw new Error(`promtool is needed for this test (Debian package prometheus): ${r.error.message}`);
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('shipped alerts (promtool test rules)', () => {
  it('every alert has a case where it fires and cases where it must stay quiet', () => {
    expect(alerts.length).toBeGreaterThanOrEqual(5);
    for (const a of alerts) {
      const mine = CASES.filter((c) => c.alert === a.alert);
      expect(
        mine.some((c) => c.fires.length > 0),
        `${a.alert} fires somewhere`,
      ).toBe(true);
      expect(
        mine.filter((c) => c.fires.length === 0).length,
        `${a.alert} stays quiet somewhere`,
      ).toBeGreaterThanOrEqual(2);
    }
    expect(new Set(CASES.map((c) => c.alert))).toEqual(new Set(alerts.map((a) => a.alert)));
  });

  it('fire exactly where they should, with their labels and annotations', () => {
    const r = promtool(CASES);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/SUCCESS/);
  });

  it('promtool does judge: a wrong expectation fails', () => {
    const wrong = CASES.filter((c) => c.fires.length > 0).map((c) => ({ ...c, fires: [] }));
    const r = promtool(wrong);
    expect(r.code).toBe(1);
    for (const c of wrong) expect(r.out).toContain(c.alert);
  });

  it("each alert links to the dashboard panel that shows its metric, for the alert's run", () => {
    const panels = new Map<number, Obj>(dashboard.panels.map((p: Obj) => [p.id, p]));
    for (const a of alerts) {
      const link = /^\/d\/(\w+)\/[\w-]+\?viewPanel=(\d+)&var-run=\{\{ \$labels\.run \}\}$/.exec(
        a.annotations.dashboard,
      );
      expect(link, `${a.alert}: ${a.annotations.dashboard}`).not.toBeNull();
      expect(link![1]).toBe(dashboard.uid);
      const panel = panels.get(Number(link![2]));
      expect(panel, `${a.alert} links to panel ${link![2]}`).toBeDefined();
      const metrics = new Set(String(a.expr).match(/tricaps_\w+/g));
      const shown = (panel!.targets as Obj[]).flatMap((t) => String(t.expr).match(/tricaps_\w+/g) ?? []);
      expect(
        shown.some((m) => metrics.has(m) && m !== 'tricaps_paused'),
        `${a.alert}: panel "${panel!.title}" shows ${shown.join(', ')}`,
      ).toBe(true);
    }
  });
});
