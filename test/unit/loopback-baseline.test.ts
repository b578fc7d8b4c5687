// The loopback TCP ceiling printed beside `bench exchange`.
import { describe, expect, it } from 'vitest';
import { loopbackBaseline, sendRounds } from '../../src/bench/loopback-baseline.js';

describe('loopback baseline', () => {
  it('times every round trip after the warm-up and reports bytes per second from the median', async () => {
    const b = await loopbackBaseline(1_000_000, 5);
    expect(b).toMatchObject({ bytes_per_round: 1_000_000, rounds: 5 });
    expect(b.ms_per_round_median).toBeGreaterThan(0);
    expect(b.gb_per_s).toBeCloseTo(1_000_000 / (b.ms_per_round_median / 1000) / 1e9, 12);
  });

  it('says where it could not send', async () => {
    await expect(sendRounds(1, 1000, 1)).rejects.toThrow(/loopback baseline: cannot send to 127\.0\.0\.1:1: connect ECONNREFUSED/);
  });
});
