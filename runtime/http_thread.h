/* The transport engine on a thread of its own: the same transfers as http_client.h, driven by a
 * libuv loop and libcurl multi handle on a second thread, with completions handed back to the
 * caller's loop. Delivery spends about as much CPU in libcurl and the kernel's socket calls as
 * in its own bookkeeping; with the transport on another core the two overlap.
 *
 * Requests are copied at submit; callbacks run on the caller's loop, never on the transport
 * thread. Everything here is called from the caller's thread only. */
#ifndef HERALD_HTTP_THREAD_H
#define HERALD_HTTP_THREAD_H

#include "runtime/http_client.h"

typedef struct HeraldHttpThread HeraldHttpThread;
typedef struct HeraldHttpJob HeraldHttpJob;

/* A group of jobs of which at most `limit` run at once; the transport thread starts the next
 * as one finishes, so a batch keeps its connections busy without a round trip through the
 * caller's loop. The caller's reference is dropped with herald_http_group_release; jobs keep
 * the group alive while they need it. */
typedef struct HeraldHttpGroup HeraldHttpGroup;
HeraldHttpGroup *herald_http_group_new(size_t limit);
/* Another reference (a group shared by several batches: their transfers count together). */
HeraldHttpGroup *herald_http_group_retain(HeraldHttpGroup *g);
void herald_http_group_release(HeraldHttpGroup *g);

/* Quiet completions: jobs submitted with a notifier wake the caller's loop only when the last
 * of them still in flight has finished (or at each finish while the notifier is eager), and
 * their outcomes wait for that wake-up. A batch whose every request is already handed over
 * needs nothing before its last answer, and each wake-up of the caller costs both threads a
 * system call and a context switch. Jobs keep the notifier alive while they need it. */
typedef struct HeraldHttpNotify HeraldHttpNotify;
HeraldHttpNotify *herald_http_notify_new(void);
void herald_http_notify_release(HeraldHttpNotify *n);
/* Eager: every finish wakes the caller (it has more to submit). Otherwise a finish wakes it
 * when at most wake_at of the notifier's jobs remain in flight (0: the last one; a caller
 * waiting for some outcomes sets it higher), and always when none remains. */
void herald_http_notify_set_wake(HeraldHttpNotify *n, int eager, long wake_at);
/* Jobs submitted under n whose outcome the transport has not handed back yet. */
long herald_http_notify_pending(HeraldHttpNotify *n);

/* A gate: jobs submitted through it that have not started when it closes come back unsent,
 * class kHeraldNetRecalled, instead of going out (the messages of a campaign paused meanwhile,
 * or of a process asked to stop, go back to the outbox rather than to the provider). Jobs on
 * the wire run their course. A gate stays closed. Jobs keep the gate alive while they need it;
 * the caller's reference is dropped with herald_http_gate_release. */
typedef struct HeraldHttpGate HeraldHttpGate;
HeraldHttpGate *herald_http_gate_new(void);
void herald_http_gate_release(HeraldHttpGate *g);
int herald_http_gate_closed(const HeraldHttpGate *g);

/* Starts the thread. NULL when it cannot be started. */
HeraldHttpThread *herald_http_thread_new(uv_loop_t *loop, const HeraldHttpClientOptions *opt);

/* Outcomes that finished quietly and wait for a wake-up are handed back on the loop's next
 * turn (call on the loop thread): for a caller that starts to wait for outcomes some of which
 * may already be in, so it is not left waiting for the wake-up of a later finish. */
void herald_http_thread_hand_back(HeraldHttpThread *t);

/* Cancels every job (no callbacks), stops and joins the thread. The last handle on the
 * caller's loop closes asynchronously, so run that loop afterwards. */
void herald_http_thread_free(HeraldHttpThread *t);

/* Starts a transfer (in group g, or on its own when g is NULL); NULL when it cannot be queued
 * (out of memory). */
HeraldHttpJob *herald_http_thread_submit(HeraldHttpThread *t, HeraldHttpGroup *g,
                                         const HeraldHttpRequest *req, HeraldHttpDone done,
                                         void *user);
/* The same, its completion quiet under notifier n (see HeraldHttpNotify) and the job behind
 * gate (see HeraldHttpGate); n and gate may be NULL. */
HeraldHttpJob *herald_http_thread_submit_quiet(HeraldHttpThread *t, HeraldHttpGroup *g,
                                               HeraldHttpNotify *n, HeraldHttpGate *gate,
                                               const HeraldHttpRequest *req, HeraldHttpDone done,
                                               void *user);
HeraldHttpJob *herald_http_thread_smtp(HeraldHttpThread *t, HeraldHttpGroup *g,
                                       HeraldHttpGate *gate, const HeraldSmtpRequest *req,
                                       HeraldHttpDone done, void *user);

/* Closes gate (see HeraldHttpGate): its jobs waiting for a place in their group come back at
 * once, those handed over later as the transport takes them. t may be NULL (no transport: no
 * job can be waiting). */
void herald_http_thread_close_gate(HeraldHttpThread *t, HeraldHttpGate *gate);

/* Aborts a job; its callback is never called. */
void herald_http_thread_cancel(HeraldHttpThread *t, HeraldHttpJob *job);

/* Jobs submitted whose callbacks have not run and that were not cancelled. */
size_t herald_http_thread_in_flight(const HeraldHttpThread *t);

/* Connections the transport opened so far. */
uint64_t herald_http_thread_connections(const HeraldHttpThread *t);

#endif
