// Who is in the fleet: registration (bounded by --max-workers), liveness from heartbeats, removal
// with a reason. Every change of the member set opens a new membership round. Pure state with an
// injected clock, so tests drive it without timers or a network.

export interface Member {
  id: string;
  name: string;
  engine: string;
  device: string;
  /** The round in which it joined. */
  joinedRound: number;
  /** Clock time (ms) of the last sign of life (registration, heartbeat, any RPC). */
  lastSeen: number;
  /** Where its PeerService listens (ring exchange); empty when it has none. */
  peerAddress?: string;
}

export interface Departure {
  member: Member;
  reason: string;
}

export class FleetFullError extends Error {}

export class Membership {
  private readonly members = new Map<string, Member>();
  private readonly departed = new Map<string, string>();
  private counter = 0;
  round = 0;

  /**
   * @param idSuffix appended to every member id (`w1` + suffix): a coordinator process picks its own,
   *   so a coordinator restarted with --resume never hands out an id a worker of the previous one
   *   still holds; that worker's calls are then refused as a non-member's, and it registers again.
   */
  constructor(
    private readonly maxWorkers: number,
    private readonly idSuffix = '',
  ) {}

  register(name: string, engine: string, device: string, now: number): Member {
    if (this.members.size >= this.maxWorkers) {
      throw new FleetFullError(`the run already has ${this.members.size} workers, its --max-workers`);
    }
    this.counter += 1;
    this.round += 1;
    const member: Member = {
      id: `w${this.counter}${this.idSuffix}`,
      name,
      engine,
      device,
      joinedRound: this.round,
      lastSeen: now,
    };
    this.members.set(member.id, member);
    return member;
  }

  get(id: string): Member | undefined {
    return this.members.get(id);
  }

  /** Why a former member left (for the error a late message from it gets). */
  departureOf(id: string): string | undefined {
    return this.departed.get(id);
  }

  touch(id: string, now: number): boolean {
    const m = this.members.get(id);
    if (m) m.lastSeen = now;
    return Boolean(m);
  }

  remove(id: string, reason: string): Departure | undefined {
    const member = this.members.get(id);
    if (!member) return undefined;
    this.members.delete(id);
    this.departed.set(id, reason);
    this.round += 1;
    return { member, reason };
  }

  /** Members silent for longer than the timeout (not removed: the caller decides). */
  silent(now: number, timeoutMs: number): Member[] {
    return this.list().filter((m) => now - m.lastSeen > timeoutMs);
  }

  /** Members in join order. */
  list(): Member[] {
    return [...this.members.values()];
  }

  get size(): number {
    return this.members.size;
  }
}

/** "w2 (gpu-box-3)" for log lines. */
export function describeMember(m: Pick<Member, 'id' | 'name'>): string {
  return m.name && m.name !== m.id ? `${m.id} (${m.name})` : m.id;
}
