// User-facing errors: a UsageError carries a message that names what was wrong and what to do.
// The CLI prints it without a stack trace and exits with code 2; anything else is a bug.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
