/*
** modules.h
** The modules layer: what conc offers on top of workers. Channels
** (channel.c), pipes (pipe.c), queues (queue.c), locks, semaphores,
** events and barriers (sync.c), shared tables (shared.c, shtab.c),
** conc.select (select.c), futures and pools (future.c, pool.c).
*/

#ifndef conc_modules_h
#define conc_modules_h

#include "workers.h"

/* ------------------------------------------------------------ select.c */

/* Pushes the value a select node received (freeing it); the count. */
int conc_sel_push_value(lua_State *L, struct cstate *cs, msg *m,
                        const char *inl, uint32_t n);
int conc_sel_push(lua_State *L, struct cstate *cs, selnode *n);

int conc_select(lua_State *L);

/* ------------------------------------------------------------ future.c */

cobj *conc_future_make(void);                 /* a pending future, or NULL */
/* Settles f with value (taken over; may be NULL) and wakes its waiters;
** 0 if it was settled already. */
int conc_future_settle(cobj *f, int ok, msg *value);
int conc_future_new(lua_State *L);            /* kit.future */
extern const luaL_Reg conc_future_funcs[];    /* kit.future, settle, ... */
lua_Integer conc_future_id(cobj *f);
extern const kindinfo conc_future_kind;

/* ------------------------------------------------------------ pool.c */

int conc_pool_kit(lua_State *L);              /* conc._poolkit */
lua_Integer conc_pool_id(cobj *p);
extern const kindinfo conc_pool_kind;

/* ------------------------------------------------------------ channel.c */

int conc_chan_new(lua_State *L);
extern const kindinfo conc_channel_kind;
/* Channels fed from C with no Lua state (conc.mpi, see mpiapi.c): an
** unbounded channel (one reference, the caller's; NULL out of memory);
** conc_chan_put hands m over without waiting (0; -1 closed or out of
** memory, m freed either way); conc_chan_shut is close(). */
cobj *conc_chan_make(void);
int conc_chan_put(cobj *o, msg *m);
void conc_chan_shut(cobj *o);
size_t conc_chan_count(cobj *o);
/* Its receivers are served newest first (a pool's workers: the one that
** just finished, still spinning, takes the next call). Before the channel
** is shared. */
void conc_chan_lifo(cobj *o);
void conc_chan_move(cobj *from, cobj *to);  /* what is queued, in order */

/* ------------------------------------------------------------ mpiapi.c */

/* conc._mpiapi: the table of core functions conc.mpi calls. */
int conc_mpiapi_get(lua_State *L);

/* ------------------------------------------------------------ pipe.c */

int conc_pipe_new(lua_State *L);
extern const kindinfo conc_pipe_kind;

/* ------------------------------------------------------------ queue.c */

int conc_queue_new(lua_State *L);
extern const kindinfo conc_queue_kind;

/* ------------------------------------------------------------ sync.c */

int conc_sync_lock(lua_State *L);
int conc_sync_semaphore(lua_State *L);
int conc_sync_event(lua_State *L);
int conc_sync_barrier(lua_State *L);
/* Takes s within t seconds (-1: for ever): 1, or 0 on timeout; raises on
** a stop request. */
int conc_sync_lock_acquire(lua_State *L, slock *s, double t);
extern const kindinfo conc_lock_kind, conc_semaphore_kind, conc_event_kind,
    conc_barrier_kind;

/* ------------------------------------------------------------ cond.c */

int conc_cond_rlock(lua_State *L);
int conc_cond_condition(lua_State *L);
extern const kindinfo conc_rlock_kind, conc_condition_kind;

/* ------------------------------------------------------------ timer.c */

int conc_timer_new(lua_State *L);
lua_Integer conc_timer_pending(void);         /* for conc._stats */
extern const kindinfo conc_timer_kind;

/* ------------------------------------------------------------ shared.c */

int conc_shared_new(lua_State *L);
extern const kindinfo conc_shared_kind;

/* ------------------------------------------------------------ shtab.c */

extern _Atomic int conc_shared_recoveries;     /* for conc._stats */

#endif
