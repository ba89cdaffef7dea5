/**
 * What a Dockerfile asks dockerd to fetch. The legacy builder downloads `ADD <url>` sources itself,
 * in the daemon, from the host's network: a tenant's build could read any address the host can
 * (services bound to the host's loopback, metadata endpoints) into its image. The guard refuses
 * builds whose Dockerfile (or whose base image's ONBUILD triggers) has an ADD source that is a URL
 * or that a variable could turn into one. The file is read every way dockerd's parsers have read
 * it (either escape character, whatever the directives say; both continuation rules), with
 * comments and blank lines inside continuations, case-insensitive instructions, flags, JSON and
 * whitespace forms, ONBUILD; what any reading would run counts. A source is judged after quotes
 * and escape characters are taken out, as the builder's word processing takes them out. Pure.
 */

export interface DockerfileFacts {
  /** Why the build may not run (each remote or variable ADD source), empty when nothing. */
  refusals: string[];
  /** Images the stages start from, named literally (not `scratch`, not an earlier stage). */
  bases: string[];
  /** The bases a stage names a platform for (`FROM --platform=…`), with that platform. */
  platforms: [base: string, platform: string][];
}

interface Instruction {
  keyword: string;
  rest: string;
  line: number;
}

/**
 * How a Dockerfile's lines may be read. dockerd's parser has changed between versions (which
 * lines end in a continuation, which comment lines count as directives), so the guard reads the
 * file every way and refuses what any reading would run: both escape characters, and a trailing
 * escape continuing the line whatever precedes it (older parsers) or only when it is not itself
 * escaped (`\\` at the end of a line; newer ones).
 */
interface Reading {
  escape: '\\' | '`';
  /** A trailing escape continues the line only when the character before it is not an escape. */
  strict: boolean;
}

const DEFAULT_READING: Reading = { escape: '\\', strict: true };

const READINGS: readonly Reading[] = [
  DEFAULT_READING,
  { escape: '\\', strict: false },
  { escape: '`', strict: true },
  { escape: '`', strict: false },
];

/** The instructions of a Dockerfile, continuation lines joined, comments dropped. */
export function instructions(text: string, reading: Reading = DEFAULT_READING): Instruction[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const { escape, strict } = reading;
  const out: Instruction[] = [];
  let current = '';
  let start = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] ?? '';
    const trimmed = raw.trimStart();
    // Comment lines and blank lines are skipped, inside a continuation too.
    if (trimmed.startsWith('#') || trimmed.trim() === '') continue;
    if (current === '') start = i + 1;
    // A line ending in the escape character (spaces after it allowed) goes on with the next one,
    // joined as it is: nothing is put between the two.
    const t = raw.replace(/[ \t]+$/, '');
    const body = t.slice(0, t.length - 1);
    if (t.endsWith(escape) && (!strict || body.trim() === '' || !body.endsWith(escape))) {
      current += body;
      continue;
    }
    current += raw;
    out.push(split(current, start));
    current = '';
  }
  if (current !== '') out.push(split(current, start));
  return out.filter((x) => x.keyword !== '');
}

function split(text: string, line: number): Instruction {
  const t = text.trim();
  const sp = t.search(/\s/);
  return sp < 0
    ? { keyword: t.toLowerCase(), rest: '', line }
    : { keyword: t.slice(0, sp).toLowerCase(), rest: t.slice(sp + 1).trim(), line };
}

/** The words of an ADD/COPY instruction after its flags: the JSON form, or whitespace-separated. */
function addWords(rest: string): string[] {
  let r = rest;
  for (;;) {
    const m = /^--\S*\s*/.exec(r);
    if (!m) break;
    r = r.slice(m[0].length);
  }
  const words = r.split(/\s+/).filter(Boolean);
  // JSON's \u escapes are read in every form (a JSON array the guard and dockerd start reading at
  // different places stays covered); an extra reading can only refuse more.
  if (!r.startsWith('[')) return [...new Set([...words, ...words.map(unescapeJson)])];
  // The JSON form: Go's decoder reads the first value and ignores what follows it, so every
  // prefix that ends in `]` is tried; the words are checked as well (a failed parse is read as
  // words by the builder), with JSON's \u escapes read too.
  const out = [...words, ...words.map(unescapeJson)];
  for (let end = r.indexOf(']'); end >= 0; end = r.indexOf(']', end + 1)) {
    try {
      const v: unknown = JSON.parse(r.slice(0, end + 1));
      if (Array.isArray(v)) out.push(...v.filter((x): x is string => typeof x === 'string'));
    } catch {
      // not a JSON array up to here
    }
  }
  return [...new Set(out)];
}

function unescapeJson(word: string): string {
  return word.replace(/\\u([0-9a-fA-F]{4})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** Why an ADD word must not reach the builder, or undefined. */
function remoteWord(word: string): string | undefined {
  if (word.includes('$'))
    return `ADD ${word}: a variable could make it a URL the daemon downloads from the host's network; write the source out`;
  // Quotes and escape characters go before the builder reads the word.
  const plain = word.replace(/["'\\`]/g, '');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(plain) || plain.includes('://'))
    return `ADD ${word}: the daemon would download it from the host's network; download it in a RUN step (it runs in the build container's network) or add the file to the context`;
  return undefined;
}

/**
 * Instructions in which a non-ASCII character cannot change what berth reads: dockerd's parser
 * reads the flags of the others (ADD, COPY, FROM) byte by byte with Go's unicode.IsSpace, for
 * which the single bytes 0x85 and 0xA0 (also inside a UTF-8 sequence: `à` is C3 A0) end a word,
 * where berth, reading UTF-8, sees none. So those, ONBUILD, and any keyword berth does not know
 * are taken only in ASCII.
 */
const TEXT_KEYWORDS = new Set([
  'run',
  'cmd',
  'entrypoint',
  'label',
  'env',
  'maintainer',
  'expose',
  'user',
  'workdir',
  'volume',
  'stopsignal',
  'healthcheck',
  'shell',
  'arg',
]);

/** Whether any UTF-16 code unit of `text` is one `which` picks. */
function hasCode(text: string, which: (code: number) => boolean): boolean {
  for (let i = 0; i < text.length; i++) if (which(text.charCodeAt(i))) return true;
  return false;
}

function nonAscii(ins: Instruction): string | undefined {
  if (TEXT_KEYWORDS.has(ins.keyword) || !hasCode(`${ins.keyword} ${ins.rest}`, (c) => c > 0x7f))
    return undefined;
  return `line ${ins.line}: ${ins.keyword.toUpperCase()} holds a non-ASCII character; dockerd reads this instruction's flags byte by byte, where some of its bytes end a word, so berth takes it only in ASCII`;
}

/** The refusals an instruction brings (ADD, and ADD under ONBUILD). */
/**
 * dockerd reads an instruction's leading `--flag` words as a shell would: quotes and escape
 * characters are taken out and keep spaces inside the word, so a quoted flag can hide the word
 * after it (`FROM --pl"atform"=x${v:+" decoy "} real` builds from `real`). berth reads such words
 * only when they are written plainly.
 */
function oddFlags(ins: Instruction): string | undefined {
  if (!['from', 'copy', 'add'].includes(ins.keyword)) return undefined;
  for (const w of ins.rest.trim().split(/ +/)) {
    if (!w.startsWith('--')) break;
    if (/["'\\`\t\v\f\r\n]/.test(w))
      return `line ${ins.line}: ${ins.keyword.toUpperCase()} ${w}: berth reads an instruction's flags only when they are written plainly (no quotes, escape characters or tabs)`;
  }
  return undefined;
}

function refusalsOf(ins: Instruction): string[] {
  const odd = nonAscii(ins) ?? oddFlags(ins);
  if (odd !== undefined) return [odd];
  if (ins.keyword === 'onbuild') {
    const inner = split(ins.rest, ins.line);
    // A trigger runs in a later build, whose stages berth cannot know here: an image a trigger
    // copies from would be read (and pulled) unchecked.
    if (inner.keyword === 'copy' && /(^|\s)--from=/i.test(inner.rest))
      return [`line ${ins.line}: ONBUILD COPY --from: berth does not let a trigger copy from an image`];
    return refusalsOf(inner);
  }
  if (ins.keyword === 'label') {
    // berth's host-side code reads labels under io.berth.; a build's RUN containers carry the
    // image's labels at their step and no tenant label, so a Dockerfile may not set them.
    const plain = ins.rest.replace(/[\\"'`]/g, '').toLowerCase();
    const keys = ins.rest.includes('=')
      ? ins.rest.split(/\s+/).flatMap((w) => (w.includes('=') ? [w.slice(0, w.indexOf('='))] : []))
      : [ins.rest.trim().split(/\s+/)[0] ?? ''];
    if (plain.includes('io.berth.'))
      return [
        `line ${ins.line}: LABEL: labels under io.berth. are berth's own; a Dockerfile may not set them`,
      ];
    if (keys.some((k) => k.includes('$')))
      return [`line ${ins.line}: LABEL: berth reads label names only when written without variables`];
    return [];
  }
  if (ins.keyword !== 'add') return [];
  const out: string[] = [];
  for (const w of addWords(ins.rest)) {
    const why = remoteWord(w);
    if (why !== undefined) out.push(`line ${ins.line}: ${why}`);
  }
  return out;
}

/**
 * `$VAR`, `${VAR}`, `${VAR:-word}` and `${VAR:+word}` expanded as the builder expands a FROM
 * image: from the ARGs declared before the first FROM (a build arg overrides the default); a
 * variable with no value expands to nothing, as in dockerd.
 */
/** Build args dockerd knows without an ARG line (`builtinAllowedBuildArgs`). */
const BUILTIN_ARGS = [
  'HTTP_PROXY',
  'http_proxy',
  'HTTPS_PROXY',
  'https_proxy',
  'FTP_PROXY',
  'ftp_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
];

const VARIABLE = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g;

function expandArgs(word: string, args: ReadonlyMap<string, string>): string {
  return word.replace(
    VARIABLE,
    (
      _m,
      braced: string | undefined,
      op: string | undefined,
      alt: string | undefined,
      bare: string | undefined,
    ) => {
      const v = args.get(braced ?? bare ?? '') ?? '';
      if (op === '-') return v !== '' ? v : (alt ?? '');
      if (op === '+') return v !== '' ? (alt ?? '') : '';
      return v;
    },
  );
}

/**
 * Characters that one side counts as whitespace and the other not (Go's unicode.IsSpace has NEL,
 * JavaScript's has the BOM; dockerd's parser splits and trims with different sets in different
 * places): a Dockerfile holding one could read as other instructions to dockerd than to the guard.
 */
const ODD_SPACE = /[\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]/;

function oddSpace(text: string): string | undefined {
  const m = ODD_SPACE.exec(text);
  if (!m) return undefined;
  const code = (m[0].codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0');
  return `the Dockerfile holds U+${code}, a space dockerd and berth read differently; write ASCII spaces`;
}

export function readDockerfile(
  text: string,
  buildArgs: Readonly<Record<string, string | null>> = {},
): DockerfileFacts {
  const refusals: string[] = [];
  const bases: string[] = [];
  const platforms: [string, string][] = [];
  const odd = oddSpace(text.replace(/^\uFEFF/, ''));
  if (odd !== undefined) refusals.push(odd);
  // Every reading of the file counts: what any of them would run is checked.
  for (const reading of READINGS) {
    const stages = new Set<string>();
    // dockerd's builtin args (the proxy settings) expand wherever a build arg gives them, declared
    // or not.
    const globals = new Map<string, string>();
    for (const name of BUILTIN_ARGS) {
      const v = buildArgs[name];
      if (typeof v === 'string') globals.set(name, v);
    }
    let seenFrom = false;
    let current: string | undefined;
    /** The FROMs so far: `COPY --from=<n>` names an earlier stage only below the current one. */
    let fromCount = 0;
    for (const ins of instructions(text, reading)) {
      refusals.push(...refusalsOf(ins));
      if (ins.keyword === 'arg' && !seenFrom) {
        for (const decl of ins.rest.split(/\s+/).filter(Boolean)) {
          const eq = decl.indexOf('=');
          const name = eq < 0 ? decl : decl.slice(0, eq);
          const given = buildArgs[name];
          // A default is expanded from the ARGs before it, as dockerd expands it; a build arg is
          // taken as it is.
          const value =
            given ??
            (eq < 0 ? undefined : expandArgs(decl.slice(eq + 1).replace(/^(["'])(.*)\1$/, '$2'), globals));
          if (value !== undefined) globals.set(name, value);
        }
      }
      if (ins.keyword === 'from') {
        seenFrom = true;
        fromCount++;
        // A stage's name is known to the builder once the stage ended, not within it.
        if (current !== undefined) stages.add(current);
        const words = ins.rest.split(/\s+/).filter((w) => w !== '' && !w.startsWith('--'));
        const word = words[0] ?? '';
        const image = expandArgs(word, globals);
        // dockerd takes quotes and escape characters out of the name and expands what is left;
        // berth checks the image the name gives, so it reads only names written plainly.
        if (/["'\\`$]/.test(word.replace(VARIABLE, '')) || /["'\\`$]/.test(image))
          refusals.push(
            `line ${ins.line}: FROM ${word}: berth reads a base image's name only when it is written plainly (no quotes, escape characters or variables it cannot expand), to check the image's ONBUILD triggers`,
          );
        else if (image === '')
          refusals.push(
            `line ${ins.line}: FROM ${word}: berth reads no image name there; name the base plainly`,
          );
        else if (image.toLowerCase() !== 'scratch' && !stages.has(image.toLowerCase())) {
          bases.push(image);
          // The builder pulls a stage's base whose image on the engine is for another platform.
          for (const w of ins.rest.split(/\s+/)) {
            const m = /^--platform=(.*)$/i.exec(w);
            if (!m) continue;
            const platform = expandArgs(m[1] ?? '', globals);
            if (/["'\\`$]/.test(platform))
              refusals.push(
                `line ${ins.line}: FROM ${w}: berth reads a stage's platform only when it is written plainly`,
              );
            else if (platform !== '') platforms.push([image, platform]);
          }
        }
        current = (words[1] ?? '').toLowerCase() === 'as' && words[2] ? words[2].toLowerCase() : undefined;
      }
      // `COPY --from=<image>` that names no earlier stage: the builder reads (and pulls, when the
      // engine lacks it) that image as it reads a base. It is checked, pulled and held as one.
      if (ins.keyword === 'copy') {
        for (const w of ins.rest.split(/\s+/)) {
          const m = /^--from=(.*)$/i.exec(w);
          if (!m) continue;
          const ref = m[1] ?? '';
          if (/["'\\`$]/.test(ref))
            refusals.push(
              `line ${ins.line}: COPY ${w}: berth reads an image COPY takes from only when it is named plainly (no quotes, escape characters or variables)`,
            );
          else if (/^[0-9]+$/.test(ref) && Number(ref) >= fromCount - 1)
            refusals.push(
              `line ${ins.line}: COPY ${w}: there is no earlier stage ${ref}; berth does not read a number as an image name (dockerd might)`,
            );
          else if (ref !== '' && !/^[0-9]+$/.test(ref) && !stages.has(ref.toLowerCase())) bases.push(ref);
        }
      }
    }
  }
  const pairs = new Map(platforms.map((x) => [JSON.stringify(x), x]));
  return { refusals: [...new Set(refusals)], bases: [...new Set(bases)], platforms: [...pairs.values()] };
}

/** The refusals a base image's ONBUILD triggers bring (they run in the tenant's build). */
export function triggerRefusals(image: string, triggers: readonly string[]): string[] {
  const odd = triggers.map(oddSpace).find((x) => x !== undefined);
  if (odd !== undefined)
    return [`${image} ONBUILD: ${odd.replace('the Dockerfile holds', 'a trigger holds')}`];
  // dockerd parses each trigger as a Dockerfile of one instruction: comment lines dropped and
  // continuation lines joined. A trigger is one line when an ONBUILD instruction writes it; one
  // that is not (a commit's or an import's config can hold anything) is not read further.
  if (triggers.some((t) => hasCode(t, (c) => (c < 0x20 && c !== 0x09) || c === 0x7f)))
    return [
      `${image} ONBUILD: a trigger spans lines or holds control characters; berth reads one-line triggers only`,
    ];
  return triggers.flatMap((t) =>
    refusalsOf(split(t, 0)).map((r) => `${image} ONBUILD ${r.replace(/^line 0: /, '')}`),
  );
}
