// `tricaps bench engine --workers N`: the same training step through the local fleet (coordinator
// in this process, worker processes on loopback), once with 1 worker and once with N, each worker
// computing --batch-triplets triplets (one mining shard) per step. Reports images/s for both and how
// each step's time splits into worker compute, data loading, exchange, averaging and optimizer.
import { median } from '../shared/stats.js';
import { createLogger } from '../shared/log.js';
import type { EngineBenchOptions } from './engine.js';
import { TrainConfigSchema } from '../shared/train-config.js';
import { FleetConfigSchema } from '../coordinator/fleet-config.js';
import { runLocalFleet } from '../coordinator/local-fleet.js';
import { outsideComputeShare, type FleetStepReport } from '../coordinator/run-coordinator.js';

export interface FleetBenchOptions extends EngineBenchOptions {
  workers: number;
}

async function fleetRun(o: FleetBenchOptions, workers: number): Promise<Record<string, number>> {
  const itemsPerStep = (3 * o.batchTriplets * workers) / o.imagesPerItem;
  const categories = Math.min(23, o.model.categories ?? 23);
  const cfg = TrainConfigSchema.parse({
    model: { ...o.model, categories },
    engine: o.engine,
    workers,
    steps: o.warmup + o.steps,
    batchTriplets: o.batchTriplets * workers,
    imagesPerItem: o.imagesPerItem,
    mining: o.mining,
    seed: o.seed,
    augment: { enabled: false },
    // Enough train items for every step to be a fresh batch (half the items are train items).
    data: { items: Math.max(240, 2 * itemsPerStep * (o.warmup + o.steps + 1)), categories, views: 4, seed: 7 },
  });
  const fleet = FleetConfigSchema.parse({
    listen: '127.0.0.1:0',
    minWorkers: workers,
    maxWorkers: workers,
    shards: workers,
  });
  const result = await runLocalFleet(
    cfg,
    fleet,
    [o.engine],
    createLogger('bench', process.env.TRICAPS_LOG_LEVEL ?? 'warn'),
  );
  const timed: FleetStepReport[] = result.reports.slice(o.warmup);
  const pick = (f: (r: FleetStepReport) => number) => median(timed.map(f));
  const step = pick((r) => r.seconds);
  return {
    workers,
    images_per_step: timed[0]?.images ?? 0,
    images_per_s: pick((r) => r.imagesPerSecond),
    step_s_median: step,
    worker_compute_s_median: pick((r) => r.workerComputeSeconds),
    worker_data_s_median: pick((r) => r.workerDataSeconds),
    exchange_s_median: pick((r) => r.exchangeSeconds),
    average_s_median: pick((r) => r.averageSeconds),
    optimizer_s_median: pick((r) => r.optimizerSeconds),
    outside_compute_share: pick(outsideComputeShare),
    exchange_average_optimizer_share: pick(
      (r) => (r.exchangeSeconds + r.averageSeconds + r.optimizerSeconds) / r.seconds,
    ),
  };
}

export async function benchFleet(o: FleetBenchOptions): Promise<Record<string, unknown>> {
  const one = await fleetRun(o, 1);
  const many = await fleetRun(o, o.workers);
  return {
    bench: 'engine-fleet',
    engine: o.engine,
    variant: o.model.variant,
    image_size: o.model.imageSize,
    batch_triplets_per_worker: o.batchTriplets,
    steps: o.steps,
    warmup_steps: o.warmup,
    runs: [one, many],
    speedup: many.images_per_s / one.images_per_s,
  };
}
