/** Every CLI command, registered on the root program. One module per command group. */
import type { Command } from 'commander';
import { registerBench } from './bench.js';

type Register = (program: Command) => void;

const registrations: Register[] = [registerBench];

export function registerAll(program: Command): void {
  for (const register of registrations) register(program);
}
