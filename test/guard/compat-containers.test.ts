/**
 * Compatibility, containers: Debian's docker CLI through berth guard for what a CI job does with
 * containers beyond a plain `run` (src/guard/core.int.test.ts has run -d/-i, exit codes, exec, cp
 * into bind paths, networks by name): TTYs (`run -it`, `exec -t`, under `script` for a terminal),
 * attach, exec -i, logs -f and events held open past any idle timeout, stats, top, wait, kill,
 * pause, rename, update, restart, ps filters, inspect and cp both ways. Every check reads what the
 * command did, and upstream state where it matters.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { DOCKER_CLI, docker, engine, run, sessionLabels, tempDir, uniqueName } from '../support/index.js';

const IMAGE = 'berth-local/busybox';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('compatibility: containers through berth guard (docker CLI)', () => {
  const c = engine();
  const dir = tempDir('berth-compat-c-');
  const tenant = uniqueName('compc');
  let guard: GuardHandle;
  let host = '';
  const dockerOk = async (args: string[], input?: string) => {
    const r = await docker(host, args, input === undefined ? {} : { input });
    assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  /** Runs a docker command under `script`, so the CLI has a terminal (as in an interactive shell). */
  const inTerminal = (cmd: string) =>
    run('script', ['-qec', cmd, '/dev/null'], { env: { DOCKER_HOST: host }, timeoutMs: 60_000 });

  before(async () => {
    guard = await createGuard({ tenant, listen: join(dir.path, 'docker.sock'), labels: sessionLabels() });
    host = guard.address;
  });

  after(async () => {
    await guard.close({ cleanup: true });
    const left = await containers(c).list({ all: true, filters: { label: [`${LABEL_TENANT}=${tenant}`] } });
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(
      left.map((x) => x.Names),
      [],
      'close({ cleanup }) removes every container of the tenant',
    );
  });

  test('run -it gets a terminal and its exit code; exec -t too; exec -i reads stdin to EOF', async () => {
    const it = await inTerminal(`${DOCKER_CLI} run -it --rm --network none ${IMAGE} sh -c 'tty; exit 3'`);
    assert.equal(it.code, 3, it.stdout + it.stderr);
    assert.match(it.stdout, /\/dev\/pts\/\d+/);
    const name = uniqueName('box');
    await dockerOk(['run', '-d', '--name', name, '--network', 'none', IMAGE, 'sleep', '600']);
    const et = await inTerminal(`${DOCKER_CLI} exec -it ${name} sh -c 'tty; stty size; exit 4'`);
    assert.equal(et.code, 4, et.stdout + et.stderr);
    assert.match(et.stdout, /\/dev\/pts\/\d+/);
    const ei = await docker(host, ['exec', '-i', name, 'sh', '-c', 'cat; echo done'], {
      input: 'from stdin\n',
    });
    assert.equal(ei.code, 0, ei.stderr);
    assert.equal(ei.stdout, 'from stdin\ndone\n');
    const code = await docker(host, ['exec', name, 'sh', '-c', 'exit 7']);
    assert.equal(code.code, 7);
  });

  test('attach: stdin reaches the container, its output comes back, the exit code too', async () => {
    const name = uniqueName('reader');
    await dockerOk([
      'run',
      '-di',
      '--name',
      name,
      '--network',
      'none',
      IMAGE,
      'sh',
      '-c',
      'read line; echo "got $line"; exit 6',
    ]);
    // Stdin stays open (as a user's terminal would); the container answers and exits.
    const attach = spawn(DOCKER_CLI, ['attach', name], { env: { ...process.env, DOCKER_HOST: host } });
    let out = '';
    attach.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((r) => attach.once('exit', (code) => r(code)));
    await sleep(300);
    attach.stdin.write('hello\n');
    const code = await Promise.race([exited, sleep(20_000).then(() => 'timeout' as const)]);
    attach.kill();
    assert.equal(out, 'got hello\n');
    assert.equal(code, 6);
    const state = await containers(c).inspect(name);
    assert.equal(state.State.ExitCode, 6);
  });

  test('logs -f and events stay open with nothing to say; stats, top, wait and kill work', async () => {
    const name = uniqueName('ticker');
    await dockerOk([
      'run',
      '-d',
      '--name',
      name,
      '--network',
      'none',
      IMAGE,
      'sh',
      '-c',
      'i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done',
    ]);
    const env = { ...process.env, DOCKER_HOST: host };
    const follow = spawn(DOCKER_CLI, ['logs', '-f', name], { env });
    const events = spawn(DOCKER_CLI, ['events', '--format', '{{.Type}} {{.Action}} {{.Actor.ID}}'], { env });
    let out = '';
    let evs = '';
    follow.stdout.on('data', (b: Buffer) => (out += b.toString()));
    events.stdout.on('data', (b: Buffer) => (evs += b.toString()));
    try {
      // Events has nothing to say for 8 s; both must still be open afterwards.
      await sleep(8_000);
      assert.equal(follow.exitCode, null, 'logs -f is still following');
      assert.equal(events.exitCode, null, 'events is still open');
      assert.match(out, /tick 6/);
      const top = await dockerOk(['top', name]);
      assert.match(top, /sleep 1|while true/);
      const stats = await dockerOk(['stats', '--no-stream', '--format', '{{.Name}} {{.MemUsage}}', name]);
      assert.match(stats, new RegExp(`^${name} \\d`));
      const waiting = docker(host, ['wait', name]);
      await dockerOk(['kill', name]);
      const waited = await waiting;
      assert.equal(waited.stdout.trim(), '137');
      const id = (await containers(c).inspect(name)).Id;
      for (let i = 0; i < 50 && !evs.includes(`container die ${id}`); i++) await sleep(100);
      assert.match(evs, new RegExp(`container kill ${id}`));
      assert.match(evs, new RegExp(`container die ${id}`));
      await sleep(1_000);
      assert.equal(follow.exitCode ?? 0, 0, 'logs -f ends when the container does');
    } finally {
      follow.kill();
      events.kill();
    }
  });

  test('pause, rename, update, restart, inspect and ps filters', async () => {
    const name = uniqueName('svc');
    const id = (
      await dockerOk([
        'run',
        '-d',
        '--name',
        name,
        '--label',
        'compat=svc',
        '--network',
        'none',
        IMAGE,
        'sleep',
        '600',
      ])
    ).trim();
    await dockerOk(['pause', name]);
    assert.equal(((await containers(c).inspect(id)).State as { Paused?: boolean }).Paused, true);
    assert.equal(await dockerOk(['inspect', '-f', '{{.State.Status}}', name]), 'paused\n');
    await dockerOk(['unpause', name]);
    const renamed = uniqueName('renamed');
    await dockerOk(['rename', name, renamed]);
    assert.equal((await containers(c).inspect(id)).Name, `/${renamed}`);
    await dockerOk(['update', '--memory', '64m', '--memory-swap', '128m', renamed]);
    assert.equal((await containers(c).inspect(id)).HostConfig.Memory, 64 * 1024 * 1024);
    const startedAt = async () =>
      ((await containers(c).inspect(id)).State as { StartedAt?: string }).StartedAt;
    const before = await startedAt();
    await dockerOk(['restart', '-t', '0', renamed]);
    assert.ok((await containers(c).inspect(id)).State.Running, 'running again');
    assert.notEqual(await startedAt(), before, 'restarted');
    const stopped = uniqueName('stopped');
    await dockerOk(['create', '--name', stopped, '--network', 'none', IMAGE, 'true']);
    await dockerOk(['start', '-a', stopped]);
    const byName = await dockerOk(['ps', '-a', '--filter', `name=${renamed}`, '--format', '{{.Names}}']);
    assert.equal(byName, `${renamed}\n`);
    const byLabel = await dockerOk(['ps', '--filter', 'label=compat=svc', '--format', '{{.Names}}']);
    assert.equal(byLabel, `${renamed}\n`);
    const exited = await dockerOk(['ps', '-a', '--filter', 'status=exited', '--format', '{{.Names}}']);
    assert.ok(exited.split('\n').includes(stopped) && !exited.includes(renamed), exited);
    await dockerOk(['rm', '-f', renamed, stopped]);
    assert.equal(await containers(c).find(id), undefined);
  });

  test('cp both ways, files and directories', async () => {
    const name = uniqueName('files');
    await dockerOk(['run', '-d', '--name', name, '--network', 'none', IMAGE, 'sleep', '600']);
    const src = join(dir.path, 'in');
    mkdirSync(join(src, 'sub'), { recursive: true });
    writeFileSync(join(src, 'a.txt'), 'alpha\n');
    writeFileSync(join(src, 'sub', 'b.txt'), 'beta\n');
    await dockerOk(['cp', join(src, 'a.txt'), `${name}:/a.txt`]);
    await dockerOk(['cp', src, `${name}:/tree`]);
    assert.equal(await dockerOk(['exec', name, 'cat', '/a.txt', '/tree/sub/b.txt']), 'alpha\nbeta\n');
    await dockerOk(['exec', name, 'sh', '-c', 'mkdir -p /out/deep && echo gamma > /out/deep/c.txt']);
    const back = join(dir.path, 'back');
    await dockerOk(['cp', `${name}:/out`, back]);
    assert.equal(readFileSync(join(back, 'deep', 'c.txt'), 'utf8'), 'gamma\n');
    await dockerOk(['cp', `${name}:/a.txt`, join(dir.path, 'a-back.txt')]);
    assert.equal(readFileSync(join(dir.path, 'a-back.txt'), 'utf8'), 'alpha\n');
    // A tar on stdout, as `docker cp ctr:/path -` streams it.
    const tar = await docker(host, ['cp', `${name}:/tree/sub/b.txt`, '-']);
    assert.equal(tar.code, 0, tar.stderr);
    assert.ok(tar.stdout.includes('beta\n') && tar.stdout.includes('b.txt'), 'a tar holding the file');
    await dockerOk(['rm', '-f', name]);
  });
});
