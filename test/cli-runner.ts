// Runs the built `tricaps` (dist/cli.js) as a user would, in a child process.
import { execFile } from 'node:child_process';

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

// Asynchronous on purpose: a synchronous spawn blocks the test process's event loop for the whole
// command, long enough under load for vitest's own RPC to time out.
export function tricapsWithLogLevel(level: string, ...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['dist/cli.js', ...args],
      { encoding: 'utf8', timeout: 240_000, maxBuffer: 64 << 20, env: { ...process.env, TRICAPS_LOG_LEVEL: level } },
      (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }),
    );
  });
}

export const tricaps = (...args: string[]): Promise<CliResult> => tricapsWithLogLevel('warn', ...args);

/** The JSON a command printed last (its result line). */
export const lastJsonLine = (stdout: string) => JSON.parse(stdout.trim().split('\n').pop()!);
