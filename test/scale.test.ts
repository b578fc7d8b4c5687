// `tricaps bench scale` on a real emulated cluster: namespaces, veth pairs, a bridge and tbf-shaped
// links, a real coordinator and workers inside them. Small sizes (it is a benchmark; the numbers go
// in notes); what is asserted is that it runs, reports what it measured, and leaves nothing behind.
import { execFile, execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { lastJsonLine, tricaps } from './cli-runner.js';

const root = process.getuid?.() === 0;
const namespaces = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });

describe('bench scale', () => {
  it.skipIf(!root)(
    `runs a coordinator and workers in shaped network namespaces and removes them${root ? '' : ' (skipped: needs root)'}`,
    async () => {
      const r = await tricaps(
        'bench',
        'scale',
        '--workers',
        '1,2,3',
        '--steps',
        '2',
        '--warmup',
        '1',
        '--link',
        '1gbit',
        '--simulate-compute-ms',
        '100',
        '--triplets-per-worker',
        '4',
      );
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      const report = lastJsonLine(r.stdout);
      expect(report.link.used_bits).toBeLessThanOrEqual(1e9);
      type Row = Record<string, number> & { exchange: string };
      const rows = report.rows as Row[];
      expect(rows.map((x) => `${x.exchange} ${x.workers}`)).toEqual([
        'central 1',
        'ring 1',
        'central 2',
        'ring 2',
        'central 3',
        'ring 3',
      ]);
      const row = (exchange: string, workers: number) =>
        rows.find((x) => x.exchange === exchange && x.workers === workers)!;
      expect(row('central', 1).scaling_efficiency).toBe(1);
      const model = 2_425_536 * 4;
      for (const x of rows) {
        expect(x.images_per_s).toBeGreaterThan(0);
        expect(x.coordinator_cpu_s_per_step).toBeGreaterThan(0);
        expect(x.worker_cpu_s_per_step).toBeGreaterThan(0);
      }
      // Central: a worker moves one float32 gradient up and one weights version down per step.
      expect(row('central', 2).worker_bytes_per_step).toBe(2 * model);
      // The coordinator's bytes grow with the fleet under central; under the ring they stay one
      // gradient up (in slices, plus six scalars) and one model down (a slice to each member, which
      // they all-gather), whatever the fleet size: what one worker costs it centrally.
      for (const n of [2, 3]) {
        expect(row('central', n).coordinator_bytes_per_step / row('central', 1).coordinator_bytes_per_step).toBeCloseTo(
          n,
          1,
        );
        const ring = row('ring', n).coordinator_bytes_per_step;
        expect(ring, `ring ${n}`).toBeGreaterThanOrEqual(2 * model + 6 * 4);
        expect(ring, `ring ${n}`).toBeLessThan(2 * model * 1.01);
      }
      expect(namespaces()).not.toMatch(/^tcs\d+-/m);
    },
  );

  it('without root it says so and exits 2', async () => {
    // As root, drop to nobody for this one command.
    const command = [process.execPath, 'dist/cli.js', 'bench', 'scale'];
    const [program, ...args] = root
      ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...command]
      : command;
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) =>
      execFile(program, args, (err, _out, stderr) => resolve({ code: err ? (err.code as number) : 0, stderr })),
    );
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(
      'tricaps: error: bench scale: network namespaces need root (CI runs as root); run it as root or with sudo',
    );
  });
});
