/* Coroutine tasks on the libuv loop (see task.c). */
#ifndef HERALD_LUA_TASK_H
#define HERALD_LUA_TASK_H

#include <lua.h>

/* Cancels every pending wait; their tasks are never resumed. Called at shutdown. */
void herald_task_cancel_all(void);

/* Cancels the pending waits of the tasks of one state (given by its main thread), before the
 * state is closed. */
void herald_task_cancel_state(lua_State *main);

#endif
