#!/usr/bin/env node
// Architecture check: a file under src/<subsystem>/ may import another subsystem only through
// that subsystem's index.ts (its public API). Relative imports inside one subsystem are free.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..', 'src');
const importRe = /(?:import|export)\s[^'"]*?from\s+['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g;

function* walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.ts')) yield p;
  }
}

const problems = [];
for (const file of walk(root)) {
  const rel = relative(root, file);
  const own = rel.split(sep)[0];
  const text = readFileSync(file, 'utf8');
  for (const m of text.matchAll(importRe)) {
    const spec = m[1] ?? m[2];
    const target = relative(root, resolve(dirname(file), spec));
    const parts = target.split(sep);
    if (parts[0] === '..' || parts.length < 2) continue;
    const sub = parts[0];
    if (sub === own) continue;
    const isIndex = parts.length === 2 && /^index\.(js|ts)$/.test(parts[1]);
    if (!isIndex) {
      const line = text.slice(0, m.index).split('\n').length;
      problems.push(
        `src/${rel}:${line}: imports ${spec} — use src/${sub}/index.ts (the subsystem's public API)`,
      );
    }
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  console.error(`\n${problems.length} import(s) cross a subsystem boundary.`);
  process.exit(1);
}
console.log('boundaries: every cross-subsystem import goes through an index.ts');
