// Operator commands without a transport: checks, queueing, and what each does at a step boundary.
import { describe, expect, it } from 'vitest';
import { RunControl, type ControlReply } from '../../src/coordinator/run-control.js';

describe('run control', () => {
  it('answers each command with what it did at the next step boundary', async () => {
    const c = new RunControl();
    const replies: ControlReply[] = [];
    c.submit('checkpoint', '', (r) => replies.push(r));
    await c.atStepBoundary(7, async () => undefined);
    expect(replies.pop()).toEqual({ ok: false, command: 'checkpoint', reason: 'this run has no --checkpoint-dir' });
    c.submit('checkpoint', '{}', (r) => replies.push(r));
    await c.atStepBoundary(7, async () => {
      throw new Error('disk full');
    });
    expect(replies.pop()).toEqual({ ok: false, command: 'checkpoint', reason: 'checkpoint failed: disk full' });
    const reasons: string[] = [];
    c.submit('checkpoint', ' \n', (r) => replies.push(r)); // blank is an empty payload
    await c.atStepBoundary(7, async (reason) => (reasons.push(reason), '/ckpt/step-00000007'));
    expect(replies.pop()).toEqual({
      ok: true,
      command: 'checkpoint',
      done: 'checkpoint saved at step 7',
      step: 7,
      checkpoint: '/ckpt/step-00000007',
    });
    expect(reasons).toEqual(['requested']);
    c.submit('resume', '', (r) => replies.push(r));
    await c.atStepBoundary(8, async () => 'x');
    expect(replies.pop()).toMatchObject({ ok: true, done: 'was not paused' });
    const pauseReply = new Promise<ControlReply>((resolve) => c.submit('pause', '', resolve));
    const boundary = c.atStepBoundary(9, async () => 'x');
    expect(await pauseReply).toMatchObject({ ok: true, done: 'paused before step 9' });
    c.submit('stop', '', (r) => replies.push(r));
    await boundary; // a stop ends the pause
    expect(c.stopRequested).toBe(true);
    expect(replies.pop()).toMatchObject({ ok: true, command: 'stop' });
  });

  it('SIGTERM (interrupt) ends a pause without turning into a stop command', async () => {
    const c = new RunControl();
    const pauseReply = new Promise<ControlReply>((resolve) => c.submit('pause', '', resolve));
    let returned = false;
    const boundary = c.atStepBoundary(3, async () => 'x').then(() => (returned = true));
    // Once the pause is acknowledged the boundary is held: it has not returned.
    expect(await pauseReply).toMatchObject({ ok: true, done: 'paused before step 3' });
    expect(returned).toBe(false);
    c.interrupt();
    await boundary;
    expect(c.interrupted).toBe(true);
    expect(c.stopRequested).toBe(false);
  });

  it('refuses unknown commands, malformed payloads and missing tokens', () => {
    const c = new RunControl('t0k');
    const replies: ControlReply[] = [];
    c.submit('format-disk', '{}', (r) => replies.push(r));
    c.submit('pause', '[', (r) => replies.push(r));
    c.submit('pause', '{"token": "t0k", "extra": 1}', (r) => replies.push(r));
    c.submit('pause', '{"token": "nope"}', (r) => replies.push(r));
    expect(replies.map((r) => r.reason)).toEqual([
      'unknown command "format-disk"; commands are pause, resume, checkpoint, stop',
      'malformed command: payload is not JSON',
      'malformed command: payload must be {} or {"token": "..."}',
      'unauthorised: this run takes commands with its control token only',
    ]);
    c.submit('pause', '{}', (r) => replies.push(r)); // no token at all
    expect(replies.map((r) => r.ok)).toEqual([false, false, false, false, false]);
    expect(replies.map((r) => r.command)).toEqual(['format-disk', 'pause', 'pause', 'pause', 'pause']);
  });

  it('carries out a command that brings the control token', async () => {
    const c = new RunControl('t0k');
    const replies: ControlReply[] = [];
    c.submit('stop', '{"token": "t0k"}', (r) => replies.push(r));
    expect(replies).toEqual([]); // queued, not refused
    await c.atStepBoundary(2, async () => undefined);
    expect(replies).toMatchObject([{ ok: true, command: 'stop' }]);
    expect(c.stopRequested).toBe(true);
  });
});
