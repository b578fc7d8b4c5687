// `tricaps model summary`: layer shapes, parameter counts and forward cost, as a table or JSON.
import type { Command } from 'commander';
import { buildArchitecture, forwardMacsPerImage, parameterCounts } from '../shared/model/architecture.js';
import { modelConfig } from '../shared/model/config.js';
import { addArchitectureOptions, intOption } from './options.js';

export function registerModelCommands(program: Command): void {
  const model = program.command('model').description('inspect the TriCapsNet model');
  addArchitectureOptions(model.command('summary'), 256)
    .description(
      'print layer output shapes, parameter counts (trainable and BatchNorm buffers) and multiply-accumulates',
    )
    .option('--categories <n>', 'number of categories (class capsules)', intOption(2, 1000), 23)
    .option('--json', 'print JSON instead of a table')
    .action((o) => {
      const arch = buildArchitecture(
        modelConfig({
          variant: o.variant,
          imageSize: o.imageSize,
          categories: o.categories,
          width: o.width,
          primaryCapsuleDim: o.primaryDim,
          classCapsuleDim: o.classDim,
          routingIterations: o.routingIterations,
          routingRule: o.routingRule,
          routingPool: o.routingPool,
        }),
      );
      const counts = parameterCounts(arch);
      const macs = forwardMacsPerImage(arch);
      if (o.json) {
        console.log(
          JSON.stringify(
            {
              config: arch.config,
              input_shape: arch.inputShape,
              layers: arch.summary,
              primary_capsules: arch.primaryCapsules,
              embedding_dim: arch.outputShape[0] * arch.outputShape[1],
              params: counts,
              forward_macs_per_image: macs,
            },
            null,
            2,
          ),
        );
        return;
      }
      const rows = arch.summary.map((l) => [
        l.name,
        l.kind,
        `[${l.outputShape.join(', ')}]`,
        l.trainableParams.toLocaleString('en-US'),
        l.nonTrainableParams.toLocaleString('en-US'),
        (l.macs / 1e6).toFixed(1),
      ]);
      const header = ['layer', 'kind', 'output (per image)', 'trainable', 'buffers', 'MMACs'];
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
      const line = (r: string[]) => r.map((c, i) => (i >= 3 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ');
      console.log(
        `TriCapsNet ${arch.config.variant.toUpperCase()} ${arch.config.imageSize}x${arch.config.imageSize}, width ${arch.config.width}, ${arch.config.categories} categories`,
      );
      console.log(line(header));
      for (const r of rows) console.log(line(r));
      console.log(
        `total ${counts.total.toLocaleString('en-US')} parameters: ${counts.trainable.toLocaleString('en-US')} trainable, ${counts.nonTrainable.toLocaleString('en-US')} BatchNorm buffers; ${(macs / 1e9).toFixed(3)} GMACs per image forward`,
      );
    });
}
