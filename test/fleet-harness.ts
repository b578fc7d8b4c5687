// Real fleet processes for tests: `tricaps coordinator` and `tricaps worker` children of dist/cli.js
// on loopback ports chosen at run time, their JSON log lines collected, waited on with deadlines,
// and killed when a test ends (passing or failing).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export class FleetProcess {
  readonly lines: LogLine[] = [];
  readonly stdout: string[] = [];
  readonly raw: string[] = [];
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: (() => void)[] = [];
  /** Exited and its pipes read to the end (or given up on): no more lines will come. */
  private ended = false;

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, ['dist/cli.js', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TRICAPS_LOG_LEVEL: 'info', ...env },
    });
    let buf = '';
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        this.raw.push(line);
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          // not a log line (progress bar, error text): kept in raw
        }
        this.wake();
      }
    });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => this.stdout.push(d));
    // 'exit' can come before the last lines are read from the pipes; wait for them ('close'), but not
    // for ever: a grandchild that inherited the pipes may hold them open after the child is gone.
    this.exited = new Promise((resolve) =>
      this.child.on('exit', (code, signal) => {
        const done = (): void => {
          clearTimeout(timer);
          this.ended = true;
          this.wake();
          resolve({ code, signal });
        };
        const timer = setTimeout(done, 2000);
        this.child.once('close', done);
      }),
    );
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  /** Resolves with the first log line matching, failing after timeoutMs (or if the process exits). */
  async waitFor(pred: (l: LogLine) => boolean, timeoutMs: number, what = 'log line'): Promise<LogLine> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find(pred);
      if (hit) return hit;
      if (this.ended) throw new Error(`process exited before ${what}; last lines:\n${this.raw.slice(-15).join('\n')}`);
      const left = until - Date.now();
      if (left <= 0)
        throw new Error(`no ${what} within ${timeoutMs} ms; last lines:\n${this.raw.slice(-15).join('\n')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 250));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  steps(): LogLine[] {
    return this.lines.filter((l) => typeof l.msg === 'string' && /^step \d+ loss/.test(l.msg));
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

/** Tracks processes of one test and kills whatever is left at the end. */
export class Fleet {
  private readonly procs: FleetProcess[] = [];

  coordinator(args: string[], env: Record<string, string> = {}): FleetProcess {
    return this.track(new FleetProcess(['coordinator', '--listen', '127.0.0.1:0', ...args], env));
  }

  worker(address: string, name: string, extra: string[] = [], env: Record<string, string> = {}): FleetProcess {
    return this.track(
      new FleetProcess(['worker', '--coordinator', address, '--engine', 'wasm', '--name', name, ...extra], env),
    );
  }

  track(p: FleetProcess): FleetProcess {
    this.procs.push(p);
    return p;
  }

  async cleanup(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    await Promise.all(this.procs.map((p) => p.exited));
    this.procs.length = 0;
  }
}

/** The address a coordinator logged it listens on. */
export async function listeningAddress(c: FleetProcess): Promise<string> {
  const l = await c.waitFor(
    (x) => typeof x.address === 'string' && x.msg.includes('listening on'),
    60_000,
    'listening line',
  );
  return l.address as string;
}

/** Tiny model and data: steps of a fraction of a second on wasm. */
export const TINY = [
  '--variant',
  'sc',
  '--image-size',
  '32',
  '--width',
  '0.25',
  '--batch-triplets',
  '8',
  '--items',
  '64',
  '--categories',
  '4',
  '--engine',
  'wasm',
  '--no-augment',
  '--routing-pool',
  'mean',
  '--bn-momentum',
  '0.9',
];

/** Temporary directories of one test file, removed by cleanup() (call it in afterEach). */
export class TempDirs {
  private readonly dirs: string[] = [];

  constructor(private readonly prefix: string) {}

  make(): string {
    const d = mkdtempSync(join(tmpdir(), this.prefix));
    this.dirs.push(d);
    return d;
  }

  cleanup(): void {
    for (const d of this.dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  }
}
