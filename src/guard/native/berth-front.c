/*
 * berth-front: the guard's fast front for the requests a CI job makes most (ping, container
 * inspect, container list), answered without a Node event-loop turn. Every other request goes to
 * the guard itself, byte for byte.
 *
 *   berth-front LISTEN_PATH ENGINE_SOCKET_PATH TENANT AUDIT      (fd NODE_CHANNEL_FD: the guard)
 *
 * It listens on the tenant's socket (made 0666, as the guard's own) with a thread per connection.
 * For each request it peeks at the head (MSG_PEEK: nothing is consumed) and parses it:
 *
 *   - FAST: one of the shapes below, answered here once the engine's answer is known to be one
 *     the guard would send as it is. Otherwise the request goes to the guard (RELAY).
 *   - RELAY: any other request in strict syntax whose body (Content-Length only, at most 64 KiB)
 *     has arrived whole and that is not a stream. It goes to the guard, unchanged, on the front's
 *     own connection to it, and the guard's answer comes back as the guard framed it. The front's
 *     connection is one end of a socketpair whose other end the guard got as a connection, so the
 *     guard checks these requests as any other. The client keeps its connection to the front.
 *   - UPLOAD: a build (POST [/vN.N]/build) in strict syntax with a chunked or sized body. The front
 *     carries its context to the engine and copies to the guard what the guard reads of it; the
 *     guard says which bytes the engine gets (see upload()).
 *   - HAND: anything else (odd syntax, chunked or large bodies, upgrades, streams, a head that has
 *     not arrived whole). The connection goes to the guard for good, unread from that request on.
 *
 * Connections and socketpair ends reach the guard over Node's IPC channel, as NODE_HANDLE messages
 * (the format of Node's own child_process.send of a socket), made non-blocking first.
 *
 * The shapes answered here:
 *
 *   GET|HEAD [/vN.N]/_ping
 *   GET [/vN.N]/containers/REF/json[?size=B]      when its leading Id is one of the tenant's
 *                                                 containers (the guard tells which)
 *   GET [/vN.N]/containers/json[?all=B&limit=N&size=B&filters=F]
 *                                                 sent on with the tenant's label filter added;
 *                                                 answered when every entry's Id is the tenant's
 *
 * Strict HTTP/1.1 syntax means CRLF only and token header names, with no Transfer-Encoding,
 * Upgrade, Expect, TE or Trailer, and Connection only keep-alive (an upload may be chunked, and may
 * say Connection: close). The request sent to the engine
 * is built here from the parsed parts, never from the client's bytes.
 *
 * Messages on the channel are JSON lines:
 *   - From the guard: {"add":"<64 hex>"} and {"del":"<64 hex>"}, the containers the guard made
 *     for the tenant. Once made, a container is the tenant's for good, since labels cannot change.
 *     One the guard has not reported yet only takes the slower way.
 *   - To the guard: {"berth":"ready"} once listening, then the connections.
 *
 * Each answer given here is one audit line, as the guard writes them, to AUDIT: a file, `-` for
 * stdout, or `` for none.
 *
 * It ends when the channel closes, when the guard's thread ends (PR_SET_PDEATHSIG), or on SIGTERM.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 8192
/* Bodies the front passes to the guard itself, whole (a create's JSON); larger ones go with the
   connection. Under a socket buffer: writing one to the guard never waits on the guard reading. */
#define RELAY_BODY_MAX (64 * 1024)
#define PEEK_MAX (HEAD_MAX + RELAY_BODY_MAX)
#define MAX_HEADERS 64
/* Connection threads at once. A kept-alive connection holds its thread while idle, and client pools
 * keep idle ones (a Node agent holds two per client that pings first): with 128, the bench's load of
 * 200 clients had every list and inspect go to the guard. A thread's stack is 512 KiB of address
 * space, little of it touched; threads started past KEEP_THREADS keep no answer buffer between
 * requests. */
#define MAX_THREADS 1024
#define KEEP_THREADS 128
/* Uploads carried at once (each runs two threads besides its connection's). */
#define MAX_UPLOADS 32
/* A kept-alive connection idle this long is closed, as node:http closes its own (keepAliveTimeout). */
#define IDLE_MS_DEFAULT 30000
static int idle_ms = IDLE_MS_DEFAULT;
/* The front's own connection to the guard is renewed when idle this long (under node:http's 30 s). */
#define GUARD_IDLE_S 10
/* Engine answers larger than this are the guard's to relay. */
#define ANSWER_MAX (4 << 20)
#define TARGET_MAX 2048
/* The header naming an upload's channel to the guard (upload()); the front's alone. */
#define UPLOAD_HEADER "x-berth-upload"

static const char *engine_path;
static const char *tenant;
static int channel = -1;
static int audit_fd = -1;
static pthread_mutex_t channel_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static int threads;
static int uploads;

/* ------------------------------------------------------------------ the tenant's containers */

#define SET_BUCKETS 4096
struct node {
  struct node *next;
  char id[65];
};
static struct node *buckets[SET_BUCKETS];
static pthread_rwlock_t set_lock = PTHREAD_RWLOCK_INITIALIZER;

/* IDs are random hex: 16 of their digits, mixed, pick the bucket (a 64-digit FNV cost 3 us a list). */
static unsigned bucket_of(const char *id) {
  uint64_t a, b;
  memcpy(&a, id, 8);
  memcpy(&b, id + 8, 8);
  return (unsigned)((((a ^ (b * 0x9E3779B97F4A7C15ull)) * 0xD6E8FEB86659FD93ull) >> 32) % SET_BUCKETS);
}

#include "list-walk.h" /* is_hex64, the list walk (with owned_all, below) */

/* Whether the 64 hex digits at id name a container the guard made for the tenant (the set's lock
   held). */
static int owned_locked(const char *id) {
  for (struct node *n = buckets[bucket_of(id)]; n; n = n->next)
    if (memcmp(n->id, id, 64) == 0) return 1;
  return 0;
}

static int owned(const char *id) {
  pthread_rwlock_rdlock(&set_lock);
  int found = owned_locked(id);
  pthread_rwlock_unlock(&set_lock);
  return found;
}

/* Whether the IDs at s + at[k] are all owned: the lock taken once, and each ID's bucket, then its
   first node, asked of memory for all of them before any is compared (the misses overlap). */
static int owned_all(const char *s, const size_t *at, int n) {
  unsigned b[LIST_BATCH];
  for (int k = 0; k < n; k++) {
    b[k] = bucket_of(s + at[k]);
    __builtin_prefetch(&buckets[b[k]]);
  }
  pthread_rwlock_rdlock(&set_lock);
  for (int k = 0; k < n; k++)
    if (buckets[b[k]]) __builtin_prefetch(buckets[b[k]]);
  int all = 1;
  for (int k = 0; k < n && all; k++) all = owned_locked(s + at[k]);
  pthread_rwlock_unlock(&set_lock);
  return all;
}

static void set_add(const char *id) {
  unsigned b = bucket_of(id);
  pthread_rwlock_wrlock(&set_lock);
  struct node *n;
  for (n = buckets[b]; n; n = n->next)
    if (memcmp(n->id, id, 64) == 0) break;
  if (!n && (n = calloc(1, sizeof *n)) != NULL) {
    memcpy(n->id, id, 64);
    n->next = buckets[b];
    buckets[b] = n;
  }
  pthread_rwlock_unlock(&set_lock);
}

static void set_del(const char *id) {
  unsigned b = bucket_of(id);
  pthread_rwlock_wrlock(&set_lock);
  for (struct node **p = &buckets[b]; *p; p = &(*p)->next)
    if (memcmp((*p)->id, id, 64) == 0) {
      struct node *gone = *p;
      *p = gone->next;
      free(gone);
      break;
    }
  pthread_rwlock_unlock(&set_lock);
}

/* ------------------------------------------------------------------ the guard's channel */

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* writev until all of it is written. */
static int write_iov(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Hands a connection to the guard (Node's NODE_HANDLE message, the descriptor attached), then
   closes this process's copy. Without the guard there is nobody to serve it: it is closed. */
static void hand_over_as(int fd, const char *msg, size_t len) {
  /* The flag is the open file's, shared with the guard's copy: libuv takes a received descriptor
     as it comes, and a blocking one would stall the guard's whole event loop on a full socket. */
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    close(fd);
    return;
  }
  char ctl[CMSG_SPACE(sizeof(int))];
  memset(ctl, 0, sizeof ctl);
  struct iovec iov = {(void *)msg, len};
  struct msghdr mh = {0};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  pthread_mutex_lock(&channel_lock);
  ssize_t w;
  do w = sendmsg(channel, &mh, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w > 0 && (size_t)w < len) write_all(channel, msg + w, len - (size_t)w);
  pthread_mutex_unlock(&channel_lock);
  close(fd);
}

static void hand_over(int fd) {
  static const char msg[] =
      "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"berth\":\"connection\"}}\n";
  hand_over_as(fd, msg, sizeof msg - 1);
}

/* Reads the guard's messages; its end (the guard closed or died) ends this process. */
static void *read_channel(void *arg) {
  (void)arg;
  char buf[65536];
  size_t have = 0;
  for (;;) {
    ssize_t r = read(channel, buf + have, sizeof buf - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) _exit(0);
    have += (size_t)r;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + have - start))) != NULL) {
      *nl = '\0';
      /* {"add":"<id>"} / {"del":"<id>"}; anything else (Node's own NODE_HANDLE_ACK) is ignored. */
      if (nl - start == 74 && strncmp(start, "{\"add\":\"", 8) == 0 && is_hex64(start + 8) &&
          strcmp(start + 72, "\"}") == 0)
        set_add(start + 8);
      else if (nl - start == 74 && strncmp(start, "{\"del\":\"", 8) == 0 && is_hex64(start + 8) &&
               strcmp(start + 72, "\"}") == 0)
        set_del(start + 8);
      start = nl + 1;
    }
    have = (size_t)(buf + have - start);
    memmove(buf, start, have);
    if (have == sizeof buf) have = 0; /* a line this long is no message of ours */
  }
  return NULL;
}

/* ------------------------------------------------------------------ audit */

static void audit(const char *method, const char *path, int status) {
  if (audit_fd < 0) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char line[512];
  int n = snprintf(line, sizeof line,
                   "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"tenant\":\"%s\",\"method\":\"%s\","
                   "\"path\":\"%s\",\"decision\":\"allow\",\"status\":%d,\"via\":\"front\"}\n",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, tenant, method, path, status);
  if (n > 0 && (size_t)n < sizeof line) {
    ssize_t w;
    do w = write(audit_fd, line, (size_t)n);
    while (w < 0 && errno == EINTR);
  }
}

/* ------------------------------------------------------------------ request heads */

enum kind { PING, INSPECT, LIST };
/* What parse() says of a request head. */
enum verdict { INCOMPLETE = -1, HAND = 0, FAST = 1, RELAY = 2, UPLOAD = 3 };

struct request {
  enum kind kind;
  int head;                /* bytes of the head, CRLFCRLF included */
  int body;                /* bytes of the body (Content-Length), whole in the peeked bytes */
  int chunked;             /* an UPLOAD's body is chunked (else it has `length` bytes) */
  long long length;        /* an UPLOAD's Content-Length */
  int is_head;             /* HEAD, not GET */
  char version[16];        /* "/v1.41" or "" */
  char path[160];          /* the audit's path: no version, no query */
  char upstream[TARGET_MAX]; /* the target sent to the engine */
};

static int tchar(int c) {
  return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int ieq(const char *a, size_t an, const char *b) {
  return strlen(b) == an && strncasecmp(a, b, an) == 0;
}

/* Appends s[0..n) to out at *o, a NUL kept after it; 0 when that does not fit in cap. The answer's
   path builds its strings with these, not printf: a thread woken for a request runs with cold
   caches, and printf's machinery cost more there than everything else in the parse. */
static int app(char *out, size_t cap, size_t *o, const char *s, size_t n) {
  if (*o + n >= cap) return 0;
  memcpy(out + *o, s, n);
  *o += n;
  out[*o] = '\0';
  return 1;
}

static int app_str(char *out, size_t cap, size_t *o, const char *s) { return app(out, cap, o, s, strlen(s)); }

static int app_dec(char *out, size_t cap, size_t *o, size_t v) {
  char d[24];
  size_t i = sizeof d;
  do d[--i] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  return app(out, cap, o, d + i, sizeof d - i);
}

/* The value of a hex digit (one isxdigit took). */
static int hex_digit(int c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* Go's httputils.BoolValue input as a plain value: letters and digits only. */
static int plain_value(const char *v, size_t n, size_t max) {
  if (n > max) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)v[i])) return 0;
  return 1;
}

/* Percent-decodes (and '+' as space, as Go's query parsing) into out; 0 on a bad escape. */
static int unescape(const char *s, size_t n, char *out, size_t cap, size_t *len) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      if (i + 2 >= n) return 0;
      if (!isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2])) return 0;
      c = hex_digit((unsigned char)s[i + 1]) * 16 + hex_digit((unsigned char)s[i + 2]);
      i += 2;
    } else if (c == '+')
      c = ' ';
    if (o + 1 >= cap) return 0;
    out[o++] = (char)c;
  }
  out[o] = '\0';
  *len = o;
  return 1;
}

/* Appends s percent-encoded (unreserved characters as they are) to out. */
static int escape_into(char *out, size_t cap, size_t *o, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      if (*o + 1 >= cap) return 0;
      out[(*o)++] = (char)c;
    } else {
      if (*o + 3 >= cap) return 0;
      out[(*o)++] = '%';
      out[(*o)++] = hex[c >> 4];
      out[(*o)++] = hex[c & 15];
    }
  }
  out[*o] = '\0';
  return 1;
}

/*
 * A container list's filters, in the one plain shape taken here: an object whose keys (lower-case
 * letters, '_', '-', '!') each name an array of strings or an object of strings mapped to true,
 * no key twice, no escape in any string, neither `since` nor `before` (which name a container the
 * guard resolves). Re-encoded in dockerd's map form with the tenant's label added. 0: not taken.
 */
static int tenant_filters(const char *in, char *out, size_t cap) {
  char keys[16][32];
  int nkeys = 0, has_label = 0, form = 0; /* form: 1 arrays (dockerd's legacy), 2 maps; not mixed */
  size_t o = 0;
  const char *p = in;
#define WS() while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++
#define PUT(str)                             \
  do {                                       \
    if (!app_str(out, cap, &o, str)) return 0; \
  } while (0)
  WS();
  if (*p++ != '{') return 0;
  PUT("{");
  WS();
  if (*p == '}') p++;
  else
    for (;;) {
      WS();
      if (*p++ != '"') return 0;
      const char *k = p;
      while (*p && ((*p >= 'a' && *p <= 'z') || *p == '_' || *p == '-' || *p == '!')) p++;
      size_t kl = (size_t)(p - k);
      if (*p++ != '"' || kl == 0 || kl >= sizeof keys[0] || nkeys == 16) return 0;
      for (int i = 0; i < nkeys; i++)
        if (strlen(keys[i]) == kl && memcmp(keys[i], k, kl) == 0) return 0;
      memcpy(keys[nkeys], k, kl);
      keys[nkeys][kl] = '\0';
      const char *key = keys[nkeys++];
      if (strcmp(key, "since") == 0 || strcmp(key, "before") == 0) return 0;
      int label = strcmp(key, "label") == 0;
      has_label |= label;
      WS();
      if (*p++ != ':') return 0;
      WS();
      char close;
      if (*p == '[') close = ']';
      else if (*p == '{') close = '}';
      else return 0;
      p++;
      /* One form throughout, kept as the client wrote it (the guard forwards it so). */
      int this_form = close == ']' ? 1 : 2;
      if (form && form != this_form) return 0;
      form = this_form;
      if (nkeys > 1) PUT(",");
      PUT("\"");
      PUT(key);
      PUT(form == 1 ? "\":[" : "\":{");
      int n = 0;
      WS();
      if (*p == close) p++;
      else
        for (;;) {
          WS();
          if (*p++ != '"') return 0;
          const char *v = p;
          while (*p && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f) p++;
          if (*p != '"') return 0;
          size_t vl = (size_t)(p - v);
          p++;
          if (close == '}') {
            WS();
            if (*p++ != ':') return 0;
            WS();
            if (strncmp(p, "true", 4) != 0) return 0;
            p += 4;
          }
          if (o + vl + 10 >= cap) return 0;
          if (n++) out[o++] = ',';
          out[o++] = '"';
          memcpy(out + o, v, vl);
          o += vl;
          out[o++] = '"';
          if (form == 2) {
            memcpy(out + o, ":true", 5);
            o += 5;
          }
          out[o] = '\0';
          WS();
          if (*p == ',') {
            p++;
            continue;
          }
          if (*p++ != close) return 0;
          break;
        }
      if (label) {
        if (n) PUT(",");
        PUT("\"io.berth.tenant=");
        PUT(tenant);
        PUT(form == 2 ? "\":true" : "\"");
      }
      PUT(form == 1 ? "]" : "}");
      WS();
      if (*p == ',') {
        p++;
        continue;
      }
      if (*p++ != '}') return 0;
      break;
    }
  WS();
  if (*p) return 0;
  if (!has_label) {
    if (nkeys) PUT(",");
    PUT("\"label\":");
    PUT(form == 2 ? "{\"io.berth.tenant=" : "[\"io.berth.tenant=");
    PUT(tenant);
    PUT(form == 2 ? "\":true}" : "\"]");
  }
  PUT("}");
  return 1;
#undef WS
#undef PUT
}

static int target_shape(const char *target, size_t tl, struct request *r);

/* A path the guard routes as it reads (no escape, no empty or dot segment, no trailing slash):
   so what streaming() sees is what the guard sees. */
static int canonical(const char *target, size_t tl) {
  size_t pl = 0;
  while (pl < tl && target[pl] != '?') pl++;
  if (pl == 0 || (pl > 1 && target[pl - 1] == '/')) return 0;
  for (size_t i = 0; i < pl; i++) {
    /* An escaped colon (clients escape an image ID's sha256:) is the only escape let through: it
       cannot make a segment, a dot or a stream's name. */
    if (target[i] == '%' && i + 2 < pl && target[i + 1] == '3' && (target[i + 2] == 'A' || target[i + 2] == 'a')) {
      i += 2;
      continue;
    }
    if (target[i] == '%' || target[i] == '\\') return 0;
    if (target[i] != '/') continue;
    if (i + 1 < pl && target[i + 1] == '/') return 0;
    if (i + 1 < pl && target[i + 1] == '.' && (i + 2 == pl || target[i + 2] == '/' ||
                                             (target[i + 2] == '.' && (i + 3 == pl || target[i + 3] == '/'))))
      return 0;
  }
  return 1;
}

/* Whether a target's path is [/vN.N]/build (a query may follow). */
static int build_target(const char *target, size_t tl) {
  size_t pl = 0;
  while (pl < tl && target[pl] != '?') pl++;
  size_t at = 0;
  if (pl > 2 && target[1] == 'v' && isdigit((unsigned char)target[2])) {
    at = 2;
    while (at < pl && (isdigit((unsigned char)target[at]) || target[at] == '.')) at++;
  }
  return pl - at == 6 && strncmp(target + at, "/build", 6) == 0;
}

/* Answers the guard streams, holds open or hands to a helper: their connections go to it whole. */
static int streaming(const char *target, size_t tl) {
  static const char *const last[] = {"logs",  "attach", "ws",   "events", "wait", "stats", "export",
                                     "archive", "get",  "load", "build",  "push", NULL};
  size_t pl = 0;
  while (pl < tl && target[pl] != '?') pl++;
  size_t at = pl;
  while (at > 0 && target[at - 1] != '/') at--;
  const char *seg = target + at;
  size_t sl = pl - at;
  for (int i = 0; last[i]; i++)
    if (strlen(last[i]) == sl && strncmp(seg, last[i], sl) == 0) return 1;
  /* An exec's start (attach), a pull or import (/images/create). */
  if (sl == 5 && strncmp(seg, "start", 5) == 0 && memmem(target, pl, "/exec/", 6)) return 1;
  if (sl == 6 && strncmp(seg, "create", 6) == 0 && memmem(target, pl, "/images/", 8)) return 1;
  return 0;
}

/*
 * Parses the request at buf[0..n) into r: FAST, one the front answers (below); RELAY, one it
 * passes to the guard on its own connection to it and whose answer it passes back (every other
 * request in strict syntax, with its body whole in buf, that is not a stream); HAND, the
 * connection goes to the guard; INCOMPLETE, not whole yet (the connection goes to the guard too).
 */
static int parse(const char *buf, int n, struct request *r) {
  const char *end = memmem(buf, (size_t)(n < HEAD_MAX ? n : HEAD_MAX), "\r\n\r\n", 4);
  if (!end) return n >= HEAD_MAX ? HAND : INCOMPLETE;
  r->head = (int)(end - buf) + 4;
  r->body = 0;
  /* Every byte of the head printable ASCII, each LF after a CR, no NUL. */
  for (int i = 0; i < r->head; i++) {
    unsigned char c = (unsigned char)buf[i];
    if (c == '\n' ? (i == 0 || buf[i - 1] != '\r') : c == '\r' ? buf[i + 1] != '\n'
                                                    : (c < 0x20 && c != '\t') || c >= 0x7f)
      return HAND;
  }
  const char *p = buf, *line_end = memmem(buf, (size_t)r->head, "\r\n", 2);
  int get = 0;
  r->is_head = 0;
  if (strncmp(p, "GET ", 4) == 0) {
    get = 1;
    p += 4;
  } else if (strncmp(p, "HEAD ", 5) == 0) {
    get = r->is_head = 1;
    p += 5;
  } else if (strncmp(p, "POST ", 5) == 0 || strncmp(p, "PUT ", 4) == 0 || strncmp(p, "DELETE ", 7) == 0) {
    p = strchr(p, ' ') + 1;
  } else
    return HAND;
  const char *target = p;
  while (p < line_end && *p != ' ') p++;
  size_t tl = (size_t)(p - target);
  if (p + 9 != line_end || strncmp(p, " HTTP/1.1", 9) != 0 || tl == 0 || tl >= 1024 || target[0] != '/')
    return HAND;
  for (size_t i = 0; i < tl; i++)
    if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] >= 0x7f) return HAND;
  /* Headers: token names; one Content-Length of plain digits at most; no other framing, no
     upgrade, keep-alive only. */
  int count = 0, lengths = 0, hosts = 0, codings = 0, closes = 0;
  long long length = 0;
  r->chunked = 0;
  for (const char *h = line_end + 2; h < end; count++) {
    const char *e = memmem(h, (size_t)(end + 2 - h), "\r\n", 2);
    if (count >= MAX_HEADERS) return HAND;
    const char *colon = h;
    while (colon < e && tchar((unsigned char)*colon)) colon++;
    if (colon == h || colon >= e || *colon != ':') return HAND;
    size_t nl = (size_t)(colon - h);
    const char *v = colon + 1;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    size_t vl = (size_t)(e - v);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
    if (ieq(h, nl, "host")) hosts++;
    if (ieq(h, nl, "content-length")) {
      if (lengths++ || vl == 0 || vl > 15 || strspn(v, "0123456789") < vl) return HAND;
      length = strtoll(v, NULL, 10);
    } else if (ieq(h, nl, "transfer-encoding")) {
      /* chunked alone, once: the only coding an upload's body may have here. */
      if (codings++ || !ieq(v, vl, "chunked")) return HAND;
      r->chunked = 1;
    } else if (ieq(h, nl, "upgrade") || ieq(h, nl, "expect") || ieq(h, nl, "te") || ieq(h, nl, "trailer") ||
               ieq(h, nl, UPLOAD_HEADER))
      return HAND;
    else if ((ieq(h, nl, "connection") || ieq(h, nl, "proxy-connection")) && !ieq(v, vl, "keep-alive")) {
      /* close: an upload's connection ends with its answer (the guard's answer says so too). */
      if (!ieq(h, nl, "connection") || !ieq(v, vl, "close")) return HAND;
      closes = 1;
    }
    h = e + 2;
  }
  /* node:http answers a request without exactly one Host 400 (and so must the front). */
  if (hosts != 1 || (lengths && codings)) return HAND;
  /* A build context: its body goes to the engine from here, and a copy to the guard (upload()). */
  if (strncmp(buf, "POST ", 5) == 0 && (r->chunked || length > 0) && canonical(target, tl) &&
      build_target(target, tl)) {
    r->length = length;
    return UPLOAD;
  }
  if (r->chunked || closes || length > RELAY_BODY_MAX) return HAND;
  r->body = (int)length;
  if (r->head + r->body > n) return n >= PEEK_MAX ? HAND : INCOMPLETE;
  int relay = !canonical(target, tl) || streaming(target, tl) ? HAND : RELAY;
  if (!get || lengths) return relay;
  int fast = target_shape(target, tl, r);
  return fast ? FAST : relay;
}

/* Whether a GET or HEAD target is one the front answers itself; fills r's paths. */
static int target_shape(const char *target, size_t tl, struct request *r) {
  /* The target: an optional /vN.N, the path, a query of known names only. */
  char t[1024];
  memcpy(t, target, tl);
  t[tl] = '\0';
  char *q = strchr(t, '?');
  if (q) *q++ = '\0';
  char *path = t;
  r->version[0] = '\0';
  if (path[0] == '/' && path[1] == 'v' && isdigit((unsigned char)path[2])) {
    char *s = path + 2;
    while (isdigit((unsigned char)*s)) s++;
    if (*s++ != '.' || !isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
    if (*s != '/' || (size_t)(s - path) >= sizeof r->version) return 0;
    memcpy(r->version, path, (size_t)(s - path));
    r->version[s - path] = '\0';
    path = s;
  }
  if (strcmp(path, "/_ping") == 0) {
    if (q) return 0;
    r->kind = PING;
    strcpy(r->path, "/_ping");
    size_t o = 0;
    return app_str(r->upstream, sizeof r->upstream, &o, r->version) &&
           app_str(r->upstream, sizeof r->upstream, &o, "/_ping");
  }
  if (r->is_head) return 0;
  if (strcmp(path, "/containers/json") == 0) {
    r->kind = LIST;
    strcpy(r->path, "/containers/json");
    size_t o = 0, cap = sizeof r->upstream;
    char *u = r->upstream;
    if (!app_str(u, cap, &o, r->version) || !app_str(u, cap, &o, "/containers/json?")) return 0;
    int seen_all = 0, seen_limit = 0, seen_size = 0, seen_filters = 0;
    char decoded[1024], filters[1400];
    filters[0] = '\0';
    for (char *part = q, *next; part && *part; part = next) {
      next = strchr(part, '&');
      if (next) *next++ = '\0';
      char *eq = strchr(part, '=');
      if (!eq) return 0;
      *eq = '\0';
      const char *val = eq + 1;
      size_t vl = strlen(val);
      if (strcmp(part, "all") == 0 && !seen_all++ && plain_value(val, vl, 8)) {
        if (!app_str(u, cap, &o, "all=") || !app(u, cap, &o, val, vl) || !app(u, cap, &o, "&", 1)) return 0;
      } else if (strcmp(part, "size") == 0 && !seen_size++ && plain_value(val, vl, 8)) {
        if (!app_str(u, cap, &o, "size=") || !app(u, cap, &o, val, vl) || !app(u, cap, &o, "&", 1)) return 0;
      } else if (strcmp(part, "limit") == 0 && !seen_limit++ && vl > 0 && vl <= 6 &&
                 strspn(val, "-0123456789") == vl) {
        if (!app_str(u, cap, &o, "limit=") || !app(u, cap, &o, val, vl) || !app(u, cap, &o, "&", 1)) return 0;
      } else if (strcmp(part, "filters") == 0 && !seen_filters++) {
        size_t dl;
        if (!unescape(val, vl, decoded, sizeof decoded, &dl) || strlen(decoded) != dl) return 0;
        if (dl > 0 && !tenant_filters(decoded, filters, sizeof filters)) return 0;
      } else
        return 0;
    }
    if (filters[0] == '\0' && !tenant_filters("{}", filters, sizeof filters)) return 0;
    return app_str(u, cap, &o, "filters=") && escape_into(u, cap, &o, filters);
  }
  if (strncmp(path, "/containers/", 12) == 0) {
    char *ref = path + 12, *slash = strchr(ref, '/');
    if (!slash || strcmp(slash, "/json") != 0) return 0;
    size_t rl = (size_t)(slash - ref);
    if (rl == 0 || rl > 128 || !isalnum((unsigned char)ref[0])) return 0;
    for (size_t i = 0; i < rl; i++)
      if (!isalnum((unsigned char)ref[i]) && !strchr("_.-", ref[i])) return 0;
    r->kind = INSPECT;
    size_t p = 0, o = 0, cap = sizeof r->upstream;
    if (!app_str(r->path, sizeof r->path, &p, "/containers/") || !app(r->path, sizeof r->path, &p, ref, rl) ||
        !app_str(r->path, sizeof r->path, &p, "/json") || !app_str(r->upstream, cap, &o, r->version) ||
        !app_str(r->upstream, cap, &o, r->path))
      return 0;
    if (q && *q) {
      if (strncmp(q, "size=", 5) != 0 || !plain_value(q + 5, strlen(q + 5), 8)) return 0;
      if (!app(r->upstream, cap, &o, "?", 1) || !app_str(r->upstream, cap, &o, q)) return 0;
    }
    return 1;
  }
  return 0;
}

/* ------------------------------------------------------------------ the engine's answers */

struct answer {
  int status;
  char headers[2048]; /* the engine's end-to-end headers, as lines, Content-Type aside */
  size_t headers_len;
  char *body;
  size_t len, cap;
};

static int engine_connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(engine_path) >= sizeof a.sun_path) {
    close(fd);
    return -1;
  }
  strcpy(a.sun_path, engine_path);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* A buffered reader over the engine's connection. */
struct reader {
  int fd;
  /* While waiting on fd: a descriptor whose hang-up ends the wait (the client, while the guard
     answers it), or -1. */
  int watch;
  int hup; /* the watched descriptor hung up */
  /* Work for the wait, done before each read (the reader has nothing left, so the read may wait
     for the engine): walking the part of a list that has come. */
  void (*idle)(void *);
  void *idle_arg;
  char buf[65536];
  size_t at, have;
};

static int fill(struct reader *rd) {
  if (rd->at < rd->have) return 1;
  if (rd->idle) rd->idle(rd->idle_arg);
  if (rd->watch >= 0) {
    struct pollfd p[2] = {{rd->fd, POLLIN, 0}, {rd->watch, 0, 0}};
    for (;;) {
      int n = poll(p, 2, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return 0;
      if (p[1].revents & (POLLHUP | POLLERR)) {
        rd->hup = 1;
        return 0;
      }
      if (p[0].revents) break;
    }
  }
  ssize_t r;
  do r = read(rd->fd, rd->buf, sizeof rd->buf);
  while (r < 0 && errno == EINTR);
  if (r <= 0) return 0;
  rd->at = 0;
  rd->have = (size_t)r;
  return 1;
}

/* One line (CRLF stripped) into out; 0 on EOF or a line too long. */
static int read_line(struct reader *rd, char *out, size_t cap) {
  size_t o = 0;
  for (;;) {
    if (!fill(rd)) return 0;
    char c = rd->buf[rd->at++];
    if (c == '\n') {
      if (o && out[o - 1] == '\r') o--;
      out[o] = '\0';
      return 1;
    }
    if (o + 1 >= cap) return 0;
    out[o++] = c;
  }
}

static int read_exact(struct reader *rd, struct answer *a, size_t n) {
  if (a->len + n > ANSWER_MAX) return 0;
  if (a->len + n + 1 > a->cap) {
    size_t cap = a->cap ? a->cap : 65536;
    while (cap < a->len + n + 1) cap *= 2;
    char *b = realloc(a->body, cap);
    if (!b) return 0;
    a->body = b;
    a->cap = cap;
  }
  while (n > 0) {
    if (!fill(rd)) return 0;
    size_t take = rd->have - rd->at < n ? rd->have - rd->at : n;
    memcpy(a->body + a->len, rd->buf + rd->at, take);
    rd->at += take;
    a->len += take;
    n -= take;
  }
  return 1;
}

/* Reads one answer (head and body) from the engine; 0 when it could not (the connection is then
   of no further use). keep: whether the engine keeps the connection open after it. */
/* How an answer is framed, from its header lines. chunked: 1 chunked, -1 another coding. */
struct framing {
  long long length;
  int chunked;
  int closes;
};

/* Reads one header line into f when it frames the answer: 1 it did, 0 another header, -1 no
   header at all (no colon). */
static int header_framing(const char *line, struct framing *f) {
  const char *colon = strchr(line, ':');
  if (!colon) return -1;
  size_t nl = (size_t)(colon - line);
  const char *v = colon + 1;
  while (*v == ' ') v++;
  if (ieq(line, nl, "content-length")) f->length = atoll(v);
  else if (ieq(line, nl, "transfer-encoding")) f->chunked = strcasecmp(v, "chunked") == 0 ? 1 : -1;
  else if (ieq(line, nl, "connection")) f->closes = strcasecmp(v, "close") == 0;
  else return 0;
  return 1;
}

static int read_answer(struct reader *rd, struct answer *a, int is_head, int *keep) {
  char line[4096];
  a->len = 0;
  a->headers_len = 0;
  *keep = 1;
  if (!read_line(rd, line, sizeof line) || strncmp(line, "HTTP/1.1 ", 9) != 0) return 0;
  a->status = atoi(line + 9);
  struct framing f = {-1, 0, 0};
  for (;;) {
    if (!read_line(rd, line, sizeof line)) return 0;
    if (line[0] == '\0') break;
    int framing = header_framing(line, &f);
    if (framing < 0) return 0;
    if (framing) continue;
    size_t nl = (size_t)(strchr(line, ':') - line);
    if (!ieq(line, nl, "keep-alive") && !ieq(line, nl, "content-type") && !ieq(line, nl, "proxy-connection") &&
        !ieq(line, nl, "upgrade")) {
      size_t l = strlen(line);
      if (a->headers_len + l + 2 < sizeof a->headers) {
        memcpy(a->headers + a->headers_len, line, l);
        memcpy(a->headers + a->headers_len + l, "\r\n", 2);
        a->headers_len += l + 2;
      }
    }
  }
  *keep = !f.closes;
  long long length = f.length;
  if (f.chunked < 0) return 0;
  if (is_head || a->status == 204 || a->status == 304) return 1;
  if (f.chunked) {
    for (;;) {
      if (!read_line(rd, line, sizeof line)) return 0;
      char *endp;
      unsigned long long n = strtoull(line, &endp, 16);
      if (endp == line || (*endp && *endp != ';')) return 0;
      if (n == 0) {
        do
          if (!read_line(rd, line, sizeof line)) return 0;
        while (line[0] != '\0');
        return 1;
      }
      if (n > ANSWER_MAX || !read_exact(rd, a, (size_t)n)) return 0;
      if (!read_line(rd, line, sizeof line) || line[0] != '\0') return 0;
    }
  }
  if (length < 0) {
    /* Until the engine closes: not a shape its JSON answers take. */
    return 0;
  }
  if (length > ANSWER_MAX) return 0;
  return read_exact(rd, a, (size_t)length);
}

/* Whether this connection's thread keeps its answer buffer between requests: set once when the
   thread starts, true for the first KEEP_THREADS held at once. */
static __thread int keeps_buffer;

/* A large answer's buffer is not kept for the connection's next request, and none is by the
   connections past KEEP_THREADS: kept buffers stay within KEEP_THREADS x 256 KiB. */
static void trim(struct answer *a) {
  if (a->cap > 256 * 1024 || (!keeps_buffer && a->cap > 0)) {
    free(a->body);
    a->body = NULL;
    a->cap = 0;
  }
}

/* Whether the answer opens with {"Id":"<hex64>" of an owned container. */
static int inspect_owned(const struct answer *a) {
  if (a->len < 72 || memcmp(a->body, "{\"Id\":\"", 7) != 0 || !is_hex64(a->body + 7) ||
      a->body[71] != '"')
    return 0;
  return owned(a->body + 7);
}

/* Whether every entry of a container list is an owned container: list-walk.h. */
/* A list's walk, fed what has come of the answer while the rest is on its way. */
struct list_feed {
  struct list_walk walk;
  const struct answer *a;
};

static void list_fed(void *arg) {
  struct list_feed *f = arg;
  list_walk_feed(&f->walk, f->a->body, f->a->len);
}

/* ------------------------------------------------------------------ requests passed to the guard */

/* The front's own connection to the guard for one client: one end of a socketpair, the other
   handed to the guard as a connection of its own (the guard checks each request as any other). */
struct link {
  int fd;
  time_t used;
  struct reader rd;
};

static int link_open(struct link *l) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -1;
  hand_over(sv[1]);
  l->fd = l->rd.fd = sv[0];
  l->rd.watch = -1;
  l->rd.hup = 0;
  l->rd.idle = NULL;
  l->rd.idle_arg = NULL;
  l->rd.at = l->rd.have = 0;
  return 0;
}

static void link_close(struct link *l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
}

/* Reads and drops n bytes (a request peeked at whose answer is decided, bytes the engine side takes
   no more of). 0: the end came first. */
static int consume(int fd, size_t n) {
  char sink[4096];
  while (n > 0) {
    ssize_t r = read(fd, sink, n < sizeof sink ? n : sizeof sink);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    n -= (size_t)r;
  }
  return 1;
}

/* Copies n bytes from the reader to fd. */
static int copy_n(struct reader *rd, int fd, unsigned long long n) {
  while (n > 0) {
    if (!fill(rd)) return -1;
    size_t take = rd->have - rd->at < n ? rd->have - rd->at : (size_t)n;
    if (write_all(fd, rd->buf + rd->at, take) != 0) return -1;
    rd->at += take;
    n -= take;
  }
  return 0;
}

/* Copies one line (CRLF included) from the reader to fd; the line, CRLF stripped, into out. */
static int copy_line(struct reader *rd, int fd, char *out, size_t cap) {
  if (!read_line(rd, out, cap)) return -1;
  size_t l = strlen(out);
  if (write_all(fd, out, l) != 0 || write_all(fd, "\r\n", 2) != 0) return -1;
  return 0;
}

/* Both ways until both ends are done (an upgraded stream, an answer that ends with its
   connection); what the reader holds already goes first. */
static void both_ways(int client, struct link *l) {
  if (l->rd.at < l->rd.have && write_all(client, l->rd.buf + l->rd.at, l->rd.have - l->rd.at) != 0) return;
  l->rd.at = l->rd.have = 0;
  int open_in = 1, open_out = 1; /* client -> guard, guard -> client */
  char buf[65536];
  while (open_in || open_out) {
    /* A side that is done is left out (a hang-up is reported whatever the events asked). */
    struct pollfd p[2] = {{open_in ? client : -1, POLLIN, 0}, {open_out ? l->fd : -1, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (open_in && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = recv(client, buf, sizeof buf, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        open_in = 0;
        shutdown(l->fd, SHUT_WR);
      } else if (write_all(l->fd, buf, (size_t)r) != 0)
        return;
    }
    if (open_out && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = recv(l->fd, buf, sizeof buf, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        open_out = 0;
        shutdown(client, SHUT_WR);
        /* The answer ended with its connection: nothing the client sends after it is answered. */
        return;
      }
      if (write_all(client, buf, (size_t)r) != 0) return;
    }
  }
}

/*
 * Passes the request at req[0..len) (head and body, still unread on the client's connection) to
 * the guard and its answer back. 0: the client's connection goes on; 1: it is done (the answer
 * ended it); -1: nothing was consumed or answered (the connection goes to the guard).
 */
#define LINE_MAX 8192
static int copy_answer(int client, char *line, int is_head, struct link *l);

static int relay_once(int client, const char *req, size_t len, int is_head, struct link *l) {
  char line[LINE_MAX];
  int got_status = 0;
  for (int attempt = 0; attempt < 2 && !got_status; attempt++) {
    if (l->fd >= 0 && time(NULL) - l->used > GUARD_IDLE_S) link_close(l);
    if (l->fd < 0) {
      if (link_open(l) < 0) return -1;
      l->rd.watch = client;
    }
    l->used = time(NULL);
    /* The guard closed a connection it had kept (or never took it): once more on a new one. Not
       when the client went away meanwhile: the guard has its request, and is told so. */
    l->rd.hup = 0;
    if (write_all(l->fd, req, len) != 0 || !read_line(&l->rd, line, sizeof line)) {
      if (l->rd.hup) return 1;
      link_close(l);
      continue;
    }
    got_status = 1;
  }
  if (!got_status) return -1;
  /* The guard answers: the request is the answer's. */
  if (!consume(client, len)) return 1;
  return copy_answer(client, line, is_head, l);
}

/* Copies the guard's answer, whose status line is read (into line), to the client; as relay_once. */
static int copy_answer(int client, char *line, int is_head, struct link *l) {
  if (strncmp(line, "HTTP/1.1 ", 9) != 0 || strlen(line) < 12) return 1;
  int status = atoi(line + 9);
  if (write_all(client, line, strlen(line)) != 0 || write_all(client, "\r\n", 2) != 0) return 1;
  struct framing f = {-1, 0, 0};
  for (;;) {
    if (copy_line(&l->rd, client, line, LINE_MAX) != 0) return 1;
    if (line[0] == '\0') break;
    header_framing(line, &f);
  }
  /* Another coding than chunked, or no length: the answer ends with its connection. */
  if (status == 101 || (!is_head && status != 204 && status != 304 && f.chunked <= 0 && f.length < 0)) {
    both_ways(client, l);
    link_close(l);
    return 1;
  }
  if (!is_head && status != 204 && status != 304) {
    if (f.chunked > 0) {
      for (;;) {
        if (copy_line(&l->rd, client, line, LINE_MAX) != 0) return 1;
        char *endp;
        unsigned long long n = strtoull(line, &endp, 16);
        if (endp == line) return 1;
        if (n == 0) {
          do
            if (copy_line(&l->rd, client, line, LINE_MAX) != 0) return 1;
          while (line[0] != '\0');
          break;
        }
        if (copy_n(&l->rd, client, n + 2) != 0) return 1;
      }
    } else if (copy_n(&l->rd, client, (unsigned long long)f.length) != 0)
      return 1;
  }
  l->used = time(NULL);
  if (f.closes) {
    link_close(l);
    return 1;
  }
  return 0;
}

static int relay(int client, const char *req, size_t len, int is_head, struct link *l) {
  /* A client that hangs up while the guard answers: the guard's connection goes too (the guard
     then ends what it was doing for it, as for its own clients). */
  l->rd.watch = client;
  int r = relay_once(client, req, len, is_head, l);
  l->rd.watch = -1;
  if (r != 0) link_close(l);
  return r;
}

/* ------------------------------------------------------------------ build contexts */

/*
 * An upload (POST /build): the context goes from the client to the engine through pipes, moved by
 * the kernel, and a copy of it to the guard, which reads and checks it as ever and says how much
 * of it the engine may have. Three parties, each on its own descriptor:
 *
 *   - the guard gets the request on the link (the head with its framing rewritten to chunked and
 *     an x-berth-upload header naming the channel, then the body's copy), and answers it there;
 *   - the channel (a socketpair whose other end the guard got as an upload) carries the guard's
 *     messages for the engine: `W n` and n bytes to write to it (the request's head the guard made,
 *     the context's end, everything when the guard sends the context itself), `C n` to pass the
 *     context's next n bytes on to it, `S` to pass no more of them (the guard stopped reading the
 *     context, or sends it itself); the engine's answer comes back on it as it comes;
 *   - the engine's connection is made on the guard's first `W`.
 *
 * Only the guard says what the engine gets: the front passes on nothing the guard has not read
 * first, and no byte that the guard did not pass (the end-of-archive block the guard holds back
 * until the Dockerfile passed its check, whatever follows it).
 */

#define UPLOAD_PIPE (1 << 20)
#define CHUNK_LINE_MAX 20
/* The most of the body moved at once: small enough that the copy, the guard's reading and the
   engine's writes overlap. */
#define PIECE (256 * 1024)

#define SEGMENTS 64

/* An upload's two threads of its own (set up in main): small stacks, joined, not detached. */
static pthread_attr_t small_stack;

struct upload {
  int channel;   /* the front's end of the upload channel */
  int pass;      /* read end of the pipe of bytes the engine may get (-1 once `S` came) */
  int engine;    /* -1 until the guard's first W */
  pthread_t answer;
  int answering; /* the answer thread runs */
  /* What the guard said of the body's next bytes, in order (R: copy them to it, K: not), until it
     said S or went (free: every byte is copied from then on). The client's thread takes them. */
  pthread_mutex_t lock;
  pthread_cond_t said;
  struct segment {
    char kind;
    unsigned long long left;
  } segments[SEGMENTS];
  int first, count, free;
};

/* Adds what the guard said of the next bytes; 0 when there is no room (the guard broke the protocol). */
static int segment_add(struct upload *u, char kind, unsigned long long n) {
  pthread_mutex_lock(&u->lock);
  int ok = u->count < SEGMENTS;
  if (ok && !u->free && n > 0) {
    u->segments[(u->first + u->count) % SEGMENTS] = (struct segment){kind, n};
    u->count++;
  }
  pthread_cond_signal(&u->said);
  pthread_mutex_unlock(&u->lock);
  return ok;
}

static void segments_free(struct upload *u) {
  pthread_mutex_lock(&u->lock);
  u->free = 1;
  pthread_cond_signal(&u->said);
  pthread_mutex_unlock(&u->lock);
}

/* Whether the client hung up (both ways). */
static int gone(int client) {
  struct pollfd p = {client, 0, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR));
}

/* The kind of the body's next bytes and how many of them (waiting for the guard to say, while the
   client is there); 'F' once free, 'X' when the client hung up meanwhile. */
static char segment_next(struct upload *u, unsigned long long *n, int client) {
  pthread_mutex_lock(&u->lock);
  while (u->count == 0 && !u->free) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += 1;
    if (pthread_cond_timedwait(&u->said, &u->lock, &t) == ETIMEDOUT && gone(client)) {
      pthread_mutex_unlock(&u->lock);
      return 'X';
    }
  }
  char kind = 'F';
  if (u->count > 0) {
    kind = u->segments[u->first].kind;
    *n = u->segments[u->first].left;
  }
  pthread_mutex_unlock(&u->lock);
  return kind;
}

/* n bytes of the first segment were moved. */
static void segment_took(struct upload *u, unsigned long long n) {
  pthread_mutex_lock(&u->lock);
  if (u->count > 0) {
    struct segment *g = &u->segments[u->first];
    g->left -= n < g->left ? n : g->left;
    if (g->left == 0) {
      u->first = (u->first + 1) % SEGMENTS;
      u->count--;
    }
  }
  pthread_mutex_unlock(&u->lock);
}

static void pipe_size(int fd) {
  fcntl(fd, F_SETPIPE_SZ, UPLOAD_PIPE);
}

/* Room for a few pieces in flight on a socket the front writes the context to. */
static void sndbuf(int fd) {
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/* Moves up to n bytes from the pipe in to fd (blocking), stopping when either end failed or
   ended; how many it moved. */
static unsigned long long splice_upto(int in, int fd, unsigned long long n) {
  unsigned long long moved = 0;
  while (moved < n) {
    size_t want = n - moved < (1 << 20) ? (size_t)(n - moved) : (1 << 20);
    ssize_t m = splice(in, NULL, fd, NULL, want, SPLICE_F_MOVE);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) break;
    moved += (unsigned long long)m;
  }
  return moved;
}

/* Moves exactly n bytes from the pipe in to fd; -1 when it could not. */
static int splice_n(int in, int fd, unsigned long long n) {
  return splice_upto(in, fd, n) == n ? 0 : -1;
}

/* Writes n bytes of the pipe in to fd as one HTTP chunk (to the guard's link, or the engine). */
static int chunk_to(int fd, int in, size_t n) {
  char size[24];
  int sl = snprintf(size, sizeof size, "%zx\r\n", n);
  return write_all(fd, size, (size_t)sl) != 0 || splice_n(in, fd, n) != 0 || write_all(fd, "\r\n", 2) != 0 ? -1
                                                                                                           : 0;
}

/* The engine's answer, as it comes, to the guard. */
static void *answer_side(void *arg) {
  struct upload *u = arg;
  char buf[65536];
  for (;;) {
    ssize_t r = read(u->engine, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || write_all(u->channel, buf, (size_t)r) != 0) break;
  }
  shutdown(u->channel, SHUT_WR);
  return NULL;
}

/* The guard's messages for the engine, in their order, until the guard closes the channel. */
static void *engine_side(void *arg) {
  struct upload *u = arg;
  struct reader *rd = malloc(sizeof *rd);
  char line[64];
  if (!rd) goto end;
  rd->fd = u->channel;
  rd->watch = -1;
  rd->idle = NULL;
  rd->at = rd->have = 0;
  while (read_line(rd, line, sizeof line)) {
    char *endp = NULL;
    unsigned long long n = 0;
    if (line[0] == 'W' || line[0] == 'C' || line[0] == 'R' || line[0] == 'K') {
      n = strtoull(line + 1 + (line[1] == ' '), &endp, 10);
      if (line[1] != ' ' || endp == line + 2 || *endp) break;
    } else if (strcmp(line, "S") != 0)
      break;
    if (line[0] == 'R' || line[0] == 'K') {
      if (!segment_add(u, line[0], n)) break;
    } else if (line[0] == 'W') {
      if (u->engine < 0) {
        if ((u->engine = engine_connect()) < 0) break;
        sndbuf(u->engine);
        u->answering = pthread_create(&u->answer, &small_stack, answer_side, u) == 0;
        if (!u->answering) break;
      }
      if (copy_n(rd, u->engine, n) != 0) break;
    } else if (line[0] == 'C') {
      /* The next n bytes of the context, as one chunk (the guard's head says chunked). */
      if (u->engine < 0 || u->pass < 0 || n == 0 || chunk_to(u->engine, u->pass, (size_t)n) != 0) break;
    } else {
      /* S: every byte is copied to the guard from now on; the client's writes to the pipe fail
         (EPIPE), and it stops filling it. */
      segments_free(u);
      if (u->pass >= 0) close(u->pass);
      u->pass = -1;
    }
  }
end:
  free(rd);
  segments_free(u);
  /* The guard is done (or gave up): the engine gets nothing more, a context cut short builds nothing. */
  if (u->pass >= 0) close(u->pass);
  u->pass = -1;
  if (u->engine >= 0) shutdown(u->engine, SHUT_RDWR);
  if (u->answering) pthread_join(u->answer, NULL);
  if (u->engine >= 0) close(u->engine);
  shutdown(u->channel, SHUT_RDWR);
  return NULL;
}

/* Reads one chunk-size line of the client's body ("hex" CRLF, nothing else); -1 on bad syntax. */
static long long chunk_size(int fd) {
  char line[CHUNK_LINE_MAX + 2];
  size_t got = 0;
  /* A line that arrived whole is read in one call (peeked first); otherwise byte by byte. */
  ssize_t n;
  do n = recv(fd, line, sizeof line, MSG_PEEK);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return -1;
  char *crlf = memmem(line, (size_t)n, "\r\n", 2);
  if (crlf) {
    got = (size_t)(crlf - line) + 2;
    if (!consume(fd, got)) return -1;
  } else {
    for (;;) {
      if (got >= sizeof line) return -1;
      do n = recv(fd, line + got, 1, 0);
      while (n < 0 && errno == EINTR);
      if (n <= 0) return -1;
      got++;
      if (got >= 2 && line[got - 2] == '\r' && line[got - 1] == '\n') break;
    }
  }
  size_t digits = got - 2;
  if (digits == 0 || digits > 15) return -1;
  long long v = 0;
  for (size_t i = 0; i < digits; i++) {
    int c = (unsigned char)line[i];
    if (!isxdigit(c)) return -1;
    v = v * 16 + (isdigit(c) ? c - '0' : (tolower(c) - 'a' + 10));
  }
  return v;
}

static int expect_crlf(int fd) {
  char two[2];
  size_t got = 0;
  while (got < 2) {
    ssize_t n = recv(fd, two + got, 2 - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  return two[0] == '\r' && two[1] == '\n' ? 0 : -1;
}


/* Waits until fd is ready for events; -1 when the client hung up meanwhile (or poll failed). */
static int wait_or_gone(int fd, short events, int client) {
  struct pollfd p[2] = {{fd, events, 0}, {client, 0, 0}};
  for (;;) {
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (p[1].revents & (POLLHUP | POLLERR))) return -1;
    if (p[0].revents) return 0;
  }
}

/*
 * Puts n bytes into the pass pipe (non-blocking), from the stage pipe (in >= 0) or from buf. While
 * the pipe is full it waits for the engine side, watching the client: a client that hangs up meanwhile
 * ends the upload (-1). 1: the engine side takes no more (the pipe's reader is gone; `moved` says
 * how much went); 0: all of it went.
 */
static int to_pass(int pass_w, int in, const char *buf, size_t n, int client, size_t *moved) {
  *moved = 0;
  while (*moved < n) {
    ssize_t m = in >= 0 ? splice(in, NULL, pass_w, NULL, n - *moved, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                        : write(pass_w, buf + *moved, n - *moved);
    if (m > 0) *moved += (size_t)m;
    else if (m < 0 && errno == EINTR) continue;
    else if (m < 0 && errno == EAGAIN) {
      if (wait_or_gone(pass_w, POLLOUT, client) != 0) return -1;
    } else if (m < 0 && errno == EPIPE)
      return 1;
    else
      return -1;
  }
  return 0;
}

/* The client's ready bytes, once there is one; -1 when it ended or hung up. */
static long client_ready(int client) {
  struct pollfd p = {client, POLLIN, 0};
  for (;;) {
    int n = poll(&p, 1, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    break;
  }
  int avail = 0;
  if (ioctl(client, FIONREAD, &avail) < 0 || avail <= 0) return -1;
  return avail;
}

/* Pieces smaller than this are read and written, not spliced: a pipe holds few buffers (one per
   splice), and written bytes share them. */
#define SMALL 4096

/*
 * Moves n bytes of the body from the client, as the guard said of them: R, a copy to the guard (as
 * one chunk on its link) and the same bytes to the pass pipe; K, to the pass pipe only (the guard
 * passes them unread: a file's data it skips); once free, to the guard only. -1: the client or the
 * guard's link failed.
 *
 * The guard credits a tar header only once it is whole: the bytes of one sent in tiny pieces must
 * not fill the pass pipe's buffers before the rest of it reaches the guard (red-team pass 32). Small
 * pieces are therefore written (written bytes share a pipe's pages), and larger ones spliced.
 */
static int body_piece(struct upload *u, int client, int stage[2], int copy[2], int *pass_w, int link, long long n) {
  while (n > 0) {
    unsigned long long said = 0;
    char kind = segment_next(u, &said, client);
    if (kind == 'X') return -1;
    size_t want = (size_t)(n < PIECE ? n : PIECE);
    if (kind != 'F' && said < want) want = (size_t)said;
    long avail = client_ready(client);
    if (avail < 0) return -1;
    int pass = kind != 'F' && *pass_w >= 0;
    size_t moved = 0;
    if ((size_t)avail < want) want = (size_t)avail;
    if (want < SMALL) {
      char small[SMALL];
      size_t m = want;
      ssize_t r;
      do r = read(client, small, m);
      while (r < 0 && errno == EINTR);
      if (r <= 0) return -1;
      m = (size_t)r;
      if (kind != 'K') {
        char size[24];
        int sl = snprintf(size, sizeof size, "%zx\r\n", m);
        struct iovec iov[3] = {{size, (size_t)sl}, {small, m}, {"\r\n", 2}};
        if (write_iov(link, iov, 3) != 0) return -1;
      }
      if (kind != 'F') segment_took(u, m);
      n -= (long long)m;
      if (pass) {
        int r2 = to_pass(*pass_w, -1, small, m, client, &moved);
        if (r2 < 0) return -1;
        if (r2 > 0) {
          close(*pass_w);
          *pass_w = -1;
        }
      }
      continue;
    }
    if (kind == 'K') {
      /* Straight to the engine side (or dropped, when it takes no more). */
      ssize_t got;
      if (pass) {
        do got = splice(client, NULL, *pass_w, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        while (got < 0 && errno == EINTR);
        if (got < 0 && errno == EAGAIN) {
          if (wait_or_gone(*pass_w, POLLOUT, client) != 0) return -1;
          continue;
        }
        if (got < 0 && errno == EPIPE) {
          close(*pass_w);
          *pass_w = -1;
          continue;
        }
        if (got <= 0) return -1;
      } else {
        if (!consume(client, want)) return -1;
        got = (ssize_t)want;
      }
      segment_took(u, (unsigned long long)got);
      n -= got;
      continue;
    }
    ssize_t got = splice(client, NULL, stage[1], NULL, want, SPLICE_F_MOVE);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    n -= got;
    if (kind != 'F') segment_took(u, (unsigned long long)got);
    size_t left = (size_t)got;
    while (left > 0) {
      ssize_t t;
      pass = kind != 'F' && *pass_w >= 0;
      if (pass) {
        /* Duplicated into the copy pipe, then moved on: both get the same bytes. */
        do t = tee(stage[0], copy[1], left, 0);
        while (t < 0 && errno == EINTR);
        if (t <= 0) return -1;
      } else {
        do t = splice(stage[0], NULL, copy[1], NULL, left, SPLICE_F_MOVE);
        while (t < 0 && errno == EINTR);
        if (t <= 0) return -1;
      }
      if (chunk_to(link, copy[0], (size_t)t) != 0) return -1;
      if (pass) {
        int r2 = to_pass(*pass_w, stage[0], NULL, (size_t)t, client, &moved);
        if (r2 < 0) return -1;
        if (r2 > 0) {
          /* The engine side takes no more (S, or the guard is gone): what the stage holds of the
             bytes just copied is dropped. */
          close(*pass_w);
          *pass_w = -1;
          if (!consume(stage[0], (size_t)t - moved)) return -1;
        }
      }
      left -= (size_t)t;
    }
  }
  return 0;
}

/*
 * An UPLOAD request (its head peeked at in req[0..rq->head)). 0: the client's connection goes on;
 * 1: it is done; -1: nothing was consumed (the connection goes to the guard).
 */
static int upload(int client, const char *req, const struct request *rq, struct link *l) {
  /* The head as the guard gets it: the client's, its framing chunked, the channel named. */
  unsigned char raw[16];
  char id[33];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) return -1;
  for (int i = 0; i < 16; i++) snprintf(id + 2 * i, 3, "%02x", raw[i]);
  char head[HEAD_MAX + 128];
  size_t hl = 0;
  const char *end = req + rq->head - 2; /* the empty line's CRLF */
  for (const char *h = req; h < end;) {
    const char *e = memmem(h, (size_t)(end - h), "\r\n", 2);
    const char *colon = memchr(h, ':', (size_t)(e - h));
    size_t nl = colon ? (size_t)(colon - h) : 0;
    if (h == req || !(ieq(h, nl, "content-length") || ieq(h, nl, "transfer-encoding"))) {
      memcpy(head + hl, h, (size_t)(e + 2 - h));
      hl += (size_t)(e + 2 - h);
    }
    h = e + 2;
  }
  hl += (size_t)snprintf(head + hl, sizeof head - hl, "Transfer-Encoding: chunked\r\n" UPLOAD_HEADER ": %s\r\n\r\n", id);

  int stage[2] = {-1, -1}, copy[2] = {-1, -1}, pass[2] = {-1, -1}, sv[2] = {-1, -1};
  if (pipe2(stage, O_CLOEXEC) < 0 || pipe2(copy, O_CLOEXEC) < 0 || pipe2(pass, O_CLOEXEC) < 0 ||
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    goto unused;
  pipe_size(stage[1]);
  pipe_size(copy[1]);
  pipe_size(pass[1]);
  /* The pass pipe is written without blocking: while it is full, the client is watched (body_piece). */
  fcntl(pass[1], F_SETFL, O_NONBLOCK);
  /* The link: fresh when it idled (the guard may have closed it), once more when the head finds
     it closed. */
  int sent = 0;
  for (int attempt = 0; attempt < 2 && !sent; attempt++) {
    if (l->fd >= 0 && time(NULL) - l->used > GUARD_IDLE_S) link_close(l);
    if (l->fd < 0 && link_open(l) < 0) break;
    l->used = time(NULL);
    if (write_all(l->fd, head, hl) == 0) sent = 1;
    else link_close(l);
  }
  if (!sent) goto unused;
  sndbuf(l->fd);
  /* The channel goes to the guard after the head: it waits for a channel its request names. */
  char msg[160];
  int ml = snprintf(msg, sizeof msg,
                    "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"berth\":\"upload\",\"id\":\"%s\"}}\n", id);
  hand_over_as(sv[1], msg, (size_t)ml);
  sv[1] = -1;
  struct upload u = {.channel = sv[0], .pass = pass[0], .engine = -1};
  pthread_mutex_init(&u.lock, NULL);
  pthread_cond_init(&u.said, NULL);
  pass[0] = -1;
  pthread_t side;
  if (pthread_create(&side, &small_stack, engine_side, &u) != 0) {
    close(u.pass);
    close(sv[0]);
    sv[0] = -1;
    link_close(l);
    goto unused;
  }
  int outcome = 1, ok = consume(client, (size_t)rq->head);
  /* The body, as it comes. */
  if (ok && rq->chunked) {
    for (;;) {
      long long n = chunk_size(client);
      if (n < 0) {
        ok = 0;
        break;
      }
      if (n == 0) {
        ok = expect_crlf(client) == 0; /* no trailers */
        break;
      }
      if (body_piece(&u, client, stage, copy, &pass[1], l->fd, n) != 0 || expect_crlf(client) != 0) {
        ok = 0;
        break;
      }
    }
  } else if (ok)
    ok = body_piece(&u, client, stage, copy, &pass[1], l->fd, rq->length) == 0;
  if (pass[1] >= 0) close(pass[1]);
  pass[1] = -1;
  /* The body's end; or, when it could not be passed whole, the end of the guard's request (it
     answered already, without reading on, or it gets a request cut short). */
  if (!ok || write_all(l->fd, "0\r\n\r\n", 5) != 0) {
    ok = 0;
    shutdown(l->fd, SHUT_WR);
  }
  /* The guard's answer, as relay() passes one; the connection ends after it when the body did not
     go whole. */
  char line[LINE_MAX];
  l->rd.watch = client;
  l->rd.hup = 0;
  if (read_line(&l->rd, line, sizeof line)) {
    int r = copy_answer(client, line, 0, l);
    outcome = ok ? r : 1;
  }
  l->rd.watch = -1;
  /* A body cut short or malformed, an answer not passed whole: the guard's request ends with its
     connection, and the client's connection ends. */
  if (outcome != 0) link_close(l);
  shutdown(u.channel, SHUT_RDWR);
  pthread_join(side, NULL);
  pthread_mutex_destroy(&u.lock);
  pthread_cond_destroy(&u.said);
  close(u.channel);
  for (int i = 0; i < 2; i++) {
    close(stage[i]);
    close(copy[i]);
  }
  return outcome;
unused:
  for (int i = 0; i < 2; i++) {
    if (stage[i] >= 0) close(stage[i]);
    if (copy[i] >= 0) close(copy[i]);
    if (pass[i] >= 0) close(pass[i]);
    if (sv[i] >= 0) close(sv[i]);
  }
  return -1;
}

/* ------------------------------------------------------------------ one connection */

static int wait_readable(int fd, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  for (;;) {
    int r = poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/* What answer() did with a FAST request. */
enum outcome { ANSWERED, GUARDS, HANDED, GONE };

/*
 * A FAST request: asks the engine (on the connection's own engine connection, opened or renewed
 * as needed) and answers when the answer is one the guard would send as it is. GUARDS: the
 * guard's to answer; HANDED: the connection is the guard's (no engine); GONE: the client went.
 */
static enum outcome answer(int fd, const struct request *rq, struct reader *rd, int *engine,
                           struct answer *a) {
  int keep = 0, ok = 0;
  struct list_feed feed = {.a = a};
  rd->idle_arg = &feed;
  for (int attempt = 0; attempt < 2 && !ok; attempt++) {
    if (*engine < 0) {
      if ((*engine = engine_connect()) < 0) return HANDED;
      rd->fd = *engine;
      rd->watch = -1;
      rd->at = rd->have = 0;
    }
    char req[TARGET_MAX + 64];
    size_t rl = 0;
    if (!app_str(req, sizeof req, &rl, rq->is_head ? "HEAD " : "GET ") ||
        !app_str(req, sizeof req, &rl, rq->upstream) ||
        !app_str(req, sizeof req, &rl, " HTTP/1.1\r\nHost: docker\r\n\r\n"))
      return HANDED;
    list_walk_start(&feed.walk);
    rd->idle = rq->kind == LIST ? list_fed : NULL;
    if (write_all(*engine, req, rl) == 0 && read_answer(rd, a, rq->is_head, &keep)) ok = 1;
    else {
      /* A kept connection the engine closed meanwhile: once more on a new one. */
      close(*engine);
      *engine = -1;
    }
  }
  rd->idle = NULL;
  if (!ok) return HANDED;
  if (!keep) {
    close(*engine);
    *engine = -1;
  }
  int mine = a->status == 200 && (rq->kind == PING || (rq->kind == INSPECT && inspect_owned(a)) ||
                                   (rq->kind == LIST && list_walk_end(&feed.walk, a->body, a->len)));
  if (!mine) {
    trim(a);
    return GUARDS;
  }
  char out[sizeof a->headers + 160];
  size_t hl = 0;
  if (!app_str(out, sizeof out, &hl, "HTTP/1.1 200 OK\r\n") || !app(out, sizeof out, &hl, a->headers, a->headers_len) ||
      !app_str(out, sizeof out, &hl, "Content-Type: ") ||
      !app_str(out, sizeof out, &hl, rq->kind == PING ? "text/plain; charset=utf-8" : "application/json") ||
      !app_str(out, sizeof out, &hl, "\r\nContent-Length: ") || !app_dec(out, sizeof out, &hl, a->len) ||
      !app_str(out, sizeof out, &hl, "\r\n\r\n"))
    return GONE;
  /* Head and body in one call, the body from where it was read. */
  struct iovec iov[2] = {{out, hl}, {a->body, rq->is_head ? 0 : a->len}};
  if (write_iov(fd, iov, 2) != 0) return GONE;
  /* The request is consumed only now that it is answered (its fate was open until then), and
     after the answer went: the client is already reading it. Its next request, if it sent one,
     waits behind this one's bytes. */
  if (!consume(fd, (size_t)rq->head)) return GONE;
  trim(a);
  audit(rq->is_head ? "HEAD" : "GET", rq->path, 200);
  return ANSWERED;
}

static void *serve(void *arg) {
  int fd = (int)(intptr_t)arg;
  pthread_mutex_lock(&count_lock);
  keeps_buffer = threads <= KEEP_THREADS;
  pthread_mutex_unlock(&count_lock);
  /* What a connection holds is what it touched: a thread's stack pages become resident as they
     are written. So the peek buffer is on the stack, unset (a `__thread` array is zeroed whole by
     glibc when the thread starts: 72 KiB resident at once), and the link is not initialised as
     `{.fd = -1}`, which zeroes it whole, its reader's 64 KiB buffer included (link_open sets what
     the reader needs). Both made every connection thread hold some 136 KiB from its start. */
  char head[PEEK_MAX];
  struct link guard;
  guard.fd = -1;
  struct request *rq = malloc(sizeof *rq);
  struct reader *rd = malloc(sizeof *rd);
  struct answer a = {0};
  int engine = -1, handed = 0;
  if (!rq || !rd) goto hand;
  rd->idle = NULL;
  for (;;) {
    int ready = wait_readable(fd, idle_ms);
    if (ready <= 0) break; /* idle: closed, as node:http closes a kept-alive connection */
    ssize_t n;
    do n = recv(fd, head, sizeof head, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n <= 0) break; /* gone, or half-closed with nothing more asked */
    int verdict = parse(head, (int)n, rq);
    size_t pass; /* the bytes of a request the guard answers */
    if (verdict == UPLOAD) {
      /* Each upload runs two threads more: past the cap, the connection goes to the guard. */
      pthread_mutex_lock(&count_lock);
      int room = uploads < MAX_UPLOADS;
      if (room) uploads++;
      pthread_mutex_unlock(&count_lock);
      if (!room) goto hand;
      int r = upload(fd, head, rq, &guard);
      pthread_mutex_lock(&count_lock);
      uploads--;
      pthread_mutex_unlock(&count_lock);
      if (r < 0) goto hand;
      if (r > 0) goto done;
      continue;
    }
    if (verdict == RELAY) pass = (size_t)(rq->head + rq->body);
    else if (verdict == FAST) {
      int f = answer(fd, rq, rd, &engine, &a);
      if (f == ANSWERED) continue;
      if (f == GONE) goto done;
      if (f == HANDED) goto hand;
      pass = (size_t)rq->head; /* the guard's to answer (another's container, an error) */
    } else
      goto hand;
    int r = relay(fd, head, pass, rq->is_head, &guard);
    if (r < 0) goto hand;
    if (r > 0) goto done;
  }
  goto done;
hand:
  handed = 1;
  hand_over(fd);
done:
  if (!handed) close(fd);
  link_close(&guard);
  if (engine >= 0) close(engine);
  free(a.body);
  free(rq);
  free(rd);
  pthread_mutex_lock(&count_lock);
  threads--;
  pthread_mutex_unlock(&count_lock);
  return NULL;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: berth-front LISTEN_PATH ENGINE_SOCKET_PATH TENANT AUDIT\n");
    return 64;
  }
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
  const char *listen_path = argv[1];
  engine_path = argv[2];
  tenant = argv[3];
  for (const char *t = tenant; *t; t++)
    if (!isalnum((unsigned char)*t) && !strchr("_./-", *t)) return 64;
  const char *chan = getenv("NODE_CHANNEL_FD");
  if (!chan) {
    fprintf(stderr, "berth-front: no NODE_CHANNEL_FD (it is started by the guard)\n");
    return 64;
  }
  channel = atoi(chan);
  const char *idle = getenv("BERTH_FRONT_IDLE_MS");
  if (idle && atoi(idle) > 0) idle_ms = atoi(idle);
  if (strcmp(argv[4], "-") == 0) audit_fd = 1;
  else if (argv[4][0] != '\0') {
    audit_fd = open(argv[4], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (audit_fd < 0) {
      fprintf(stderr, "berth-front: %s: %s\n", argv[4], strerror(errno));
      return 1;
    }
  }
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (lfd < 0 || strlen(listen_path) >= sizeof a.sun_path) {
    fprintf(stderr, "berth-front: cannot listen on %s\n", listen_path);
    return 1;
  }
  strcpy(a.sun_path, listen_path);
  /* The socket is the job's to use (0666), set at bind by the umask: a chmod by path would follow
     a link the job put in its place meanwhile (the folder is the job's; red-team pass 31). */
  umask(0111);
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 511) < 0) {
    fprintf(stderr, "berth-front: %s: %s\n", listen_path, strerror(errno));
    return 1;
  }
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 512 * 1024);
  pthread_attr_init(&small_stack);
  pthread_attr_setstacksize(&small_stack, 256 * 1024);
  if (pthread_create(&t, &attr, read_channel, NULL) != 0) return 1;
  static const char ready[] = "{\"berth\":\"ready\"}\n";
  pthread_mutex_lock(&channel_lock);
  if (write_all(channel, ready, sizeof ready - 1) != 0) return 1;
  pthread_mutex_unlock(&channel_lock);
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        usleep(10000);
        continue;
      }
      return 1;
    }
    pthread_mutex_lock(&count_lock);
    int room = threads < MAX_THREADS;
    if (room) threads++;
    pthread_mutex_unlock(&count_lock);
    if (!room || pthread_create(&t, &attr, serve, (void *)(intptr_t)fd) != 0) {
      if (room) {
        pthread_mutex_lock(&count_lock);
        threads--;
        pthread_mutex_unlock(&count_lock);
      }
      hand_over(fd);
    }
  }
}
