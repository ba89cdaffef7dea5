import type { Command } from 'commander';
import { BerthError } from '../../common/index.js';
import { DockerClient } from '../../engine/index.js';
import { LOCAL_IMAGES, ensureLocalImages } from '../../images/index.js';
import type { LocalImage } from '../../images/index.js';

export function registerImages(program: Command): void {
  const imagesCmd = program.command('images').description('images berth needs without a registry');
  imagesCmd
    .command('build-local')
    .description(
      'build berth-local/busybox, berth-local/tools and berth-local/dind from this machine’s own files',
    )
    .argument('[image...]', `only these (${LOCAL_IMAGES.join(', ')})`)
    .option('--force', 'rebuild even when the cache key matches')
    .action(async (only: string[], o: { force?: boolean }) => {
      for (const i of only) {
        if (!(LOCAL_IMAGES as readonly string[]).includes(i)) {
          throw new BerthError('BERTH_USAGE', `unknown local image ${i}`, {
            hint: `one of ${LOCAL_IMAGES.join(', ')}`,
          });
        }
      }
      using client = new DockerClient();
      const results = await ensureLocalImages(client, {
        only: only as LocalImage[],
        force: o.force === true,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      for (const r of results) {
        process.stdout.write(`${r.name}: ${r.action} (key ${r.key}) in ${(r.ms / 1000).toFixed(1)} s\n`);
      }
    });
}
