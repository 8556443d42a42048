/* Coroutine tasks on the libuv loop (see task.c). */
#ifndef HERALD_LUA_TASK_H
#define HERALD_LUA_TASK_H

#include <lua.h>

typedef struct HeraldTaskWait HeraldTaskWait;

/* For a C function that waits. Call from the function (L is the task's thread): registers the
 * wait, then start the I/O and `return lua_yield(L, 0);`. Raises a Lua error when L is not a
 * task. cancel(w, data) must stop the I/O and release data; it is called on shutdown (the task
 * is then dropped) and, for interruptible waits, on a stop request (the task then resumes with
 * no values). */
HeraldTaskWait *herald_task_wait_new(lua_State *L, int interruptible,
                                     void (*cancel)(HeraldTaskWait *w, void *data), void *data);

/* Whether L is a task that may wait: lets a caller check before it starts I/O it could not
 * hand to a wait. */
int herald_task_can_wait(lua_State *L);

/* The waiting thread: push the results on it, then call herald_task_wait_done. */
lua_State *herald_task_wait_thread(HeraldTaskWait *w);

/* Frees the wait and resumes its task with the nvalues pushed on its thread. */
void herald_task_wait_done(HeraldTaskWait *w, int nvalues);

/* Cancels every pending wait; their tasks are never resumed. Called at shutdown. */
void herald_task_cancel_all(void);

/* Cancels the pending waits of the tasks of one state (given by its main thread), before the
 * state is closed. */
void herald_task_cancel_state(lua_State *main);

/* True once a stop was requested (SIGINT/SIGTERM or request_stop), including a signal that
 * arrived while the loop was not running (during a long query), before its callback ran. */
int herald_task_stop_requested(void);

#endif
