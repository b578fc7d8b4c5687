// The loopback ceilings (plain TCP, Node's HTTP/2) printed beside `bench exchange`.
import { describe, expect, it } from 'vitest';
import { listenForRounds, loopbackBaseline, sendRounds } from '../../src/bench/loopback-baseline.js';

describe('loopback baseline', () => {
  for (const protocol of ['tcp', 'http2'] as const) {
    it(`${protocol}: times every round trip after the warm-up and reports bytes per second from the median`, async () => {
      const b = await loopbackBaseline(1_000_000, 5, protocol);
      expect(b).toMatchObject({ bytes_per_round: 1_000_000, rounds: 5 });
      expect(b.ms_per_round_median).toBeGreaterThan(0);
      expect(b.gb_per_s).toBeCloseTo(1_000_000 / (b.ms_per_round_median / 1000) / 1e9, 12);
    });
  }

  it('http2: a round in which the receiver got another number of bytes than it expected fails', async () => {
    const receiver = await listenForRounds('http2', 2000);
    try {
      await expect(sendRounds(receiver.port, 1000, 1, 'http2')).rejects.toThrow(
        /loopback baseline \(http2\): cannot send to 127\.0\.0\.1:\d+: the receiver got a different number of bytes/,
      );
    } finally {
      await receiver.close();
    }
  });

  it('says where it could not send, over either protocol', async () => {
    await expect(sendRounds(1, 1000, 1)).rejects.toThrow(
      /loopback baseline \(tcp\): cannot send to 127\.0\.0\.1:1: connect ECONNREFUSED/,
    );
    await expect(sendRounds(1, 1000, 1, 'http2')).rejects.toThrow(
      /loopback baseline \(http2\): cannot send to 127\.0\.0\.1:1: connect ECONNREFUSED/,
    );
  });
});
