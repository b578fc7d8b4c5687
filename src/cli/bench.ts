// `tricaps bench ...`: benchmarks that print JSON (the last line of stdout).
import type { Command } from 'commander';
import { benchEngine } from '../bench/engine.js';
import { benchExchangeOne } from '../bench/exchange.js';
import { loopbackBaseline } from '../bench/loopback-baseline.js';
import { benchFleet } from '../bench/fleet.js';
import { FAULT_KINDS, runChaos, type FaultKind } from '../bench/chaos.js';
import { benchScale, parseRate } from '../bench/scale.js';
import { calibrate, projectStep } from '../bench/scale-model.js';
import { UsageError } from '../shared/errors.js';
import { InvalidArgumentError } from 'commander';
import { profileStep } from '../bench/profile-step.js';
import { ENGINE_NAMES } from '../shared/engine/engine.js';
import { createLogger } from '../shared/log.js';
import { VARIANTS } from '../shared/model/config.js';
import { MINING_STRATEGIES } from '../shared/model/mining.js';
import { choiceOption, floatOption, intOption } from './options.js';

/** The training step a benchmark runs: engine, model and batch size. */
function stepOptions(cmd: Command): Command {
  return cmd
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--variant <v>', `model variant (${VARIANTS.join('|')})`, choiceOption(VARIANTS), 'sc')
    .option('--image-size <n>', 'input side in pixels (multiple of 16)', intOption(16, 1024), 64)
    .option('--width <x>', 'channel width multiplier', floatOption(0.01, 8), 1)
    .option('--categories <n>', 'categories (class capsules)', intOption(2, 1000), 23)
    .option('--batch-triplets <n>', 'triplets per step (3n images)', intOption(1, 4096), 16);
}

const modelOf = (o: { variant: 'sc' | 'rc'; imageSize: number; width: number; categories: number }) => ({
  variant: o.variant,
  imageSize: o.imageSize,
  width: o.width,
  categories: o.categories,
});

export function registerBenchCommands(program: Command): void {
  const bench = program.command('bench').description('benchmarks that print one JSON line');
  stepOptions(
    bench.command('engine').description('time full training steps (forward, mining, backward, Adam) on one engine'),
  )
    .option('--images-per-item <k>', 'K of the PK batch', intOption(2, 64), 3)
    .option(
      '--mining <m>',
      `triplet mining (${MINING_STRATEGIES.join('|')})`,
      choiceOption(MINING_STRATEGIES),
      'batch-hard',
    )
    .option('--steps <n>', 'timed steps', intOption(1, 10_000), 5)
    .option('--warmup <n>', 'untimed steps first', intOption(0, 100), 1)
    .option('--seed <n>', 'seed', intOption(0, 2 ** 31), 1)
    .option(
      '--workers <n>',
      'also run the step through a local fleet: 1 worker, then n workers, each computing --batch-triplets triplets (0 = engine only)',
      intOption(0, 64),
      0,
    )
    .action(async (o) => {
      if (o.workers > 0) {
        console.log(
          JSON.stringify(
            await benchFleet({
              engine: o.engine,
              model: modelOf(o),
              batchTriplets: o.batchTriplets,
              imagesPerItem: o.imagesPerItem,
              steps: o.steps,
              warmup: o.warmup,
              mining: o.mining,
              seed: o.seed,
              workers: o.workers,
            }),
          ),
        );
        return;
      }
      const result = await benchEngine(
        {
          engine: o.engine,
          model: modelOf(o),
          batchTriplets: o.batchTriplets,
          imagesPerItem: o.imagesPerItem,
          steps: o.steps,
          warmup: o.warmup,
          mining: o.mining,
          seed: o.seed,
        },
        createLogger('bench'),
      );
      console.log(JSON.stringify(result));
    });
  bench
    .command('exchange')
    .description(
      'time the gradient exchange alone: simulated workers download weights and upload P-parameter gradients through the real coordinator on loopback',
    )
    .option('--workers <list>', 'simulated workers, comma-separated', intList(1, 256), [1, 2, 4, 8, 16])
    .option(
      '--params <list>',
      'parameters per gradient, comma-separated: sc, rc (their real tensor shapes) or a count',
      paramsList,
      ['sc', 'rc'],
    )
    .option(
      '--wire <dtype>',
      'gradient wire format',
      choiceOption(['float32', 'float16', 'fp32', 'fp16'] as const),
      'float32',
    )
    .option('--steps <n>', 'timed steps per configuration (after one warm-up step)', intOption(1, 1000), 5)
    .action(async (o) => {
      const wire = o.wire === 'fp16' || o.wire === 'float16' ? 'float16' : 'float32';
      const rows = [];
      for (const params of o.params)
        for (const workers of o.workers) rows.push(await benchExchangeOne(workers, params, wire, o.steps));
      // The machine's own ceilings, measured now between two threads with no gRPC: plain TCP, and
      // Node's HTTP/2 (which grpc-js cannot outrun).
      const tcp = await loopbackBaseline(10_000_000, 20, 'tcp');
      const http2 = await loopbackBaseline(10_000_000, 20, 'http2');
      const withShare = rows.map((r) => ({
        ...r,
        total_share_of_loopback_tcp: r.total_gb_per_s / tcp.gb_per_s,
        total_share_of_loopback_http2: r.total_gb_per_s / http2.gb_per_s,
      }));
      console.log(
        JSON.stringify({
          bench: 'exchange',
          wire,
          steps: o.steps,
          cpus: (await import('node:os')).cpus().length,
          loopback_tcp: tcp,
          loopback_http2: http2,
          rows: withShare,
        }),
      );
    });
  stepOptions(
    bench.command('profile').description('time every kernel of one training step (tf.profile) and list the largest'),
  )
    .option('--top <n>', 'kernels to list', intOption(1, 1000), 25)
    .action(async (o) => {
      console.log(JSON.stringify(await profileStep(o.engine, modelOf(o), o.batchTriplets, o.top)));
    });
  registerChaos(bench);
  registerProject(bench);
  bench
    .command('scale')
    .description(
      'fleet scaling on one machine (root): coordinator and N workers in network namespaces, links shaped by tc, compute replaced by a fixed time; images/s, efficiency, bytes and CPU per step',
    )
    .option('--workers <list>', 'fleet sizes, comma-separated', intList(1, 64), [1, 2, 4, 8, 16])
    .option('--link <rate>', 'link rate each way, e.g. 10gbit (default: unshaped veth)')
    .option('--simulate-compute-ms <ms>', "each worker's compute time per step", intOption(0, 600_000), 290)
    .option('--steps <n>', 'timed steps per fleet size', intOption(1, 10_000), 10)
    .option('--warmup <n>', 'untimed steps first', intOption(0, 100), 2)
    .option('--triplets-per-worker <n>', "each worker's shard (3 images per triplet)", intOption(1, 1024), 32)
    .option('--wire <dtype>', 'gradient wire format', choiceOption(['float32', 'float16'] as const), 'float32')
    .option('--exchange <list>', 'exchanges to measure side by side, comma-separated (central,ring)', exchangeList, [
      'central',
      'ring',
    ])
    .action(async (o) => {
      const report = await benchScale({
        workers: o.workers,
        exchanges: o.exchange,
        linkBits: o.link === undefined ? undefined : parseRate(o.link),
        simulateComputeMs: o.simulateComputeMs,
        steps: o.steps,
        warmup: o.warmup,
        tripletsPerWorker: o.tripletsPerWorker,
        wire: o.wire,
        say: (m) => process.stderr.write(`scale: ${m}\n`),
      });
      console.log(JSON.stringify(report));
    });
}

function registerChaos(bench: Command): void {
  bench
    .command('chaos')
    .description(
      'fault-injection soak: a real coordinator and 3 workers through seeded schedules of kill -9, SIGSTOP/SIGCONT, coordinator restarts, a full checkpoint disk and a late join; checks that every step is applied once with all its shards and the final weights match an uninterrupted run',
    )
    .option('--seed <n>', 'seed of the first schedule (default: random, printed)', intOption(0, 2 ** 31))
    .option('--schedules <n>', 'schedules to run (seeds seed, seed+1, ...)', intOption(1, 10_000), 1)
    .option('--steps <n>', 'training steps per run (default: what the schedule needs)', intOption(8, 100_000))
    .option('--faults <n>', 'faults per schedule (every kind at least once)', intOption(1, 1000), 7)
    .option(
      '--simulate-compute-ms <ms>',
      "workers' data and compute padded to this, so faults land mid-step",
      intOption(0, 60_000),
      250,
    )
    .option('--kinds <list>', `fault kinds, comma-separated (${FAULT_KINDS.join(',')})`, kindList, [...FAULT_KINDS])
    .option('--heartbeat-timeout <ms>', "the coordinator's --heartbeat-timeout", intOption(500, 600_000), 2000)
    .option('--logs <dir>', 'keep every process log here (default: kept only for a failing schedule)')
    .option('--exchange <how>', 'gradient exchange of the runs', choiceOption(['central', 'ring'] as const), 'central')
    .action(async (o) => {
      const seed: number = o.seed ?? Math.floor(Math.random() * 2 ** 31);
      const abort = new AbortController();
      const stop = () => abort.abort();
      process.once('SIGINT', stop).once('SIGTERM', stop);
      const result = await runChaos({
        seed,
        schedules: o.schedules,
        steps: o.steps,
        faults: o.faults,
        kinds: o.kinds as FaultKind[],
        heartbeatTimeoutMs: o.heartbeatTimeout,
        simulateComputeMs: o.simulateComputeMs,
        exchange: o.exchange,
        logs: o.logs,
        say: (m) => process.stderr.write(`chaos: ${m}\n`),
        signal: abort.signal,
      }).finally(() => process.off('SIGINT', stop).off('SIGTERM', stop));
      console.log(JSON.stringify({ bench: 'chaos', seed, ...result }));
      if (!result.ok) process.exitCode = 1;
    });
}

function registerProject(bench: Command): void {
  bench
    .command('project')
    .description(
      'project step time and scaling efficiency to large fleets from a bench scale result: costs calibrated on its central rows, checked against every row, then projected per link rate',
    )
    .requiredOption('--scale <file>', 'the JSON `tricaps bench scale` printed')
    .option('--workers <list>', 'fleet sizes to project', intList(1, 100_000), [1, 8, 64, 512])
    .option(
      '--link <list>',
      'link rates, comma-separated',
      (v: string) => v.split(',').map((x) => parseRate(x)),
      [10e9, 25e9, 100e9],
    )
    .option('--compute-ms <ms>', "a worker's compute per step in the projection", intOption(1, 600_000), 290)
    .option('--message-ms <ms>', 'latency of one message or ring hop', floatOption(0, 1000), 0.2)
    .action(async (o) => {
      const { readFileSync } = await import('node:fs');
      let scale: {
        rows: Parameters<typeof calibrate>[0];
        link: { used_bits?: number; veth_ceiling_bits: number };
        simulate_compute_ms: { used: number };
        cpus?: number;
      };
      try {
        scale = JSON.parse(readFileSync(o.scale, 'utf8').trim().split('\n').pop()!);
        if (!Array.isArray(scale.rows)) throw new Error('no rows');
      } catch (err) {
        throw new UsageError(`--scale ${o.scale}: not the JSON of tricaps bench scale (${(err as Error).message})`);
      }
      const bytes = 2_425_536 * 4;
      const costs = calibrate(scale.rows, {
        computeMs: scale.simulate_compute_ms.used,
        linkBits: scale.link.used_bits ?? scale.link.veth_ceiling_bits,
        gradientBytes: bytes,
        weightsBytes: bytes,
        messageMs: o.messageMs,
      });
      // The emulation ran every process on the same few cores: the check models that, and the
      // corrected step removes from the measured one what the model attributes to the sharing.
      const cores = scale.cpus ?? (await import('node:os')).availableParallelism();
      const check = scale.rows.map((r) => {
        const exchange = r.exchange as 'central' | 'ring';
        const shared = projectStep(costs, r.workers, exchange, { cores });
        const own = projectStep(costs, r.workers, exchange);
        const correctedMs = r.step_ms_median - (shared.step_ms - own.step_ms);
        const one = scale.rows.find((x) => x.exchange === r.exchange && x.workers === 1);
        return {
          exchange,
          workers: r.workers,
          measured_ms: r.step_ms_median,
          modelled_ms: shared.step_ms,
          error: (shared.step_ms - r.step_ms_median) / r.step_ms_median,
          cpu_bound_share: shared.step_ms > own.step_ms ? (shared.step_ms - own.step_ms) / shared.step_ms : 0,
          corrected_ms: correctedMs,
          corrected_efficiency: one ? one.step_ms_median / correctedMs : null,
        };
      });
      const projections = (o.link as number[]).flatMap((linkBits) =>
        (o.workers as number[]).flatMap((n) =>
          (['central', 'ring'] as const).map((ex) => ({
            link_bits: linkBits,
            ...projectStep({ ...costs, linkBits, computeMs: o.computeMs }, n, ex),
          })),
        ),
      );
      console.log(JSON.stringify({ bench: 'project', cores, costs, check, projections }));
    });
}

function exchangeList(value: string): ('central' | 'ring')[] {
  const list = value.split(',').map((v) => v.trim());
  for (const x of list)
    if (x !== 'central' && x !== 'ring') throw new InvalidArgumentError(`"${x}" is not an exchange (central, ring).`);
  return [...new Set(list)] as ('central' | 'ring')[];
}

function kindList(value: string): FaultKind[] {
  const kinds = value.split(',').map((v) => v.trim());
  for (const k of kinds)
    if (!(FAULT_KINDS as readonly string[]).includes(k))
      throw new InvalidArgumentError(`"${k}" is not a fault kind (${FAULT_KINDS.join(', ')}).`);
  return [...new Set(kinds)] as FaultKind[];
}

function intList(min: number, max: number) {
  const one = intOption(min, max);
  return (value: string): number[] => value.split(',').map((v) => one(v.trim()));
}

function paramsList(value: string): string[] {
  return value.split(',').map((v) => {
    const t = v.trim().toLowerCase();
    if (t === 'sc' || t === 'rc') return t;
    const m = /^(\d+(?:\.\d+)?)([km]?)$/.exec(t);
    if (!m) throw new InvalidArgumentError(`"${v}" is not sc, rc or a parameter count like 2400000 or 2.4m.`);
    const n = Math.round(Number(m[1]) * (m[2] === 'm' ? 1e6 : m[2] === 'k' ? 1e3 : 1));
    if (n < 1 || n > 100_000_000) throw new InvalidArgumentError(`${n} parameters is outside 1..100000000.`);
    return String(n);
  });
}
