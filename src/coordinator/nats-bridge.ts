// NATS for lifecycle events and operator control (optional: only with --nats URL).
//   events:  tricaps.<run>.events.<kind>     JSON, schema "tricaps.event/v1" (see README)
//   control: tricaps.<run>.control.<command> request/reply, handled by RunControl
// NATS never holds training up: the connection is made and remade in the background, events
// published while there is none wait here (at most 1000; the client itself would discard them when it
// reconnects) and are sent in order once it is up; beyond that they are dropped and counted
// (tricaps_nats_events_dropped_total).
import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from 'nats';
import { UsageError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import type { RunControl } from './run-control.js';

export const EVENT_SCHEMA = 'tricaps.event/v1';
export const EVENT_KINDS = [
  'run_started',
  'run_finished',
  'run_failed',
  'worker_joined',
  'worker_lost',
  'checkpoint_saved',
  'evaluation_done',
  'step_summary',
] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

/** How to authenticate to NATS (one of them, or none). Secrets come from files or the environment. */
export interface NatsAuth {
  credsFile?: string;
  user?: string;
  password?: string;
  token?: string;
}

export function natsAuthOptions(auth: NatsAuth): Partial<ConnectionOptions> {
  if (auth.credsFile) {
    let creds: Uint8Array;
    try {
      creds = readFileSync(auth.credsFile);
    } catch (err) {
      throw new UsageError(`--nats-creds ${auth.credsFile}: ${(err as Error).message}`);
    }
    return { authenticator: credsAuthenticator(creds) };
  }
  if (auth.user) {
    if (!auth.password) throw new UsageError('--nats-user needs the password in TRICAPS_NATS_PASSWORD');
    return { user: auth.user, pass: auth.password };
  }
  return auth.token ? { token: auth.token } : {};
}

export interface EventSink {
  publish(kind: EventKind, data: Record<string, unknown>): void;
}

/** How long the first connection may take before the log says NATS is not reachable. */
export const FIRST_CONNECT_WARNING_MS = 3000;

/** Events kept while there is no connection; beyond that, they are dropped and counted. */
const MAX_WAITING = 1000;

export class NatsBridge implements EventSink {
  private nc: NatsConnection | undefined;
  private closed = false;
  private down = false;
  /**
   * Events from while there is no connection (before the first one: run_started, early joins; or
   * while it is down), sent in order once it is up.
   */
  private waiting: [EventKind, Record<string, unknown>][] = [];
  dropped = 0;

  private constructor(
    private readonly url: string,
    private readonly runId: string,
    private readonly control: RunControl,
    private readonly log: Logger,
    private readonly onDrop: () => void,
    private readonly auth: Partial<ConnectionOptions>,
  ) {}

  /** Starts connecting in the background and returns at once. */
  static start(
    url: string,
    runId: string,
    control: RunControl,
    log: Logger,
    onDrop: () => void = () => undefined,
    auth: NatsAuth = {},
  ): NatsBridge {
    const bridge = new NatsBridge(url, runId, control, log, onDrop, natsAuthOptions(auth));
    void bridge.connectLoop();
    // The client keeps trying in the background without a word: say once that it has not got through.
    setTimeout(() => {
      if (!bridge.nc && !bridge.closed) {
        log.warn(
          { nats: url, waitedSeconds: FIRST_CONNECT_WARNING_MS / 1000 },
          `NATS at ${url} is not reachable (no connection after ${FIRST_CONNECT_WARNING_MS / 1000} s); training goes on without events and control, retrying in the background`,
        );
      }
    }, FIRST_CONNECT_WARNING_MS).unref();
    return bridge;
  }

  private async connectLoop(): Promise<void> {
    try {
      const nc = await connect({
        servers: this.url,
        name: `tricaps-coordinator-${this.runId}`,
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        waitOnFirstConnect: true,
        ...this.auth,
      });
      if (this.closed) {
        await nc.close();
        return;
      }
      this.nc = nc;
      this.sendWaiting();
      this.log.info(
        { nats: this.url, subjects: `tricaps.${this.runId}.>` },
        `connected to NATS at ${this.url}: events on tricaps.${this.runId}.events.*, control on tricaps.${this.runId}.control.*`,
      );
      const prefix = `tricaps.${this.runId}.control.`;
      nc.subscribe(`${prefix}>`, {
        callback: (err, msg) => {
          if (err) return;
          const name = msg.subject.slice(prefix.length);
          this.control.submit(name.includes('.') ? msg.subject : name, new TextDecoder().decode(msg.data), (reply) => {
            // NATS does not name the sender: log what there is (reply inbox, an optional Origin header).
            const origin = { replyTo: msg.reply ?? null, origin: msg.headers?.get('Origin') || null };
            if (!reply.ok)
              this.log.warn(
                { subject: msg.subject, reason: reply.reason, ...origin },
                `refused NATS command on ${msg.subject}: ${reply.reason}`,
              );
            else
              this.log.info(
                { subject: msg.subject, done: reply.done, ...origin },
                `NATS command ${reply.command}: ${reply.done}`,
              );
            if (msg.reply) msg.respond(new TextEncoder().encode(JSON.stringify(reply)));
          });
        },
      });
      void (async () => {
        for await (const s of nc.status()) {
          if (s.type === 'disconnect') {
            this.down = true;
            this.log.warn({ nats: this.url }, 'lost the NATS connection; training goes on, reconnecting');
          } else if (s.type === 'reconnect') {
            const waited = this.waiting.length;
            this.sendWaiting();
            this.down = false;
            this.log.info({ nats: this.url, sent: waited, dropped: this.dropped }, 'reconnected to NATS');
          }
        }
      })();
    } catch (err) {
      if (!this.closed)
        this.log.error(
          { nats: this.url, err: (err as Error).message },
          `cannot use NATS at ${this.url}: ${(err as Error).message}; running without events and control`,
        );
    }
  }

  publish(kind: EventKind, data: Record<string, unknown>): void {
    const nc = this.nc;
    if (nc?.isClosed() || (!nc && this.closed)) {
      this.drop();
    } else if (!nc || this.down) {
      if (this.waiting.length < MAX_WAITING) this.waiting.push([kind, { ...data, time: new Date().toISOString() }]);
      else this.drop();
    } else {
      this.send(nc, kind, data);
    }
  }

  private sendWaiting(): void {
    for (const [kind, data] of this.waiting.splice(0)) this.send(this.nc!, kind, data);
  }

  private send(nc: NatsConnection, kind: EventKind, data: Record<string, unknown>): void {
    try {
      nc.publish(
        `tricaps.${this.runId}.events.${kind}`,
        new TextEncoder().encode(
          JSON.stringify({ schema: EVENT_SCHEMA, kind, run: this.runId, time: new Date().toISOString(), ...data }),
        ),
      );
    } catch {
      this.drop(); // the connection closed for good
    }
  }

  private drop(): void {
    this.dropped += 1;
    this.onDrop();
    if (this.dropped === 1) {
      this.log.warn(
        { nats: this.url },
        `dropping NATS events: the connection to ${this.url} is down and its buffer is full (counted in tricaps_nats_events_dropped_total)`,
      );
    }
  }

  /** Flushes what can be flushed within a second and disconnects. */
  async close(): Promise<void> {
    this.closed = true;
    const nc = this.nc;
    if (!nc) {
      const lost = this.waiting.length + this.dropped;
      this.log.warn(
        { nats: this.url, undelivered: lost },
        `NATS at ${this.url} was never reachable: ${lost} events not delivered`,
      );
      return;
    }
    if (!nc.isClosed()) {
      await Promise.race([nc.flush().catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
      await nc.close().catch(() => undefined);
    }
    const lost = this.waiting.length + this.dropped;
    if (lost > 0)
      this.log.warn(
        { nats: this.url, undelivered: lost, dropped: this.dropped, waiting: this.waiting.length },
        `${lost} NATS events not delivered: ${this.dropped} dropped while the connection was down, ${this.waiting.length} still waiting for it at the end`,
      );
  }
}
