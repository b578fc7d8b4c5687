import { describe, expect, it } from 'vitest';
import {
  buildArchitecture,
  convOutputSize,
  forwardMacsPerImage,
  parameterCounts,
} from '../../src/shared/model/architecture.js';
import { modelConfig } from '../../src/shared/model/config.js';
import { computeOutputShape } from '../../src/shared/model/class-capsules.js';

describe('TriCapsNet architecture', () => {
  it('SC at 256x256, 23 categories has the reference parameter counts', () => {
    const arch = buildArchitecture(modelConfig({ variant: 'sc' }));
    expect(parameterCounts(arch)).toEqual({ total: 2_425_536, trainable: 2_425_024, nonTrainable: 512 });
    expect(arch.primaryCapsules).toBe(8192);
    expect(arch.summary.map((l) => l.outputShape)).toEqual([
      [128, 128, 64],
      [64, 64, 128],
      [32, 32, 64],
      [8192, 16],
      [23, 16],
    ]);
    expect(arch.summary.find((l) => l.name === 'class_capsules')!.trainableParams).toBe(5888);
  });

  it('RC at 256x256, 23 categories has the reference parameter counts', () => {
    const arch = buildArchitecture(modelConfig({ variant: 'rc' }));
    expect(parameterCounts(arch)).toEqual({ total: 4_845_952, trainable: 4_840_448, nonTrainable: 5_504 });
    expect(arch.primaryCapsules).toBe(8192);
  });

  it('scales with image size, width and capsule options', () => {
    const small = buildArchitecture(modelConfig({ variant: 'sc', imageSize: 64 }));
    expect(small.primaryCapsules).toBe(4 * 4 * 32);
    // Convolution parameters do not depend on the image size.
    expect(parameterCounts(small).total).toBe(2_425_536);
    const half = buildArchitecture(modelConfig({ variant: 'sc', width: 0.5, categories: 10, classCapsuleDim: 8 }));
    expect(half.params.find((p) => p.name === 'stem/conv/kernel')!.shape).toEqual([7, 7, 3, 32]);
    expect(half.params.find((p) => p.name === 'class_capsules/W')!.shape).toEqual([16, 80]);
    expect(half.outputShape).toEqual([10, 8]);
    expect(forwardMacsPerImage(small)).toBeLessThan(
      forwardMacsPerImage(buildArchitecture(modelConfig({ variant: 'sc' }))),
    );
  });

  it('names every parameter once', () => {
    for (const variant of ['sc', 'rc'] as const) {
      const names = buildArchitecture(modelConfig({ variant })).params.map((p) => p.name);
      expect(new Set(names).size).toBe(names.length);
    }
  });

  it('rejects an image size that four stride-2 stages cannot divide, naming the fix', () => {
    expect(() => modelConfig({ imageSize: 100 })).toThrow(/not a multiple of 16.*try 96/);
  });

  it('rejects primary channels that are not whole capsules', () => {
    expect(() => buildArchitecture(modelConfig({ primaryCapsuleDim: 24 }))).toThrow(
      /not divisible by the capsule dim 24/,
    );
  });

  it('computes output shapes without tensors', () => {
    expect(convOutputSize(256, 7, 2, 'same')).toBe(128);
    expect(convOutputSize(9, 3, 2, 'valid')).toBe(4);
    expect(computeOutputShape([5, 8192, 16], 23, 16)).toEqual([5, 23, 16]);
  });
});
