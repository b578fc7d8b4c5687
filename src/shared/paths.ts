// Paths that come from configuration or from another process must stay inside the root they are
// meant for (a coordinator must not point a worker at /etc; a checkpoint pointer must not leave its
// directory).
import { existsSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { UsageError } from './errors.js';

/** The real path of `path` when it exists (symlinks resolved), else its absolute form. */
function real(path: string): string {
  const abs = resolve(path);
  return existsSync(abs) ? realpathSync(abs) : abs;
}

/** Throws unless `path` (after resolving symlinks) is `root` or below it. */
export function assertInside(root: string, path: string, what: string): void {
  const rel = relative(real(root), real(path));
  // '..' as a whole first segment leaves the root; a name that merely starts with dots ('..cache') does not.
  if (rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel))
    throw new UsageError(`${path} is outside ${what} ${root}; refusing to use it`);
}

/** A checkpoint directory name as `latest` may hold it: step-NNNNNNNN, nothing else. */
export function isStepDirName(name: string): boolean {
  return /^step-\d{8}$/.test(name);
}
