/*
 * sign_queue.c — what the signer's threads share (signer.c starts them): the
 * queues that hand a job from one thread to the next, the counters and the
 * rate buckets.  Every thread calls it; it calls no thread's code, so the
 * signer's files make no circle.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "signer_int.h"

/* ---- queues between the threads ---- */

void signq_init(struct queue *q)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, &ca);
	pthread_condattr_destroy(&ca);
	q->head = NULL;
	q->tail = &q->head;
	q->n = 0;
}

void signq_push(struct queue *q, struct job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&q->mu);
	*q->tail = j;
	q->tail = &j->next;
	q->n++;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

struct job *signq_take(struct queue *q, size_t max, const int *stop)
{
	return signq_take_until(q, max, stop, NULL);
}

struct job *signq_take_until(struct queue *q, size_t max, const int *stop,
			     const struct timespec *deadline)
{
	struct job *head, **p;
	size_t n;

	pthread_mutex_lock(&q->mu);
	while (q->head == NULL && !__atomic_load_n(stop, __ATOMIC_ACQUIRE))
		if (deadline == NULL)
			pthread_cond_wait(&q->cv, &q->mu);
		else if (pthread_cond_timedwait(&q->cv, &q->mu, deadline) == ETIMEDOUT)
			break;
	head = q->head;
	for (p = &q->head, n = 0; *p != NULL && n < max; p = &(*p)->next, n++)
		;
	q->head = *p;
	*p = NULL;
	if (q->head == NULL)
		q->tail = &q->head;
	q->n -= n;
	pthread_mutex_unlock(&q->mu);
	return head;
}

void signq_wake(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

void sign_job_free(struct job *j)
{
	if (j == NULL)
		return;
	sign_policy_unref(j->pol);
	free(j->jws);
	free(j);
}

void sign_jobs_free(struct job *j)
{
	struct job *next;

	for (; j != NULL; j = next) {
		next = j->next;
		sign_job_free(j);
	}
}

void sign_done_push(struct signer *s, struct job *j)
{
	uint64_t one = 1;

	signq_push(&s->done, j);
	if (write(s->donefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_err("sign socket: eventfd: %s", strerror(errno));
}

long sign_elapsed_ns(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1000000000L + (b->tv_nsec - a->tv_nsec);
}

/* ---- statistics and rate limits (every thread, under stats.mu) ---- */

static struct stat_ent *stat_get(struct signer *s, const char *name)
{
	size_t i = (size_t)sign_hash_name(name) & (STATS_CAP - 1), k;

	for (k = 0; k < STATS_CAP; k++, i = (i + 1) & (STATS_CAP - 1)) {
		if (s->stats.ents[i].name[0] == '\0') {
			snprintf(s->stats.ents[i].name, sizeof(s->stats.ents[i].name), "%s", name);
			return &s->stats.ents[i];
		}
		if (strcmp(s->stats.ents[i].name, name) == 0)
			return &s->stats.ents[i];
	}
	return NULL;
}

/* A name probed on the socket never becomes a label (docs/protocol.md): only
 * clients with an approved document are counted under their name. */
const char *sign_metric_name(const struct policy *p)
{
	return p != NULL && p->approved ? p->name : NULL;
}

void sign_count(struct signer *s, const char *client, enum proto_err e)
{
	struct stat_ent *st;

	pthread_mutex_lock(&s->stats.mu);
	if (client != NULL && (st = stat_get(s, client)) != NULL)
		st->n[e]++;
	else
		s->stats.unknown[e]++;
	if (e == PE_UNAVAILABLE)
		s->stats.backend_errors++;
	s->stats.total++;
	pthread_mutex_unlock(&s->stats.mu);
}

/* Holding at most one second's worth. */
int sign_rate_allow(struct signer *s, const char *client, long rate)
{
	struct timespec now;
	struct stat_ent *st;
	int ok = 1;

	if (rate <= 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&s->stats.mu);
	if ((st = stat_get(s, client)) != NULL) {
		if (st->last.tv_sec == 0)
			st->tokens = (double)rate;
		else
			st->tokens += (double)rate * (double)sign_elapsed_ns(&st->last, &now) / 1e9;
		if (st->tokens > (double)rate)
			st->tokens = (double)rate;
		st->last = now;
		if (st->tokens >= 1.0)
			st->tokens -= 1.0;
		else
			ok = 0;
	}
	pthread_mutex_unlock(&s->stats.mu);
	return ok;
}
