/* herald's C modules, preloaded into every state as "herald.core.*". */
#ifndef HERALD_LUA_MODULES_H
#define HERALD_LUA_MODULES_H

#include <lua.h>

int luaopen_herald_core(lua_State *L);      /* lua/lherald_core.c: version, options, paths */
int luaopen_herald_core_task(lua_State *L); /* lua/task.c: coroutine tasks on the loop */
int luaopen_herald_core_outbox(lua_State *L); /* lua/lherald_outbox.c */
int luaopen_herald_core_clock(lua_State *L);  /* lua/lherald_clock.c */
int luaopen_herald_core_filechannel(lua_State *L); /* lua/lherald_filechannel.c */
int luaopen_herald_core_readline(lua_State *L); /* lua/lherald_readline.c: REPL line input */
/* For C work no count hook reaches (a long query): whether catch_interrupt is on, whether a
 * Ctrl-C it caught is waiting, and taking (clearing) it. */
int herald_readline_catching(void);
int herald_readline_interrupted(void);
int herald_readline_take_interrupt(void);
int luaopen_herald_core_template(lua_State *L);    /* lua/lherald_template.c */
int luaopen_herald_core_http(lua_State *L);        /* lua/lherald_http.c: HTTP/SMTP engine */
int luaopen_herald_core_ratelimit(lua_State *L);   /* lua/lherald_ratelimit.c */
int luaopen_herald_core_sandbox(lua_State *L); /* lua/lherald_sandbox.c: host-mode sandboxes */
int luaopen_herald_core_server(lua_State *L); /* lua/lherald_server.c: engagement HTTP server */
int luaopen_herald_core_schedule(lua_State *L);    /* lua/lherald_schedule.c: zones, runs */
int luaopen_herald_core_json(lua_State *L);  /* lua/lherald_json.c: JSON over jansson */
int luaopen_herald_core_store(lua_State *L); /* lua/lherald_store.c: endpoints, events, SQL */
int luaopen_herald_core_segment(lua_State *L); /* lua/lherald_segment.c: segment queries */
int luaopen_herald_core_progress(lua_State *L); /* lua/lherald_progress.c: progress lines */
int luaopen_herald_core_deliver(lua_State *L);  /* lua/lherald_deliver.c: JWS signing */
int luaopen_herald_core_feedback(lua_State *L); /* lua/lherald_feedback.c: bounce/complaint mail */
int luaopen_herald_core_digest(lua_State *L);   /* lua/lherald_digest.c: MD5 */
int luaopen_herald_core_guard(lua_State *L);    /* lua/lherald_guard.c: bounded calls */
/* Before the task thread co is resumed: a guarded call in it whose time is up is stopped at
 * its next instruction, so a call that mostly waits meets its time bound when it wakes. */
void herald_guard_resuming(lua_State *co);

/* For delivery's webhook lane (lua/lherald_lane.h): appends the string at index body to the
 * http batch at index bi, as b:add does, with the key at index key and the gate at index gate
 * (0: none); then lets the batch start what was added. Both raise on misuse. */
void herald_lua_batch_add(lua_State *L, int bi, int body, int key, int gate);
void herald_lua_batch_pump(lua_State *L, int bi);
int luaopen_herald_core_lane(lua_State *L);     /* lua/lherald_lane.c: the webhook lane */

/* Preloads every module into package.preload. sandbox_safe limits it to the modules campaign
 * code may reach. */
void herald_modules_preload(lua_State *L, int sandbox_safe);

#endif
