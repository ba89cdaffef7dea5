/** Every CLI command, registered on the root program. One module per command group. */
import type { Command } from 'commander';
import { registerBench } from './bench.js';
import { registerDoctor } from './doctor.js';
import { registerDind } from './dind.js';
import { registerEngine } from './engine.js';
import { registerGuard } from './guard.js';
import { registerImages } from './images.js';
import { registerRun } from './run.js';
import { registerValidate } from './validate.js';
import { registerServe } from './serve.js';

type Register = (program: Command) => void;

const registrations: Register[] = [
  registerEngine,
  registerImages,
  registerDoctor,
  registerGuard,
  registerDind,
  registerRun,
  registerValidate,
  registerServe,
  registerBench,
];

export function registerAll(program: Command): void {
  for (const register of registrations) register(program);
}
