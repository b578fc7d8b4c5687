// `tricaps bench ...`: benchmarks that print JSON (the last line of stdout).
import type { Command } from 'commander';
import { benchEngine } from '../bench/engine.js';
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

const modelOf = (o: { variant: 'sc' | 'rc'; imageSize: number; width: number; categories: number }) => ({ variant: o.variant, imageSize: o.imageSize, width: o.width, categories: o.categories });

export function registerBenchCommands(program: Command): void {
  const bench = program.command('bench').description('benchmarks that print one JSON line');
  stepOptions(bench.command('engine').description('time full training steps (forward, mining, backward, Adam) on one engine'))
    .option('--images-per-item <k>', 'K of the PK batch', intOption(2, 64), 3)
    .option('--mining <m>', `triplet mining (${MINING_STRATEGIES.join('|')})`, choiceOption(MINING_STRATEGIES), 'batch-hard')
    .option('--steps <n>', 'timed steps', intOption(1, 10_000), 5)
    .option('--warmup <n>', 'untimed steps first', intOption(0, 100), 1)
    .option('--seed <n>', 'seed', intOption(0, 2 ** 31), 1)
    .action(async (o) => {
      const result = await benchEngine(
        { engine: o.engine, model: modelOf(o), batchTriplets: o.batchTriplets, imagesPerItem: o.imagesPerItem, steps: o.steps, warmup: o.warmup, mining: o.mining, seed: o.seed },
        createLogger('bench'),
      );
      console.log(JSON.stringify(result));
    });
  stepOptions(bench.command('profile').description('time every kernel of one training step (tf.profile) and list the largest'))
    .option('--top <n>', 'kernels to list', intOption(1, 1000), 25)
    .action(async (o) => {
      console.log(JSON.stringify(await profileStep(o.engine, modelOf(o), o.batchTriplets, o.top)));
    });
}
