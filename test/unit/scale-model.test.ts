// The step-time model behind `bench project`: phases bound by the slower of wire and CPU, central
// growing with N at the coordinator, ring bounded by 2(N-1)/N of the model per worker plus latency.
import { describe, expect, it } from 'vitest';
import { calibrate, projectStep, type StepCosts } from '../../src/bench/scale-model.js';

const MB = 1e6;
const base: StepCosts = {
  gradientBytes: 10 * MB,
  weightsBytes: 10 * MB,
  linkBits: 10e9,
  computeMs: 290,
  fixedMs: 5,
  coordinatorSecondsPerByte: 0,
  workerSecondsPerByte: 0,
  messageMs: 0,
};

describe('step-time model', () => {
  it('central: the coordinator link carries N gradients and N weight copies', () => {
    // 10 MB over 10 Gbit/s = 8 ms each way.
    expect(projectStep(base, 1, 'central').exchange_ms).toBeCloseTo(8 + 5 + 8, 9);
    expect(projectStep(base, 8, 'central').exchange_ms).toBeCloseTo(64 + 5 + 64, 9);
    const p = projectStep(base, 8, 'central');
    expect(p.efficiency).toBeCloseTo(290 / (290 + 133), 9);
  });

  it('ring: per-worker bytes bounded by the model whatever N; latency grows with the hops', () => {
    const at = (n: number, c = base) => projectStep(c, n, 'ring').exchange_ms;
    // (N-1)/N of the gradient and of the weights per worker, plus one of each at the coordinator.
    expect(at(2)).toBeCloseTo(4 + 8 + 5 + 8 + 4, 9);
    expect(at(512)).toBeLessThan(8 + 8 + 5 + 8 + 8 + 1e-9);
    expect(at(512) - at(64)).toBeLessThan(0.5); // flat in N without latency
    const withLatency = { ...base, messageMs: 0.1 };
    expect(at(512, withLatency) - at(512)).toBeCloseTo(0.1 * (2 * 511 + 2), 6);
  });

  it('a phase takes as long as the slower of the wire and the CPU', () => {
    const cpuBound = { ...base, coordinatorSecondsPerByte: 2e-9 }; // 20 ms per 10 MB > 8 ms on the wire
    expect(projectStep(cpuBound, 1, 'central').exchange_ms).toBeCloseTo(20 + 5 + 20, 9);
    expect(projectStep({ ...cpuBound, linkBits: 100e9 }, 1, 'central').exchange_ms).toBeCloseTo(45, 9);
  });

  it("ring: a worker's CPU pays for the bytes it sends and those it receives", () => {
    const workerBound = { ...base, linkBits: 1e15, workerSecondsPerByte: 1e-9 }; // 10 ms per 10 MB
    // Slice from the coordinator (5 MB), all-gather and reduce-scatter (5 MB out and 5 in, each),
    // slice to the coordinator (5 MB), fixed 5.
    expect(projectStep(workerBound, 2, 'ring').exchange_ms).toBeCloseTo(5 + 10 + 10 + 5 + 5, 6);
    expect(projectStep(workerBound, 2, 'ring').worker_cpu_ms).toBeCloseTo(5 + 10 + 10 + 5, 6);
  });

  it("on shared cores the exchange cannot be shorter than every process's CPU spread over them", () => {
    const c = { ...base, linkBits: 1e15, coordinatorSecondsPerByte: 1e-9, workerSecondsPerByte: 1e-9 };
    const own = projectStep(c, 8, 'ring');
    const shared = projectStep(c, 8, 'ring', { cores: 2 });
    const cpu = own.coordinator_cpu_ms + 8 * own.worker_cpu_ms;
    expect(cpu / 2).toBeGreaterThan(own.exchange_ms);
    expect(shared.exchange_ms).toBeCloseTo(cpu / 2, 6);
    expect(shared.efficiency).toBeLessThan(own.efficiency);
    // With CPU to spare the bound changes nothing.
    expect(projectStep(base, 8, 'ring', { cores: 2 }).exchange_ms).toBe(projectStep(base, 8, 'ring').exchange_ms);
  });

  it('calibration reproduces the one-worker step and takes CPU per byte from the measurements', () => {
    const rows = [
      {
        exchange: 'central',
        workers: 1,
        step_ms_median: 400,
        coordinator_bytes_per_step: 20 * MB,
        worker_bytes_per_step: 20 * MB,
        coordinator_cpu_s_per_step: 0.1,
        worker_cpu_s_per_step: 0.05,
      },
      {
        exchange: 'central',
        workers: 4,
        step_ms_median: 600,
        coordinator_bytes_per_step: 80 * MB,
        worker_bytes_per_step: 20 * MB,
        coordinator_cpu_s_per_step: 0.32,
        worker_cpu_s_per_step: 0.05,
      },
    ];
    const c = calibrate(rows, {
      computeMs: 290,
      linkBits: 10e9,
      gradientBytes: 10 * MB,
      weightsBytes: 10 * MB,
      messageMs: 0,
    });
    expect(c.coordinatorSecondsPerByte).toBeCloseTo(0.32 / (80 * MB), 15);
    expect(c.workerSecondsPerByte).toBeCloseTo(0.05 / (20 * MB), 15);
    expect(projectStep(c, 1, 'central').step_ms).toBeCloseTo(400, 6);
    expect(() => calibrate([], { computeMs: 1, linkBits: 1, gradientBytes: 1, weightsBytes: 1, messageMs: 0 })).toThrow(
      /no central rows/,
    );
  });
});
