/* Claimers: who holds the outbox rows in flight, and whether they still live.
 *
 * Several herald processes may share a store: two `herald run` on one host, or containers
 * sharing a volume. A process that dies leaves the rows it claimed CLAIMED; they must go back
 * to PENDING, but never while their claimer lives, or their messages go out twice. A pid
 * cannot say which: in another PID namespace (another container) the same number is another
 * process or none, and every container's first process is pid 1.
 *
 * So a process that claims registers a claimer row: a random token (its identity), its host,
 * pid and PID namespace (the boot id and the namespace's inode), and a heartbeat it refreshes
 * every HERALD_CLAIMER_BEAT_MS from its loop. Claimed rows name their claimer's row. Another
 * process takes a claimer for dead when its heartbeat is HERALD_CLAIMER_DEAD_MS old, or at once
 * when it is in the same PID namespace and its pid is gone (or is the observer's own: a
 * predecessor's). Reaping removes the claimer; its rows are then no one's and the outbox gives
 * them back in the same transaction. A claimer taken for dead by mistake (its loop stalled for
 * longer than the bound) finds its rows no longer its own: its late reports are passed over,
 * and it registers again at its next heartbeat.
 *
 * Heartbeats are wall-clock times: every process sharing a SQLite store in WAL mode is on one
 * host, so they read one clock. */
#include "runtime/claimer.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  pid_t pid;          /* 0 until made */
  char token[33];
  char host[256];
  char pid_ns[96];    /* "" when /proc cannot say: the pid is then never looked at */
} Self;

static Self self;

static void make_token(char out[33]) {
  unsigned char raw[16];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    /* Only without getrandom (very old kernels): the time to the nanosecond and the pid still
     * tell this process from any other registered at once. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t b = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)&ts;
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
  }
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    out[2 * i] = hex[raw[i] >> 4];
    out[2 * i + 1] = hex[raw[i] & 0xf];
  }
  out[32] = '\0';
}

/* The boot and PID namespace this process sees pids in: two processes compare pids only when
 * theirs are equal. */
static void read_pid_ns(char *out, size_t len) {
  out[0] = '\0';
  char boot[64] = "";
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f == NULL) return;
  char *got = fgets(boot, sizeof boot, f);
  fclose(f);
  if (got == NULL) return;
  boot[strcspn(boot, "\n")] = '\0';
  struct stat st;
  if (boot[0] == '\0' || stat("/proc/self/ns/pid", &st) != 0) return;
  snprintf(out, len, "%s/%ju:%ju", boot, (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
}

static const Self *self_get(void) {
  pid_t pid = getpid();
  /* made once; again in a forked child, which is a claimer of its own */
  if (self.pid == pid) return &self;
  make_token(self.token);
  if (gethostname(self.host, sizeof self.host) != 0) self.host[0] = '\0';
  self.host[sizeof self.host - 1] = '\0';
  read_pid_ns(self.pid_ns, sizeof self.pid_ns);
  self.pid = pid;
  return &self;
}

int herald_claimer_beat(HeraldStore *store, int64_t now_ms, int64_t *id, HeraldError *err) {
  const Self *me = self_get();
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO claimers(token, host, pid, pid_ns, started_ms, heartbeat_ms)"
      " VALUES (?1, ?2, ?3, ?4, ?5, ?5)"
      " ON CONFLICT (token) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms RETURNING id",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, me->token, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, me->host, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, (int64_t)me->pid);
  if (me->pid_ns[0]) sqlite3_bind_text(st, 4, me->pid_ns, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, 4);
  sqlite3_bind_int64(st, 5, now_ms);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW && id != NULL) *id = sqlite3_column_int64(st, 0);
  if (rc == SQLITE_ROW) rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "registering a claimer");
  return kHeraldOk;
}

int herald_claimer_id(HeraldStore *store, int64_t *id, HeraldError *err) {
  const Self *me = self_get();
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT id FROM claimers WHERE token = ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, me->token, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return herald_store_fail(store, err, "reading a claimer");
  return kHeraldOk;
}

/* Whether the claimer of the current row of st (token, pid, pid_ns, heartbeat_ms) is dead as
 * this process sees it at now_ms. */
static int claimer_dead(sqlite3_stmt *st, int64_t now_ms) {
  const Self *me = self_get();
  const char *token = (const char *)sqlite3_column_text(st, 1);
  int64_t pid = sqlite3_column_int64(st, 2);
  const char *pid_ns = (const char *)sqlite3_column_text(st, 3);
  int64_t heartbeat = sqlite3_column_int64(st, 4);
  if (token != NULL && strcmp(token, me->token) == 0) return 0;
  if (heartbeat < now_ms - HERALD_CLAIMER_DEAD_MS) return 1;
  /* A pid means something only in the namespace it was read in. kill(pid, 0) fails with
   * ESRCH only when no such process exists. */
  if (pid_ns == NULL || me->pid_ns[0] == '\0' || strcmp(pid_ns, me->pid_ns) != 0 || pid <= 0)
    return 0;
  if (pid == (int64_t)me->pid) return 1;
  return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* At most this many claimers are reaped per call; the next call takes the rest. */
#define REAP_MAX 64

int herald_claimer_reap(HeraldStore *store, int64_t now_ms, int64_t *reaped, HeraldError *err) {
  if (reaped) *reaped = 0;
  sqlite3_stmt *sel = herald_store_stmt(
      store, "SELECT id, token, pid, pid_ns, heartbeat_ms FROM claimers", err);
  if (sel == NULL) return err ? err->code : kHeraldStore;
  int64_t dead[REAP_MAX];
  int n = 0, rc = SQLITE_DONE;
  while (n < REAP_MAX && (rc = sqlite3_step(sel)) == SQLITE_ROW)
    if (claimer_dead(sel, now_ms)) dead[n++] = sqlite3_column_int64(sel, 0);
  sqlite3_reset(sel);
  if (n < REAP_MAX && rc != SQLITE_DONE) return herald_store_fail(store, err, "reading claimers");
  sqlite3_stmt *del = herald_store_stmt(store, "DELETE FROM claimers WHERE id = ?1", err);
  if (del == NULL) return err ? err->code : kHeraldStore;
  for (int i = 0; i < n; i++) {
    sqlite3_bind_int64(del, 1, dead[i]);
    if (herald_store_step_done(store, del, err, "removing a dead claimer") != kHeraldOk)
      return err ? err->code : kHeraldStore;
  }
  if (reaped) *reaped = n;
  return kHeraldOk;
}
