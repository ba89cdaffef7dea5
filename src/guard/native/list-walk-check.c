/*
 * Differential check of list-walk.h: its block walk, whole and fed in pieces as the list arrives,
 * against the front's earlier walk (a byte at a
 * time between strings, each string skipped to the first quote not preceded by an odd number of
 * backslashes; with the rule both have since red-team pass 35, that the array holds objects only,
 * written here as a check of each byte between entries), over generated container lists and
 * mutations of them. Run by
 * src/guard/list-walk.test.ts, built with AddressSanitizer and UBSan where the compiler has them,
 * and once more with BERTH_NO_SIMD (the portable mask builder).
 *
 *   list-walk-check SEED COUNT     prints: inputs N accepted A rejected R differ D fed F
 *
 * (F: inputs whose pieces the fed walk went into before the end, without a step failing.)
 *
 * Exits 1 at the first input on which the walks differ, printing it (hex) on stderr.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "list-walk.h"

/* The tenant's containers here: IDs that do not start with f. */
static int owned(const char *id) { return id[0] != 'f'; }
static int owned_all(const char *s, const size_t *at, int n) {
  for (int k = 0; k < n; k++)
    if (!owned(s + at[k])) return 0;
  return 1;
}

/* ------------------------------------------------------------------ the reference walk */

static size_t reference_string_end(const char *s, size_t n, size_t open) {
  for (size_t from = open + 1; from < n;) {
    const char *q = memchr(s + from, '"', n - from);
    if (!q) return 0;
    size_t at = (size_t)(q - s), escapes = 0;
    while (s[at - 1 - escapes] == '\\') escapes++;
    if (escapes % 2 == 0) return at;
    from = at + 1;
  }
  return 0;
}

/* Its own check of an ID's digits, so that the block walk's (is_hex64) is checked too. */
static int reference_hex64(const char *s) {
  for (int i = 0; i < 64; i++)
    if (!strchr("0123456789abcdef", s[i]) || s[i] == '\0') return 0;
  return 1;
}

static int reference_walk(const char *s, size_t n) {
  while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) n--;
  if (n < 2 || s[0] != '[' || s[n - 1] != ']') return 0;
  int depth = 0;
  char prev = 0; /* inside the array, between entries: the last of [ , } there */
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (depth == 1 && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
      /* Objects only, a comma between two: nothing else between the array's brackets. */
      if (c == '{' ? prev != '[' && prev != ',' : c == ',' ? prev != '}' : c != ']' || prev == ',') return 0;
      prev = c;
    }
    if (c == '"') {
      i = reference_string_end(s, n, i);
      if (i == 0) return 0;
    } else if (c == '[' || c == '{') {
      if (depth == 1 && (c != '{' || i + 72 > n || memcmp(s + i, "{\"Id\":\"", 7) != 0 ||
                         !reference_hex64(s + i + 7) || s[i + 71] != '"' || !owned(s + i + 7)))
        return 0;
      if (depth++ == 0) prev = '[';
    } else if (c == ']' || c == '}') {
      if (--depth < 0) return 0;
      if (depth == 1) prev = '}';
      if (depth == 0 && i != n - 1) return 0;
    }
  }
  return depth == 0;
}

/* ------------------------------------------------------------------ generated lists */

static uint64_t rng;
static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}
static uint32_t below(uint32_t n) { return next() % n; }

struct buf {
  char *b;
  size_t len, cap;
};
static void put(struct buf *o, const char *s, size_t n) {
  if (o->len + n > o->cap) {
    while (o->len + n > o->cap) o->cap = o->cap ? o->cap * 2 : 4096;
    o->b = realloc(o->b, o->cap);
    if (!o->b) abort();
  }
  memcpy(o->b + o->len, s, n);
  o->len += n;
}
static void puts_(struct buf *o, const char *s) { put(o, s, strlen(s)); }

/* The bytes that matter to the walk, some that do not, and some just outside an ID's digits (a
   byte from 0x80 up among them). */
static const char SPECIAL[] = "\"\\{}[]ax \n,:/`gF\xe9";

/* A JSON string of random length and bytes, escaped as Go escapes them. */
static void string_value(struct buf *o) {
  puts_(o, "\"");
  size_t len = below(4) == 0 ? below(160) : below(12);
  for (size_t i = 0; i < len; i++) {
    char c = below(3) == 0 ? SPECIAL[below(sizeof SPECIAL - 1)] : (char)('a' + below(26));
    if (c == '"') puts_(o, "\\\"");
    else if (c == '\\') puts_(o, below(2) ? "\\\\" : "\\u005c");
    else if (c == '\n') puts_(o, "\\n");
    else put(o, &c, 1);
  }
  puts_(o, "\"");
}

static void id(struct buf *o, int foreign) {
  char h[65];
  for (int i = 0; i < 64; i++) h[i] = "0123456789abcdef"[below(16)];
  h[0] = foreign ? 'f' : "0123456789abcde"[below(15)];
  h[64] = 0;
  puts_(o, h);
}

static void entry(struct buf *o, int foreign) {
  puts_(o, "{\"Id\":\"");
  id(o, foreign);
  puts_(o, "\",\"Names\":[");
  string_value(o);
  puts_(o, "],\"Command\":");
  string_value(o);
  /* Deeper entries now and then: ports and mounts are arrays of objects in dockerd's lists. */
  puts_(o, below(3) ? ",\"Created\":1795571456,\"Ports\":[],\"Labels\":{"
                    : ",\"Created\":1795571456,\"Ports\":[{\"PrivatePort\":80,\"Type\":\"tcp\"},{\"IP\":{\"a\":[[]]}}],"
                      "\"Labels\":{");
  for (uint32_t k = below(4), i = 0; i < k; i++) {
    if (i) puts_(o, ",");
    string_value(o);
    puts_(o, ":");
    string_value(o);
  }
  puts_(o, "},\"HostConfig\":{\"NetworkMode\":\"none\"},\"NetworkSettings\":{\"Networks\":{\"none\":{\"IPAMConfig\":"
           "null,\"Aliases\":null}}},\"Mounts\":[]}");
}

static void list(struct buf *o) {
  o->len = 0;
  puts_(o, "[");
  int foreign = below(3) == 0;
  /* Now and then a long one: more entries than the walk looks up at once. */
  for (uint32_t k = below(32) == 0 ? below(160) : below(8), i = 0; i < k; i++) {
    if (i) puts_(o, ",");
    entry(o, foreign && below(4) == 0);
  }
  puts_(o, below(2) ? "]\n" : "]");
}

/* One to three random edits: a special byte written over, put in, or taken out. */
static void mutate(struct buf *o) {
  for (uint32_t k = 1 + below(3), i = 0; i < k && o->len > 1; i++) {
    size_t at = below((uint32_t)o->len);
    char c = SPECIAL[below(sizeof SPECIAL - 1)];
    switch (below(3)) {
    case 0:
      o->b[at] = c;
      break;
    case 1:
      put(o, &c, 1); /* one byte more at the end, then moved up */
      memmove(o->b + at + 1, o->b + at, o->len - 1 - at);
      o->b[at] = c;
      break;
    default:
      memmove(o->b + at, o->b + at + 1, o->len - at - 1);
      o->len--;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: list-walk-check SEED COUNT\n");
    return 64;
  }
  rng = strtoull(argv[1], NULL, 10) * 2654435761u + 1;
  long count = atol(argv[2]), accepted = 0, rejected = 0;
  /* Known answers first: an owned entry is {"Id":"a…"}, a foreign one {"Id":"f…"}. */
  char mine[80], other[80];
  snprintf(mine, sizeof mine, "{\"Id\":\"%.64s\"}", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  snprintf(other, sizeof other, "{\"Id\":\"%.64s\"}", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
  struct {
    const char *what;
    char list[400];
    int want;
  } known[] = {
      {"empty", "[]\n", 1},
      {"one of the tenant's", "", 1},
      {"a foreign entry", "", 0},
      {"a scalar", "[1]", 0},
      {"a string holding a foreign entry (red-team pass 35)", "", 0},
      {"a string between entries", "", 0},
      {"a trailing comma", "", 0},
      /* The first array's `]` ends a block: a walk fed up to it must not take it for the end. */
      {"a second array after the first", "", 0},
  };
  snprintf(known[1].list, sizeof known[1].list, "[%s, %s]\n", mine, mine);
  snprintf(known[2].list, sizeof known[2].list, "[%s,%s]", mine, other);
  snprintf(known[4].list, sizeof known[4].list, "[%s,\"{\\\"Id\\\":\\\"%.64s\\\"}\"]", mine,
           other + 7);
  snprintf(known[5].list, sizeof known[5].list, "[%s,\"x\",%s]", mine, mine);
  snprintf(known[6].list, sizeof known[6].list, "[%s,]", mine);
  snprintf(known[7].list, sizeof known[7].list, "[%s%*s][%s]", mine, 127 - 1 - (int)strlen(mine), "", mine);
  for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
    size_t len = strlen(known[k].list);
    int ref = reference_walk(known[k].list, len), got = list_owned_walk(known[k].list, len);
    /* Fed a byte more each time, as if each arrived on its own; then fed once, at each length. */
    struct list_walk w;
    list_walk_start(&w);
    for (size_t avail = 1; avail < len; avail++) list_walk_feed(&w, known[k].list, avail);
    int pieces = list_walk_end(&w, known[k].list, len);
    for (size_t avail = 1; avail < len && pieces == known[k].want; avail++) {
      list_walk_start(&w);
      list_walk_feed(&w, known[k].list, avail);
      pieces = list_walk_end(&w, known[k].list, len);
    }
    if (ref != known[k].want || got != known[k].want || pieces != known[k].want) {
      fprintf(stderr, "%s: %s: reference %d, block walk %d, fed %d, want %d\n", known[k].what, known[k].list, ref,
              got, pieces, known[k].want);
      return 1;
    }
  }
  struct buf o = {0};
  long fed = 0;
  for (long i = 0; i < count; i++) {
    list(&o);
    if (below(2)) mutate(&o);
    /* An exact-size copy, so the sanitizer sees any read past the end. */
    char *s = malloc(o.len ? o.len : 1);
    if (!s) abort();
    memcpy(s, o.b, o.len);
    int want = reference_walk(s, o.len), got = list_owned_walk(s, o.len);
    /* Fed in up to three pieces first, each from an exact-size copy of what has arrived (freed
       before the next: the walk must keep no pointer into a piece), then ended on the whole. Now
       and then (short lists) a byte at a time instead, from the list itself: every block end the
       list could arrive at. */
    struct list_walk w;
    list_walk_start(&w);
    if (o.len <= 8192 && below(8) == 0)
      for (size_t avail = 1; avail < o.len; avail++) list_walk_feed(&w, s, avail);
    else
      for (uint32_t k = below(4), j = 0, avail = 0; j < k; j++) {
        avail += below((uint32_t)(o.len - avail) + 1);
        char *piece = malloc(avail ? avail : 1);
        if (!piece) abort();
        memcpy(piece, s, avail);
        list_walk_feed(&w, piece, avail);
        free(piece);
      }
    if (w.at > 0 && !w.failed) fed++;
    int pieces = list_walk_end(&w, s, o.len);
    if (want != got || want != pieces) {
      fprintf(stderr, "differ on input %ld (reference %d, block walk %d, fed %d):\n", i, want, got, pieces);
      for (size_t k = 0; k < o.len; k++) fprintf(stderr, "%02x", (unsigned char)s[k]);
      fprintf(stderr, "\n");
      printf("inputs %ld accepted %ld rejected %ld differ 1 fed %ld\n", i + 1, accepted, rejected, fed);
      free(s);
      free(o.b);
      return 1;
    }
    if (got) accepted++;
    else rejected++;
    free(s);
  }
  free(o.b);
  printf("inputs %ld accepted %ld rejected %ld differ 0 fed %ld\n", count, accepted, rejected, fed);
  return 0;
}
