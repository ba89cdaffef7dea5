// Compiles the guard's splice helper (src/guard/native/berth-splice.c) into dist/native when a C
// compiler is there. Without one the guard relays bulk downloads in JavaScript (slower, same bytes).
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';

const cc = process.env.CC || 'cc';
const out = 'dist/native/berth-splice';
mkdirSync('dist/native', { recursive: true });
const r = spawnSync(
  cc,
  ['-O2', '-Wall', '-Wextra', '-Werror', '-o', out, 'src/guard/native/berth-splice.c'],
  {
    stdio: 'inherit',
  },
);
if (r.error || r.status !== 0) {
  const why = r.error ? r.error.message : `${cc} exited with ${r.status}`;
  console.warn(
    `berth: the splice helper was not built (${why}); the guard relays bulk downloads in JavaScript`,
  );
}
