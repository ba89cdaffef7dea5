/**
 * The CLI loads the server (its SQL drivers) and the bench only for their own commands. A process
 * running `berth guard` then keeps a small heap, and V8 frees the relay's upload buffers with cheap
 * scavenges; with the server loaded it ran a full mark-compact every ~20 MiB of build context and
 * lost about 15% of upload throughput (measured with --trace-gc; see serve.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const commands = fileURLToPath(new URL('./index.ts', import.meta.url));

/** The packages (CommonJS, as the SQL drivers are) a fresh process has loaded after `script`. */
async function loadedAfter(script: string): Promise<{ packages: string[] }> {
  const probe = `
    import { createRequire } from 'node:module';
    ${script}
    const cjs = Object.keys(createRequire(import.meta.url).cache);
    const packages = [...new Set(cjs.map((p) => /node_modules\\/((?:@[^/]+\\/)?[^/]+)/.exec(p)?.[1]).filter(Boolean))];
    console.log(JSON.stringify({ packages }));
  `;
  const { stdout } = await run(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '--eval', probe],
    { cwd: fileURLToPath(new URL('../../..', import.meta.url)) },
  );
  const { packages } = JSON.parse(stdout) as { packages: string[] };
  return { packages };
}

test('registering every command does not load the server (pg is a package only the server uses)', async () => {
  const { packages } = await loadedAfter(`
    const { registerAll } = await import(${JSON.stringify(commands)});
    const { Command } = await import('commander');
    registerAll(new Command('berth'));
  `);
  assert.ok(packages.includes('commander'), `the probe sees loaded packages: ${packages.join(', ')}`);
  assert.ok(!packages.includes('pg'), `pg was loaded: ${packages.join(', ')}`);
});

test('the serve command still loads the server when it runs', async () => {
  const { packages } = await loadedAfter(`
    const { registerAll } = await import(${JSON.stringify(commands)});
    const { Command } = await import('commander');
    const program = new Command('berth').exitOverride();
    registerAll(program);
    process.env.BERTH_TOKEN = 't';
    // An unusable port makes startServer fail after the server's modules are loaded.
    await program.parseAsync(['node', 'berth', 'serve', '--port', 'x']).catch(() => undefined);
  `);
  assert.ok(packages.includes('pg'), packages.join(', '));
});
