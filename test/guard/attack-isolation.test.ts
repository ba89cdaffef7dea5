/**
 * Attack suite, isolation: another tenant's and the host's objects are absent through the guard
 * (by name, full ID, ID prefix — answered exactly like a truly absent object), exec IDs belong to
 * their container's tenant, lists/events/df/prune are scoped, image tags of others cannot be
 * moved or removed, and unknown/dangerous endpoints are refused however spelled. Every attack is
 * checked directly on the engine: victims intact, nothing created.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { LABEL_TEST_SESSION } from '../../src/common/index.js';
import { containers, images } from '../../src/engine/index.js';
import { expectAbsent, expectRefused, messageOf, rawRequest, send } from '../support/rawhttp.js';
import type { RawResponse } from '../support/rawhttp.js';
import { SESSION, docker, uniqueName } from '../support/index.js';
import { parseEvents, replayWindow } from '../support/events.js';
import type { EngineEvent } from '../support/events.js';
import { IMAGE, setupArena } from './attack-harness.js';
import type { Arena } from './attack-harness.js';

const ABSENT = 'f00dfeedbeefcafe0123456789abcdef0123456789abcdef0123456789abcdef';

describe('guard attack suite: isolation', () => {
  let a: Arena;
  let own = '';
  const t0 = Math.floor(Date.now() / 1000) - 1;

  before(async () => {
    a = await setupArena('iso');
    const r = await docker(a.host, ['run', '-d', '--name', uniqueName('own'), IMAGE, 'sleep', '3600']);
    assert.equal(r.code, 0, r.stderr);
    own = r.stdout.trim();
  });
  after(async () => {
    if (a) {
      try {
        await a.victimsIntact();
      } finally {
        await a.close();
      }
    }
  });

  async function collect(
    fn: (check: (what: string, f: () => void | Promise<void>) => Promise<void>) => Promise<void>,
  ) {
    const failures: string[] = [];
    await fn(async (what, f) => {
      try {
        await f();
      } catch (err) {
        failures.push(`${what}: ${err instanceof Error ? (err.message.split('\n')[0] ?? '') : String(err)}`);
      }
    });
    assert.deepEqual(failures, [], `${failures.length} isolation breach(es):\n${failures.join('\n')}`);
  }

  /** Sends the same request for `ref` and for a truly absent reference; answers must match. */
  async function sameAsAbsent(
    method: string,
    tmpl: (ref: string) => string,
    ref: string,
    body?: string,
  ): Promise<void> {
    const req = (r: string) =>
      send(
        a.sock,
        {
          method,
          path: tmpl(r),
          headers: [
            ...(body !== undefined ? [['Content-Type', 'application/json'] as const] : []),
            // attach is a connection upgrade, as the docker CLI sends it
            ...(tmpl(r).includes('/attach')
              ? [['Connection', 'Upgrade'] as const, ['Upgrade', 'tcp'] as const]
              : []),
          ],
          body,
        },
        { timeoutMs: 8000 },
      );
    const victim = await req(ref);
    const absent = await req(ABSENT);
    expectAbsent(victim, `${method} ${tmpl(ref)}`);
    assert.equal(
      messageOf(victim),
      messageOf(absent)?.split(ABSENT).join(ref),
      `${method} ${tmpl(ref)}: the answer differs from a truly absent object's`,
    );
  }

  test('containers of others: every endpoint answers 404 like an absent one — name, full ID, prefix', async () => {
    const before = await a.snapshot();
    const name = async (id: string) => (await containers(a.c).inspect(id)).Name.slice(1);
    const refs: string[] = [];
    for (const id of [a.v.otherRunning, a.v.hostRunning, a.v.otherStopped, a.v.hostStopped])
      refs.push(id, id.slice(0, 12), id.slice(0, 4), await name(id));
    const endpoints: [string, (r: string) => string, string?][] = [
      ['GET', (r) => `/v1.41/containers/${r}/json`],
      ['GET', (r) => `/containers/${r}/top`],
      ['GET', (r) => `/v1.41/containers/${r}/logs?stdout=1&stderr=1`],
      ['GET', (r) => `/v1.41/containers/${r}/changes`],
      ['GET', (r) => `/v1.41/containers/${r}/export`],
      ['GET', (r) => `/v1.41/containers/${r}/stats?stream=false`],
      ['GET', (r) => `/v1.41/containers/${r}/archive?path=/etc/hostname`],
      ['PUT', (r) => `/v1.41/containers/${r}/archive?path=/tmp`, ''],
      ['POST', (r) => `/v1.41/containers/${r}/resize?h=10&w=10`],
      ['POST', (r) => `/v1.41/containers/${r}/start`],
      ['POST', (r) => `/v1.41/containers/${r}/stop?t=0`],
      ['POST', (r) => `/v1.41/containers/${r}/restart?t=0`],
      ['POST', (r) => `/v1.41/containers/${r}/kill`],
      ['POST', (r) => `/v1.41/containers/${r}/pause`],
      ['POST', (r) => `/v1.41/containers/${r}/unpause`],
      ['POST', (r) => `/v1.41/containers/${r}/update`, '{"Memory":6291456}'],
      ['POST', (r) => `/v1.41/containers/${r}/rename?name=${uniqueName('stolen')}`],
      ['POST', (r) => `/v1.41/containers/${r}/exec`, '{"Cmd":["true"]}'],
      ['POST', (r) => `/v1.41/containers/${r}/wait?condition=next-exit`],
      ['POST', (r) => `/v1.41/containers/${r}/attach?stream=1&stdout=1`],
      ['DELETE', (r) => `/v1.41/containers/${r}?force=1&v=1`],
      ['DELETE', (r) => `//v1.41/./containers/${r}?force=1`],
    ];
    await collect(async (check) => {
      for (const ref of refs)
        for (const [m, tmpl, body] of endpoints)
          await check(`${m} ${tmpl(ref)}`, () => sameAsAbsent(m, tmpl, ref, body));
      // commit names its container in the query.
      for (const ref of refs.slice(0, 4))
        await check(`commit ${ref}`, async () => {
          const r = await send(a.sock, {
            method: 'POST',
            path: `/v1.41/commit?container=${ref}&repo=berth-atk-commit-${SESSION}-iso`,
          });
          expectAbsent(r, `commit ${ref}`);
        });
    });
    await a.unchanged(before, 'container isolation');
    await a.victimsIntact();
    // The CLI sees the same.
    for (const ref of [a.v.otherRunning.slice(0, 12), await name(a.v.hostRunning)]) {
      for (const args of [
        ['inspect', ref],
        ['logs', ref],
        ['kill', ref],
        ['exec', ref, 'true'],
        ['cp', `${ref}:/etc/hostname`, '-'],
      ]) {
        const r = await docker(a.host, args);
        assert.notEqual(r.code, 0, `docker ${args.join(' ')} succeeded`);
        assert.match(r.stderr, /No such (container|object)/i, `docker ${args.join(' ')}`);
      }
    }
    await a.victimsIntact();
  });

  test('exec IDs of another tenant or the host are absent; they never start', async () => {
    const otherExec = await send(a.otherSock, {
      method: 'POST',
      path: `/v1.41/containers/${a.v.otherRunning}/exec`,
      headers: [['Content-Type', 'application/json']],
      body: '{"Cmd":["touch","/tmp/pwned"]}',
    });
    assert.equal(otherExec.status, 201, otherExec.text);
    const otherId = (JSON.parse(otherExec.text) as { Id: string }).Id;
    const hostId = (
      await a.c.json<{ Id: string }>('POST', `/containers/${a.v.hostRunning}/exec`, {
        body: { Cmd: ['touch', '/tmp/pwned'] },
      })
    ).Id;
    await collect(async (check) => {
      for (const id of [otherId, hostId, otherId.slice(0, 12)]) {
        for (const [m, path, body] of [
          ['GET', `/v1.41/exec/${id}/json`, undefined],
          ['POST', `/v1.41/exec/${id}/start`, '{"Detach":true}'],
          ['POST', `/exec/${id}/start`, '{"detach":false,"Tty":false}'],
          ['POST', `/v1.41/exec/${id}/resize?h=5&w=5`, undefined],
        ] as const) {
          await check(`${m} ${path}`, async () => {
            const r = await send(
              a.sock,
              { method: m, path, headers: body ? [['Content-Type', 'application/json']] : [], body },
              { timeoutMs: 8000 },
            );
            expectAbsent(r, `${m} ${path}`);
          });
        }
      }
    });
    for (const id of [otherId, hostId]) {
      const i = await a.c.json<{ Running: boolean; ExitCode: number | null; Pid: number }>(
        'GET',
        `/exec/${id}/json`,
      );
      assert.equal(i.Running, false, `exec ${id} was started`);
      assert.equal(i.Pid, 0, `exec ${id} was started`);
    }
  });

  test('networks and volumes of others: inspect, connect, disconnect, remove answer 404; lists hide them', async () => {
    const before = await a.snapshot();
    await collect(async (check) => {
      for (const net of [a.v.otherNetwork, a.v.hostNetwork, a.v.hostNetwork.slice(0, 12)]) {
        await check(`inspect network ${net}`, () => sameAsAbsent('GET', (r) => `/v1.41/networks/${r}`, net));
        await check(`remove network ${net}`, () =>
          sameAsAbsent('DELETE', (r) => `/v1.41/networks/${r}`, net),
        );
        await check(`connect own to ${net}`, async () => {
          const r = await send(a.sock, {
            method: 'POST',
            path: `/v1.41/networks/${net}/connect`,
            headers: [['Content-Type', 'application/json']],
            body: JSON.stringify({ Container: own }),
          });
          expectAbsent(r, `connect ${net}`);
        });
      }
      // Own network, other tenant's container: absent.
      const ownNet = (await docker(a.host, ['network', 'create', uniqueName('ownnet')])).stdout.trim();
      for (const victim of [a.v.otherRunning, a.v.hostRunning])
        for (const op of ['connect', 'disconnect'])
          await check(`${op} ${victim} on own network`, async () => {
            const r = await send(a.sock, {
              method: 'POST',
              path: `/v1.41/networks/${ownNet}/${op}`,
              headers: [['Content-Type', 'application/json']],
              body: JSON.stringify({ Container: victim, Force: true }),
            });
            expectAbsent(r, `${op} ${victim}`);
          });
      await docker(a.host, ['network', 'rm', ownNet]);
      for (const vol of [a.v.otherVolume, a.v.hostVolume]) {
        await check(`inspect volume ${vol}`, () => sameAsAbsent('GET', (r) => `/v1.41/volumes/${r}`, vol));
        await check(`remove volume ${vol}`, () =>
          sameAsAbsent('DELETE', (r) => `/v1.41/volumes/${r}?force=1`, vol),
        );
      }
      await check('lists', async () => {
        const list = async (path: string) => (await send(a.sock, { path })).text;
        const all = [
          await list('/v1.41/containers/json?all=1'),
          await list(
            `/v1.41/containers/json?all=1&filters=${encodeURIComponent(JSON.stringify({ label: [`io.berth.tenant=${a.other}`] }))}`,
          ),
          await list(
            `/v1.41/containers/json?all=1&filters=${encodeURIComponent(JSON.stringify({ id: [a.v.hostRunning] }))}`,
          ),
          await list('/v1.41/networks'),
          await list('/v1.41/volumes'),
          await list('/v1.41/system/df'),
        ].join('\n');
        for (const [what, id] of Object.entries(a.v) as [string, string][]) {
          if (what.endsWith('Tag')) continue;
          assert.ok(!all.includes(id), `${what} ${id} is listed to the attacker`);
        }
        assert.ok(all.includes(own), 'the attacker’s own container is listed (control)');
      });
      await check('counts', async () => {
        // docker info and system df count the tenant's containers, not the host's or others'.
        const mine = JSON.parse((await send(a.sock, { path: '/v1.41/containers/json?all=1' })).text) as {
          ImageID: string;
          State: string;
        }[];
        const info = JSON.parse((await send(a.sock, { path: '/v1.41/info' })).text) as Record<string, number>;
        assert.equal(info.Containers, mine.length);
        assert.equal(info.ContainersRunning, mine.filter((c) => c.State === 'running').length);
        const daemon = await a.c.json<{ Containers: number }>('GET', '/info');
        assert.ok(
          daemon.Containers > mine.length,
          'the daemon has more (the victims): the test means something',
        );
        const df = JSON.parse((await send(a.sock, { path: '/v1.41/system/df' })).text) as {
          Images: { Id: string; Containers: number }[];
        };
        for (const i of df.Images)
          assert.equal(i.Containers, mine.filter((c) => c.ImageID === i.Id).length, `containers of ${i.Id}`);
        assert.ok(df.Images.length > 0, 'the attacker’s image is counted (control)');
      });
    });
    await a.unchanged(before, 'network/volume isolation');
  });

  test('events are scoped: no event about others’ objects reaches the attacker', async () => {
    // Something happens to a victim and to the attacker's own container in the window (the victim
    // directly on the engine); the engine's own replay of the window must hold both.
    const w = await replayWindow({
      sock: a.sock,
      engine: a.c,
      act: async () => {
        for (const id of [a.v.hostRunning, own]) {
          await a.c.json('POST', `/containers/${id}/pause`);
          await a.c.json('POST', `/containers/${id}/unpause`);
        }
      },
      complete: (engine) =>
        engine.some((e) => e.Actor.ID === a.v.hostRunning && e.Action === 'pause') &&
        engine.some((e) => e.Actor.ID === own && e.Action === 'pause'),
    });
    const victims = new Set(Object.values(a.v));
    const leaked = (events: EngineEvent[]) =>
      events.filter(
        (e) => victims.has(e.Actor.ID) || Object.values(e.Actor.Attributes ?? {}).some((v) => victims.has(v)),
      );
    assert.ok(leaked(w.engine).length > 0, 'the engine’s own replay shows the victim’s events (control)');
    assert.deepEqual(leaked(w.events), [], 'events about others’ objects leaked');
    assert.ok(
      w.events.some((e) => e.Actor.ID === own && e.Action === 'pause'),
      'the attacker’s own events are there (control)',
    );
    // And whatever the engine still keeps of the suite so far (the attacks above) shows none either.
    const until = (Date.now() / 1000 + 0.3).toFixed(3);
    const r = await send(a.sock, { path: `/v1.41/events?since=${t0}&until=${until}` }, { timeoutMs: 20_000 });
    assert.equal(r.status, 200, r.text.slice(0, 200));
    assert.deepEqual(leaked(parseEvents(r.text)), [], 'events about others’ objects leaked (suite)');
  });

  test('prune is scoped: others’ stopped containers, unused volumes and networks survive', async () => {
    const f = encodeURIComponent(JSON.stringify({ label: [`${LABEL_TEST_SESSION}=${SESSION}`] }));
    for (const path of [
      `/v1.41/containers/prune?filters=${f}`,
      `/v1.41/volumes/prune?filters=${f}`,
      `/v1.41/networks/prune?filters=${f}`,
    ]) {
      const r = await send(a.sock, { method: 'POST', path });
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      for (const [what, id] of Object.entries(a.v) as [string, string][])
        assert.ok(!r.text.includes(id), `${path} reports ${what} as deleted`);
    }
    const cli = await docker(a.host, [
      'container',
      'prune',
      '-f',
      '--filter',
      `label=${LABEL_TEST_SESSION}=${SESSION}`,
    ]);
    assert.equal(cli.code, 0, cli.stderr);
    await a.victimsIntact();
  });

  test('image tags of the host and of another tenant cannot be moved, overwritten or removed', async () => {
    const tagOf = async (ref: string) => (await images(a.c).find(ref))?.Id;
    const hostRepo = a.v.hostTag.split(':')[0] ?? '';
    // A distinct image (its own ID) the host owns, for removal by ID and for a load that would move a tag.
    const distinctRepo = `berth-atk-host-${SESSION}-iso-load`;
    const { Id: distinct } = await a.c.json<{ Id: string }>('POST', '/commit', {
      query: { container: a.v.hostStopped, repo: distinctRepo, tag: 'v1' },
    });
    try {
      const tar = await new Promise<Buffer>((resolve, reject) => {
        void a.c.request({ path: `/images/${distinctRepo}:v1/get` }).then((res) => {
          const parts: Buffer[] = [];
          res.on('data', (b: Buffer) => parts.push(b));
          res.on('end', () => resolve(Buffer.concat(parts)));
          res.on('error', reject);
        }, reject);
      });
      // The host now points that tag at the base image; loading the tar would move it back.
      await images(a.c).tag(IMAGE, distinctRepo, 'v1');
      const base = await tagOf(IMAGE);
      await collect(async (check) => {
        for (const t of [a.v.hostTag, a.v.otherTag]) {
          const [repo = '', tag = ''] = t.split(':');
          await check(`tag over ${t}`, async () =>
            expectRefused(
              await send(a.sock, {
                method: 'POST',
                path: `/v1.41/images/${distinct}/tag?repo=${repo}&tag=${tag}`,
              }),
              'image-tag',
            ),
          );
          for (const p of [
            `/v1.41/images/${t}`,
            `/v1.41/images/${encodeURIComponent(t)}?force=1`,
            `//images/./${t}?noprune=1`,
          ])
            await check(`DELETE ${p}`, async () => {
              const r = await send(a.sock, { method: 'DELETE', path: p });
              assert.ok(r.status === 403 || r.status === 404, `${p}: ${r.status} ${r.text}`);
            });
          const cliTag = await docker(a.host, ['tag', IMAGE, t]);
          await check(`docker tag ${t}`, () => assert.match(cliTag.stderr, /berth: image-tag: /));
          const cliRmi = await docker(a.host, ['rmi', t]);
          await check(`docker rmi ${t}`, () => assert.notEqual(cliRmi.code, 0));
          const cliBuild = await docker(a.host, ['build', '-q', '-t', t, '-'], {
            input: 'FROM berth-local/busybox\nLABEL berth.attack=1\n',
          });
          await check(`docker build -t ${t}`, () => {
            assert.notEqual(cliBuild.code, 0, cliBuild.stdout);
            assert.match(cliBuild.stderr, /berth: image-tag: /);
          });
          // Last: if these get through, the guard then treats the attacker as the tag's owner.
          await check(`commit own to ${t}`, async () =>
            expectRefused(
              await send(a.sock, {
                method: 'POST',
                path: `/v1.41/commit?container=${own}&repo=${repo}&tag=${tag}`,
              }),
              'image-tag',
            ),
          );
          await check(`import to ${t}`, async () =>
            expectRefused(
              await send(a.sock, {
                method: 'POST',
                path: `/v1.41/images/create?fromSrc=-&repo=${repo}&tag=${tag}`,
                headers: [['Content-Type', 'application/x-tar']],
                body: tar.subarray(0, 0),
              }),
              'image-tag',
            ),
          );
        }
        await check('remove a host image by ID', async () => {
          const r = await send(a.sock, { method: 'DELETE', path: `/v1.41/images/${distinct}?force=1` });
          assert.ok(r.status === 403 || r.status === 404, `${r.status} ${r.text}`);
        });
        await check('load a tar that would move a host tag', async () => {
          const r = await rawRequest(a.sock, [
            Buffer.from(
              `POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\nContent-Length: ${tar.length}\r\nConnection: close\r\n\r\n`,
            ),
            tar,
          ]);
          const text = r.text;
          assert.ok(
            r.status === 403 || /berth: image-tag: /.test(text),
            `load: ${r.status} ${text.slice(0, 300)}`,
          );
        });
      });
      assert.equal(await tagOf(distinctRepo + ':v1'), base, 'the load moved the host’s tag');
      assert.ok(await images(a.c).find(distinct), 'the host’s image was removed');
      assert.equal(await tagOf(`${hostRepo}:v1`), base);
    } finally {
      await images(a.c)
        .remove(`${distinctRepo}:v1`)
        .catch(() => undefined);
      await images(a.c)
        .remove(distinct, true)
        .catch(() => undefined);
    }
    await a.victimsIntact();
  });

  test('endpoint: unknown and dangerous endpoints are refused however the path or method is spelled', async () => {
    const paths = [
      ['POST', '/swarm/init'],
      ['POST', '/v1.41/swarm/join'],
      ['GET', '/v1.41/swarm'],
      ['GET', '/v1.41/plugins'],
      ['POST', '/v1.41/plugins/pull?remote=127.0.0.1:9/x'],
      ['GET', '/v1.41/nodes'],
      ['GET', '/v1.41/services'],
      ['POST', '/v1.41/services/create'],
      ['GET', '/v1.41/secrets'],
      ['POST', '/v1.41/secrets/create'],
      ['GET', '/v1.41/configs'],
      ['GET', '/v1.41/tasks'],
      ['POST', '/session'],
      ['POST', '/grpc'],
      ['GET', '/libpod/containers/json'],
      ['GET', '/v1.41/libpod/info'],
      ['GET', '/v1.41/containers/json/../../swarm'],
      ['POST', '/v1.41/containers/%2e%2e/swarm/init'],
      ['POST', '/v1.41/containers/..%2F..%2Fswarm/init'],
      ['POST', '/v1.41/./swarm/./init'],
      ['POST', '/v1.41/swarm%2Finit'],
      ['POST', '/V1.41/swarm/init'],
      ['GET', '/v1.41/berth-no-such-endpoint'],
      ['GET', '/v9.99/plugins'],
    ] as const;
    await collect(async (check) => {
      for (const [m, p] of paths)
        await check(`${m} ${p}`, async () => {
          // A body dockerd itself would reject (no usable address), should anything get through.
          const body =
            '{"ListenAddr":"999.999.999.999:1","AdvertiseAddr":"999.999.999.999:1","RemoteAddrs":["127.0.0.1:9"]}';
          const r = await send(a.sock, {
            method: m,
            path: p,
            headers: [['Content-Type', 'application/json']],
            body,
          });
          expectRefused(r, 'endpoint', `${m} ${p}`);
        });
      // Method spellings: never a success, never forwarded.
      for (const m of ['post', 'Post', 'pOST']) {
        const name = uniqueName('meth');
        await check(`${m} containers/create`, async () => {
          let r: RawResponse | undefined;
          try {
            r = await send(a.sock, {
              method: m,
              path: `/v1.41/containers/create?name=${name}`,
              headers: [['Content-Type', 'application/json']],
              body: `{"Image":"${IMAGE}","HostConfig":{"Privileged":true}}`,
            });
          } catch {
            r = undefined; // the connection was refused outright: fine
          }
          assert.ok(r === undefined || r.status >= 400, `${m}: ${r?.status ?? ''} ${r?.text ?? ''}`);
          assert.equal(await containers(a.c).find(name), undefined, `${m}: created upstream`);
        });
      }
      for (const args of [
        ['swarm', 'init', '--listen-addr', '999.999.999.999:1', '--advertise-addr', '999.999.999.999:1'],
        ['plugin', 'ls'],
        ['secret', 'ls'],
        ['node', 'ls'],
        ['service', 'ls'],
        ['config', 'ls'],
      ]) {
        const r = await docker(a.host, args);
        await check(`docker ${args.join(' ')}`, () => {
          assert.notEqual(r.code, 0, r.stdout);
        });
      }
    });
    const info = await a.c.json<{ Swarm: { LocalNodeState: string } }>('GET', '/info');
    assert.equal(info.Swarm.LocalNodeState, 'inactive', 'swarm was initialised');
    assert.equal((await send(a.sock, { path: '/_ping' })).status, 200, 'the guard keeps serving');
  });
});
