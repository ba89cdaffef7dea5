import { test } from 'node:test';
import assert from 'node:assert/strict';
import { haproxyConfig } from './contenders.js';
import { rows, toMarkdown } from './report.js';
import type { BenchReport } from './report.js';

const report: BenchReport = {
  date: '2026-11-23T00:00:00.000Z',
  machine: {
    cores: 2,
    memoryGiB: 23.5,
    engineVersion: '20.10.24',
    apiVersion: '1.41',
    storageDriver: 'overlay2',
    kernel: '6.1',
    node: 'v20',
  },
  mode: 'full',
  reps: 3,
  contenders: [
    { id: 'raw', title: 'raw socket' },
    { id: 'guard', title: 'berth guard' },
  ],
  skipped: [{ id: 'dind-plain', reason: 'no image' }],
  retried: [{ id: 'save/haproxy#2', reason: 'stalled: no bytes for 30 s after 5 bytes' }],
  notes: ['a note'],
  measurements: [
    {
      scenario: 'api',
      metric: 'ping_p50',
      unit: 'ms',
      better: 'lower',
      contender: 'raw',
      samples: [0.2, 0.3, 0.25],
    },
    {
      scenario: 'api',
      metric: 'ping_p50',
      unit: 'ms',
      better: 'lower',
      contender: 'guard',
      samples: [0.3, 0.4, 0.35],
    },
    {
      scenario: 'save',
      metric: 'throughput',
      unit: 'MiB/s',
      better: 'higher',
      contender: 'raw',
      samples: [200, 180, 220],
    },
    {
      scenario: 'save',
      metric: 'throughput',
      unit: 'MiB/s',
      better: 'higher',
      contender: 'guard',
      samples: [190],
    },
  ],
};

test('ratios are computed against the raw socket of the same run', () => {
  const r = rows(report);
  const guardPing = r.find((x) => x.contender === 'guard' && x.metric === 'ping_p50');
  assert.ok(guardPing?.ratio !== undefined);
  assert.ok(Math.abs(guardPing.ratio - 0.35 / 0.25) < 1e-9);
  assert.equal(r.find((x) => x.contender === 'raw' && x.scenario === 'save')?.ratio, 1);
});

test('the Markdown names the machine, the skipped contenders, and shows ratio and ms difference', () => {
  const md = toMarkdown(report, { api: 'API round trip', save: 'docker save' });
  assert.match(md, /2 cores · 23\.5 GiB · engine 20\.10\.24 \(API 1\.41, overlay2\)/);
  assert.match(md, /Not measured: dind-plain \(no image\)/);
  assert.match(
    md,
    /Failed once, then run again: save\/haproxy#2 \(stalled: no bytes for 30 s after 5 bytes\)/,
  );
  assert.match(md, /\| ping_p50 \(ms\) \| 0\.25 ±0\.025 \| 0\.35 ±0\.025 \(1\.4×, \+0\.1 ms\) \|/);
  assert.match(md, /\| throughput \(MiB\/s\) \| 200 ±10 \| 190 \(0\.95×\) \|/);
  assert.match(md, /- a note/);
});

test('with rounds recorded, a contender is compared with the raw socket round by round', () => {
  // Raw drifts from 100 to 300 MiB/s; the guard is 0.9 of raw in every round but the fourth,
  // which it lacks (that round failed twice). The ratio of the medians would say 158/200 = 0.79.
  const rawSamples = [100, 300, 150, 250, 200, 120, 280];
  const guardSamples = [90, 270, 135, 180, 108, 252];
  const m = (contender: 'raw' | 'guard', samples: number[], rounds: number[]) => ({
    scenario: 'cp',
    metric: 'throughput',
    unit: 'MiB/s' as const,
    better: 'higher' as const,
    contender,
    samples,
    rounds,
  });
  const list = (contender: 'raw' | 'guard', samples: number[]) => ({
    scenario: 'api',
    metric: 'list_p50',
    unit: 'ms' as const,
    better: 'lower' as const,
    contender,
    samples,
    rounds: [0, 1, 2, 3, 4, 5],
  });
  const run: BenchReport = {
    ...report,
    measurements: [
      m('raw', rawSamples, [0, 1, 2, 3, 4, 5, 6]),
      m('guard', guardSamples, [0, 1, 2, 4, 5, 6]),
      list('raw', [4, 4.4, 4.2, 4.1, 4.3, 4.5]),
      list('guard', [4.1, 4.51, 4.32, 4.21, 4.4, 4.62]),
    ],
  };
  const r = rows(run);
  const cp = r.find((x) => x.contender === 'guard' && x.scenario === 'cp');
  assert.equal(cp?.pairs, 6);
  assert.ok(Math.abs((cp?.ratio ?? 0) - 0.9) < 1e-9);
  assert.ok(Math.abs((cp?.ratioInterval?.low ?? 0) - 0.9) < 1e-9);
  const listed = r.find((x) => x.contender === 'guard' && x.scenario === 'api');
  assert.ok(Math.abs((listed?.delta ?? 0) - 0.11) < 1e-9);
  assert.ok(Math.abs((listed?.deltaInterval?.low ?? 0) - 0.1) < 1e-9);
  assert.ok(Math.abs((listed?.deltaInterval?.high ?? 0) - 0.12) < 1e-9);
  const md = toMarkdown(run, {});
  assert.match(md, /\| throughput \(MiB\/s\) \| 200 ±65 \| 158 ±[0-9.]+ \(0\.9× \[0\.9–0\.9\]\) \|/);
  assert.match(
    md,
    /\| list_p50 \(ms\) \| [0-9.]+ ±[0-9.]+ \| [0-9.]+ ±[0-9.]+ \([0-9.]+×, \+0\.11 ms \[\+0\.1, \+0\.12\]\) \|/,
  );
});

test('the HAProxy contender filters by path prefix only, after stripping the version', () => {
  const cfg = haproxyConfig('/tmp/h.sock', '/var/run/docker.sock');
  assert.match(cfg, /bind unix@\/tmp\/h\.sock mode 666/);
  assert.match(cfg, /server engine \/var\/run\/docker\.sock/);
  assert.match(cfg, /regsub\(\^\/v\[0-9\.\]\+\/,\/\)/);
  assert.match(cfg, /http-request deny unless allowed/);
  assert.doesNotMatch(cfg, /plugins|swarm|secrets/);
});

test('a metric that is already a difference from the raw socket gets its own median and interval', () => {
  // Six rounds of a proxy's per-request added time; the raw socket has no samples of it.
  const added = [0.12, 0.09, 0.1, 0.11, 0.13, 0.08];
  const run: BenchReport = {
    ...report,
    measurements: [
      {
        scenario: 'api',
        metric: 'list_p50',
        unit: 'ms',
        better: 'lower',
        contender: 'raw',
        samples: [9, 9, 9, 9, 9, 9],
        rounds: [0, 1, 2, 3, 4, 5],
      },
      {
        scenario: 'api',
        metric: 'list_added_p50',
        unit: 'ms',
        better: 'lower',
        contender: 'guard',
        samples: added,
        rounds: [0, 1, 2, 3, 4, 5],
        versus: 'raw',
      },
    ],
  };
  const row = rows(run).find((x) => x.metric === 'list_added_p50');
  assert.ok(row);
  assert.equal(row.ratio, undefined);
  assert.ok(Math.abs((row.delta ?? 0) - 0.105) < 1e-9);
  // Six values: the interval is their range (coverage 1 − 2/64).
  assert.deepEqual([row.deltaInterval?.low, row.deltaInterval?.high], [0.08, 0.13]);
  const md = toMarkdown(run, {});
  assert.match(md, /\| list_added_p50 \(ms\) \| – \| \+0\.105 ms \[\+0\.08, \+0\.13\] \|/);
});
