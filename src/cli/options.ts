// Option parsers shared by the subcommands: each names the flag and the accepted values on error.
import { InvalidArgumentError } from 'commander';

export function intOption(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(n))
      throw new InvalidArgumentError(`"${value}" is not an integer.`);
    if (n < min || n > max) throw new InvalidArgumentError(`${n} is outside ${min}..${max}.`);
    return n;
  };
}

export function floatOption(min: number, max = Number.POSITIVE_INFINITY) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`"${value}" is not a number.`);
    if (n < min || n > max) throw new InvalidArgumentError(`${n} is outside ${min}..${max}.`);
    return n;
  };
}

export function choiceOption<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value))
      throw new InvalidArgumentError(`"${value}" is not one of ${choices.join(', ')}.`);
    return value as T;
  };
}

/** A variadic choice option (`--flag a b`): validates each value; given values replace the default. */
export function collectChoices<T extends string>(choices: readonly T[], defaults: T[]) {
  const one = choiceOption(choices);
  const parse = (value: string, previous: T[]): T[] => [...(previous === defaults ? [] : previous), one(value)];
  return { parse, defaults };
}
