#include "runtime/hit_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct HeraldJournal {
  int fd;
  char *path;
};

enum { kHeaderLen = 12 };

static const uint64_t kFnvBasis = 14695981039346656037ULL;

static uint64_t fnv1a(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

int herald_journal_open(const char *path, HeraldJournal **out, HeraldError *err) {
  *out = NULL;
  int fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return herald_error_set(err, kHeraldIo, "%s: %s", path, strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(fd);
    if (e == EWOULDBLOCK)
      return herald_error_set(err, kHeraldLimit, "%s: in use by another server", path);
    return herald_error_set(err, kHeraldIo, "%s: %s", path, strerror(e));
  }
  HeraldJournal *j = calloc(1, sizeof *j);
  if (j == NULL || (j->path = strdup(path)) == NULL) {
    free(j);
    close(fd);
    return herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  j->fd = fd;
  *out = j;
  return kHeraldOk;
}

int herald_journal_replay(HeraldJournal *j,
                          int (*fn)(const unsigned char *payload, size_t len, void *arg), void *arg,
                          size_t *records, size_t *ignored, HeraldError *err) {
  *records = *ignored = 0;
  struct stat st;
  if (fstat(j->fd, &st) != 0)
    return herald_error_set(err, kHeraldIo, "%s: %s", j->path, strerror(errno));
  size_t size = (size_t)st.st_size;
  if (size == 0) return kHeraldOk;
  unsigned char *data = malloc(size);
  if (data == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  size_t got = 0;
  while (got < size) {
    ssize_t n = pread(j->fd, data + got, size - got, (off_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  size_t o = 0;
  while (o + kHeaderLen <= got) {
    const unsigned char *h = data + o;
    size_t len = (size_t)h[0] | (size_t)h[1] << 8 | (size_t)h[2] << 16 | (size_t)h[3] << 24;
    uint64_t sum = 0;
    for (int i = 0; i < 8; i++) sum |= (uint64_t)h[4 + i] << (8 * i);
    if (len == 0 || len > HERALD_JOURNAL_RECORD_MAX || o + kHeaderLen + len > got ||
        fnv1a(kFnvBasis, h + kHeaderLen, len) != sum)
      break;
    if (fn(h + kHeaderLen, len, arg) != 0) break;
    (*records)++;
    o += kHeaderLen + len;
  }
  *ignored = size - o;
  free(data);
  return kHeraldOk;
}

int herald_journal_frame(HeraldBuf *b, const void *head, size_t head_len, const void *body,
                         size_t body_len) {
  size_t len = head_len + body_len;
  if (len == 0 || len > HERALD_JOURNAL_RECORD_MAX) return -1;
  unsigned char h[kHeaderLen];
  for (int i = 0; i < 4; i++) h[i] = (unsigned char)(len >> (8 * i));
  uint64_t sum = fnv1a(fnv1a(kFnvBasis, head, head_len), body, body_len);
  for (int i = 0; i < 8; i++) h[4 + i] = (unsigned char)(sum >> (8 * i));
  if (herald_buf_add(b, h, sizeof h) || herald_buf_add(b, head, head_len) ||
      herald_buf_add(b, body, body_len))
    return -1;
  return 0;
}

int herald_journal_write(HeraldJournal *j, const HeraldBuf *b, HeraldError *err) {
  size_t done = 0;
  while (done < b->len) {
    ssize_t n = write(j->fd, b->data + done, b->len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return herald_error_set(err, kHeraldIo, "%s: %s", j->path, n < 0 ? strerror(errno) : "short write");
    done += (size_t)n;
  }
  return kHeraldOk;
}

int herald_journal_clear(HeraldJournal *j, HeraldError *err) {
  if (ftruncate(j->fd, 0) != 0)
    return herald_error_set(err, kHeraldIo, "%s: %s", j->path, strerror(errno));
  return kHeraldOk;
}

const char *herald_journal_path(const HeraldJournal *j) { return j->path; }

void herald_journal_close(HeraldJournal *j, int remove) {
  if (j == NULL) return;
  struct stat st;
  /* removed while still locked, so no other process can lock the name in between */
  if (remove && fstat(j->fd, &st) == 0 && st.st_size == 0) unlink(j->path);
  close(j->fd);
  free(j->path);
  free(j);
}
