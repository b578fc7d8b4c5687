// The work of one step (or one embedding pass) as units (mining shards) handed to workers. Units are
// planned once; workers take them in assignments, each stamped with the membership round in which
// it was made. A worker that is lost hands its units back and they are re-planned over the others,
// so a step completes with every unit computed exactly once, whoever computed it. Pure state with an
// injected clock; the coordinator's transport and timers drive it.
import { assignShards, type PlannedShard } from '../shared/plan/step-plan.js';

export interface Assignment {
  step: number;
  round: number;
  units: number[];
  /** Clock time (ms) the worker received it; undefined while queued. */
  issuedAt?: number;
}

export class StepWork<R> {
  private unplanned: number[];
  private readonly queued = new Map<string, Assignment[]>();
  private readonly inFlight = new Map<string, Assignment>();
  private readonly done = new Set<number>();
  /** Results in arrival order; a ring's one result lists every member it combines. */
  readonly results: { workerId: string; units: number[]; result: R; members?: string[]; groups?: number[][] }[] = [];

  constructor(
    readonly kind: 'train' | 'embed',
    readonly step: number,
    readonly epoch: number,
    readonly units: PlannedShard[],
  ) {
    this.unplanned = units.map((u) => u.index);
  }

  /** Units no one holds (at the start, and after a loss). */
  get unplannedUnits(): number[] {
    return [...this.unplanned];
  }

  /** Deals the unplanned units over the given workers (in order) as assignments of this round. */
  plan(workers: string[], round: number): void {
    if (this.unplanned.length === 0 || workers.length === 0) return;
    for (const [worker, units] of assignShards(this.unplanned, workers)) {
      this.queued.set(worker, [...(this.queued.get(worker) ?? []), { step: this.step, round, units }]);
    }
    this.unplanned = [];
  }

  /** The assignment a worker should work on now: the one in flight, else the next queued one. */
  take(workerId: string, now: number): Assignment | undefined {
    const current = this.inFlight.get(workerId);
    if (current) return current;
    const next = this.queued.get(workerId)?.shift();
    if (!next) return undefined;
    next.issuedAt = now;
    this.inFlight.set(workerId, next);
    return next;
  }

  /** The assignment a result must answer, or why it cannot be accepted. */
  check(
    workerId: string,
    ref: { step: number; round: number; units: number[] },
  ): { ok: true } | { ok: false; reason: string } {
    const a = this.inFlight.get(workerId);
    if (ref.step !== this.step)
      return { ok: false, reason: `result for step ${ref.step}, the run is at step ${this.step}` };
    if (!a)
      return { ok: false, reason: `no ${this.kind} assignment is outstanding for ${workerId} at step ${this.step}` };
    if (ref.round !== a.round)
      return { ok: false, reason: `result for round ${ref.round}, the assignment is of round ${a.round}` };
    const same = ref.units.length === a.units.length && ref.units.every((u, i) => u === a.units[i]);
    if (!same) return { ok: false, reason: `result for shards [${ref.units}], the assignment is shards [${a.units}]` };
    return { ok: true };
  }

  accept(
    workerId: string,
    ref: { step: number; round: number; units: number[] },
    result: R,
  ): { ok: true } | { ok: false; reason: string } {
    const verdict = this.check(workerId, ref);
    if (!verdict.ok) return verdict;
    const a = this.inFlight.get(workerId)!;
    this.inFlight.delete(workerId);
    for (const u of a.units) this.done.add(u);
    this.results.push({ workerId, units: a.units, result });
    return verdict;
  }

  /**
   * A ring reduction's one result for its members' assignments, each of which must be in flight in
   * that round (a member sends its slice only after taking its assignment).
   */
  acceptRing(members: string[], round: number, result: R): { ok: true } | { ok: false; reason: string } {
    for (const m of members) {
      const a = this.inFlight.get(m);
      if (!a || a.round !== round) return { ok: false, reason: `${m} holds no assignment of round ${round}` };
    }
    // Each member's units, in ring order: together they decide the summation order.
    const groups = members.map((m) => [...this.inFlight.get(m)!.units]);
    const units = groups.flat().sort((a, b) => a - b);
    for (const m of members) this.inFlight.delete(m);
    for (const u of units) this.done.add(u);
    this.results.push({ workerId: members.join(','), units, result, members: [...members], groups });
    return { ok: true };
  }

  /** Members holding an assignment (in flight or queued) of this round, in planning order. */
  holdersOf(round: number): string[] {
    const out: string[] = [];
    for (const [w, a] of this.inFlight) if (a.round === round) out.push(w);
    for (const [w, q] of this.queued) if (q.some((a) => a.round === round) && !out.includes(w)) out.push(w);
    return out;
  }

  /** A worker is gone: whatever it held (in flight or queued) goes back to be re-planned. */
  revoke(workerId: string): number[] {
    const back = [
      ...(this.inFlight.get(workerId)?.units ?? []),
      ...(this.queued.get(workerId) ?? []).flatMap((a) => a.units),
    ];
    this.inFlight.delete(workerId);
    this.queued.delete(workerId);
    this.unplanned = [...this.unplanned, ...back].sort((a, b) => a - b);
    return back;
  }

  /** Workers whose assignment in flight is older than the deadline. */
  overdue(now: number, deadlineMs: number): string[] {
    return [...this.inFlight].filter(([, a]) => now - (a.issuedAt ?? now) > deadlineMs).map(([w]) => w);
  }

  /** Units of the assignment a worker is computing now. */
  unitsInFlight(workerId: string): number[] {
    return [...(this.inFlight.get(workerId)?.units ?? [])];
  }

  holds(workerId: string): boolean {
    return this.inFlight.has(workerId) || (this.queued.get(workerId)?.length ?? 0) > 0;
  }

  get finished(): boolean {
    return this.done.size === this.units.length;
  }
}
