import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 300_000, // multi-process tests start several node + tfjs processes; slow under load
    hookTimeout: 60_000,
    // tfjs keeps one global engine per process: isolate test files in forks, two at a time (2 cores).
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default'],
  },
});
