#!/usr/bin/env node
/**
 * The berth CLI. Every command is registered from ./commands; errors are handled once, here:
 * a BerthError prints its message and hint and exits with its catalogue exit code; anything else is
 * a bug and exits 70 with the stack.
 */
import { Command, CommanderError } from 'commander';
import { BerthError, errorMessage } from '../common/index.js';
import { registerAll } from './commands/index.js';
import { VERSION } from './version.js';

export async function main(argv: string[]): Promise<number> {
  const program = new Command('berth')
    .description('Docker for every containerized CI job: safe, fast, and gone when the job ends.')
    .version(VERSION)
    .showHelpAfterError()
    .exitOverride();
  registerAll(program);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    return handleError(err);
  }
}

export function handleError(err: unknown): number {
  if (err instanceof CommanderError) {
    // Help and version are "errors" to commander; they exit 0 after printing.
    if (err.exitCode === 0) return 0;
    return 64;
  }
  if (err instanceof BerthError) {
    process.stderr.write(`berth: ${err.message}\n`);
    if (err.hint) process.stderr.write(`  hint: ${err.hint}\n`);
    if (process.env.BERTH_DEBUG && err.stack) process.stderr.write(`${err.stack}\n`);
    return err.exitCode;
  }
  process.stderr.write(`berth: internal error: ${errorMessage(err)}\n`);
  if (err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  return 70;
}

const isEntry =
  process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (isEntry || process.argv[1]?.endsWith('/berth')) {
  main(process.argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.exitCode = handleError(err);
    },
  );
}
