/** A small tar writer for tests that craft archives (USTAR/GNU headers, PAX records). */
/** One tar header block (USTAR unless `gnu`), checksum filled in. */
export function header(
  name: string,
  size: number,
  type = '0',
  opts: { prefix?: string; gnu?: boolean; linkname?: string } = {},
): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write('00000000000\0', 136, 'latin1');
  h.write(type, 156, 'latin1');
  if (opts.linkname) h.write(opts.linkname, 157, 100, 'utf8');
  if (opts.gnu) h.write('ustar  \0', 257, 'latin1');
  else h.write('ustar\u000000', 257, 'latin1');
  if (opts.prefix) h.write(opts.prefix, 345, 155, 'utf8');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

export function entry(name: string, data: string | Buffer, type = '0', opts = {}): Buffer {
  const d = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const pad = Buffer.alloc((512 - (d.length % 512)) % 512);
  return Buffer.concat([header(name, d.length, type, opts), d, pad]);
}

export function pax(records: Record<string, string>): Buffer {
  let body = '';
  for (const [k, v] of Object.entries(records)) {
    const rest = ` ${k}=${v}\n`;
    let len = rest.length + 1;
    while (`${len}${rest}`.length !== len) len++;
    body += `${len}${rest}`;
  }
  return entry('PaxHeaders/x', body, 'x');
}

/** The end-of-archive marker: two zero blocks. */
export const END = Buffer.alloc(1024);

/** A build context: the Dockerfile, then `files`, then the end of the archive. */
export function dockerContext(dockerfile: string, files: Record<string, string> = {}): Buffer {
  return Buffer.concat([
    entry('Dockerfile', dockerfile),
    ...Object.entries(files).map(([n, v]) => entry(n, v)),
    END,
  ]);
}
