/*
 * The front's walk over a container list: whether every entry is one of the tenant's containers.
 * Included by berth-front.c and by list-walk-check.c (its differential test), which define
 * owned().
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
 * of 8 bytes on average, a call each); this takes about 6 us.
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

/* Defined by the includer: whether the 64 hex digits at id name one of the tenant's containers. */
static int owned(const char *id);

/* Whether s opens with 64 lower-case hex digits (a full container ID, as dockerd writes it). */
static int is_hex64(const char *s) {
  for (int i = 0; i < 64; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

/* Bit i of each mask: byte i of the 64 at p is a quote; a backslash; a bracket or brace. */
static void block_masks(const unsigned char *p, uint64_t *quotes, uint64_t *escapes, uint64_t *brackets) {
  uint64_t q = 0, b = 0, st = 0;
#if defined(__SSE2__) && !defined(BERTH_NO_SIMD)
  for (int k = 0; k < 4; k++) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
    __m128i folded = _mm_or_si128(v, _mm_set1_epi8(0x20)); /* [ and ] as { and } */
    uint64_t mq = (uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
    uint64_t mb = (uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    uint64_t ms = (uint16_t)_mm_movemask_epi8(
        _mm_or_si128(_mm_cmpeq_epi8(folded, _mm_set1_epi8('{')), _mm_cmpeq_epi8(folded, _mm_set1_epi8('}'))));
    q |= mq << (16 * k);
    b |= mb << (16 * k);
    st |= ms << (16 * k);
  }
#else
  for (int i = 0; i < 64; i++) {
    unsigned c = p[i];
    q |= (uint64_t)(c == '"') << i;
    b |= (uint64_t)(c == '\\') << i;
    st |= (uint64_t)((c | 0x20) == '{' || (c | 0x20) == '}') << i;
  }
#endif
  *quotes = q;
  *escapes = b;
  *brackets = st;
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

struct list_walk {
  const char *s;
  size_t n;
  int depth;
};

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
    if (w->depth == 1 && (c != '{' || i + 72 > w->n || memcmp(w->s + i, "{\"Id\":\"", 7) != 0 ||
                          !is_hex64(w->s + i + 7) || w->s[i + 71] != '"' || !owned(w->s + i + 7)))
      return 0;
    /* The array holds objects only: `[` is followed by `{` or `]`. */
    if (w->depth == 0 && list_next(w, i) != '{' && list_next(w, i) != ']') return 0;
    w->depth++;
    return 1;
  }
  if (--w->depth < 0) return 0;
  if (w->depth == 1) {
    /* An entry closed: then `]`, or `,` and the next entry's `{` (no scalar between entries). */
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

/* Whether every entry of the container list s[0..n) is an owned container (dockerd writes Id
   first). */
static int list_owned_walk(const char *s, size_t n) {
  while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) n--;
  if (n < 2 || s[0] != '[' || s[n - 1] != ']') return 0;
  struct list_walk w = {s, n, 0};
  uint64_t in_string = 0; /* all ones when the block starts inside a string */
  int escaped = 0;        /* the block's first byte is escaped (by the last one's last byte) */
  unsigned char tail[64];
  for (size_t at = 0; at < n; at += 64) {
    const unsigned char *p = (const unsigned char *)s + at;
    size_t len = n - at < 64 ? n - at : 64;
    if (len < 64) {
      /* Zero bytes after the end: no quote, backslash or bracket among them. */
      memset(tail, 0, sizeof tail);
      memcpy(tail, p, len);
      p = tail;
    }
    uint64_t quotes, escapes, brackets;
    block_masks(p, &quotes, &escapes, &brackets);
    if (escapes == 0 && !escaped) {
      uint64_t inside = prefix_xor(quotes) ^ in_string;
      for (uint64_t out = brackets & ~inside; out; out &= out - 1)
        if (!list_bracket(&w, at + (size_t)__builtin_ctzll(out))) return 0;
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
      else if (((c | 0x20) == '{' || (c | 0x20) == '}') && !list_bracket(&w, at + i))
        return 0;
    }
    in_string = inside ? ~(uint64_t)0 : 0;
  }
  return w.depth == 0 && in_string == 0;
}

#endif
