// Label values the fleet's metrics and events share: why a worker left the fleet and why a result was
// refused. Known up front, so that counters by these labels can start at 0 (a panel's increase() and
// an alert then see the first event).
export const LOSS_KINDS = ['heartbeat', 'stalled', 'left', 'unusable'] as const;
/** Why a worker left: heartbeat, stalled, left, unusable. */
export type LossKind = (typeof LOSS_KINDS)[number];

export const REFUSAL_KINDS = ['non-finite', 'norm', 'malformed'] as const;
/** Why a result was refused and never applied. */
export type RefusalKind = (typeof REFUSAL_KINDS)[number];
