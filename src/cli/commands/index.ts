/** Every CLI command, registered on the root program. One module per command group. */
import type { Command } from 'commander';

type Register = (program: Command) => void;

const registrations: Register[] = [];

export function registerAll(program: Command): void {
  for (const register of registrations) register(program);
}
