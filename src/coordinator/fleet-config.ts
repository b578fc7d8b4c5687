// The coordinator's fleet settings (beside the training configuration): where it listens, how many
// workers it trains with, its deadlines, and the wire format of gradients.
import { z } from 'zod';

export const FleetConfigSchema = z
  .object({
    listen: z.string().min(1).default('127.0.0.1:0'),
    runId: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, 'letters, digits, ".", "_" and "-" only (at most 64)')
      .optional(),
    minWorkers: z.number().int().min(1).default(1),
    maxWorkers: z.number().int().min(1).max(1024).default(64),
    /** Mining shards per step (default: --min-workers). */
    shards: z.number().int().min(1).optional(),
    heartbeatIntervalMs: z.number().int().min(50).default(1000),
    heartbeatTimeoutMs: z.number().int().min(200).default(5000),
    /** A worker that holds an assignment longer than this is dropped as stalled. */
    stepTimeoutMs: z.number().int().min(1000).default(300_000),
    gradientWire: z.enum(['float32', 'float16']).default('float32'),
    /**
     * central: every worker uploads its whole gradient; ring: the members of a round reduce among
     * themselves (peer links) and each uploads a slice; auto: ring from 3 workers.
     */
    exchange: z.enum(['central', 'ring', 'auto']).default('central'),
    /** Refresh the hard-negative plan every this many steps (0 = off). */
    hardNegativeEvery: z.number().int().min(0).default(0),
    /** Write a resumable checkpoint every this many steps (0 = only at the end and on SIGTERM). */
    checkpointEvery: z.number().int().min(0).default(0),
    /** Checkpoints kept besides the best by validation Recall@1. */
    keepCheckpoints: z.number().int().min(1).default(3),
    /** Continue from the newest good checkpoint under --checkpoint-dir, if there is one. */
    resume: z.boolean().default(false),
    /** Evaluate retrieval on the held-out items every this many steps (0 = off). */
    evalEvery: z.number().int().min(0).default(0),
    /** NATS server for events and control; off when absent. */
    nats: z
      .string()
      .regex(/^(nats|tls|ws|wss):\/\/\S+$/, 'a NATS URL such as nats://host:4222')
      .optional(),
    /** NATS authentication: a .creds file, a user (password from the environment) or a token. */
    natsAuth: z
      .object({
        credsFile: z.string().optional(),
        user: z.string().optional(),
        password: z.string().optional(),
        token: z.string().optional(),
      })
      .default({}),
    /** When set, control commands must carry {"token": ...}. */
    natsControlToken: z.string().min(1).optional(),
    /** Publish a step summary event every this many steps. */
    natsStepInterval: z.number().int().min(1).default(10),
    /** TLS files and the join token (shared/fleet-security.ts); never logged. */
    security: z
      .object({
        tlsCert: z.string().optional(),
        tlsKey: z.string().optional(),
        tlsCa: z.string().optional(),
        joinToken: z.string().min(8, 'the join token needs at least 8 characters').optional(),
      })
      .default({}),
    /** Refuse gradients whose norm exceeds this many times the recent median (0: off). */
    maxGradientNormRatio: z.number().min(0).default(100),
    /** An upload stream not finished by then is cut. */
    uploadTimeoutMs: z.number().int().min(100).default(120_000),
    /** When the run is over, how long to wait for every worker to hear so before exiting. */
    finishTimeoutMs: z.number().int().min(0).default(5000),
    /** /healthz fails when no step was applied for this long while workers are present (0: never). */
    stallSeconds: z.number().min(0).default(900),
    /** Serve Prometheus metrics on this port (0: chosen at start); off when absent. */
    metricsPort: z.number().int().min(0).max(65_535).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.maxWorkers < c.minWorkers)
      ctx.addIssue({
        code: 'custom',
        path: ['maxWorkers'],
        message: `--max-workers ${c.maxWorkers} is below --min-workers ${c.minWorkers}`,
      });
    if (c.heartbeatTimeoutMs <= c.heartbeatIntervalMs)
      ctx.addIssue({
        code: 'custom',
        path: ['heartbeatTimeoutMs'],
        message: `the heartbeat timeout (${c.heartbeatTimeoutMs} ms) must be longer than the interval (${c.heartbeatIntervalMs} ms)`,
      });
  });
export type FleetConfig = z.infer<typeof FleetConfigSchema>;
export type FleetConfigInput = z.input<typeof FleetConfigSchema>;

export function newRunId(): string {
  const t = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `run-${t}-${Math.random().toString(36).slice(2, 6)}`;
}
