// Option parsers shared by the subcommands: each names the flag and the accepted values on error.
import { InvalidArgumentError, type Command } from 'commander';
import { ROUTING_POOLS, ROUTING_RULES, VARIANTS } from '../shared/model/config.js';

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

/** The model's architecture flags (variant, size, width, capsule dims, routing), one definition for every command. */
export function addArchitectureOptions(cmd: Command, imageSize: number): Command {
  return cmd
    .option('--variant <v>', `model variant (${VARIANTS.join('|')})`, choiceOption(VARIANTS), 'sc')
    .option('--image-size <n>', 'input side in pixels (multiple of 16)', intOption(16, 1024), imageSize)
    .option('--width <x>', 'channel width multiplier', floatOption(0.01, 8), 1)
    .option('--primary-dim <n>', 'primary capsule dimension', intOption(2, 64), 16)
    .option('--class-dim <n>', 'class capsule dimension', intOption(2, 64), 16)
    .option('--routing-iterations <n>', 'dynamic routing iterations', intOption(1, 10), 3)
    .option(
      '--routing-rule <r>',
      `routing logit update (${ROUTING_RULES.join('|')})`,
      choiceOption(ROUTING_RULES),
      'reassign',
    )
    .option(
      '--routing-pool <p>',
      `class capsule input: coupling-weighted ${ROUTING_POOLS.join('|')} of predictions (sum = reference)`,
      choiceOption(ROUTING_POOLS),
      'sum',
    );
}
