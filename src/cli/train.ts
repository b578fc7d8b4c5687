// `tricaps train`: trains on the embedded synthetic catalogue with a progress bar, and prints
// retrieval Recall@K on held-out items before and after training.
import { Command, InvalidArgumentError } from 'commander';
import cliProgress from 'cli-progress';
import { ENGINE_NAMES, type EngineChoice } from '../shared/engine/engine.js';
import { createLogger } from '../shared/log.js';
import { MASK_MODES } from '../shared/model/embedding.js';
import { MINING_STRATEGIES } from '../shared/model/mining.js';
import { TrainConfigSchema, type TrainConfig } from '../shared/train-config.js';
import type { EvaluationResult } from '../shared/eval/evaluate.js';
import { trainLocal, type LocalCheckpointing } from '../coordinator/train-local.js';
import { runLocalFleet } from '../coordinator/local-fleet.js';
import { outsideComputeShare } from '../coordinator/run-coordinator.js';
import { FleetConfigSchema, type FleetConfig } from '../coordinator/fleet-config.js';
import { addArchitectureOptions, choiceOption, collectChoices, floatOption, intOption } from './options.js';
import { UsageError } from '../shared/errors.js';
import { mean } from '../shared/stats.js';

export function addModelOptions(cmd: Command): Command {
  return addArchitectureOptions(cmd, 64)
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--batch-triplets <n>', 'triplets per step (a PK batch of 3n images)', intOption(2, 4096), 16)
    .option('--images-per-item <k>', 'K of the PK batch', intOption(2, 64), 3)
    .option('--seed <n>', 'seed for initialisation, sampling and dropout', intOption(0, 2 ** 31), 1);
}

const evalMasks = collectChoices(MASK_MODES, ['predicted', 'oracle']);

function brightnessRange(value: string): [number, number] {
  const parts = value.split(',').map(Number);
  if (parts.length !== 2 || parts.some((x) => !Number.isFinite(x) || x < 0) || parts[0] > parts[1]) {
    throw new InvalidArgumentError(`"${value}" is not a range "lo,hi" with 0 <= lo <= hi.`);
  }
  return [parts[0], parts[1]];
}

/** The training flags shared by `train` and `coordinator`. */
export function addTrainingOptions(cmd: Command): Command {
  return addModelOptions(cmd)
    .option('--steps <n>', 'optimizer steps (default 100, or unlimited with --epochs)', intOption(0))
    .option('--epochs <n>', 'also stop after this many passes over the train items', intOption(1))
    .option('--max-minutes <m>', 'stop training after this many minutes (0 = no limit)', floatOption(0), 0)
    .option(
      '--mining <m>',
      `in-batch triplet mining (${MINING_STRATEGIES.join('|')})`,
      choiceOption(MINING_STRATEGIES),
      'random',
    )
    .option('--margin <x>', 'triplet margin on squared L2 distance', floatOption(0.001, 100), 2.0)
    .option('--margin-loss-weight <x>', 'weight of the auxiliary capsule margin loss', floatOption(0, 100), 0)
    .option('--lr <x>', 'Adam learning rate', floatOption(1e-8, 10), 1e-3)
    .option(
      '--data <dir>',
      'train on an In-shop catalogue at this root (DeepFashion, or `tricaps data synth` output) instead of the built-in one',
    )
    .option(
      '--on-bad-image <p>',
      'with --data: missing images and single-image train items fail|skip',
      choiceOption(['fail', 'skip'] as const),
      'fail',
    )
    .option('--bbox-crop', 'with --data: crop images to their Anno bounding boxes')
    .option('--items <n>', 'synthetic catalogue: items (half train, half query/gallery)', intOption(4, 100_000), 240)
    .option('--views <n>', 'synthetic catalogue: images per item', intOption(2, 32), 4)
    .option('--categories <n>', 'synthetic catalogue: categories (= class capsules)', intOption(2, 23), 6)
    .option('--data-seed <n>', 'synthetic catalogue: seed', intOption(0, 2 ** 31), 7)
    .option(
      '--eval-mask <m...>',
      `capsule masks to report retrieval for (${MASK_MODES.join('|')})`,
      evalMasks.parse,
      evalMasks.defaults,
    )
    .option(
      '--bn-momentum <x>',
      'BatchNorm moving-average momentum (Keras: 0.99; lower suits short runs)',
      floatOption(0, 1),
      0.99,
    )
    .option('--dropout <x>', 'spatial dropout rate', floatOption(0, 0.95), 0.3)
    .option('--no-augment', 'train without augmentation (reference: rotation, shift, brightness, shear, zoom, flip)')
    .option('--aug-rotation <deg>', 'augmentation: max rotation in degrees (0 = off)', floatOption(0, 180), 30)
    .option('--aug-shift <f>', 'augmentation: max shift, fraction of the side (0 = off)', floatOption(0, 0.5), 0.1)
    .option('--aug-zoom <f>', 'augmentation: zoom range per axis (0 = off)', floatOption(0, 0.9), 0.1)
    .option(
      '--aug-shear <deg>',
      'augmentation: max shear in degrees, Keras semantics (0 = off)',
      floatOption(0, 45),
      0.1,
    )
    .option(
      '--aug-brightness <lo,hi>',
      'augmentation: brightness factor range (1,1 = off)',
      brightnessRange,
      [0.5, 1.5],
    )
    .option('--no-aug-flip', 'augmentation: no horizontal flips')
    .option('--checkpoint-dir <dir>', 'save the final weights under this directory (for tricaps eval/search)');
}

/** The coordinator's fleet flags (also taken by `train --workers N`). */
export function addFleetOptions(cmd: Command, listenDefault: string): Command {
  return cmd
    .option(
      '--listen <host:port>',
      'address the coordinator serves gRPC on (port 0: chosen at start and logged)',
      listenDefault,
    )
    .option(
      '--min-workers <n>',
      'train only while at least this many workers are present (pause otherwise)',
      intOption(1, 1024),
    )
    .option('--max-workers <n>', 'refuse workers beyond this many', intOption(1, 1024))
    .option(
      '--shards <n>',
      'mining shards per step (default: --min-workers); workers take whole shards, so results do not depend on the fleet size',
      intOption(1, 1024),
    )
    .option('--heartbeat-interval <ms>', 'how often workers send heartbeats', intOption(50, 600_000), 1000)
    .option('--heartbeat-timeout <ms>', 'drop a worker silent this long', intOption(200, 3_600_000), 5000)
    .option(
      '--step-timeout <ms>',
      'drop a worker that holds a step this long without answering',
      intOption(1000, 86_400_000),
      300_000,
    )
    .option(
      '--wire <dtype>',
      'gradient wire format (float16 halves the bytes; accumulation stays float32)',
      choiceOption(['float32', 'float16'] as const),
      'float32',
    )
    .option(
      '--exchange <how>',
      'central: each worker uploads its whole gradient; ring: workers reduce among themselves over peer links (--peer-listen) and each uploads a slice; auto: ring from 3 workers',
      choiceOption(['central', 'ring', 'auto'] as const),
      'central',
    )
    .option(
      '--hard-negative-every <n>',
      'every n steps, embed the train items over the fleet and put confusable items in the same shard (0 = off)',
      intOption(0),
      0,
    )
    .option(
      '--run-id <id>',
      'name of the run (default: generated, or the resumed one); workers of another run are refused',
    )
    .option(
      '--checkpoint-every <n>',
      'with --checkpoint-dir: write a resumable checkpoint every n steps (0 = at the end and on SIGTERM only)',
      intOption(0),
      0,
    )
    .option(
      '--keep-checkpoints <n>',
      'checkpoints kept (the newest n, plus the best by validation Recall@1)',
      intOption(1, 10_000),
      3,
    )
    .option(
      '--resume',
      'continue from the newest good checkpoint under --checkpoint-dir (start fresh when there is none)',
    )
    .option(
      '--nats <url>',
      'publish lifecycle events to and take control commands from this NATS server (e.g. nats://localhost:4222)',
    )
    .option(
      '--nats-creds <file>',
      'with --nats: NATS credentials file (JWT + nkey); or --nats-user with TRICAPS_NATS_PASSWORD, or TRICAPS_NATS_TOKEN',
    )
    .option('--nats-user <name>', 'with --nats: NATS user (password from TRICAPS_NATS_PASSWORD)')
    .option('--nats-control-token <token>', 'with --nats: only obey control commands that carry this token')
    .option('--nats-step-interval <n>', 'with --nats: publish a step summary every n steps', intOption(1), 10)
    .option(
      '--metrics-port <port>',
      'serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port, logged)',
      intOption(0, 65_535),
    )
    .option(
      '--stall-seconds <s>',
      'with --metrics-port: /healthz fails when no step was applied this long while workers are present (0 = never)',
      floatOption(0),
      900,
    )
    .option(
      '--max-gradient-norm-ratio <x>',
      'refuse a gradient whose norm is more than x times the median of recent ones (0 = off)',
      floatOption(0),
      100,
    )
    .option(
      '--eval-every <n>',
      'evaluate retrieval on held-out items every n steps (recorded in checkpoints; 0 = off)',
      intOption(0),
      0,
    );
}

export function trainConfigFrom(o: Record<string, any>, workers: number): TrainConfig {
  return TrainConfigSchema.parse({
    model: {
      variant: o.variant,
      imageSize: o.imageSize,
      width: o.width,
      primaryCapsuleDim: o.primaryDim,
      classCapsuleDim: o.classDim,
      routingIterations: o.routingIterations,
      routingRule: o.routingRule,
      routingPool: o.routingPool,
      categories: o.categories,
      bnMomentum: o.bnMomentum,
      dropout: o.dropout,
    },
    optimizer: { learningRate: o.lr },
    data: {
      root: o.data,
      onBadImage: o.onBadImage,
      bboxCrop: Boolean(o.bboxCrop),
      items: o.items,
      views: o.views,
      categories: o.categories,
      seed: o.dataSeed,
    },
    engine: o.engine,
    workers,
    steps: o.steps ?? (o.epochs ? Number.MAX_SAFE_INTEGER : 100),
    epochs: o.epochs,
    maxMinutes: o.maxMinutes,
    batchTriplets: o.batchTriplets,
    imagesPerItem: o.imagesPerItem,
    mining: o.mining,
    margin: o.margin,
    marginLossWeight: o.marginLossWeight,
    evalMasks: o.evalMask,
    seed: o.seed,
    checkpointDir: o.checkpointDir,
    augment: {
      enabled: o.augment,
      rotationDegrees: o.augRotation,
      shift: o.augShift,
      zoom: o.augZoom,
      shearDegrees: o.augShear,
      brightness: o.augBrightness,
      horizontalFlip: o.augFlip,
    },
  });
}

export function fleetConfigFrom(o: Record<string, any>, defaults: { minWorkers: number }): FleetConfig {
  const minWorkers = o.minWorkers ?? defaults.minWorkers;
  return FleetConfigSchema.parse({
    listen: o.listen,
    runId: o.runId,
    minWorkers,
    maxWorkers: o.maxWorkers ?? Math.max(64, minWorkers),
    shards: o.shards,
    heartbeatIntervalMs: o.heartbeatInterval,
    heartbeatTimeoutMs: o.heartbeatTimeout,
    stepTimeoutMs: o.stepTimeout,
    gradientWire: o.wire,
    exchange: o.exchange,
    hardNegativeEvery: o.hardNegativeEvery,
    checkpointEvery: o.checkpointEvery,
    keepCheckpoints: o.keepCheckpoints,
    resume: Boolean(o.resume),
    evalEvery: o.evalEvery,
    metricsPort: o.metricsPort,
    maxGradientNormRatio: o.maxGradientNormRatio,
    stallSeconds: o.stallSeconds,
    nats: o.nats,
    natsControlToken: o.natsControlToken ?? process.env.TRICAPS_NATS_CONTROL_TOKEN,
    natsStepInterval: o.natsStepInterval,
    natsAuth: {
      credsFile: o.natsCreds,
      user: o.natsUser,
      password: process.env.TRICAPS_NATS_PASSWORD,
      token: process.env.TRICAPS_NATS_TOKEN,
    },
  });
}

export function registerTrainCommand(program: Command): void {
  const cmd = program
    .command('train')
    .description(
      'train TriCapsNet on an In-shop catalogue (--data) or the built-in synthetic one: in this process (--workers 0) or with a local fleet of worker processes',
    );
  addTrainingOptions(cmd)
    .option('--workers <n>', 'worker processes on loopback (0 = train in this process)', intOption(0, 256), 0)
    .option(
      '--worker-engines <list>',
      `with --workers: the local workers' engines, comma-separated and taken in turn, e.g. webgpu,wasm (default: --engine for all)`,
      engineList,
    )
    .option(
      '--log-every <n>',
      'also log one structured line every n steps (loss, triplets, data wait, images/s); 0 = off',
      intOption(0),
      0,
    )
    .option('--json', 'print the final result as one JSON line');
  addFleetOptions(cmd, '127.0.0.1:0').action(async (o, command: Command) => {
    const cfg = trainConfigFrom(o, o.workers);
    if (cfg.workers === 0) {
      // Fleet flags mean nothing in a single process: say so rather than ignore them.
      const fleetOnly = [
        'listen',
        'minWorkers',
        'maxWorkers',
        'shards',
        'heartbeatInterval',
        'heartbeatTimeout',
        'stepTimeout',
        'wire',
        'hardNegativeEvery',
        'runId',
        'evalEvery',
        'metricsPort',
        'maxGradientNormRatio',
        'stallSeconds',
        'nats',
        'natsCreds',
        'natsUser',
        'natsControlToken',
        'natsStepInterval',
      ];
      const given = fleetOnly
        .filter((k) => command.getOptionValueSource(k) === 'cli')
        .map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
      if (command.getOptionValueSource('workerEngines') === 'cli') given.push('--worker-engines');
      if (given.length)
        throw new UsageError(`${given.join(', ')}: fleet options; train with --workers 1 or more to use them`);
      await runTraining(cfg, Boolean(o.json), o.logEvery, {
        every: o.checkpointEvery,
        keep: o.keepCheckpoints,
        resume: Boolean(o.resume),
      });
    } else {
      await runFleetTraining(
        cfg,
        fleetConfigFrom(o, { minWorkers: cfg.workers }),
        o.workerEngines ?? [cfg.engine],
        Boolean(o.json),
        o.logEvery,
      );
    }
  });
}

export function recallLine(label: string, r: EvaluationResult): string {
  const ks = Object.keys(r.recall).map(Number);
  return `${label.padEnd(7)} ${r.mask.padEnd(9)} ${ks.map((k) => `R@${k} ${(r.recall[k] * 100).toFixed(1).padStart(5)}%`).join('  ')}  mAP@R ${(r.mapAtR * 100).toFixed(1).padStart(5)}%`;
}

async function runTraining(cfg: TrainConfig, json: boolean, logEvery: number, ckpt: LocalCheckpointing): Promise<void> {
  const log = createLogger('train');
  const bar = progressBar(
    'train |{bar}| step {value}/{total} | loss {loss} | active {active}% | {ips} img/s | data wait {wait} ms | eta {eta_formatted}',
  );
  const result = await trainLocal(
    cfg,
    log,
    {
      ...barAroundTraining(bar, cfg.steps, { loss: '-', active: '-', ips: '-', wait: '-' }),
      onStep: (s) => {
        if (logEvery > 0 && s.step % logEvery === 0) {
          log.info(
            {
              step: s.step,
              epoch: s.epoch,
              loss: s.loss,
              triplets: s.triplets,
              active: s.activeTriplets,
              dap: s.meanPositiveDistance,
              dan: s.meanNegativeDistance,
              data_wait_ms: s.dataWaitSeconds * 1000,
              images_per_s: s.imagesPerSecond,
              lr: s.learningRate,
            },
            `step ${s.step} loss ${s.loss.toFixed(4)}`,
          );
        }
        bar.update(s.step + 1, {
          loss: s.loss.toFixed(4),
          active: ((100 * s.activeTriplets) / Math.max(1, s.triplets)).toFixed(0),
          ips: s.imagesPerSecond.toFixed(1),
          wait: (s.dataWaitSeconds * 1000).toFixed(0),
        });
      },
    },
    ckpt,
  );
  const first = result.losses.slice(0, 10);
  const last = result.losses.slice(-10);
  if (json) {
    console.log(
      JSON.stringify({
        engine: result.engine.name,
        steps: result.stepsRun,
        seconds: result.seconds,
        data_wait_seconds_mean: mean(result.dataWaitSeconds),
        loss_first10: mean(first),
        loss_last10: mean(last),
        before: result.before,
        after: result.after,
        checkpoint: result.checkpoint ?? null,
      }),
    );
    return;
  }
  const head = result.after[0];
  console.log(
    `\nTrained ${result.stepsRun} steps in ${result.seconds.toFixed(0)} s on ${result.engine.name} (${result.engine.device}).`,
  );
  console.log(
    `Loss (mean of 10 steps): first ${mean(first).toFixed(4)} -> last ${mean(last).toFixed(4)}; data wait ${(mean(result.dataWaitSeconds) * 1000).toFixed(1)} ms per step`,
  );
  console.log(
    `Retrieval on held-out items: ${head.queries} queries vs ${head.gallery} gallery images (mask "predicted" = longest capsule, "oracle" = true category)`,
  );
  if (result.checkpoint) console.log(`Weights saved to ${result.checkpoint}`);
  result.before.forEach((r) => console.log(recallLine('before', r)));
  result.after.forEach((r) => console.log(recallLine('after', r)));
  console.log(
    `category accuracy (longest capsule): before ${(result.before[0].categoryAccuracy * 100).toFixed(1)}% -> after ${(head.categoryAccuracy * 100).toFixed(1)}%`,
  );
}

/**
 * Hooks that show `bar` between the evaluations before and after training, sized to the steps the
 * run planned (`--epochs` decides them only once the data is read; until then `steps`).
 */
function barAroundTraining(bar: cliProgress.SingleBar, steps: number, idle: Record<string, string>) {
  let total = steps;
  return {
    onPlanned: (planned: number) => {
      total = planned;
    },
    onEvaluation: (phase: 'before' | 'after') => {
      if (phase === 'before') bar.start(total, 0, idle);
      else bar.stop();
    },
  };
}

export function progressBar(format: string): cliProgress.SingleBar {
  return new cliProgress.SingleBar(
    { format, stream: process.stderr, noTTYOutput: true, notTTYSchedule: 15_000, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
}

/** `--worker-engines webgpu,wasm`: engine names, each checked. */
function engineList(value: string): EngineChoice[] {
  const one = choiceOption(ENGINE_NAMES);
  return value.split(',').map((v) => one(v.trim()));
}

async function runFleetTraining(
  cfg: TrainConfig,
  fleet: FleetConfig,
  workerEngines: EngineChoice[],
  json: boolean,
  logEvery: number,
): Promise<void> {
  // The coordinator's own per-step lines are for `tricaps coordinator`; here a progress bar shows
  // the steps (and --log-every N the structured lines), warnings (a lost worker) still print.
  const log = createLogger('coordinator', process.env.TRICAPS_LOG_LEVEL ?? 'warn');
  const stepLog = createLogger('train');
  const bar = progressBar(
    'train |{bar}| step {value}/{total} | loss {loss} | {workers} workers | {ips} img/s | outside compute {outside}% | eta {eta_formatted}',
  );
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    const result = await runLocalFleet(
      cfg,
      fleet,
      workerEngines,
      log,
      {
        ...barAroundTraining(bar, cfg.steps, { loss: '-', workers: '-', ips: '-', outside: '-' }),
        onStep: (s) => {
          if (logEvery > 0 && s.step % logEvery === 0) {
            stepLog.info(
              {
                step: s.step,
                epoch: s.epoch,
                loss: s.loss,
                grad_norm: s.gradientNorm,
                triplets: s.triplets,
                workers: s.workers,
                seconds: s.seconds,
                compute_s: s.workerComputeSeconds,
                exchange_s: s.exchangeSeconds,
                images_per_s: s.imagesPerSecond,
                lr: s.learningRate,
              },
              `step ${s.step} loss ${s.loss.toFixed(4)}`,
            );
          }
          bar.update(s.step + 1, {
            loss: s.loss.toFixed(4),
            workers: s.workers,
            ips: s.imagesPerSecond.toFixed(1),
            outside: (100 * outsideComputeShare(s)).toFixed(0),
          });
        },
      },
      { evaluate: true, signal: abort.signal },
    );
    bar.stop();
    const first = result.losses.slice(0, 10);
    const last = result.losses.slice(-10);
    const outside = mean(result.reports.map(outsideComputeShare));
    if (json) {
      console.log(
        JSON.stringify({
          run: result.runId,
          workers: cfg.workers,
          steps: result.stepsRun,
          seconds: result.seconds,
          loss_first10: mean(first),
          loss_last10: mean(last),
          images_per_s_mean: mean(result.reports.map((r) => r.imagesPerSecond)),
          outside_compute_share_mean: outside,
          lost: result.lost,
          before: result.before,
          after: result.after,
          checkpoint: result.checkpoint ?? null,
        }),
      );
      return;
    }
    console.log(
      `\nTrained ${result.stepsRun} steps in ${result.seconds.toFixed(0)} s with ${cfg.workers} local workers (run ${result.runId}).`,
    );
    console.log(
      `Loss (mean of 10 steps): first ${mean(first).toFixed(4)} -> last ${mean(last).toFixed(4)}; ${mean(result.reports.map((r) => r.imagesPerSecond)).toFixed(1)} images/s; ${(outside * 100).toFixed(1)}% of each step outside worker compute`,
    );
    if (result.lost.length)
      console.log(`Workers lost: ${result.lost.map((l) => `${l.id} at step ${l.step} (${l.reason})`).join('; ')}`);
    if (result.checkpoint) console.log(`Weights saved to ${result.checkpoint}`);
    const head = result.after[0];
    if (head) {
      console.log(
        `Retrieval on held-out items: ${head.queries} queries vs ${head.gallery} gallery images (mask "predicted" = longest capsule, "oracle" = true category)`,
      );
      result.before.forEach((r) => console.log(recallLine('before', r)));
      result.after.forEach((r) => console.log(recallLine('after', r)));
    }
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
