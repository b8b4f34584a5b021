/*
 * ks_pool.h — the key store's worker threads and how a caller hands them
 * work (ks_pool.c).  Internal to the key store: key_store.c only.
 *
 * A pool is n worker threads.  A caller claims idle workers, posts work to
 * each, and waits for it until a deadline; work that misses its deadline is
 * abandoned to its worker, which hands it to the pool's `abandoned` callback
 * once the hardware answers, and the pool is wedged until then.  The handoff
 * spins before it sleeps, on both sides: a signature on a token takes tens of
 * microseconds, a sleeping thread takes about as long to wake.
 */
#ifndef CIMD_KS_POOL_H
#define CIMD_KS_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ks.h"

#define KS_POOL_MAX CIMD_KS_SESSIONS_MAX /* workers in a pool (ks.h) */

struct ks_pool;

struct ks_pool_ops {
	/* Runs work on worker idx (its own thread). */
	void (*run)(void *arg, size_t idx, void *work);
	/* Work posted with ks_pool_post_async has run, in time: hand it on
	 * (on the worker's thread; the pool then releases the worker). */
	void (*completed)(void *arg, size_t idx, void *work);
	/* Work whose caller gave up on it has run: clean up after it. */
	void (*abandoned)(void *arg, size_t idx, void *work);
	/* The pool and every worker are gone (after ks_pool_stop). */
	void (*gone)(void *arg);
};

/* Starts n workers; -errno when a thread cannot start (none then runs). */
int ks_pool_start(const struct ks_pool_ops *ops, void *arg, size_t n, struct ks_pool **ret);
/* Stops the pool: idle workers end now, a worker the hardware holds when
 * it answers; ops->gone runs once all have ended (perhaps on this thread). */
void ks_pool_stop(struct ks_pool *p);

/* Abandoned work the hardware has not finished: while there is, callers
 * fail at once rather than wait a deadline of their own. */
int ks_pool_wedged(struct ks_pool *p);

/* Claims up to max idle workers, at least one, waiting until deadline
 * (CLOCK_MONOTONIC) for one: their indices in ret_idx, their number
 * returned, or -ETIMEDOUT (all busy), -EIO (wedged). */
int ks_pool_claim(struct ks_pool *p, size_t max, size_t *ret_idx, const struct timespec *deadline);
/* Hands work to claimed worker idx. */
void ks_pool_post(struct ks_pool *p, size_t idx, void *work);
/* Waits for worker idx's work until deadline, spinning for up to spin_ns
 * first.  0: done, and the worker is the caller's until ks_pool_release;
 * -ETIMEDOUT: abandoned (the worker releases itself). */
int ks_pool_wait(struct ks_pool *p, size_t idx, int64_t spin_ns, const struct timespec *deadline);
void ks_pool_release(struct ks_pool *p, size_t idx);

/* The asynchronous form, for a caller that must not wait: the worker hands
 * the work to ops->completed when it has run, and releases itself.  Returns
 * the work's turn, for ks_pool_expire. */
uint32_t ks_pool_post_async(struct ks_pool *p, size_t idx, void *work);
/* The caller gives up on the work of that turn (its deadline passed): 0 when
 * it was abandoned to the worker (ops->abandoned will see it, not
 * ops->completed), -1 when it had run already (ops->completed has it). */
int ks_pool_expire(struct ks_pool *p, size_t idx, uint32_t turn);

/* Nanoseconds on CLOCK_MONOTONIC. */
int64_t ks_now_ns(void);

#endif /* CIMD_KS_POOL_H */
