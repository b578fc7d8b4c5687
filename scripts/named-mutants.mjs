// The changes issue 18 found surviving their tests, applied by hand one at a time: each must make at
// least one of the named test files fail. `node scripts/named-mutants.mjs [name...]` restores every
// file it changes (also on failure or Ctrl-C) and prints one JSON line per change: which tests
// caught it. Changes to code that real processes run rebuild dist/ first (and after, to restore it).
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const MUTANTS = [
  {
    name: 'augmentation ignores its seed',
    file: 'src/shared/data/augment.ts',
    from: 'Rng.from(k.seed, 0xa06,',
    to: 'Rng.from(0, 0xa06,',
    tests: ['test/unit/augment-prefetch.test.ts'],
  },
  {
    name: 'the shift transform dropped',
    file: 'src/shared/data/augment.ts',
    from: ' - c - p.tx * size;',
    to: ' - c;',
    tests: ['test/unit/augment-prefetch.test.ts'],
  },
  {
    name: "y-zoom takes x's value",
    file: 'src/shared/data/augment.ts',
    from: 'v / p.zy + c',
    to: 'v / p.zx + c',
    tests: ['test/unit/augment-prefetch.test.ts'],
  },
  {
    name: "y-zoom drawn as x's",
    file: 'src/shared/data/augment.ts',
    from: '    zy: 1 + sym(cfg.zoom),',
    to: '    zy: 0,',
    tests: ['test/unit/augment-prefetch.test.ts'],
    // (zy: zx's draw cannot be written without reordering the draws; this drops its own draw)
  },
  {
    name: 'the shear sign flipped',
    file: 'src/shared/data/augment.ts',
    from: 'u = u + shearTan * v;',
    to: 'u = u - shearTan * v;',
    tests: ['test/unit/augment-prefetch.test.ts'],
  },
  {
    name: 'the PK sampler ignores its seed',
    file: 'src/shared/data/pk-sampler.ts',
    from: 'Rng.from(seed, 0x9e11, epoch)',
    to: 'Rng.from(0, 0x9e11, epoch)',
    tests: ['test/unit/pk-sampler.test.ts'],
  },
  {
    name: 'BatchNorm momentum inverted',
    file: 'src/shared/model/batch-norm.ts',
    from: 'mean: tf.add(tf.mul(moving.mean, momentum), tf.mul(batch.mean, 1 - momentum)),',
    to: 'mean: tf.add(tf.mul(moving.mean, 1 - momentum), tf.mul(batch.mean, momentum)),',
    tests: ['test/unit/trainer.test.ts'],
  },
  {
    name: 'the gradient-norm guard switched off',
    file: 'src/coordinator/fleet-coordinator.ts',
    from: 'if (ratio > 0 && this.recentNorms.length >= 5) {',
    to: 'if (false) {',
    tests: ['test/unit/fleet-logic.test.ts', ['test/claims.test.ts', 'gradient-norm guard']],
    build: true,
  },
  {
    name: 'the stalled-worker sweep switched off',
    file: 'src/coordinator/fleet-coordinator.ts',
    from: 'for (const id of work.overdue(now, this.opts.assignmentTimeoutMs)) {',
    to: 'for (const id of [] as string[]) {',
    tests: ['test/unit/fleet-logic.test.ts', ['test/claims.test.ts', 'step-timeout']],
    build: true,
  },
  {
    name: 'the bounding-box crop taken at (0, 0)',
    file: 'src/shared/data/inshop.ts',
    from: 'left: box[0],\n          top: box[1],',
    to: 'left: 0,\n          top: 0,',
    tests: ['test/unit/inshop.test.ts'],
  },
  {
    name: 'the --min-workers check weakened to 1',
    file: 'src/coordinator/fleet-coordinator.ts',
    from: 'if (members.length < this.opts.minWorkers) {',
    to: 'if (members.length < 1) {',
    tests: ['test/unit/fleet-logic.test.ts', ['test/fleet.test.ts', 'min-workers']],
    build: true,
  },
  {
    name: 'float16 requested but float32 sent',
    file: 'src/worker/worker.ts',
    from: 'await this.client.pushGradients(header, tensors, s.gradientDtype, this.opts.transferTimeoutMs);',
    to: "await this.client.pushGradients(header, tensors, 'float32', this.opts.transferTimeoutMs);",
    tests: ['test/fleet.test.ts'],
    build: true,
  },
  {
    name: 'the hard-negative grouping dropped',
    file: 'src/coordinator/step.ts',
    from: 'const affinity = ctx.embeddings ? confusableAffinity(batch.itemIds, ctx.embeddings, ctx.shards) : undefined;',
    to: 'const affinity = undefined;',
    tests: ['test/unit/fleet-logic.test.ts'],
  },
  {
    name: 'isStepDirName loosened to a prefix check',
    file: 'src/shared/paths.ts',
    from: 'return /^step-\\d{8}$/.test(name);',
    to: 'return /^step-\\d{8}/.test(name);',
    tests: ['test/unit/checkpoint-store.test.ts'],
  },
  {
    name: 'the join token echoed back in a refusal',
    file: 'src/shared/fleet-security.ts',
    from: "details: 'wrong join token for this run' };",
    to: 'details: `wrong join token for this run: ${value.slice(7)}` };',
    tests: ['test/security.test.ts'],
    build: true,
  },
];

const only = process.argv.slice(2);
const chosen = only.length ? MUTANTS.filter((m) => only.some((o) => m.name.includes(o))) : MUTANTS;
const originals = new Map();
const restore = () => {
  for (const [file, text] of originals) writeFileSync(file, text);
  originals.clear();
};
process.on('SIGINT', () => {
  restore();
  process.exit(130);
});
const build = () => execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });

let survivors = 0;
try {
  for (const m of chosen) {
    const text = readFileSync(m.file, 'utf8');
    if (!text.includes(m.from))
      throw new Error(`${m.name}: "${m.from}" is not in ${m.file} (the code moved: update this list)`);
    originals.set(m.file, text);
    writeFileSync(m.file, text.replace(m.from, m.to));
    if (m.build) build();
    const caughtBy = [];
    for (const entry of m.tests) {
      // A file, or [file, test name filter] for one test of a slow file of real processes.
      const [t, filter] = Array.isArray(entry) ? entry : [entry];
      const args = ['vitest', 'run', t, '--reporter=json', ...(filter ? ['-t', filter] : [])];
      const r = spawnSync('npx', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
      const report = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
      for (const file of report.testResults)
        for (const a of file.assertionResults) if (a.status === 'failed') caughtBy.push(`${t}: ${a.fullName}`);
    }
    restore();
    if (m.build) build();
    if (caughtBy.length === 0) survivors++;
    console.log(JSON.stringify({ mutant: m.name, file: m.file, caught: caughtBy.length > 0, caughtBy }));
  }
} finally {
  restore();
}
process.exit(survivors ? 1 : 0);
