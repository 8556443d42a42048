/* Coroutine tasks on the libuv loop (see task.c). */
#ifndef HERALD_LUA_TASK_H
#define HERALD_LUA_TASK_H

/* Cancels every pending wait; their tasks are never resumed. Called at shutdown. */
void herald_task_cancel_all(void);

#endif
