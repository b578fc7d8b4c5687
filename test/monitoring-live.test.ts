// The dashboard and the worker-lost alert against a real Prometheus (Debian package prometheus):
// it scrapes a real coordinator and two real workers every second during a short run with
// evaluation and checkpoints, one worker is killed mid-run, and then every dashboard panel's query
// (from deploy/grafana/tricaps.json, its variables substituted) must return data through the HTTP
// API, and the alert rules the kustomize base ships must put TricapsWorkerLost in ALERTS. The
// server and its data directory are removed also when the test fails.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';
import { Fleet, listeningAddress, TempDirs, TINY, type FleetProcess } from './fleet-harness.js';

type Obj = Record<string, any>;

const fleet = new Fleet();
const dirs = new TempDirs('tricaps-prometheus-');
let prometheus: ChildProcess | undefined;
afterEach(async () => {
  if (prometheus && prometheus.exitCode === null) {
    const gone = new Promise((r) => prometheus!.once('exit', r));
    prometheus.kill('SIGKILL');
    await gone;
  }
  prometheus = undefined;
  await fleet.cleanup();
  dirs.cleanup();
});

/** A loopback port free now (Prometheus cannot be told to pick one and say which). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

async function metricsPort(p: FleetProcess): Promise<number> {
  return (await p.waitFor((l) => typeof l.metricsPort === 'number', 60_000, 'the metrics line')).metricsPort as number;
}

/** An instant query; the vector or scalar it returns. */
async function query(base: string, promql: string): Promise<Obj[]> {
  const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(promql)}`);
  const body = (await res.json()) as Obj;
  if (body.status !== 'success') throw new Error(`query ${promql}: ${body.error ?? res.status}`);
  const r = body.data.result;
  return body.data.resultType === 'scalar' ? [{ metric: {}, value: r }] : (r as Obj[]);
}

/** Polls `check` until it holds or the deadline passes; the error names what was awaited. */
async function until<T>(what: string, ms: number, check: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`waited ${ms} ms for ${what}${last ? ` (${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe('monitoring against a real Prometheus', () => {
  it('every dashboard panel shows data for a run with a lost worker, and TricapsWorkerLost fires', async () => {
    const dir = dirs.make();
    const runId = 'live-monitoring';
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--min-workers',
      '1',
      '--shards',
      '2',
      '--heartbeat-interval',
      '200',
      '--heartbeat-timeout',
      '2000',
      '--eval-every',
      '3',
      '--checkpoint-dir',
      join(dir, 'checkpoints'),
      '--checkpoint-every',
      '2',
      '--metrics-port',
      '0',
      '--run-id',
      runId,
    ]);
    const address = await listeningAddress(coord);
    const workers = [
      fleet.worker(address, 'a', ['--metrics-port', '0']),
      fleet.worker(address, 'b', ['--metrics-port', '0']),
    ];
    const targets = [await metricsPort(coord), ...(await Promise.all(workers.map(metricsPort)))].map(
      (p) => `127.0.0.1:${p}`,
    );

    // Prometheus: a 1 s scrape of the three, the shipped rules evaluated every second.
    const rule = parseAllDocuments(readFileSync('deploy/kubernetes/base/monitoring.yaml', 'utf8'))
      .map((d) => d.toJS() as Obj)
      .find((o) => o.kind === 'PrometheusRule')!;
    writeFileSync(join(dir, 'rules.yml'), stringify({ groups: rule.spec.groups }));
    writeFileSync(
      join(dir, 'prometheus.yml'),
      stringify({
        global: { scrape_interval: '1s', evaluation_interval: '1s' },
        rule_files: [join(dir, 'rules.yml')],
        scrape_configs: [{ job_name: 'tricaps', static_configs: [{ targets }] }],
      }),
    );
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const log: string[] = [];
    prometheus = spawn(
      'prometheus',
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    prometheus.on('error', (err) => log.push(`cannot start prometheus (Debian package prometheus): ${err.message}`));
    prometheus.stderr!.on('data', (d: Buffer) => log.push(d.toString()));
    await until(`Prometheus to scrape ${targets.join(', ')} (${log.join('').slice(-500)})`, 60_000, async () => {
      const up = await query(base, 'up == 1');
      return up.length === 3 ? up : undefined;
    });

    // Training with both workers, an evaluation and a checkpoint behind it; then b is killed.
    await coord.waitFor((l) => /^evaluation after \d+ steps/.test(l.msg), 120_000, 'an evaluation');
    await coord.waitFor((l) => /^step \d+ loss/.test(l.msg) && l.workers === 2, 60_000, 'a step with 2 workers');
    await until('Prometheus to hold a Recall@K sample', 30_000, async () => {
      const r = await query(base, 'tricaps_recall_at_k_ratio');
      return r.length > 0 ? r : undefined;
    });
    workers[1].kill('SIGKILL');
    await coord.waitFor((l) => /^lost worker \S+ \(b\)/.test(l.msg), 30_000, 'the loss of b to be named');
    const start = await until('the loss to be scraped', 30_000, async () => {
      const r = await query(base, 'tricaps_worker_losses_total{reason="heartbeat"} == 1');
      return r.length > 0 ? r : undefined;
    });
    expect(start[0].metric.run).toBe(runId);

    // The worker-lost alert: its expression is true and Prometheus fires it.
    const lostRule = rule.spec.groups[0].rules.find((r: Obj) => r.alert === 'TricapsWorkerLost');
    const firing = await query(base, lostRule.expr);
    expect(firing.map((r) => r.metric.reason)).toEqual(['heartbeat']);
    const alert = await until('ALERTS{alertname="TricapsWorkerLost"} to fire', 20_000, async () => {
      const r = await query(base, 'ALERTS{alertname="TricapsWorkerLost", alertstate="firing"}');
      return r.length > 0 ? r : undefined;
    });
    expect(alert[0].metric).toMatchObject({ run: runId, reason: 'heartbeat', severity: 'warning' });
    // A healthy part of the same run does not stall or lose its loss.
    for (const quiet of ['TricapsRunStalled', 'TricapsLossNotFinite', 'TricapsCheckpointStale'])
      expect(await query(base, `ALERTS{alertname="${quiet}"}`), quiet).toEqual([]);

    // Every panel's every query, for this run, returns data.
    const dashboard = JSON.parse(readFileSync('deploy/grafana/tricaps.json', 'utf8'));
    const shown: { panel: string; legend: string; series: number; sample: string }[] = [];
    const empty: string[] = [];
    for (const p of dashboard.panels as Obj[]) {
      for (const t of (p.targets ?? []) as Obj[]) {
        const expr = String(t.expr).replaceAll('$run', runId);
        // A rate() needs two samples of a series in its window: give a new series a few scrapes.
        const r = await until(`panel "${p.title}": ${expr}`, 15_000, async () => {
          const got = await query(base, expr);
          return got.length > 0 ? got : undefined;
        }).catch(() => [] as Obj[]);
        if (r.length === 0) empty.push(`${p.title}: ${expr}`);
        else
          shown.push({
            panel: p.title,
            legend: String(t.legendFormat),
            series: r.length,
            sample: r
              .slice(0, 4)
              .map((x) => `${Object.values(x.metric).join(' ')}=${Number(x.value[1]).toPrecision(3)}`)
              .join(', '),
          });
      }
    }
    console.log(`panels in this run:\n${shown.map((x) => `  ${x.panel} [${x.legend}]: ${x.sample}`).join('\n')}`);
    expect(empty, 'panels with no data').toEqual([]);
    expect(shown.length).toBeGreaterThanOrEqual(20);
  });
});
