// `tricaps bench scale`: how the fleet scales as boxes are added, measured on one machine. The
// coordinator and N workers each run in a network namespace of their own (netns.ts), links shaped
// to --link; workers compute nothing (--synthetic-gradients) and take --simulate-compute-ms per step
// instead, so what is measured is the exchange and the coordinator, not this machine's cores. One
// JSON document: per exchange and N, images/s, scaling efficiency, bytes through the coordinator and
// per worker per step, CPU seconds per step of each process.
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { UsageError } from '../shared/errors.js';
import { median } from '../shared/stats.js';
import { Cluster, clusterUnavailable, planCluster } from './netns.js';

export interface ScaleOptions {
  workers: number[];
  exchanges: ('central' | 'ring')[];
  /** Link rate in bits/s each way (undefined: unshaped veth). */
  linkBits?: number;
  simulateComputeMs: number;
  /** Timed steps per N (after warmup steps). */
  steps: number;
  warmup: number;
  /** Triplets each worker computes per step (its shard; 3 images each). */
  tripletsPerWorker: number;
  wire: 'float32' | 'float16';
  say(msg: string): void;
}

export interface ScaleRow {
  exchange: 'central' | 'ring';
  workers: number;
  step_ms_median: number;
  images_per_s: number;
  scaling_efficiency: number;
  coordinator_bytes_per_step: number;
  /** Sent plus received by one worker per step (mean over workers). */
  worker_bytes_per_step: number;
  coordinator_cpu_s_per_step: number;
  worker_cpu_s_per_step: number;
  /** CPU seconds all processes spent per step over the machine's cores x step time: 1 = saturated. */
  machine_cpu_share: number;
}

export interface ScaleReport {
  bench: 'scale';
  model: string;
  link: { requested_bits?: number; used_bits?: number; veth_ceiling_bits: number; scaled_by: number; note: string };
  simulate_compute_ms: { requested: number; used: number };
  cpus: number;
  rows: ScaleRow[];
}

const PREFIX_STEM = 'tcs';
const COORDINATOR_PORT = 7070;
const PEER_PORT = 7071;

function cliPath(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.ts') ? resolve('dist/cli.js') : resolve(dirname(here), '..', 'cli.js');
}

/** "10gbit", "2.5Gbit", "800mbit" -> bits per second. */
export function parseRate(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)$/i.exec(value.trim());
  if (!m) throw new UsageError(`--link ${value}: expected a rate like 10gbit, 2.5gbit or 800mbit`);
  const unit = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.round(Number(m[1]) * unit);
}

/**
 * When the veth pairs cannot carry the asked rate on this machine, the bench shapes to a lower one
 * and stretches the simulated compute by the same factor: the ratio of exchange to compute, which is
 * what efficiency measures, is kept. 80% of the measured ceiling leaves room for the ceiling's noise.
 */
export function scaleLink(requestedBits: number | undefined, ceilingBits: number, computeMs: number) {
  if (!requestedBits) return { usedBits: undefined, computeMs, factor: 1 };
  const usable = 0.8 * ceilingBits;
  if (requestedBits <= usable) return { usedBits: requestedBits, computeMs, factor: 1 };
  const factor = usable / requestedBits;
  return { usedBits: Math.round(usable), computeMs: Math.round(computeMs / factor), factor };
}

const SINK = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const server = net.createServer((s) => {
  let got = 0, t0 = 0;
  s.on('data', (d) => { if (!t0) t0 = performance.now(); got += d.length; });
  s.on('end', () => { s.end(JSON.stringify({ bytes: got, ms: performance.now() - t0 })); server.close(); });
});
server.listen(Number(port), host, () => process.stdout.write('ready\\n'));
`;
const SOURCE = `
const net = require('node:net');
const [host, port, total] = process.argv.slice(1);
const chunk = Buffer.alloc(1 << 20, 1);
const s = net.connect(Number(port), host, () => {
  let sent = 0;
  const pump = () => { while (sent < Number(total)) { sent += chunk.length; if (!s.write(chunk)) return s.once('drain', pump); } s.end(); };
  pump();
});
let reply = '';
s.on('data', (d) => (reply += d));
s.on('end', () => process.stdout.write(reply));
`;

function output(child: ChildProcess): Promise<{ code: number | null; out: string; err: string }> {
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((res) => child.on('exit', (code) => res({ code, out, err })));
}

/** TCP throughput across the bridge (unshaped), from w1 to the coordinator's namespace. */
async function vethCeiling(cluster: Cluster): Promise<number> {
  const c = cluster.node('c');
  const sink = cluster.spawn('c', process.execPath, ['-e', SINK, c.ip, '7071']);
  const sinkDone = output(sink);
  await new Promise<void>((res, rej) => {
    const t = setTimeout(() => rej(new Error('the ceiling probe did not start within 20 s')), 20_000);
    sink.stdout!.once('data', () => {
      clearTimeout(t);
      res();
    });
  });
  const bytes = 512 << 20;
  const src = await output(cluster.spawn('w1', process.execPath, ['-e', SOURCE, c.ip, '7071', String(bytes)]));
  await sinkDone;
  const { bytes: got, ms } = JSON.parse(src.out) as { bytes: number; ms: number };
  return (got * 8) / (ms / 1000);
}

interface LogLine {
  msg: string;
  [k: string]: unknown;
}

function lines(text: string): LogLine[] {
  return text
    .split('\n')
    .map((l) => {
      try {
        return JSON.parse(l) as LogLine;
      } catch {
        return undefined;
      }
    })
    .filter((l): l is LogLine => l !== undefined && typeof l.msg === 'string');
}

async function runOne(
  cluster: Cluster,
  exchange: 'central' | 'ring',
  n: number,
  o: ScaleOptions,
  computeMs: number,
): Promise<ScaleRow> {
  const cli = cliPath();
  const c = cluster.node('c');
  const total = o.steps + o.warmup;
  const triplets = o.tripletsPerWorker * n;
  const coordinator = cluster.spawn(
    'c',
    process.execPath,
    [
      cli,
      'coordinator',
      '--listen',
      `${c.ip}:${COORDINATOR_PORT}`,
      '--variant',
      'sc',
      '--image-size',
      '32',
      '--categories',
      '23',
      '--items',
      String(Math.max(64, 4 * triplets)),
      '--batch-triplets',
      String(triplets),
      '--shards',
      String(n),
      '--min-workers',
      String(n),
      '--steps',
      String(total),
      '--engine',
      'wasm',
      '--no-augment',
      '--wire',
      o.wire,
      '--heartbeat-timeout',
      '60000',
      '--exchange',
      exchange,
    ],
    { ...process.env, TRICAPS_LOG_LEVEL: 'info' },
  );
  const coordDone = output(coordinator);
  const workers = Array.from({ length: n }, (_, i) =>
    output(
      cluster.spawn(
        `w${i + 1}`,
        process.execPath,
        [
          cli,
          'worker',
          '--coordinator',
          `${c.ip}:${COORDINATOR_PORT}`,
          '--engine',
          'wasm',
          '--name',
          `w${i + 1}`,
          '--synthetic-gradients',
          '--simulate-compute-ms',
          String(computeMs),
          '--reconnect-timeout',
          '60',
          ...(exchange === 'ring' ? ['--peer-listen', `${cluster.node(`w${i + 1}`).ip}:${PEER_PORT}`] : []),
        ],
        { ...process.env, TRICAPS_LOG_LEVEL: 'debug' },
      ),
    ),
  );
  const [coord, ...ws] = await Promise.all([coordDone, ...workers]);
  const cl = lines(coord.err);
  if (coord.code !== 0)
    throw new Error(
      `the coordinator of the ${n}-worker run exited ${coord.code}: ${coord.err.trim().split('\n').slice(-3).join(' | ')}`,
    );
  const steps = cl.filter((l) => /^step \d+ loss/.test(l.msg) && (l.step as number) >= o.warmup);
  const stepMs = median(steps.map((l) => (l.seconds as number) * 1000));
  const images = 3 * triplets;
  // CPU per step over the timed steps only (start-up is not the exchange's): the difference of the
  // cumulative cpu_s of each process's first and last timed step lines.
  const cpuPerStep = (ls: LogLine[]) => {
    const timed = ls.filter((l) => typeof l.cpu_s === 'number' && (l.step as number) >= o.warmup);
    if (timed.length < 2) return NaN;
    return ((timed.at(-1)!.cpu_s as number) - (timed[0].cpu_s as number)) / (timed.length - 1);
  };
  const coordinatorCpu = cpuPerStep(steps);
  const workerLines = ws.map((w) => lines(w.err));
  const wCpu = workerLines.map((ls) => cpuPerStep(ls.filter((l) => /^step \d+ shards/.test(l.msg))));
  const wBytes = workerLines.map((ls) => {
    const end = ls.find((l) => /is over after/.test(l.msg));
    return ((end?.bytes_sent as number) + (end?.bytes_received as number)) / total;
  });
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const { cpus } = await import('node:os');
  return {
    exchange,
    workers: n,
    step_ms_median: stepMs,
    images_per_s: images / (stepMs / 1000),
    scaling_efficiency: NaN, // filled in against N = 1
    coordinator_bytes_per_step: median(steps.map((l) => (l.bytes_sent as number) + (l.bytes_received as number))),
    worker_bytes_per_step: mean(wBytes),
    coordinator_cpu_s_per_step: coordinatorCpu,
    worker_cpu_s_per_step: mean(wCpu),
    machine_cpu_share: (coordinatorCpu + wCpu.reduce((a, b) => a + b, 0)) / (cpus().length * (stepMs / 1000)),
  };
}

export async function benchScale(o: ScaleOptions): Promise<ScaleReport> {
  const why = clusterUnavailable();
  if (why) throw new UsageError(`bench scale: ${why}`);
  const maxN = Math.max(...o.workers);
  const names = ['c', ...Array.from({ length: Math.max(1, maxN) }, (_, i) => `w${i + 1}`)];
  const cluster = Cluster.create(planCluster(`${PREFIX_STEM}${process.pid}`, names));
  const stop = () => cluster.destroy();
  process.once('SIGINT', stop).once('SIGTERM', stop);
  try {
    const ceiling = await vethCeiling(cluster);
    const link = scaleLink(o.linkBits, ceiling, o.simulateComputeMs);
    if (link.usedBits) cluster.shape(link.usedBits);
    o.say(
      `veth ceiling ${(ceiling / 1e9).toFixed(1)} Gbit/s; links ${link.usedBits ? `${(link.usedBits / 1e9).toFixed(2)} Gbit/s` : 'unshaped'}, compute ${link.computeMs} ms`,
    );
    const rows: ScaleRow[] = [];
    for (const n of o.workers) {
      for (const exchange of o.exchanges) {
        const row = await runOne(cluster, exchange, n, o, link.computeMs);
        rows.push(row);
        o.say(
          `${exchange}, ${n} workers: ${row.step_ms_median.toFixed(0)} ms per step, ${row.images_per_s.toFixed(0)} images/s, ${(row.coordinator_bytes_per_step / 1e6).toFixed(1)} MB through the coordinator`,
        );
      }
    }
    // Efficiency against one worker of the same exchange (one worker has no ring: it goes central).
    for (const r of rows) {
      const one = rows.find((x) => x.workers === 1 && x.exchange === r.exchange);
      r.scaling_efficiency = one ? r.images_per_s / (r.workers * one.images_per_s) : NaN;
    }
    return {
      bench: 'scale',
      model: 'sc (2,425,536 parameters)',
      link: {
        requested_bits: o.linkBits,
        used_bits: link.usedBits,
        veth_ceiling_bits: Math.round(ceiling),
        scaled_by: link.factor,
        note:
          link.factor < 1
            ? `the veth pairs carry ${(ceiling / 1e9).toFixed(1)} Gbit/s here: links shaped to ${((link.usedBits ?? 0) / 1e9).toFixed(2)} Gbit/s and compute stretched by the same factor`
            : 'links shaped as asked',
      },
      simulate_compute_ms: { requested: o.simulateComputeMs, used: link.computeMs },
      cpus: (await import('node:os')).cpus().length,
      rows,
    };
  } finally {
    process.off('SIGINT', stop).off('SIGTERM', stop);
    cluster.destroy();
  }
}
