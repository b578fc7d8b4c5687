// The worker of a single-process run (`tricaps train --workers 0`): computes a step's shards in this
// process, on the coordinator's own model, with the same gradient code a fleet worker runs. The next
// step's images are decoded while the current step computes; the wait that remains is the step's data
// time. Train steps only: embedding passes (--hard-negative-every) need a fleet.
import type { Catalogue } from '../shared/data/catalogue.js';
import { loadTrainingImages } from '../shared/data/batch.js';
import { Prefetcher } from '../shared/data/prefetch.js';
import type { ConvFn } from '../shared/engine/engine.js';
import type { ModelState } from '../shared/model/params.js';
import type { PlannedShard } from '../shared/plan/step-plan.js';
import { computeShardsGradient, type ShardContext } from '../shared/train/shard-gradients.js';
import type { EmbedResult, TrainResult } from './fleet-coordinator.js';
import type { StepExecutor } from './step.js';
import type { StepWork } from './step-work.js';

export interface InProcessOptions {
  model: ModelState;
  catalogue: Catalogue;
  cfg: ShardContext['cfg'];
  conv: ConvFn;
  /** The step's plan (pure): the same shards the step will execute. */
  plan(step: number): { epoch: number; shards: PlannedShard[] };
  totalSteps: number;
}

export class InProcessExecutor implements StepExecutor {
  readonly round = 0;
  private readonly prefetcher: Prefetcher<Float32Array[]>;

  constructor(private readonly o: InProcessOptions) {
    this.prefetcher = new Prefetcher((step) => (step < o.totalSteps ? this.load(step) : Promise.resolve([])));
  }

  /** Every shard's pixels of a step, in shard order. */
  private load(step: number): Promise<Float32Array[]> {
    const { epoch, shards } = this.o.plan(step);
    const size = this.o.model.arch.config.imageSize;
    const { seed, augment } = this.o.cfg;
    return Promise.all(
      shards.map((s) =>
        loadTrainingImages(this.o.catalogue, s.imageIds, size, augment, { seed, epoch, step, worker: s.index }),
      ),
    );
  }

  async execute(work: StepWork<TrainResult> | StepWork<EmbedResult>): Promise<void> {
    if (work.kind !== 'train')
      throw new Error('a single process cannot run an embedding pass; --hard-negative-every needs --workers');
    const { value: pixels, waitSeconds } = await this.prefetcher.take(work.step);
    const result = await computeShardsGradient(work.units, {
      model: this.o.model,
      catalogue: this.o.catalogue,
      cfg: this.o.cfg,
      conv: this.o.conv,
      step: work.step,
      epoch: work.epoch,
      loadImages: async (shard) => pixels[shard.index],
    });
    // The images were decoded ahead: what the step paid for them is the wait.
    result.dataSeconds = waitSeconds;
    (work as StepWork<TrainResult>).results.push({ workerId: 'local', units: work.units.map((u) => u.index), result });
  }

  release(): void {
    // The results' arrays were read from the engine for this step alone: nothing to give back.
  }

  /** Drops images loaded ahead for steps that will not run. */
  clear(): void {
    this.prefetcher.clear();
  }
}
