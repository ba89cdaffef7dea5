/**
 * A JSON parser that keeps every key of an object in order, duplicates included, so the guard can
 * decode bodies the way Go's encoding/json does (JSON.parse silently keeps only the last exact
 * duplicate, at the first one's position, which is not how dockerd sees it). Pure.
 */

/** An object as written: every [key, value] pair in order. */
export class JObject {
  constructor(readonly pairs: [string, JValue][]) {}
}
export type JValue = null | boolean | number | string | JValue[] | JObject;

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`${message} at offset ${offset}`);
  }
}

const MAX_DEPTH = 64;

export function parseOrdered(text: string): JValue {
  let i = 0;
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const fail = (msg: string): never => {
    throw new JsonSyntaxError(msg, i);
  };
  const str = (): string => {
    const start = i;
    i++; // opening quote
    while (i < text.length) {
      const c = text[i];
      if (c === '"') break;
      if (c === '\\') i += 2;
      else {
        if ((c ?? '').charCodeAt(0) < 0x20) fail('control character in string');
        i++;
      }
    }
    if (i >= text.length) fail('unterminated string');
    i++;
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      return fail('bad string escape');
    }
  };
  const value = (depth: number): JValue => {
    if (depth > MAX_DEPTH) fail('nested too deeply');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const pairs: [string, JValue][] = [];
      ws();
      if (text[i] === '}') {
        i++;
        return new JObject(pairs);
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const k = str();
        ws();
        if (text[i] !== ':') fail('expected :');
        i++;
        pairs.push([k, value(depth + 1)]);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return new JObject(pairs);
        }
        fail('expected , or }');
      }
    }
    if (c === '[') {
      i++;
      const arr: JValue[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail('expected , or ]');
      }
    }
    if (c === '"') return str();
    const m = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i, i + 400));
    if (!m) return fail('unexpected token');
    i += m[0].length;
    if (m[0] === 'true') return true;
    if (m[0] === 'false') return false;
    if (m[0] === 'null') return null;
    return Number(m[0]);
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail('unexpected data after the value');
  return v;
}

/** Plain JS value with Go map semantics (last duplicate of an exact key wins). */
export function toPlain(v: JValue): unknown {
  if (v instanceof JObject) {
    const out: Record<string, unknown> = {};
    for (const [k, val] of v.pairs) {
      Object.defineProperty(out, k, {
        value: toPlain(val),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  if (Array.isArray(v)) return v.map(toPlain);
  return v;
}
