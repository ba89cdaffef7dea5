// Compiles the guard's helpers (src/guard/native/*.c) into dist/native when a C compiler is there.
// Without one the guard relays bulk downloads in JavaScript and answers every request itself
// (slower, same answers).
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';

const cc = process.env.CC || 'cc';
mkdirSync('dist/native', { recursive: true });
const helpers = [
  { name: 'berth-splice', libs: [], without: 'the guard relays bulk downloads in JavaScript' },
  { name: 'berth-front', libs: ['-pthread'], without: 'the guard answers every request in JavaScript' },
];
for (const h of helpers) {
  const r = spawnSync(
    cc,
    [
      '-O2',
      '-Wall',
      '-Wextra',
      '-Werror',
      '-o',
      `dist/native/${h.name}`,
      `src/guard/native/${h.name}.c`,
      ...h.libs,
    ],
    { stdio: 'inherit' },
  );
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : `${cc} exited with ${r.status}`;
    console.warn(`berth: ${h.name} was not built (${why}); ${h.without}`);
  }
}
