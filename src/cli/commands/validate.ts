import type { Command } from 'commander';
import { PipelineError, formatProblems, loadPipeline, plan } from '../../pipeline/index.js';

/** `berth validate [FILE]`: exit 0 when valid, 2 with every problem listed when not. */
export function registerValidate(program: Command): void {
  program
    .command('validate')
    .description('check a berth.yml pipeline without running it (exit 2 when invalid)')
    .argument('[file]', 'the pipeline file', 'berth.yml')
    .option('--json', 'print the result as JSON')
    .action((file: string, o: { json?: boolean }) => {
      try {
        const pipeline = loadPipeline(file);
        const p = plan(pipeline);
        if (o.json) {
          process.stdout.write(
            `${JSON.stringify({ valid: true, file, jobs: pipeline.jobs, layers: p.layers }, null, 2)}\n`,
          );
        } else {
          process.stdout.write(
            `${file}: valid (${pipeline.jobs.length} job${pipeline.jobs.length === 1 ? '' : 's'})\n`,
          );
          p.layers.forEach((layer, i) => {
            process.stdout.write(`  stage ${i + 1}: ${layer.join(', ')}\n`);
          });
        }
      } catch (err) {
        if (!(err instanceof PipelineError)) throw err;
        if (o.json)
          process.stdout.write(
            `${JSON.stringify({ valid: false, file, problems: err.problems }, null, 2)}\n`,
          );
        else {
          process.stderr.write(`${formatProblems(err.problems)}\n`);
          process.stderr.write(
            `${file}: ${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}\n`,
          );
        }
        process.exitCode = 2;
      }
    });
}
