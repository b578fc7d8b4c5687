// Real fleet processes for tests: `tricaps coordinator` and `tricaps worker` children of dist/cli.js
// on loopback ports chosen at run time, their JSON log lines collected, waited on with deadlines,
// and killed when a test ends (passing or failing).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FleetProcess } from '../src/bench/processes.js';

export { FleetProcess, listeningAddress, TINY, type LogLine } from '../src/bench/processes.js';

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
