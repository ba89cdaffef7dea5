/**
 * A step's output, cut into lines as it comes: UTF-8 decoded across chunk boundaries, each chunk
 * scanned once (the old sink re-scanned everything held on every chunk: quadratic, and a 60 MB
 * line without a newline took a server to 1.2 GB, red-team pass 20), and a line longer than `max`
 * characters given out in pieces of `max`, so no line is held whole however long it runs.
 */
import { StringDecoder } from 'node:string_decoder';

/** The longest line given out whole (characters); longer ones come in pieces of this size. */
export const MAX_LINE = 64 * 1024;

export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private pending = '';

  /**
   * `mask` hides secrets; `longest` is the longest secret's length. A long line's pieces are cut
   * from text masked whole, and only where every secret that starts in the piece has arrived whole
   * (red-team pass 23: a secret across a cut went out unmasked in two halves).
   */
  constructor(
    private readonly emit: (line: string) => void,
    private readonly max = MAX_LINE,
    private readonly mask: (text: string) => string = (t) => t,
    private readonly longest = 0,
  ) {}

  push(chunk: Buffer): void {
    const text = this.decoder.write(chunk);
    let from = 0;
    let nl: number;
    while ((nl = text.indexOf('\n', from)) >= 0) {
      this.line(this.pending + text.slice(from, nl));
      this.pending = '';
      from = nl + 1;
    }
    this.pending += text.slice(from);
    if (this.pending.length > this.max + this.longest) {
      this.pending = this.mask(this.pending);
      while (this.pending.length > this.max + this.longest) {
        this.emit(this.pending.slice(0, this.max));
        this.pending = this.pending.slice(this.max);
      }
    }
  }

  /** The output ended: what is left, as a last line. */
  end(): void {
    this.pending += this.decoder.end();
    if (this.pending !== '') this.line(this.pending);
    this.pending = '';
  }

  private line(text: string): void {
    const t = this.mask(text.endsWith('\r') ? text.slice(0, -1) : text);
    // A whole line longer than max (its last part came with the newline): in pieces too.
    for (let i = 0; i < t.length; i += this.max) this.emit(t.slice(i, i + this.max));
    if (t.length === 0) this.emit('');
  }
}
