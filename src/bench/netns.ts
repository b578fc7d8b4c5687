// A cluster on one machine: one Linux network namespace per process (coordinator, workers), each
// joined by a veth pair to a bridge in a hub namespace, every link shaped by tc's token bucket (tbf)
// in both directions. All traffic stays inside the namespaces made here; they are removed at the end,
// also when the run fails or is interrupted. Needs root. The plan and its commands are pure, so tests
// check them without root.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';

export interface ClusterNode {
  name: string;
  ns: string;
  ip: string;
  /** The veth end inside the node's namespace, and the one on the hub's bridge. */
  nodeLink: string;
  hubLink: string;
}

export interface ClusterPlan {
  hub: string;
  bridge: string;
  nodes: ClusterNode[];
}

const SUBNET = '10.231';

/** Namespaces and links for these node names; prefix keeps concurrent clusters apart. */
export function planCluster(prefix: string, names: string[]): ClusterPlan {
  if (names.length > 250) throw new Error(`planCluster: ${names.length} nodes; at most 250`);
  return {
    hub: `${prefix}-hub`,
    bridge: 'br0',
    nodes: names.map((name, i) => ({
      name,
      ns: `${prefix}-${name}`,
      ip: `${SUBNET}.0.${i + 1}`,
      // Interface names are at most 15 characters; the hub side is unique per node.
      nodeLink: 'eth0',
      hubLink: `veth${i + 1}`,
    })),
  };
}

/** tc arguments for a token bucket of this rate on dev: a burst of 4 ms of traffic (at least 64 KB). */
export function tbfArgs(dev: string, rateBits: number): string[] {
  const burst = Math.max(64 * 1024, Math.round((rateBits / 8) * 0.004));
  return [
    'qdisc',
    'replace',
    'dev',
    dev,
    'root',
    'tbf',
    'rate',
    `${rateBits}bit`,
    'burst',
    `${burst}`,
    'latency',
    '20ms',
  ];
}

/** The commands that build the cluster, in order ([program, ...args]). */
export function setupCommands(p: ClusterPlan): string[][] {
  const inHub = (...a: string[]) => ['ip', '-n', p.hub, ...a];
  const cmds: string[][] = [
    ['ip', 'netns', 'add', p.hub],
    inHub('link', 'set', 'lo', 'up'),
    inHub('link', 'add', p.bridge, 'type', 'bridge'),
    inHub('link', 'set', p.bridge, 'up'),
  ];
  for (const n of p.nodes) {
    const inNode = (...a: string[]) => ['ip', '-n', n.ns, ...a];
    cmds.push(
      ['ip', 'netns', 'add', n.ns],
      inNode('link', 'set', 'lo', 'up'),
      inHub('link', 'add', n.hubLink, 'type', 'veth', 'peer', 'name', n.nodeLink, 'netns', n.ns),
      inHub('link', 'set', n.hubLink, 'master', p.bridge),
      inHub('link', 'set', n.hubLink, 'up'),
      inNode('addr', 'add', `${n.ip}/16`, 'dev', n.nodeLink),
      inNode('link', 'set', n.nodeLink, 'up'),
    );
  }
  return cmds;
}

/** Shapes every link to rateBits each way: the egress of both ends (what a node sends, what it gets). */
export function shapeCommands(p: ClusterPlan, rateBits: number): string[][] {
  return p.nodes.flatMap((n) => [
    ['ip', 'netns', 'exec', n.ns, 'tc', ...tbfArgs(n.nodeLink, rateBits)],
    ['ip', 'netns', 'exec', p.hub, 'tc', ...tbfArgs(n.hubLink, rateBits)],
  ]);
}

/** Removing the namespaces removes their links and qdiscs with them. */
export function teardownCommands(p: ClusterPlan): string[][] {
  return [...p.nodes.map((n) => ['ip', 'netns', 'del', n.ns]), ['ip', 'netns', 'del', p.hub]];
}

/** Why this process cannot build a cluster, or undefined. */
export function clusterUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root (CI runs as root); run it as root or with sudo';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('tc', ['-V'], { stdio: 'ignore' });
  } catch {
    return "the 'ip' and 'tc' commands (Debian package iproute2) are not installed";
  }
  return undefined;
}

export class Cluster {
  private readonly children: ChildProcess[] = [];
  private removed = false;
  private readonly onExit = () => this.destroy();

  private constructor(readonly plan: ClusterPlan) {
    process.once('exit', this.onExit);
  }

  /** Builds the cluster; a failure part-way removes what was made and says which command failed. */
  static create(plan: ClusterPlan): Cluster {
    const c = new Cluster(plan);
    c.run(setupCommands(plan));
    return c;
  }

  /** Shapes every link (tbf) to this rate each way. */
  shape(rateBits: number): void {
    this.run(shapeCommands(this.plan, rateBits));
  }

  private run(cmds: string[][]): void {
    for (const cmd of cmds) {
      try {
        execFileSync(cmd[0], cmd.slice(1), { stdio: 'pipe' });
      } catch (e) {
        this.destroy();
        const why = String((e as { stderr?: Buffer }).stderr ?? e).trim();
        throw new Error(`cannot build the emulated cluster: \`${cmd.join(' ')}\` failed: ${why}`);
      }
    }
  }

  node(name: string): ClusterNode {
    const n = this.plan.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no node ${name} in the cluster`);
    return n;
  }

  /** Starts a program inside a node's namespace (ip netns exec execs it: the pid is the program's). */
  spawn(name: string, program: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.node(name).ns, program, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    this.children.push(child);
    return child;
  }

  /** Kills what it started and removes every namespace (idempotent; also runs at process exit). */
  destroy(): void {
    if (this.removed) return;
    this.removed = true;
    process.off('exit', this.onExit);
    for (const ch of this.children) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGKILL');
    for (const cmd of teardownCommands(this.plan)) {
      try {
        execFileSync(cmd[0], cmd.slice(1), { stdio: 'ignore' });
      } catch {
        // not made (a failure part-way) or already gone
      }
    }
  }
}

/** Namespaces left by clusters of processes that are gone (a kill -9 of a bench), by prefix. */
export function staleNamespaces(prefixStem: string, alive: (pid: number) => boolean): string[] {
  let list = '';
  try {
    list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  } catch {
    return [];
  }
  return list
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((ns) => {
      const m = new RegExp(`^${prefixStem}(\\d+)-`).exec(ns);
      return m !== null && !alive(Number(m[1]));
    });
}
