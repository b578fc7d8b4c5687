// Structured logging (pino) to stderr, so that stdout stays free for results and JSON.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.TRICAPS_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination(2));
}
