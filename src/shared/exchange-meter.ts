// Bytes of tensor data moved by the exchange, by direction and by the kind of process at the other
// end. The fleet service and client count into one; step reports take differences of its totals and
// Prometheus (tricaps_exchange_bytes_total{direction,peer_kind}) gets every addition.
export const EXCHANGE_DIRECTIONS = ['sent', 'received'] as const;
export type ExchangeDirection = (typeof EXCHANGE_DIRECTIONS)[number];
export const PEER_KINDS = ['worker', 'coordinator', 'peer'] as const;
export type PeerKind = (typeof PEER_KINDS)[number];

export interface ExchangeTotals {
  sent: number;
  received: number;
}

export class ExchangeMeter {
  private readonly totals = new Map<string, number>();
  private listener?: (direction: ExchangeDirection, peerKind: PeerKind, bytes: number) => void;

  /** Every later addition is also handed to f (a Prometheus counter's inc). */
  attach(f: (direction: ExchangeDirection, peerKind: PeerKind, bytes: number) => void): void {
    this.listener = f;
  }

  add(direction: ExchangeDirection, peerKind: PeerKind, bytes: number): void {
    const key = `${direction}/${peerKind}`;
    this.totals.set(key, (this.totals.get(key) ?? 0) + bytes);
    this.listener?.(direction, peerKind, bytes);
  }

  /** Bytes so far with every peer kind (or one). */
  total(peerKind?: PeerKind): ExchangeTotals {
    const sum = (d: ExchangeDirection) =>
      [...this.totals]
        .filter(([k]) => k.startsWith(`${d}/`) && (!peerKind || k.endsWith(`/${peerKind}`)))
        .reduce((s, [, v]) => s + v, 0);
    return { sent: sum('sent'), received: sum('received') };
  }
}
