/** Where the guard's compiled helpers are (scripts/build-native.mjs builds them when a C compiler is there). */
import { accessSync, constants } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Next to the built guard (dist/native), or dist/native when run from sources. */
const PLACES = ['../native/', '../../dist/native/'];

const found = new Map<string, string | undefined>();

/** The helper's path, or undefined when it was not built. */
export function nativeHelper(name: 'berth-splice' | 'berth-front'): string | undefined {
  if (!found.has(name)) {
    found.set(name, undefined);
    for (const place of PLACES) {
      const p = fileURLToPath(new URL(place + name, import.meta.url));
      try {
        accessSync(p, constants.X_OK);
        found.set(name, p);
        break;
      } catch {
        // not there: the next place
      }
    }
  }
  return found.get(name);
}
