// `tricaps coordinator` and `tricaps worker`: the two halves of a fleet run on separate machines.
import { processCpuSeconds } from '../shared/stats.js';
import type { Command } from 'commander';
import type { FleetSecurity } from '../shared/fleet-security.js';
import { FleetConfigSchema } from '../coordinator/fleet-config.js';
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
    .description(
      'serve a training run to workers over gRPC: shard each step, average their gradients, step the optimizer; exits 0 when the run completes',
    );
  addSecurityOptions(addFleetOptions(addTrainingOptions(coordinator), '0.0.0.0:7070'), 'coordinator')
    .option(
      '--upload-timeout <ms>',
      'cut gradient uploads that have not finished by then',
      intOption(100, 3_600_000),
      120_000,
    )
    .option(
      '--finish-timeout <ms>',
      'when the run is over, wait this long for every worker to be told before exiting',
      intOption(0, 3_600_000),
      5000,
    )
    .action(async (o) => {
      const cfg = trainConfigFrom(o, 0);
      const fleet = FleetConfigSchema.parse({
        ...fleetConfigFrom(o, { minWorkers: 1 }),
        security: securityFrom(o),
        uploadTimeoutMs: o.uploadTimeout,
        finishTimeoutMs: o.finishTimeout,
      });
      const log = createLogger('coordinator');
      const run = startCoordinator(cfg, fleet, log);
      const stop = (signal: string) => {
        log.warn({ signal }, `${signal}: stopping now (the step in progress is not applied)`);
        run.stop();
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      const result = await run.done;
      log.info(
        {
          run: result.runId,
          steps: result.stepsRun,
          seconds: result.seconds,
          lost: result.lost.length,
          stopped: result.stopped,
          cpu_s: processCpuSeconds(),
        },
        `run ${result.runId} ${result.stopped ? 'stopped' : 'complete'} after ${result.stepsRun} steps`,
      );
    });

  addSecurityOptions(program.command('worker'), 'worker')
    .description(
      'join a coordinator and compute gradients for the shards it assigns; exits 0 when the run is over or on SIGTERM',
    )
    .requiredOption('--coordinator <host:port>', 'the coordinator to join')
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--name <name>', 'name shown in the coordinator log (default: host-pid)')
    .option('--run-id <id>', 'only join this run')
    .option(
      '--reconnect-timeout <s>',
      'give up when the coordinator has been unreachable this many seconds',
      floatOption(1),
      120,
    )
    .option(
      '--metrics-port <port>',
      'serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port, logged)',
      intOption(0, 65_535),
    )
    .option('--data-root <dir>', 'only load data from below this directory (the coordinator names the data path)')
    .option(
      '--simulate-compute-ms <ms>',
      "benchmarks: each assignment's data and compute take at least this long (the rest is waited out), to emulate a slower device",
      intOption(0, 3_600_000),
    )
    .option(
      '--peer-listen <host:port>',
      'serve ring exchange hops here (port 0: chosen at start); needed for --exchange ring|auto on the coordinator',
    )
    .option('--peer-advertise <host:port>', 'the address ring peers reach this worker at (default: --peer-listen)')
    .option(
      '--ring-hop-timeout <ms>',
      'a ring hop not sent or received by then fails the ring (the coordinator is told)',
      intOption(100, 3_600_000),
      60_000,
    )
    .option(
      '--synthetic-gradients',
      'benchmarks of the fleet alone: load and compute nothing, upload full-size constant gradients after --simulate-compute-ms',
    )
    .action(async (o) => {
      const log = createLogger('worker');
      const metrics = o.metricsPort !== undefined ? new WorkerMetrics() : undefined;
      const metricsServer = metrics ? await serveMetrics(metrics.registry, o.metricsPort) : undefined;
      if (metricsServer)
        log.info({ metricsPort: metricsServer.port }, `metrics at http://0.0.0.0:${metricsServer.port}/metrics`);
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
        {
          coordinator: o.coordinator,
          engine: o.engine,
          name: o.name ?? defaultWorkerName(),
          runId: o.runId ?? '',
          reconnectTimeoutMs: o.reconnectTimeout * 1000,
          transferTimeoutMs: 120_000,
          security: securityFrom(o),
          dataRoot: o.dataRoot,
          simulateComputeMs: o.simulateComputeMs,
          syntheticGradients: o.syntheticGradients === true,
          peerListen: o.peerListen,
          peerAdvertise: o.peerAdvertise,
          ringHopTimeoutMs: o.ringHopTimeout,
          ringFaults: ringFaultsFromEnv(),
          blockMainThreadMs: Number(process.env.TRICAPS_TEST_BLOCK_MAIN_MS ?? 0) || undefined,
          scaleOneGradient: scaleOneGradientFromEnv(),
        },
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

/** TLS and join-token flags; the token also comes from TRICAPS_JOIN_TOKEN (kept out of `ps`). */
function addSecurityOptions(cmd: Command, role: 'coordinator' | 'worker'): Command {
  const mine = role === 'coordinator' ? 'this coordinator' : 'this worker (its client certificate, for mutual TLS)';
  return cmd
    .option('--tls-cert <pem>', `TLS certificate of ${mine}`)
    .option('--tls-key <pem>', 'its private key')
    .option(
      '--tls-ca <pem>',
      role === 'coordinator'
        ? 'CA that must have signed worker certificates (mutual TLS)'
        : 'CA that signed the coordinator certificate (turns TLS on)',
    )
    .option(
      '--join-token <token>',
      'shared secret every call must carry (prefer TRICAPS_JOIN_TOKEN: flags show in ps)',
    );
}

function securityFrom(o: Record<string, any>): FleetSecurity {
  return {
    tlsCert: o.tlsCert,
    tlsKey: o.tlsKey,
    tlsCa: o.tlsCa,
    joinToken: o.joinToken ?? process.env.TRICAPS_JOIN_TOKEN,
  };
}

/**
 * Fault injection for tests of real processes (never set in production): TRICAPS_TEST_RING_POISON
 * (nan | shape) corrupts this worker's first ring hop; TRICAPS_TEST_RING_HOLD_MS holds its ring after
 * the first hop, so a test can kill a member while a reduction is in flight. Read where the worker is
 * built: TRICAPS_TEST_BLOCK_MAIN_MS holds the worker's main thread that long after each compute, and
 * TRICAPS_TEST_SCALE_GRADIENT (below).
 */
function ringFaultsFromEnv(): { poison?: 'nan' | 'shape'; holdAfterFirstHopMs?: number } | undefined {
  const poison = process.env.TRICAPS_TEST_RING_POISON;
  const hold = Number(process.env.TRICAPS_TEST_RING_HOLD_MS ?? 0);
  if (!poison && !hold) return undefined;
  return {
    poison: poison === 'nan' || poison === 'shape' ? poison : undefined,
    holdAfterFirstHopMs: hold > 0 ? hold : undefined,
  };
}

/** TRICAPS_TEST_SCALE_GRADIENT=STEP:FACTOR multiplies this worker's first gradient of STEP or later by FACTOR. */
function scaleOneGradientFromEnv(): { fromStep: number; factor: number } | undefined {
  const m = /^(\d+):([\d.e+-]+)$/.exec(process.env.TRICAPS_TEST_SCALE_GRADIENT ?? '');
  return m ? { fromStep: Number(m[1]), factor: Number(m[2]) } : undefined;
}
