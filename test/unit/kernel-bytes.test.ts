// The committed WebAssembly kernels are what their .wat sources assemble to (make kernels).
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('WebAssembly kernels', () => {
  it('the committed kernel bytes are what adam.wat assembles to', () => {
    // Exits 1 naming the stale module when src/coordinator/kernels/*-wasm.ts lags its .wat source.
    expect(() =>
      execFileSync(process.execPath, ['scripts/assemble-kernels.mjs', '--check'], { stdio: 'pipe' }),
    ).not.toThrow();
  });
});
