// The embedded default fleet (`tricaps train --workers N`): this process is the coordinator on a
// loopback port chosen at start, and N `tricaps worker` child processes train with it. Children are
// stopped (SIGTERM, then SIGKILL) however the run ends; the run fails if every child has died.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { EngineChoice } from '../shared/engine/engine.js';
import type { Logger } from '../shared/log.js';
import type { TrainConfig } from '../shared/train-config.js';
import type { FleetConfig } from './fleet-config.js';
import { startCoordinator, type CoordinatorHooks, type CoordinatorResult } from './run-coordinator.js';

/** The CLI entry point next to this module in dist/. */
export function cliPath(): string {
  return fileURLToPath(new URL('../cli.js', import.meta.url));
}

export async function runLocalFleet(
  cfg: TrainConfig,
  fleet: FleetConfig,
  /** Engines of the workers, taken in turn (one entry: every worker's). */
  workerEngines: EngineChoice[],
  log: Logger,
  hooks: CoordinatorHooks = {},
  opts: { evaluate?: boolean; signal?: AbortSignal } = {},
): Promise<CoordinatorResult> {
  // Other processes on this machine must not join a local run: a fresh token, passed in the
  // environment (not the command line, which `ps` shows).
  const joinToken = fleet.security.joinToken ?? randomBytes(18).toString('base64url');
  fleet = { ...fleet, security: { ...fleet.security, joinToken } };
  const children: ChildProcess[] = [];
  const exits: string[] = [];
  // Local workers do not come back by themselves: once fewer than --min-workers live, waiting for
  // them would hang. (A worker crash is a bug; its exit is in the log above.)
  const brokenFleet = (): string | undefined => {
    const alive = children.filter((c) => c.exitCode === null && c.signalCode === null).length;
    return children.length && exits.length && alive < fleet.minWorkers
      ? `${alive} of ${cfg.workers} local workers left, fewer than --min-workers ${fleet.minWorkers} (${exits.join('; ')})`
      : undefined;
  };
  const run = startCoordinator(
    cfg,
    fleet,
    log,
    {
      ...hooks,
      onListening: async (address, runId) => {
        for (let i = 0; i < cfg.workers; i++) {
          const engine = workerEngines[i % workerEngines.length];
          const child = spawn(
            process.execPath,
            [
              cliPath(),
              'worker',
              '--coordinator',
              address,
              '--engine',
              engine,
              '--run-id',
              runId,
              '--name',
              `local-${i + 1}`,
              // Ring links on loopback, ports chosen by each worker.
              ...(fleet.exchange === 'central' ? [] : ['--peer-listen', '127.0.0.1:0']),
            ],
            {
              stdio: ['ignore', 'inherit', 'inherit'],
              env: {
                ...process.env,
                TRICAPS_LOG_LEVEL: process.env.TRICAPS_WORKER_LOG_LEVEL ?? 'warn',
                TRICAPS_JOIN_TOKEN: joinToken,
              },
            },
          );
          child.on('exit', (code, signal) => {
            if (code !== 0) {
              exits.push(`local worker ${i + 1} (pid ${child.pid}) exited with ${signal ?? `code ${code}`}`);
              log.error({ worker: i + 1, pid: child.pid, code, signal }, exits[exits.length - 1]);
            }
          });
          children.push(child);
        }
        const engines = Array.from({ length: cfg.workers }, (_, i) => workerEngines[i % workerEngines.length]);
        log.info(
          { workers: cfg.workers, engines },
          `started ${cfg.workers} local worker processes (${engines.join(', ')})`,
        );
        await hooks.onListening?.(address, runId);
      },
      abortReason: () => brokenFleet() ?? hooks.abortReason?.(),
    },
    opts,
  );
  opts.signal?.addEventListener('abort', () => run.stop(), { once: true });
  // Check for dead children while a step waits on them, not only between steps.
  const watch = setInterval(() => {
    if (brokenFleet()) run.stop();
  }, 500);
  try {
    const result = await run.done;
    const broken = brokenFleet();
    if (result.stopped && broken && !opts.signal?.aborted) throw new Error(broken);
    return result;
  } finally {
    clearInterval(watch);
    await Promise.all(children.map((c) => stopChild(c)));
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
