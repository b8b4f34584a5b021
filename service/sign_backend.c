/*
 * sign_backend.c — the signing socket's backend threads (signer_int.h): one
 * per configured key store.  It takes what the io thread queued, up to
 * CIMD_SIGN_BATCH per session of the store, spreads it over the store's
 * sessions, and hands each share to a worker of the store
 * (key_store_sign_async) without waiting for it: the worker signs, and hands
 * the signed jobs straight to the journal thread (flight_done).  So a
 * signature costs no wake-up of this thread, and the next jobs go to another
 * session while the first are signed.
 *
 * Deadlines stay this thread's: a share the hardware has not signed by the
 * store's timeout-ms is taken back (key_store_sign_expire) and answered
 * backend_unavailable; every job queued before such a failure is answered at
 * once rather than waiting a deadline of its own, so backend_unavailable
 * comes within one key store deadline.  What failed goes back to the io
 * thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "signer_int.h"

/* Answers j with the failure r of its backend. */
static void backend_fail(struct signer *s, struct backend_worker *w, struct job *j, int r,
			 const char *detail)
{
	/* A key the database holds that the hardware does not is a hardware
	 * fault (a token away, a module gone stale): the caller may try again. */
	j->err = r == -CIMD_EUNAVAILABLE || r == -CIMD_ENOKEY ? PE_UNAVAILABLE : PE_INTERNAL;
	snprintf(j->msg, sizeof(j->msg), "backend %s: %s", s->d->cfg->backends[w->idx].name,
		 cimd_strerror(r));
	log_err("sign socket: %s, key %s: %s (%s)", j->pol->name, j->pol->kid, cimd_strerror(r),
		detail);
	sign_done_push(s, j);
}

static void unavailable(struct signer *s, struct backend_worker *w, struct job *j)
{
	j->err = PE_UNAVAILABLE;
	snprintf(j->msg, sizeof(j->msg), "backend %s is unavailable",
		 s->d->cfg->backends[w->idx].name);
	sign_done_push(s, j);
}

/* On the key store's worker: the flight's jobs are signed (or each failed on
 * its own); on to the journal. */
static void flight_done(void *arg)
{
	struct flight *f = arg;
	struct signer *s = f->w->s;
	struct job *j;
	size_t i;

	for (i = 0; i < f->n; i++) {
		j = f->jobs[i];
		if (f->reqs[i].r < 0) {
			backend_fail(s, f->w, j, f->reqs[i].r, "in a batch");
			continue;
		}
		j->jws[j->jws_len++] = '.';
		b64url_encode(f->reqs[i].sig, f->reqs[i].sig_len, j->jws + j->jws_len);
		j->jws_len += b64url_encoded_len(f->reqs[i].sig_len);
		signq_push(&s->jr.q, j);
	}
	__atomic_store_n(&f->busy, 0, __ATOMIC_RELEASE);
}

/* Takes back the flights past their deadline and answers their jobs; the
 * earliest deadline of those still out in *ret_next (tv_sec 0: none), and
 * how many are out. */
static size_t flights_expire(struct backend_worker *w, struct key_store *ks,
			     struct timespec *ret_next)
{
	struct signer *s = w->s;
	struct timespec now;
	struct flight *f;
	size_t i, k, out = 0;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ret_next->tv_sec = 0;
	for (i = 0; i < SIGN_FLIGHTS && (f = w->flights[i]) != NULL; i++) {
		if (!__atomic_load_n(&f->busy, __ATOMIC_ACQUIRE))
			continue;
		if (sign_elapsed_ns(&f->pend.deadline, &now) >= 0 && ks != NULL &&
		    key_store_sign_expire(ks, &f->pend) == 0) {
			/* Ours again: the worker never hands them on. */
			__atomic_store_n(&f->busy, 0, __ATOMIC_RELAXED);
			w->failed_at = now;
			log_err("sign socket: backend %s: no answer from the hardware in time",
				s->d->cfg->backends[w->idx].name);
			for (k = 0; k < f->n; k++)
				unavailable(s, w, f->jobs[k]);
			continue;
		}
		if (!__atomic_load_n(&f->busy, __ATOMIC_ACQUIRE))
			continue; /* done meanwhile */
		out++;
		if (ret_next->tv_sec == 0 || sign_elapsed_ns(&f->pend.deadline, ret_next) > 0)
			*ret_next = f->pend.deadline;
	}
	return out;
}

static struct flight *flight_free(struct backend_worker *w)
{
	size_t i;

	for (i = 0; i < SIGN_FLIGHTS; i++) {
		if (w->flights[i] == NULL) {
			if ((w->flights[i] = calloc(1, sizeof(*w->flights[i]))) != NULL)
				w->flights[i]->w = w;
			return w->flights[i];
		}
		if (!__atomic_load_n(&w->flights[i]->busy, __ATOMIC_ACQUIRE))
			return w->flights[i];
	}
	return NULL;
}

/* Hands jobs[0..n) to one worker of ks; what cannot go is answered. */
static void flight_send(struct backend_worker *w, struct key_store *ks, struct job **jobs, size_t n)
{
	struct signer *s = w->s;
	struct flight *f = flight_free(w);
	struct timespec next;
	size_t i;
	int r;

	if (f == NULL) {
		for (i = 0; i < n; i++)
			backend_fail(s, w, jobs[i], -ENOMEM, "no flight");
		return;
	}
	for (i = 0; i < n; i++) {
		f->jobs[i] = jobs[i];
		f->reqs[i] = (struct ks_sign_req){.key = jobs[i]->pol->key,
						  .msg = (const uint8_t *)jobs[i]->jws,
						  .len = jobs[i]->jws_len};
	}
	f->n = n;
	/* While every worker is busy, the flights out keep their deadlines:
	 * the wait for a worker ends at the first, which is then taken back,
	 * and the wait begins again. */
	do {
		flights_expire(w, ks, &next); /* f is not out: busy is 0 */
		__atomic_store_n(&f->busy, 1, __ATOMIC_RELAXED);
		r = key_store_sign_async(ks, f->reqs, n, next.tv_sec != 0 ? &next : NULL,
					 flight_done, f, &f->pend);
		if (r < 0)
			__atomic_store_n(&f->busy, 0, __ATOMIC_RELAXED);
	} while (r == -ETIMEDOUT);
	if (r < 0) {
		if (r == -CIMD_EUNAVAILABLE)
			clock_gettime(CLOCK_MONOTONIC, &w->failed_at);
		for (i = 0; i < n; i++)
			backend_fail(s, w, jobs[i], r, key_store_errmsg(ks));
	}
}

/* The jobs taken from the queue: those that can be signed, spread over the
 * store's sessions; the others answered. */
static void batch_send(struct backend_worker *w, struct key_store *ks, struct job *j)
{
	struct signer *s = w->s;
	struct job *ready[CIMD_SIGN_BATCH * SIGN_FLIGHTS], *next;
	size_t n = 0, i, k, parts, sessions;
	int r;

	for (; j != NULL; j = next) {
		next = j->next;
		if (ks == NULL || sign_elapsed_ns(&j->queued, &w->failed_at) >= 0) {
			/* Not open, or failed after this job was queued: answer
			 * now rather than wait another deadline. */
			unavailable(s, w, j);
			continue;
		}
		if (j->pol->key == NULL &&
		    (r = key_store_load(ks, j->pol->alg, j->pol->ref, j->pol->ref_len,
					&j->pol->key)) < 0) {
			if (r == -CIMD_EUNAVAILABLE)
				clock_gettime(CLOCK_MONOTONIC, &w->failed_at);
			backend_fail(s, w, j, r, key_store_errmsg(ks));
			continue;
		}
		ready[n++] = j;
	}
	if (n == 0)
		return;
	/* As many shares as sessions: none over CIMD_SIGN_BATCH, since the
	 * backend thread takes at most that many per session. */
	sessions = (size_t)key_store_sessions(ks);
	parts = n < sessions ? n : sessions;
	for (i = 0, k = 0; k < parts; k++) {
		size_t end = n * (k + 1) / parts;

		flight_send(w, ks, ready + i, end - i);
		i = end;
	}
}

void *sign_backend_main(void *arg)
{
	struct backend_worker *w = arg;
	struct signer *s = w->s;
	struct timespec next;
	struct key_store *ks;
	struct job *j;
	size_t i, out, max;

	for (;;) {
		ks = custody_at(s->d->custody, w->idx);
		out = flights_expire(w, ks, &next);
		if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
			if (out == 0)
				break;
			/* What is out comes back, or is taken back at its deadline. */
			nanosleep(&(struct timespec){0, 1000000}, NULL);
			continue;
		}
		max = CIMD_SIGN_BATCH * (ks != NULL ? (size_t)key_store_sessions(ks) : 1);
		j = signq_take_until(&w->q, max, &s->stop, next.tv_sec != 0 ? &next : NULL);
		if (j != NULL)
			batch_send(w, custody_at(s->d->custody, w->idx), j);
	}
	for (i = 0; i < SIGN_FLIGHTS; i++)
		free(w->flights[i]);
	return NULL;
}
