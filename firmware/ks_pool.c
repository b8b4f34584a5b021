/*
 * ks_pool.c — the key store's worker threads (ks_pool.h).
 *
 * Why workers at all: a hardware call can hang (tcti-swtpm in tpm2-tss 3.2
 * ignores ESAPI timeouts; a network HSM can stall), and a caller must still
 * get its answer by its deadline.  So the hardware is called only on a
 * worker, which a caller may give up on.
 *
 * Why spin: a handoff that slept on both sides cost two wake-ups per
 * signature, and on this kind of machine that made the key store sign at
 * 0.42x of the token driven directly (docs/benchmarks.md): some 85 us added
 * to SoftHSM2's 60.  So each side first polls, yielding the CPU on each
 * turn, and sleeps only when the wait is long: a worker polls for
 * IDLE_SPIN_NS when its work comes back to back (a caller signing in a
 * loop), a caller for as long as its work should take (the caller says how
 * long), and only while a core is free for it (ks_pool_wait).
 *
 * The handoff is one futex word per worker, its state:
 *
 *   IDLE --caller posts--> POSTED --worker done--> DONE --caller releases--> IDLE
 *                             \--caller's deadline--> ABANDONED --worker done--> IDLE
 *
 * Whoever moves POSTED on (the worker to DONE, the caller to ABANDONED) does
 * so by compare-and-swap, so exactly one of them owns what follows.  Each
 * side sleeps only after raising its flag (parked, waiting) and reading the
 * state again; the other side reads the flag after changing the state, so a
 * wake-up is never lost and never made when nobody sleeps.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ks_pool.h"

#define IDLE_SPIN_NS 50000  /* a worker's poll for its next work */
#define CLAIM_SPIN_NS 50000 /* a caller's poll for an idle worker */

/* The state word: the state in its low bits, the turn (a count of posts)
 * above, so that an expiry meant for one piece of work cannot hit the next
 * (ks_pool_expire). */
enum { W_IDLE, W_POSTED, W_DONE, W_ABANDONED };
#define ST_BITS 2
#define ST_MASK 3u
#define ST(s) ((s)&ST_MASK)

struct ks_worker {
	struct ks_pool *p;
	size_t idx;
	pthread_t thread;
	uint32_t owned;		/* claimed: by a caller, or by the worker while abandoned */
	uint32_t state;		/* W_*, the futex word both sides sleep on */
	uint32_t parked;	/* the worker sleeps on state */
	uint32_t waiting;	/* the caller sleeps on state */
	void *work;		/* NULL: stop */
	int async;		/* posted with ks_pool_post_async */
	uint32_t taken;		/* the worker's own: the state it took its work in */
	int64_t gap;		/* the worker's own: how long it waited for its last work */
} __attribute__((aligned(64))); /* a cache line each: workers do not share */

/* A caller asleep for a worker, in line (ks_pool_claim). */
struct ks_waiter {
	struct ks_waiter *next;
	uint32_t granted; /* futex word: the index of the worker handed over, plus one */
};

struct ks_pool {
	const struct ks_pool_ops *ops;
	void *arg;
	size_t n;
	uint32_t refs;	 /* the owner's and each running worker's */
	uint32_t stop;	 /* ks_pool_stop was called */
	uint32_t wedged; /* abandoned work not yet finished */
	/* Polling pays only on a core of its own: beside threads that use
	 * every core it takes turns with one of them.  So a caller polls for
	 * its work only while running workers and polling callers leave a
	 * core free. */
	uint32_t cores;	  /* online at the start */
	uint32_t running; /* workers running work */
	uint32_t polling; /* callers polling in ks_pool_wait */
	/* Callers asleep for a worker, first come first served: a released
	 * worker is handed to the first, so that a caller signing in a loop
	 * cannot starve another by taking its worker back each time. */
	pthread_mutex_t qmu;
	struct ks_waiter *head, **tail; /* under qmu */
	uint32_t waiters;		/* how many are in line; read without qmu */
	struct ks_worker w[];
};

int64_t ks_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Sleeps while *addr == val, until deadline (absolute, CLOCK_MONOTONIC;
 * NULL: none).  -ETIMEDOUT when the deadline passed. */
static int futex_wait(uint32_t *addr, uint32_t val, const struct timespec *deadline)
{
	if (syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val, deadline, NULL,
		    FUTEX_BITSET_MATCH_ANY) < 0 &&
	    errno == ETIMEDOUT)
		return -ETIMEDOUT;
	return 0;
}

static void futex_wake(uint32_t *addr, int n)
{
	syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n);
}

static uint32_t load(const uint32_t *v)
{
	return __atomic_load_n(v, __ATOMIC_SEQ_CST);
}

static void store(uint32_t *v, uint32_t x)
{
	__atomic_store_n(v, x, __ATOMIC_SEQ_CST);
}

static int cas(uint32_t *v, uint32_t from, uint32_t to)
{
	return __atomic_compare_exchange_n(v, &from, to, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static int past(const struct timespec *deadline)
{
	return ks_now_ns() >= (int64_t)deadline->tv_sec * 1000000000 + deadline->tv_nsec;
}

static void pool_unref(struct ks_pool *p)
{
	const struct ks_pool_ops *ops = p->ops;
	void *arg = p->arg;

	if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_SEQ_CST) != 0)
		return;
	pthread_mutex_destroy(&p->qmu);
	free(p);
	ops->gone(arg);
}

/* The worker's next work: polls, then sleeps.  It polls only when its last
 * work came within IDLE_SPIN_NS of the one before (a caller signing in a
 * loop): polling for work that comes seldom would only take turns on a core
 * with threads that have work.  NULL: stop. */
static void *worker_next(struct ks_worker *w)
{
	int64_t idle = ks_now_ns(), until = w->gap < IDLE_SPIN_NS ? idle + IDLE_SPIN_NS : 0;
	uint32_t s;

	for (;;) {
		if (ST(s = load(&w->state)) == W_POSTED) {
			w->gap = ks_now_ns() - idle;
			w->taken = s;
			return w->work;
		}
		if (ks_now_ns() < until) {
			sched_yield();
			continue;
		}
		store(&w->parked, 1);
		if (ST(s = load(&w->state)) != W_POSTED)
			futex_wait(&w->state, s, NULL);
		store(&w->parked, 0);
	}
}

/* The work has run: hand it back (to its waiting caller, or, posted with
 * ks_pool_post_async, to ops->completed), or clean up after an abandoned
 * one.  -1 when the worker is to end (the pool stops). */
static int worker_done(struct ks_worker *w, void *work)
{
	struct ks_pool *p = w->p;
	int async = w->async; /* read before DONE: after it, a caller may post again */

	if (cas(&w->state, w->taken, w->taken - W_POSTED + W_DONE)) {
		if (async) {
			p->ops->completed(p->arg, w->idx, work);
			ks_pool_release(p, w->idx);
		} else if (load(&w->waiting)) {
			futex_wake(&w->state, 1);
		}
		return 0;
	}
	/* ABANDONED: its caller is gone; the worker is still claimed. */
	p->ops->abandoned(p->arg, w->idx, work);
	__atomic_sub_fetch(&p->wedged, 1, __ATOMIC_SEQ_CST);
	ks_pool_release(p, w->idx);
	/* After the release: a ks_pool_stop that could not claim this worker
	 * detached it, and then set stop before we read it here. */
	return load(&p->stop) ? -1 : 0;
}

static void *worker_main(void *arg)
{
	struct ks_worker *w = arg;
	struct ks_pool *p = w->p;
	char name[16];
	void *work;

	snprintf(name, sizeof(name), "cimdd-ks%zu", w->idx);
	pthread_setname_np(pthread_self(), name);
	while ((work = worker_next(w)) != NULL) {
		__atomic_add_fetch(&p->running, 1, __ATOMIC_SEQ_CST);
		p->ops->run(p->arg, w->idx, work);
		__atomic_sub_fetch(&p->running, 1, __ATOMIC_SEQ_CST);
		if (worker_done(w, work) < 0)
			break;
	}
	pool_unref(p);
	return NULL;
}

int ks_pool_start(const struct ks_pool_ops *ops, void *arg, size_t n, struct ks_pool **ret)
{
	struct ks_pool *p;
	size_t i;
	int r;

	if (n == 0 || n > KS_POOL_MAX)
		return -EINVAL;
	if (posix_memalign((void **)&p, 64, sizeof(*p) + n * sizeof(p->w[0])) != 0)
		return -ENOMEM;
	memset(p, 0, sizeof(*p) + n * sizeof(p->w[0]));
	p->ops = ops;
	p->arg = arg;
	p->n = n;
	p->refs = 1;
	p->cores = sysconf(_SC_NPROCESSORS_ONLN) > 0 ? (uint32_t)sysconf(_SC_NPROCESSORS_ONLN) : 1;
	pthread_mutex_init(&p->qmu, NULL);
	p->tail = &p->head;
	for (i = 0; i < n; i++) {
		p->w[i].p = p;
		p->w[i].idx = i;
		__atomic_add_fetch(&p->refs, 1, __ATOMIC_SEQ_CST);
		if ((r = pthread_create(&p->w[i].thread, NULL, worker_main, &p->w[i])) != 0) {
			/* Stop the ones that run; the owner's reference keeps gone()
			 * from running: nothing was started, as far as the caller knows. */
			while (i-- > 0) {
				store(&p->w[i].owned, 1);
				ks_pool_post(p, i, NULL);
				pthread_join(p->w[i].thread, NULL);
			}
			pthread_mutex_destroy(&p->qmu);
			free(p);
			return -r;
		}
	}
	*ret = p;
	return 0;
}

void ks_pool_stop(struct ks_pool *p)
{
	size_t i;

	store(&p->stop, 1);
	for (i = 0; i < p->n; i++) {
		if (cas(&p->w[i].owned, 0, 1)) {
			ks_pool_post(p, i, NULL);
			pthread_join(p->w[i].thread, NULL);
		} else {
			/* The hardware holds it: it ends when that answers. */
			pthread_detach(p->w[i].thread);
		}
	}
	pool_unref(p);
}

int ks_pool_wedged(struct ks_pool *p)
{
	return load(&p->wedged) != 0;
}

/* The lowest idle workers first: a caller signing one at a time keeps
 * using the same worker, still polling from its last signature, and the
 * others go to sleep rather than poll beside it. */
static int claim_idle(struct ks_pool *p, size_t max, size_t *ret_idx)
{
	size_t i, k = 0;

	for (i = 0; i < p->n && k < max; i++)
		if (load(&p->w[i].owned) == 0 && cas(&p->w[i].owned, 0, 1))
			ret_idx[k++] = i;
	return (int)k;
}

/* In line for a worker until deadline: its index, or -ETIMEDOUT. */
static int claim_wait(struct ks_pool *p, size_t max, size_t *ret_idx,
		      const struct timespec *deadline)
{
	struct ks_waiter me = {NULL, 0}, **pp;
	uint32_t got;
	int k;

	pthread_mutex_lock(&p->qmu);
	__atomic_add_fetch(&p->waiters, 1, __ATOMIC_SEQ_CST);
	/* After counting ourselves: a release that did not see us has made its
	 * worker idle before we look. */
	if ((k = claim_idle(p, max, ret_idx)) > 0) {
		__atomic_sub_fetch(&p->waiters, 1, __ATOMIC_SEQ_CST);
		pthread_mutex_unlock(&p->qmu);
		return k;
	}
	*p->tail = &me;
	p->tail = &me.next;
	pthread_mutex_unlock(&p->qmu);
	while ((got = load(&me.granted)) == 0 && !past(deadline))
		futex_wait(&me.granted, 0, deadline);
	if (got == 0) {
		pthread_mutex_lock(&p->qmu);
		if ((got = load(&me.granted)) == 0) { /* still in line: leave it */
			for (pp = &p->head; *pp != &me; pp = &(*pp)->next)
				;
			if ((*pp = me.next) == NULL)
				p->tail = pp;
			__atomic_sub_fetch(&p->waiters, 1, __ATOMIC_SEQ_CST);
		}
		pthread_mutex_unlock(&p->qmu);
		if (got == 0)
			return -ETIMEDOUT;
	}
	ret_idx[0] = got - 1;
	return 1;
}

int ks_pool_claim(struct ks_pool *p, size_t max, size_t *ret_idx, const struct timespec *deadline)
{
	int64_t until = ks_now_ns() + CLAIM_SPIN_NS;
	int k;

	for (;;) {
		if (ks_pool_wedged(p))
			return -EIO;
		/* Behind those in line, never before them. */
		if (load(&p->waiters) == 0 && (k = claim_idle(p, max, ret_idx)) > 0)
			return k;
		if (load(&p->waiters) != 0 || ks_now_ns() >= until)
			return claim_wait(p, max, ret_idx, deadline);
		sched_yield();
	}
}

/* Posts work to claimed worker idx: the state's turn goes up by one. */
static uint32_t post(struct ks_pool *p, size_t idx, void *work, int async)
{
	struct ks_worker *w = &p->w[idx];
	uint32_t s = (load(&w->state) & ~ST_MASK) + (1u << ST_BITS) + W_POSTED;

	w->work = work;
	w->async = async;
	store(&w->state, s);
	if (load(&w->parked))
		futex_wake(&w->state, 1);
	return s;
}

void ks_pool_post(struct ks_pool *p, size_t idx, void *work)
{
	post(p, idx, work, 0);
}

uint32_t ks_pool_post_async(struct ks_pool *p, size_t idx, void *work)
{
	return post(p, idx, work, 1);
}

int ks_pool_expire(struct ks_pool *p, size_t idx, uint32_t turn)
{
	if (!cas(&p->w[idx].state, turn, turn - W_POSTED + W_ABANDONED))
		return -1;
	__atomic_add_fetch(&p->wedged, 1, __ATOMIC_SEQ_CST);
	return 0;
}

int ks_pool_wait(struct ks_pool *p, size_t idx, int64_t spin_ns, const struct timespec *deadline)
{
	struct ks_worker *w = &p->w[idx];
	int64_t until = ks_now_ns() + spin_ns;
	uint32_t turn = load(&w->state), s;
	int r = 0;

	if (spin_ns > 0) {
		if (__atomic_add_fetch(&p->polling, 1, __ATOMIC_SEQ_CST) + load(&p->running) <=
		    p->cores)
			while (ST(load(&w->state)) != W_DONE && ks_now_ns() < until)
				sched_yield();
		__atomic_sub_fetch(&p->polling, 1, __ATOMIC_SEQ_CST);
	}
	while (ST(load(&w->state)) != W_DONE) {
		store(&w->waiting, 1);
		if ((s = load(&w->state)) == turn)
			r = futex_wait(&w->state, s, deadline);
		store(&w->waiting, 0);
		if (ST(load(&w->state)) == W_DONE)
			break;
		if ((r == -ETIMEDOUT || past(deadline)) && ks_pool_expire(p, idx, turn) == 0)
			return -ETIMEDOUT;
	}
	return 0;
}

void ks_pool_release(struct ks_pool *p, size_t idx)
{
	struct ks_worker *w = &p->w[idx];
	struct ks_waiter *first;

	store(&w->state, (load(&w->state) & ~ST_MASK) | W_IDLE);
	store(&w->owned, 0);
	/* After making it idle: a caller that counted itself in line before
	 * this is seen here; one that did after has seen the worker idle. */
	if (load(&p->waiters) == 0 || !cas(&w->owned, 0, 1))
		return;
	pthread_mutex_lock(&p->qmu);
	if ((first = p->head) == NULL) {
		store(&w->owned, 0); /* it took a worker itself, or left */
	} else {
		if ((p->head = first->next) == NULL)
			p->tail = &p->head;
		__atomic_sub_fetch(&p->waiters, 1, __ATOMIC_SEQ_CST);
		store(&first->granted, (uint32_t)idx + 1);
		futex_wake(&first->granted, 1);
	}
	pthread_mutex_unlock(&p->qmu);
}
