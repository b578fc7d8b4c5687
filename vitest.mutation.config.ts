// vitest for mutation testing (`make mutation`): the unit tests only (pure logic, no processes, no
// services), so that each mutant is judged by the fast tests that cover it.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    // Device and numeric-gradient suites are slow and cover none of the mutated modules; the
    // generated-code, import-graph and kernel-bytes checks read the repository around them, which
    // Stryker's sandbox copy does not hold whole.
    exclude: [
      'test/unit/webgpu-engine.test.ts',
      'test/unit/gradcheck.test.ts',
      'test/unit/wasm-limits.test.ts',
      'test/unit/proto.test.ts',
      'test/unit/import-graph.test.ts',
      'test/unit/loopback-baseline.test.ts',
      'test/unit/kernel-bytes.test.ts',
    ],
    testTimeout: 120_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
