// Prometheus endpoints of a live coordinator and worker (real processes), checked by the real
// `promtool check metrics` (Debian package prometheus; .ci/run installs it).
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { Fleet, listeningAddress, TINY, type FleetProcess } from './fleet-harness.js';

const fleet = new Fleet();
afterEach(() => fleet.cleanup());

async function metricsPort(p: FleetProcess): Promise<number> {
  return (await p.waitFor((l) => typeof l.metricsPort === 'number', 60_000, 'the metrics line')).metricsPort as number;
}

function promtool(text: string): { code: number | null; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (r.error) throw new Error(`promtool is needed for this test (Debian package prometheus): ${r.error.message}`);
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

/** The value of a series by name and (some of) its labels. */
const value = (text: string, name: string, labels: Record<string, string> = {}) => {
  const lines = text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  const hit = lines.find((l) => Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  return Number(hit?.split(' ').at(-1));
};

describe('metrics endpoints', () => {
  it('serve metrics that promtool accepts, on the coordinator and on a worker', async () => {
    expect(execFileSync('promtool', ['--version'], { encoding: 'utf8' })).toMatch(/promtool/);
    const coord = fleet.coordinator([...TINY, '--steps', '100000', '--metrics-port', '0']);
    const address = await listeningAddress(coord);
    const worker = fleet.worker(address, 'metered', ['--metrics-port', '0']);
    const [cPort, wPort] = [await metricsPort(coord), await metricsPort(worker)];
    await coord.waitFor((l) => /^step 3 loss/.test(l.msg), 60_000, 'step 3');
    const c = await (await fetch(`http://127.0.0.1:${cPort}/metrics`)).text();
    const w = await (await fetch(`http://127.0.0.1:${wPort}/metrics`)).text();
    for (const [text, label] of [
      [c, 'coordinator'],
      [w, 'worker'],
    ]) {
      const check = promtool(text);
      expect(check.out, label).toBe('');
      expect(check.code, label).toBe(0);
      // Every series, Node's process metrics too, carries the run (the dashboard's `run` variable).
      expect(text).toMatch(/^process_cpu_seconds_total\{run="[^"]+"\} /m);
      for (const line of text.split('\n').filter((l) => l && !l.startsWith('#')))
        expect(line, label).toMatch(/[{,]run="[^"]+"/);
    }
    expect(value(c, 'tricaps_steps_total')).toBeGreaterThanOrEqual(3);
    expect(value(c, 'tricaps_world_size')).toBe(1);
    expect(value(c, 'tricaps_worker_joins_total')).toBe(1);
    expect(value(c, 'tricaps_loss')).toBeGreaterThan(0);
    expect(value(c, 'tricaps_step_phase_seconds_count', { phase: 'exchange' })).toBeGreaterThanOrEqual(3);
    expect(value(c, 'tricaps_triplet_distance_mean', { pair: 'negative' })).toBeGreaterThan(0);
    // Counters by known labels exist at 0 before their first event (increase() sees the first one):
    // losses by reason from the start, refused updates by reason for each worker that joined.
    for (const reason of ['heartbeat', 'stalled', 'left', 'unusable'])
      expect(value(c, 'tricaps_worker_losses_total', { reason }), reason).toBe(0);
    const joined = /^tricaps_rejected_updates_total\{[^}]*worker="(w1-[0-9a-f]+)"/m.exec(c)?.[1];
    for (const reason of ['non-finite', 'norm', 'malformed'])
      expect(value(c, 'tricaps_rejected_updates_total', { reason, worker: joined! }), reason).toBe(0);
    expect(value(c, 'tricaps_paused')).toBe(0);
    expect(c).toMatch(/^tricaps_info\{role="coordinator",run="[^"]+",engine="wasm"/m);
    expect(value(w, 'tricaps_worker_steps_total')).toBeGreaterThanOrEqual(3);
    expect(w).toMatch(/^tricaps_info\{role="worker",run="[^"]+",engine="wasm"/m);
    expect((await fetch(`http://127.0.0.1:${cPort}/other`)).status).toBe(404);
    // The container health check / Kubernetes readiness probe.
    const probe = spawnSync(process.execPath, ['dist/cli.js', 'health-check', '--address', address], {
      encoding: 'utf8',
    });
    expect(probe.stdout).toBe(`${address}: SERVING\n`);
    expect(probe.status).toBe(0);
    const down = spawnSync(
      process.execPath,
      ['dist/cli.js', 'health-check', '--address', '127.0.0.1:1', '--timeout', '500'],
      { encoding: 'utf8' },
    );
    expect(down.status).toBe(1);
    expect(down.stdout).toMatch(/127.0.0.1:1: unreachable/);
  });

  it('/healthz fails while workers are present but no step is applied for --stall-seconds', async () => {
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--metrics-port',
      '0',
      '--stall-seconds',
      '3',
      '--heartbeat-timeout',
      '60000',
      '--step-timeout',
      '60000',
    ]);
    const worker = fleet.worker(await listeningAddress(coord), 'sleepy');
    const port = await metricsPort(coord);
    // Polled, not sampled once: on a loaded machine a single step may itself take longer than 3 s.
    const healthz = async (status: number): Promise<Response> => {
      const until = Date.now() + 30_000;
      for (;;) {
        const res = await fetch(`http://127.0.0.1:${port}/healthz`);
        if (res.status === status || Date.now() > until) return res;
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await coord.waitFor((l) => /^step 2 loss/.test(l.msg), 60_000, 'step 2');
    expect((await healthz(200)).status).toBe(200);
    worker.child.kill('SIGSTOP'); // the worker hangs: still a member, no steps
    try {
      const stalled = await healthz(503);
      expect(stalled.status).toBe(503);
      expect(await stalled.text()).toMatch(/no step applied for \d+ s with 1 workers present \(--stall-seconds 3\)/);
    } finally {
      worker.child.kill('SIGCONT');
    }
    const before = coord.steps().length;
    await coord.waitFor(() => coord.steps().length > before, 30_000, 'steps again');
    expect((await healthz(200)).status).toBe(200);
  });

  it('says so when the metrics port is taken', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '0.0.0.0', () => resolve()));
    try {
      const port = (taken.address() as { port: number }).port;
      const coord = fleet.coordinator([...TINY, '--steps', '1', '--metrics-port', String(port)]);
      expect((await coord.exited).code).toBe(2);
      expect(coord.raw.join('\n')).toMatch(new RegExp(`--metrics-port ${port}: cannot listen \\(listen EADDRINUSE`));
    } finally {
      taken.close();
    }
  });
});
