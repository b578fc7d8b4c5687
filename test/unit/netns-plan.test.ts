// The emulated cluster's plan (namespaces, veth pairs, bridge, tbf shaping) and the link scaling
// rule of `bench scale`, checked without root.
import { describe, expect, it } from 'vitest';
import { planCluster, setupCommands, shapeCommands, tbfArgs, teardownCommands } from '../../src/bench/netns.js';
import { parseRate, scaleLink } from '../../src/bench/scale.js';
import { UsageError } from '../../src/shared/errors.js';

describe('emulated cluster plan', () => {
  it('one namespace per node on a bridge in a hub namespace, addresses unique, interface names short', () => {
    const plan = planCluster('tcs42', ['c', 'w1', 'w2']);
    expect(plan.nodes.map((n) => [n.ns, n.ip, n.hubLink])).toEqual([
      ['tcs42-c', '10.231.0.1', 'veth1'],
      ['tcs42-w1', '10.231.0.2', 'veth2'],
      ['tcs42-w2', '10.231.0.3', 'veth3'],
    ]);
    const cmds = setupCommands(plan).map((c) => c.join(' '));
    expect(cmds[0]).toBe('ip netns add tcs42-hub');
    expect(cmds).toContain('ip -n tcs42-hub link add veth2 type veth peer name eth0 netns tcs42-w1');
    expect(cmds).toContain('ip -n tcs42-hub link set veth2 master br0');
    expect(cmds).toContain('ip -n tcs42-w1 addr add 10.231.0.2/16 dev eth0');
    // Nothing is created outside the namespaces this plan names.
    for (const c of setupCommands(plan)) expect(c.slice(0, 4).join(' ')).toMatch(/^ip (netns add tcs42-|-n tcs42-)/);
    expect(teardownCommands(plan).map((c) => c.join(' '))).toEqual([
      'ip netns del tcs42-c',
      'ip netns del tcs42-w1',
      'ip netns del tcs42-w2',
      'ip netns del tcs42-hub',
    ]);
    for (const n of plan.nodes) expect(n.hubLink.length).toBeLessThanOrEqual(15);
    expect(() =>
      planCluster(
        'x',
        Array.from({ length: 251 }, (_, i) => `n${i}`),
      ),
    ).toThrow(/at most 250/);
  });

  it('shapes both directions of every link with a token bucket of at least 4 ms of burst', () => {
    const plan = planCluster('tcs1', ['c', 'w1']);
    const cmds = shapeCommands(plan, 10e9).map((c) => c.join(' '));
    expect(cmds).toEqual([
      'ip netns exec tcs1-c tc qdisc replace dev eth0 root tbf rate 10000000000bit burst 5000000 latency 20ms',
      'ip netns exec tcs1-hub tc qdisc replace dev veth1 root tbf rate 10000000000bit burst 5000000 latency 20ms',
      'ip netns exec tcs1-w1 tc qdisc replace dev eth0 root tbf rate 10000000000bit burst 5000000 latency 20ms',
      'ip netns exec tcs1-hub tc qdisc replace dev veth2 root tbf rate 10000000000bit burst 5000000 latency 20ms',
    ]);
    expect(tbfArgs('eth0', 1e6)).toContain(String(64 * 1024)); // small rates still get a usable burst
  });

  it('parses link rates and names a bad one', () => {
    expect(parseRate('10gbit')).toBe(10e9);
    expect(parseRate('2.5Gbit')).toBe(2.5e9);
    expect(parseRate('800mbit')).toBe(800e6);
    expect(() => parseRate('10 gigs')).toThrow(UsageError);
    expect(() => parseRate('fast')).toThrow(/--link fast: expected a rate like 10gbit/);
  });

  it('a link the veth pairs cannot carry is scaled down with the compute stretched by the same factor', () => {
    expect(scaleLink(undefined, 5e9, 290)).toEqual({ usedBits: undefined, computeMs: 290, factor: 1 });
    expect(scaleLink(1e9, 5e9, 290)).toEqual({ usedBits: 1e9, computeMs: 290, factor: 1 });
    const s = scaleLink(10e9, 5e9, 290);
    expect(s.usedBits).toBe(4e9);
    expect(s.factor).toBeCloseTo(0.4, 12);
    expect(s.computeMs).toBe(725);
    // The ratio of exchange time to compute time is what efficiency measures: it is kept.
    const bytes = 20e6;
    expect((bytes * 8) / 10e9 / 290).toBeCloseTo((bytes * 8) / s.usedBits! / s.computeMs, 6);
  });
});
