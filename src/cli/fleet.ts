// `tricaps coordinator` and `tricaps worker`: the two halves of a fleet run on separate machines.
import type { Command } from 'commander';
import { ENGINE_NAMES } from '../shared/engine/engine.js';
import { createLogger } from '../shared/log.js';
import { startCoordinator } from '../coordinator/run-coordinator.js';
import { FleetWorker, defaultWorkerName } from '../worker/worker.js';
import { choiceOption, floatOption, intOption } from './options.js';
import { serveMetrics, WorkerMetrics } from '../shared/metrics.js';
import { addFleetOptions, addTrainingOptions, fleetConfigFrom, trainConfigFrom } from './train.js';

export function registerFleetCommands(program: Command): void {
  const coordinator = program
    .command('coordinator')
    .description('serve a training run to workers over gRPC: shard each step, average their gradients, step the optimizer; exits 0 when the run completes');
  addFleetOptions(addTrainingOptions(coordinator), '0.0.0.0:7070').action(async (o) => {
    const cfg = trainConfigFrom(o, 0);
    const fleet = fleetConfigFrom(o, { minWorkers: 1 });
    const log = createLogger('coordinator');
    const run = startCoordinator(cfg, fleet, log);
    const stop = (signal: string) => {
      log.warn({ signal }, `${signal}: stopping after the step in progress`);
      run.stop();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    const result = await run.done;
    log.info({ run: result.runId, steps: result.stepsRun, seconds: result.seconds, lost: result.lost.length, stopped: result.stopped }, `run ${result.runId} ${result.stopped ? 'stopped' : 'complete'} after ${result.stepsRun} steps`);
  });

  program
    .command('worker')
    .description('join a coordinator and compute gradients for the shards it assigns; exits 0 when the run is over or on SIGTERM')
    .requiredOption('--coordinator <host:port>', 'the coordinator to join')
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--name <name>', 'name shown in the coordinator log (default: host-pid)')
    .option('--run-id <id>', 'only join this run')
    .option('--reconnect-timeout <s>', 'give up when the coordinator has been unreachable this many seconds', floatOption(1), 120)
    .option('--metrics-port <port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port, logged)', intOption(0, 65_535))
    .action(async (o) => {
      const log = createLogger('worker');
      const metrics = o.metricsPort !== undefined ? new WorkerMetrics() : undefined;
      const metricsServer = metrics ? await serveMetrics(metrics.registry, o.metricsPort) : undefined;
      if (metricsServer) log.info({ metricsPort: metricsServer.port }, `metrics at http://0.0.0.0:${metricsServer.port}/metrics`);
      const abort = new AbortController();
      let stopping = false;
      const onSignal = (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, `${signal}: leaving after the step in progress`);
        abort.abort();
      };
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      process.once('SIGINT', () => onSignal('SIGINT'));
      const worker = new FleetWorker(
        { coordinator: o.coordinator, engine: o.engine, name: o.name ?? defaultWorkerName(), runId: o.runId ?? '', reconnectTimeoutMs: o.reconnectTimeout * 1000, transferTimeoutMs: 120_000 },
        {
          get stopping() {
            return stopping;
          },
          signal: abort.signal,
        },
        log,
        metrics,
      );
      try {
        process.exitCode = await worker.run();
      } finally {
        await metricsServer?.close();
      }
    });
}
