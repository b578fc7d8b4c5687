// Real tricaps processes for tests and benchmarks: children of the CLI (`dist/cli.js`) whose JSON log
// lines are collected and waited on with deadlines, killed when the caller is done.
import { spawn, type ChildProcess } from 'node:child_process';

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

  /** @param cli the CLI script to run (default: dist/cli.js under the current directory) */
  constructor(args: string[], env: Record<string, string> = {}, cli = 'dist/cli.js') {
    this.child = spawn(process.execPath, [cli, ...args], {
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

  /**
   * Resolves with the first log line matching (from line index `from` on), failing after timeoutMs
   * or if the process exits first.
   */
  async waitFor(pred: (l: LogLine) => boolean, timeoutMs: number, what = 'log line', from = 0): Promise<LogLine> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.slice(from).find(pred);
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

/** The address a coordinator logged it listens on. */
export async function listeningAddress(c: FleetProcess): Promise<string> {
  const l = await c.waitFor(
    (x) => typeof x.address === 'string' && x.msg.includes('listening on'),
    60_000,
    'listening line',
  );
  return l.address as string;
}

/** A tiny model and synthetic catalogue: steps of a fraction of a second on wasm (tests, the soak). */
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
