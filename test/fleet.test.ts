// The fleet as users run it: a real coordinator process and real worker processes talking gRPC on
// loopback ports chosen at run time. Every test kills what it started, also when it fails.
import { afterEach, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Fleet, FleetProcess, listeningAddress, TempDirs, TINY } from './fleet-harness.js';

const fleet = new Fleet();
const temp = new TempDirs('tricaps-fleet-');
afterEach(async () => {
  await fleet.cleanup();
  temp.cleanup();
});
const tempDir = () => temp.make();

function floats(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

async function runFleet(
  workers: number,
  steps: number,
  extra: string[] = [],
  augment = false,
): Promise<{ coord: FleetProcess; checkpoint: string }> {
  const dir = tempDir();
  const coord = fleet.coordinator([
    ...(augment ? TINY.filter((a) => a !== '--no-augment') : TINY),
    '--steps',
    String(steps),
    '--shards',
    '2',
    '--min-workers',
    String(workers),
    '--checkpoint-dir',
    dir,
    '--seed',
    '5',
    ...extra,
  ]);
  const address = await listeningAddress(coord);
  for (let i = 0; i < workers; i++) fleet.worker(address, `eq-${i}`);
  const { code } = await coord.exited;
  expect(code, coord.raw.slice(-10).join('\n')).toBe(0);
  return { coord, checkpoint: join(dir, `step-${String(steps).padStart(8, '0')}`, 'weights.bin') };
}

describe('fleet over gRPC (real processes)', () => {
  it('1 worker computing both shards and 2 workers computing one each give the same gradients and weights, with random augmentation', async () => {
    // One step: Adam's first update is g / (|g| + eps) per weight, so weights whose gradient is at
    // float32 rounding level may differ by more than the gradients do; after one step they agree
    // to 1e-5 (1% of the learning rate), and later steps drift apart at that rate. Augmentation is
    // on: each image's transform follows from (seed, step, image), whichever worker loads it.
    const one = await runFleet(1, 1, [], true);
    const two = await runFleet(2, 1, [], true);
    const plain = await runFleet(1, 1);
    // The augmentation did change what was computed.
    expect(Math.abs((plain.coord.steps()[0].loss as number) - (one.coord.steps()[0].loss as number))).toBeGreaterThan(
      1e-4,
    );
    const s1 = one.coord.steps();
    const s2 = two.coord.steps();
    expect(s1.map((l) => l.workers)).toEqual([1]);
    expect(s2.map((l) => l.workers)).toEqual([2]);
    for (let i = 0; i < 1; i++) {
      // Same triplets, same loss, same averaged gradient (norm) up to float32 summation order.
      expect(s2[i].triplets).toBe(s1[i].triplets);
      expect(Math.abs((s2[i].loss as number) - (s1[i].loss as number))).toBeLessThan(1e-5);
      expect(Math.abs((s2[i].grad_norm as number) / (s1[i].grad_norm as number) - 1)).toBeLessThan(1e-5);
    }
    const w1 = floats(one.checkpoint);
    const w2 = floats(two.checkpoint);
    expect(w2.length).toBe(w1.length);
    let maxDiff = 0;
    for (let i = 0; i < w1.length; i++) maxDiff = Math.max(maxDiff, Math.abs(w1[i] - w2[i]));
    expect(maxDiff).toBeLessThan(1e-5);
  });

  it('train --workers 2 runs a local fleet whose loss falls', async () => {
    const p = new FleetProcess(
      [
        'train',
        '--workers',
        '2',
        ...TINY,
        '--items',
        '96',
        '--steps',
        '40',
        '--margin-loss-weight',
        '0.5',
        '--lr',
        '0.003',
        '--eval-mask',
        'oracle',
        '--json',
      ],
      { TRICAPS_LOG_LEVEL: 'warn' },
    );
    fleet.track(p);
    const { code } = await p.exited;
    expect(code, p.raw.slice(-10).join('\n')).toBe(0);
    const out = JSON.parse(p.stdout.join('').trim().split('\n').pop()!);
    expect(out.workers).toBe(2);
    expect(out.steps).toBe(40);
    expect(out.lost).toEqual([]);
    expect(out.loss_last10).toBeLessThan(out.loss_first10 - 0.1);
  });
});

describe('fleet options (real processes)', () => {
  it('--hard-negative-every embeds the train items over the fleet and reports the cost; --wire float16 trains', async () => {
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '6',
      '--min-workers',
      '2',
      '--hard-negative-every',
      '3',
      '--wire',
      'float16',
    ]);
    const address = await listeningAddress(coord);
    const h1 = fleet.worker(address, 'h1');
    const h2 = fleet.worker(address, 'h2');
    expect((await coord.exited).code).toBe(0);
    const refreshes = coord.lines.filter((l) => l.msg.startsWith('hard-negative plan refreshed'));
    expect(refreshes.map((l) => l.step)).toEqual([0, 3]);
    for (const r of refreshes) {
      expect(r.items).toBe(32); // every train item of the 64-item catalogue
      expect(r.seconds).toBeGreaterThan(0);
    }
    expect(coord.lines.find((l) => l.msg.includes('listening on'))?.wire).toBe('float16');
    expect(coord.steps().map((l) => l.step)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(coord.steps().every((l) => Number.isFinite(l.loss as number))).toBe(true);
    // float16 really went over the wire: each result is 2 bytes per gradient and BatchNorm value
    // (the parameters and buffers of this model), and the weights came down as float32.
    const summary = JSON.parse(
      execFileSync(
        process.execPath,
        // The TINY model's flags: variant, image size, width and categories.
        ['dist/cli.js', 'model', 'summary', ...TINY.slice(0, 6), ...TINY.slice(10, 12), '--json'],
        { encoding: 'utf8' },
      ),
    );
    const values = summary.params.total as number;
    for (const l of coord.steps()) {
      expect(l.bytes_received, `step ${l.step}`).toBe((l.workers as number) * values * 2);
    }
    // The weights came down as float32: one fetch per weights version a worker computed with.
    for (const w of [h1, h2]) {
      const over = await w.waitFor((l) => /is over after/.test(l.msg), 10_000, 'the end of the run');
      const fetches = (over.bytes_received as number) / (values * 4);
      expect(Number.isInteger(fetches), `${over.bytes_received} bytes`).toBe(true);
      expect(fetches).toBeGreaterThanOrEqual(over.steps as number);
    }
  });
});

describe('fleet failures (real processes)', () => {
  it('kill -9 of one worker of three: named within the deadline, the run goes on with two, a restarted worker rejoins', async () => {
    const heartbeatInterval = 200;
    const heartbeatTimeout = 3000;
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--shards',
      '3',
      '--min-workers',
      '2',
      '--heartbeat-interval',
      String(heartbeatInterval),
      '--heartbeat-timeout',
      String(heartbeatTimeout),
    ]);
    const address = await listeningAddress(coord);
    const [a, b, c] = ['a', 'b', 'c'].map((n) => fleet.worker(address, n));
    const isStep = (l: { msg: string }) => /^step \d+ loss/.test(l.msg);
    await coord.waitFor((l) => isStep(l) && l.workers === 3, 60_000, 'a step computed by 3 workers');
    const killedAt = Date.now();
    b.kill('SIGKILL');
    const lost = await coord.waitFor(
      (l) => l.msg.startsWith('lost worker') && l.name === 'b',
      15_000,
      'the loss of worker b',
    );
    // Bounds from the configuration: the sweep acts once the silence passes the timeout, and lets it
    // run at most timeout/2 further (beyond that it counts itself stalled) plus one beat interval.
    expect(lost.msg).toMatch(/^lost worker w\d-[0-9a-f]{4} \(b\): no heartbeat for \d+\.\d s \(limit 3\.0 s\)/);
    const silence = Number(/no heartbeat for (\d+\.\d) s/.exec(lost.msg)![1]) * 1000;
    const longest = heartbeatTimeout * 1.5 + heartbeatInterval;
    expect(silence).toBeGreaterThanOrEqual(heartbeatTimeout);
    expect(silence).toBeLessThanOrEqual(longest + 50); // the log rounds to 0.1 s
    // Measured on the coordinator's own clock (its log time), not when this process read the line;
    // a beat sent before the kill but read after it may start the silence late by its delivery time.
    expect(Date.parse(lost.time as string) - killedAt).toBeLessThan(longest + 1000);
    const after = (line: object) => (l: object) => coord.lines.indexOf(l as never) > coord.lines.indexOf(line as never);
    await coord.waitFor((l) => after(lost)(l) && isStep(l) && l.workers === 2, 30_000, 'a step with the 2 survivors');
    fleet.worker(address, 'b-restarted');
    const joined = await coord.waitFor(
      (l) => l.msg.includes('joined') && l.name === 'b-restarted',
      30_000,
      'the restarted worker joining',
    );
    await coord.waitFor(
      (l) => after(joined)(l) && isStep(l) && l.workers === 3,
      30_000,
      'a step with the restarted worker',
    );
    // SIGTERM: the worker finishes its step, says it leaves, exits 0; the coordinator goes on.
    a.kill('SIGTERM');
    expect((await a.exited).code).toBe(0);
    const left = await coord.waitFor(
      (l) => l.msg.startsWith('lost worker') && l.name === 'a' && String(l.reason).startsWith('left'),
      10_000,
      'worker a leaving',
    );
    expect(left.reason).toMatch(/^left: SIGTERM/);
    await coord.waitFor((l) => after(left)(l) && isStep(l), 30_000, 'a step after worker a left');
    coord.kill('SIGTERM');
    expect((await coord.exited).code).toBe(0);
    // No step applied twice, none skipped, none with a partial gradient.
    const steps = coord.steps();
    expect(steps.map((l) => l.step)).toEqual(steps.map((_, i) => i));
    for (const l of steps) {
      expect(l.shards_computed).toBe(3);
      expect(l.triplets).toBe(24); // random mining: one triplet per anchor, 24 images per step
    }
    expect(c.child.exitCode).toBeNull(); // the survivor kept going throughout
  });

  it('train --workers 2 fails with a clear error when a local worker dies (instead of waiting forever)', async () => {
    const p = fleet.track(
      new FleetProcess(
        ['train', '--workers', '2', ...TINY, '--steps', '100000', '--log-every', '1', '--eval-mask', 'oracle'],
        { TRICAPS_LOG_LEVEL: 'info' },
      ),
    );
    await p.waitFor((l) => /^step 1 loss/.test(l.msg), 90_000, 'step 1');
    const children = execFileSync('pgrep', ['-P', String(p.child.pid)], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map(Number);
    expect(children).toHaveLength(2);
    process.kill(children[0], 'SIGKILL');
    const { code } = await p.exited;
    expect(code).toBe(1);
    expect(p.raw.join('\n')).toMatch(
      /1 of 2 local workers left, fewer than --min-workers 2 \(local worker \d \(pid \d+\) exited with SIGKILL\)/,
    );
    // The surviving child was stopped too (it may take a moment to go after its parent).
    const gone = (pid: number) => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    };
    const deadline = Date.now() + 10_000;
    while (!gone(children[1]) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(gone(children[1]), `local worker pid ${children[1]} still running 10 s after train exited`).toBe(true);
  });

  it('pauses (and says so) while fewer than --min-workers are present, then completes', async () => {
    const coord = fleet.coordinator([...TINY, '--steps', '3', '--min-workers', '2']);
    const address = await listeningAddress(coord);
    fleet.worker(address, 'first');
    // With one worker present (not the '0 of 2' logged before anyone joined), nothing is applied.
    const paused = await coord.waitFor(
      (l) => /^paused at step 0: 1 of --min-workers 2 workers present/.test(l.msg),
      60_000,
      'the pause line with one worker present',
    );
    expect(coord.steps()).toEqual([]);
    fleet.worker(address, 'second');
    expect((await coord.exited).code).toBe(0);
    const steps = coord.steps();
    expect(steps.map((l) => l.step)).toEqual([0, 1, 2]);
    // Every step was computed by both: the pause held until the second joined.
    expect(steps.map((l) => l.workers)).toEqual([2, 2, 2]);
    expect(coord.lines.indexOf(paused)).toBeLessThan(coord.lines.indexOf(steps[0]));
  });
});
