#!/usr/bin/env node
// The `tricaps` command: wiring only. User mistakes (bad flags, bad values, missing engines) print
// one clear line and exit 2; anything else is a bug and prints its stack.
import { Command, CommanderError } from 'commander';
import { ZodError } from 'zod';
import * as tf from '@tensorflow/tfjs-core';
import { explainResourceFailure, UsageError } from './shared/errors.js';
import { TRICAPS_VERSION } from './shared/version.js';
import { registerModelCommands } from './cli/model-summary.js';
import { registerTrainCommand } from './cli/train.js';
import { registerBenchCommands } from './cli/bench.js';
import { registerDataCommands } from './cli/data.js';
import { registerEvalCommands } from './cli/eval.js';
import { registerEmbedCommand } from './cli/embed.js';
import { CheckpointWriteError } from './coordinator/checkpoint.js';
import { registerFleetCommands } from './cli/fleet.js';
import { registerReportCommand } from './cli/report.js';
import { registerHealthCommand } from './cli/health.js';

// Gradients for every tfjs op are registered by the union package (tfjs-core alone has none).
import '@tensorflow/tfjs';

function formatZod(err: ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || 'config'}: ${i.message}`).join('; ');
}

async function main(argv: string[]): Promise<number> {
  tf.env().set('PROD', true); // no "install tfjs-node" banner, no debug checks
  const program = new Command('tricaps')
    .description('Triplet Capsule Networks for clothing image retrieval')
    .version(TRICAPS_VERSION)
    // One line per mistake, like every other error (commander's own, and its hint, would be two).
    .configureOutput({ outputError: (str, write) => write(`tricaps: ${str.trim()} (run with --help for usage)\n`) })
    .exitOverride();
  registerModelCommands(program);
  registerTrainCommand(program);
  registerBenchCommands(program);
  registerDataCommands(program);
  registerEvalCommands(program);
  registerEmbedCommand(program);
  registerFleetCommands(program);
  registerReportCommand(program);
  registerHealthCommand(program);
  for (const cmd of program.commands) {
    cmd.exitOverride();
    for (const sub of cmd.commands) sub.exitOverride();
  }
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof UsageError) {
      process.stderr.write(`tricaps: error: ${err.message}\n`);
      return 2;
    }
    if (err instanceof ZodError) {
      process.stderr.write(`tricaps: error: invalid configuration: ${formatZod(err)}\n`);
      return 2;
    }
    if (err instanceof CheckpointWriteError) {
      process.stderr.write(`tricaps: error: ${err.message}\n`);
      return 1;
    }
    const limit = explainResourceFailure(err);
    if (limit) {
      process.stderr.write(`tricaps: error: ${limit}\n`);
      return 2;
    }
    process.stderr.write(`tricaps: internal error (please report): ${(err as Error).stack ?? err}\n`);
    return 1;
  }
}

main(process.argv).then((code) => {
  // Exit explicitly: an engine (Dawn's navigator.gpu) can keep the event loop alive.
  process.exitCode = code;
  setImmediate(() => process.exit(code));
});
