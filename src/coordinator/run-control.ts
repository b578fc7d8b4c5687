// Operator control of a running coordinator (pause, resume, checkpoint now, stop gracefully), as
// transport-free logic: commands are parsed and checked here, queued, and carried out by the
// training loop at step boundaries, each answered with what was done. The NATS bridge (and tests)
// feed it; SIGTERM uses the same stop.
import { z } from 'zod';

export const CONTROL_COMMANDS = ['pause', 'resume', 'checkpoint', 'stop'] as const;
export type ControlCommand = (typeof CONTROL_COMMANDS)[number];

export interface ControlReply {
  ok: boolean;
  command?: string;
  /** What was done (ok) or why not (refused). */
  done?: string;
  reason?: string;
  step?: number;
  checkpoint?: string;
}

const PayloadSchema = z.object({ token: z.string().optional() }).strict();

interface Pending {
  command: ControlCommand;
  answer(reply: ControlReply): void;
}

export class RunControl {
  private readonly queue: Pending[] = [];
  private paused_ = false;
  private interrupted_ = false;
  private stopping = false;
  private wake: (() => void) | undefined;

  constructor(private readonly token?: string) {}

  /**
   * Checks a command (its name from the subject, its JSON payload) and queues it; refusals are
   * answered at once with the reason.
   */
  submit(name: string, payload: string, answer: (reply: ControlReply) => void): void {
    if (!(CONTROL_COMMANDS as readonly string[]).includes(name)) {
      answer({
        ok: false,
        command: name,
        reason: `unknown command "${name}"; commands are ${CONTROL_COMMANDS.join(', ')}`,
      });
      return;
    }
    let body: z.infer<typeof PayloadSchema>;
    try {
      body = PayloadSchema.parse(payload.trim() === '' ? {} : JSON.parse(payload));
    } catch (err) {
      answer({
        ok: false,
        command: name,
        reason: `malformed command: ${err instanceof SyntaxError ? 'payload is not JSON' : 'payload must be {} or {"token": "..."}'}`,
      });
      return;
    }
    if (this.token && body.token !== this.token) {
      answer({ ok: false, command: name, reason: 'unauthorised: this run takes commands with its control token only' });
      return;
    }
    this.queue.push({ command: name as ControlCommand, answer });
    this.wake?.();
  }

  /**
   * SIGTERM: unlike the `stop` command it does not end the run for the workers (they keep retrying
   * for a restarted coordinator), but like it, it ends a pause.
   */
  interrupt(): void {
    this.interrupted_ = true;
    this.wake?.();
  }

  get interrupted(): boolean {
    return this.interrupted_;
  }

  /** Paused by an operator (a stalled-looking run that is paused on purpose is healthy). */
  get paused(): boolean {
    return this.paused_;
  }

  get stopRequested(): boolean {
    return this.stopping;
  }

  /**
   * Carries out queued commands at a step boundary; while paused, waits here (still serving
   * commands). Returns when training may take the next step (or should stop).
   */
  async atStepBoundary(nextStep: number, checkpoint: (reason: string) => Promise<string | undefined>): Promise<void> {
    for (;;) {
      for (const p of this.queue.splice(0)) {
        if (p.command === 'pause') {
          this.paused_ = true;
          p.answer({ ok: true, command: 'pause', done: `paused before step ${nextStep}`, step: nextStep });
        } else if (p.command === 'resume') {
          p.answer({
            ok: true,
            command: 'resume',
            done: this.paused_ ? `resumed at step ${nextStep}` : 'was not paused',
            step: nextStep,
          });
          this.paused_ = false;
        } else if (p.command === 'checkpoint') {
          try {
            const dir = await checkpoint('requested');
            p.answer(
              dir
                ? {
                    ok: true,
                    command: 'checkpoint',
                    done: `checkpoint saved at step ${nextStep}`,
                    step: nextStep,
                    checkpoint: dir,
                  }
                : { ok: false, command: 'checkpoint', reason: 'this run has no --checkpoint-dir' },
            );
          } catch (err) {
            p.answer({ ok: false, command: 'checkpoint', reason: `checkpoint failed: ${(err as Error).message}` });
          }
        } else {
          this.stopping = true;
          p.answer({
            ok: true,
            command: 'stop',
            done: `stopping before step ${nextStep}; a checkpoint is written if the run has --checkpoint-dir`,
            step: nextStep,
          });
        }
      }
      if (!this.paused_ || this.stopping || this.interrupted_) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 1000);
      });
      this.wake = undefined;
    }
  }
}
