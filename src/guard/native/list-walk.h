/*
 * The front's walk over a container list: whether every entry is one of the tenant's containers.
 * Included by berth-front.c and by list-walk-check.c (its differential test), which define
 * owned_all().
 *
 * The list is JSON as dockerd writes it: an array of objects, each opening with its "Id". The walk
 * finds the brackets and braces outside strings, keeps the depth, and checks each object that
 * opens at depth 1. Strings are found 64 bytes at a time (as simdjson's first stage does):
 *
 *   - masks of the block's quotes, backslashes, and brackets or braces;
 *   - without a backslash in the block (nearly always: dockerd escapes only quotes, backslashes
 *     and control bytes in values), the bytes inside strings are the prefix XOR of the quote mask,
 *     flipped when the block starts inside a string;
 *   - a block with a backslash, or one whose first byte a backslash escapes, is walked byte by
 *     byte: a backslash escapes the byte after it.
 *
 * A list of 50 containers (35 KB) took 18 us to walk with memchr over each string (2500 strings
 * of 8 bytes on average, a call each); this takes about 6 us (13 us on a slower VM, where the
 * front, walking as the answer's last byte came, took 33 to 39 us).
 *
 * The front feeds the walk each part of the answer as it comes (list_walk_feed), so that by the
 * last part most of it is walked; dockerd writes a list of 50 in three writes (4 KB, the rest,
 * the end of its chunking), and in about half the lists the front read them apart. Inside an
 * entry a bracket only moves the depth (list_step); the entries' IDs are looked up in batches.
 *
 * The array must hold objects only, one after another (red-team pass 35: `[{…},"{\"Id\":…}"]`
 * was taken, a string holding a foreign container's JSON as an entry). What it relies on: dockerd
 * writes each entry with Go's encoder, so an entry's first key is its only "Id" (a decoder keeps
 * the last of two), and backslashes come only from Go's escaping of strings. An answer with raw
 * JSON from elsewhere in it would need another look.
 */
#ifndef BERTH_LIST_WALK_H
#define BERTH_LIST_WALK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Defined by the includer: whether the 64 hex digits at s + at[k], for each k < n, name one of the
   tenant's containers. The walk asks for the entries' IDs in batches: their lookups then overlap
   (each is a cache miss or two when the front wakes to an answer), and the set's lock is taken once
   a batch. */
static int owned_all(const char *s, const size_t *at, int n);

/* Whether s opens with 64 lower-case hex digits (a full container ID, as dockerd writes it). */
static int is_hex64(const char *s) {
#if defined(__SSE2__) && !defined(BERTH_NO_SIMD)
  /* Signed compares: bytes from 0x80 up are negative, below '0', so out of both ranges. */
  __m128i bad = _mm_setzero_si128();
  for (int k = 0; k < 4; k++) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + 16 * k));
    __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)), _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
    __m128i letter = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('a' - 1)), _mm_cmplt_epi8(v, _mm_set1_epi8('f' + 1)));
    bad = _mm_or_si128(bad, _mm_andnot_si128(_mm_or_si128(digit, letter), _mm_set1_epi8(-1)));
  }
  return _mm_movemask_epi8(bad) == 0;
#else
  for (int i = 0; i < 64; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
#endif
}

/* Bit i of each mask: byte i of the 64 at p is a quote; a backslash; an opening bracket or brace;
   a closing one. */
static void block_masks(const unsigned char *p, uint64_t *quotes, uint64_t *escapes, uint64_t *opens,
                        uint64_t *closes) {
  uint64_t q = 0, b = 0, o = 0, c = 0;
#if defined(__SSE2__) && !defined(BERTH_NO_SIMD)
  for (int k = 0; k < 4; k++) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
    __m128i folded = _mm_or_si128(v, _mm_set1_epi8(0x20)); /* [ and ] as { and } */
    uint64_t mq = (uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
    uint64_t mb = (uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    uint64_t mo = (uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(folded, _mm_set1_epi8('{')));
    uint64_t mc = (uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(folded, _mm_set1_epi8('}')));
    q |= mq << (16 * k);
    b |= mb << (16 * k);
    o |= mo << (16 * k);
    c |= mc << (16 * k);
  }
#else
  for (int i = 0; i < 64; i++) {
    unsigned ch = p[i];
    q |= (uint64_t)(ch == '"') << i;
    b |= (uint64_t)(ch == '\\') << i;
    o |= (uint64_t)((ch | 0x20) == '{') << i;
    c |= (uint64_t)((ch | 0x20) == '}') << i;
  }
#endif
  *quotes = q;
  *escapes = b;
  *opens = o;
  *closes = c;
}

/* Bit i: the parity of the set bits at 0..i. */
static uint64_t prefix_xor(uint64_t x) {
  x ^= x << 1;
  x ^= x << 2;
  x ^= x << 4;
  x ^= x << 8;
  x ^= x << 16;
  x ^= x << 32;
  return x;
}

/*
 * A walk's state between blocks, so that it can be fed the list as it arrives (list_walk_feed)
 * and finished once it is whole (list_walk_end). Fed, it walks only whole blocks that end at
 * least LIST_LOOKAHEAD bytes before what has arrived, so that every look past a bracket (an
 * entry's "Id", the byte after an entry) finds the same bytes as it will in the whole list; a
 * step that fails is not trusted (it may have looked at the end of what had arrived): the whole
 * list is walked again at the end.
 */
#ifndef LIST_BATCH
#define LIST_BATCH 64
#endif

struct list_walk {
  const char *s;
  size_t n;           /* the bytes a step may look at */
  int depth;
  size_t at;          /* the next block */
  uint64_t in_string; /* all ones when the block at `at` starts inside a string */
  int escaped;        /* its first byte is escaped (by the last one's last byte) */
  int failed;         /* a step failed while fed */
  int pending;        /* IDs found and not yet looked up, at ids[0..pending) */
  size_t ids[LIST_BATCH];
};

/* Any lookahead of a byte or more gives the same verdicts (a step that needed more fails, and the
   list is walked again); 128 makes that rare: an entry's "Id" takes 72 bytes past its brace. */
#define LIST_LOOKAHEAD 128

static void list_walk_start(struct list_walk *w) {
  w->depth = 0;
  w->at = 0;
  w->in_string = 0;
  w->escaped = 0;
  w->failed = 0;
  w->pending = 0;
}

/* Looks up the IDs found so far; 0 when one is not the tenant's. */
static int list_lookup(struct list_walk *w) {
  int n = w->pending;
  w->pending = 0;
  return n == 0 || owned_all(w->s, w->ids, n);
}

/* The first byte after s[i] that is not JSON white space, or 0 at the end. */
static char list_next(const struct list_walk *w, size_t i) {
  for (i++; i < w->n; i++)
    if (w->s[i] != ' ' && w->s[i] != '\t' && w->s[i] != '\n' && w->s[i] != '\r') return w->s[i];
  return 0;
}

/* A bracket or brace outside strings, at s[i]; 0 when the list is not all the tenant's. */
static int list_bracket(struct list_walk *w, size_t i) {
  char c = w->s[i];
  if (c == '[' || c == '{') {
    if (w->depth == 1) {
      if (c != '{' || i + 72 > w->n || memcmp(w->s + i, "{\"Id\":\"", 7) != 0 || !is_hex64(w->s + i + 7) ||
          w->s[i + 71] != '"')
        return 0;
      w->ids[w->pending++] = i + 7;
      if (w->pending == LIST_BATCH && !list_lookup(w)) return 0;
    }
    /* The array holds objects only: `[` is followed by `{` or `]`. */
    if (w->depth == 0 && list_next(w, i) != '{' && list_next(w, i) != ']') return 0;
    w->depth++;
    return 1;
  }
  if (--w->depth < 0) return 0;
  if (w->depth == 1) {
    /* An entry closed: then `]`, or `,` and the next entry's `{` (no scalar between entries). As
       dockerd writes it, with no space between. */
    if (i + 2 < w->n && w->s[i + 1] == ',' && w->s[i + 2] == '{') return 1;
    char next = list_next(w, i);
    if (next == ',') {
      const char *comma = memchr(w->s + i + 1, ',', w->n - i - 1);
      return list_next(w, (size_t)(comma - w->s)) == '{';
    }
    return next == ']';
  }
  /* The array closes at the end, not before. */
  return w->depth != 0 || i == w->n - 1;
}

/* A bracket outside strings: inside an entry (an open at depth 2 or more, a close from deeper than
   2) only the depth changes; the rest is list_bracket's. */
static inline int list_step(struct list_walk *w, size_t i, int closing) {
  if (w->depth > 2 || (w->depth == 2 && !closing)) {
    w->depth += closing ? -1 : 1;
    return 1;
  }
  return list_bracket(w, i);
}

/* Walks the blocks from w->at while they start before `end` (a last short one zero-padded); 0 at
   the first step that fails. Where it is (at, in_string, escaped) is kept in locals while it walks
   (list_bracket, called through w, keeps the depth and the IDs, not those). */
static int list_walk_blocks(struct list_walk *w, size_t end) {
  unsigned char tail[64];
  uint64_t in_string = w->in_string;
  int escaped = w->escaped, ok = 1;
  size_t at = w->at;
  for (; at < end; at += 64) {
    const unsigned char *p = (const unsigned char *)w->s + at;
    size_t len = end - at < 64 ? end - at : 64;
    if (len < 64) {
      /* Zero bytes after the end: no quote, backslash or bracket among them. */
      memset(tail, 0, sizeof tail);
      memcpy(tail, p, len);
      p = tail;
    }
    uint64_t quotes, escapes, opens, closes;
    block_masks(p, &quotes, &escapes, &opens, &closes);
    if (escapes == 0 && !escaped) {
      uint64_t inside = prefix_xor(quotes) ^ in_string;
      uint64_t out_opens = opens & ~inside, out_closes = closes & ~inside;
      for (uint64_t out = out_opens | out_closes; out; out &= out - 1) {
        int bit = __builtin_ctzll(out);
        if (!list_step(w, at + (size_t)bit, (int)(out_closes >> bit) & 1)) {
          ok = 0;
          goto stop;
        }
      }
      in_string = (uint64_t)0 - (inside >> 63);
      continue;
    }
    int inside = in_string != 0;
    for (size_t i = 0; i < len; i++) {
      unsigned c = p[i];
      if (inside) {
        if (escaped) escaped = 0;
        else if (c == '\\') escaped = 1;
        else if (c == '"') inside = 0;
      } else if (c == '"')
        inside = 1;
      else if (((c | 0x20) == '{' || (c | 0x20) == '}') && !list_step(w, at + i, (c | 0x20) == '}')) {
        ok = 0;
        goto stop;
      }
    }
    in_string = inside ? ~(uint64_t)0 : 0;
  }
stop:
  w->at = at;
  w->in_string = in_string;
  w->escaped = escaped;
  return ok;
}

/* Walks what it can of s[0..avail), the list so far (s may have moved since the last call). */
static void list_walk_feed(struct list_walk *w, const char *s, size_t avail) {
  if (w->failed || avail < LIST_LOOKAHEAD + 64) return;
  size_t end = (avail - LIST_LOOKAHEAD) & ~(size_t)63;
  if (w->at >= end) return;
  w->s = s;
  w->n = avail;
  if (!list_walk_blocks(w, end) || !list_lookup(w)) w->failed = 1;
}

/* Whether every entry of the container list s[0..n) is an owned container (dockerd writes Id
   first), going on from what was fed. */
static int list_walk_end(struct list_walk *w, const char *s, size_t n) {
  while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) n--;
  if (n < 2 || s[0] != '[' || s[n - 1] != ']') return 0;
  /* Past n only after a failed step (the array's close, walked while fed, is not at the end of
     what had come): walked again, as after any failed step. */
  if (w->failed || w->at > n) list_walk_start(w);
  w->s = s;
  w->n = n;
  return list_walk_blocks(w, n) && w->depth == 0 && w->in_string == 0 && list_lookup(w);
}

/* The same, over the whole list at once. */
static inline int list_owned_walk(const char *s, size_t n) {
  struct list_walk w;
  list_walk_start(&w);
  return list_walk_end(&w, s, n);
}

#endif
