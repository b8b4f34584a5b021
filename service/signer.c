/*
 * signer.c — the signing socket: RFC 7523 client assertions for local
 * workloads (docs/protocol.md, "Signing socket").
 *
 * Three kinds of thread, so that no caller waits on another's I/O or hardware:
 *
 *   io       epoll over the listening socket and every connection.  Reads
 *            lines, parses them, checks the client's policy, builds the header
 *            and every claim, hands a job on, writes answers.  Never blocks on
 *            a peer or on hardware.
 *   backend  one per configured key store: spreads what is queued over the
 *            store's sessions and hands each share to a worker of the store
 *            without waiting for it; the worker hands the signed jobs
 *            straight on to the journal.  The backend thread keeps the
 *            deadlines: a share not signed in time is taken back and answered,
 *            and every job queued before such a failure is answered at once
 *            rather than waiting its own deadline, so backend_unavailable
 *            comes within one key store deadline.
 *   journal  group commit: what the backends signed since the last commit is
 *            journaled in one transaction; answers leave only after COMMIT
 *            (synchronous = FULL), so no workload holds an assertion the
 *            journal lacks.  The key's state is read again inside that
 *            transaction: an assertion whose key was revoked or retired while
 *            it was being signed is never handed out.
 *
 * The threads' code lives in files of their own (signer_int.h says which);
 * this one starts and stops them and reports their counters.  What they share
 * -- the queues that hand a job from one to the next, the counters and the
 * rate buckets -- is sign_queue.c, which calls none of them.
 *
 * A connection has at most one request in flight, so answers come in order and
 * a peer that does not read its answers stalls only itself.  The policy of a
 * client (callers, audiences, lifetime, rate, active key) is cached by the io
 * thread and dropped whenever the custody state changes (signer_invalidate).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "signer_int.h"

/* ---- life cycle (main thread) ---- */

static void raise_nofile(void)
{
	struct rlimit rl;
	rlim_t want = CIMD_SIGN_CONNS_MAX + CIMD_ADMIN_CONNS_MAX + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want)
		log_warn("sign socket: only %llu descriptors; fewer connections will fit",
			 (unsigned long long)rl.rlim_cur);
}

void signer_configure(struct signer *s, const struct cimd_config *cfg)
{
	__atomic_store_n(&s->default_ttl, cfg->assertion_default_ttl, __ATOMIC_RELAXED);
	__atomic_store_n(&s->max_ttl, cfg->assertion_max_ttl, __ATOMIC_RELAXED);
	__atomic_store_n(&s->rate, cfg->assertion_rate_limit, __ATOMIC_RELAXED);
	signer_invalidate(s);
}

void signer_invalidate(struct signer *s)
{
	if (s != NULL)
		__atomic_add_fetch(&s->generation, 1, __ATOMIC_RELEASE);
}

int signer_start(struct svc *d, struct tlog *tl, struct signer **ret, char *err, size_t errlen)
{
	struct signer *s;
	size_t i;
	int r;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return -ENOMEM;
	s->d = d;
	s->tlog = tl;
	s->donefd = -1;
	s->io.lfd = s->io.epfd = -1;
	signq_init(&s->jr.q);
	signq_init(&s->done);
	pthread_mutex_init(&s->stats.mu, NULL);
	pthread_mutex_init(&s->inval.mu, NULL);
	signer_configure(s, d->cfg);
	snprintf(s->prefix, sizeof(s->prefix), "%s/clients/", d->cfg->base_url);
	s->prefix_len = strlen(s->prefix);
	s->stats.ents = calloc(STATS_CAP, sizeof(*s->stats.ents));
	s->inval.names = calloc(INVAL_MAX, sizeof(*s->inval.names));
	s->path = strdup(d->cfg->sign_socket);
	if (!s->stats.ents || !s->inval.names || !s->path || (r = sign_policy_init(s)) < 0) {
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	raise_nofile();
	if ((r = store_open_config(d->cfg, &s->io.reader, err, errlen)) < 0 ||
	    (r = store_open_config(d->cfg, &s->jr.writer, err, errlen)) < 0)
		goto fail;
	/* A journal that cannot take the write lock this soon fails the batch:
	 * signing fails closed rather than queueing without bound. */
	store_busy_timeout(s->jr.writer, 2000);
	if ((s->donefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		r = -errno;
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		goto fail;
	}
	if ((r = sign_io_init(s, err, errlen)) < 0)
		goto fail;
	s->n_workers = d->cfg->n_backends;
	for (i = 0; i < s->n_workers; i++) {
		s->workers[i].s = s;
		s->workers[i].idx = i;
		signq_init(&s->workers[i].q);
	}
	for (i = 0; i < s->n_workers; i++) {
		if ((r = pthread_create(&s->workers[i].thread, NULL, sign_backend_main,
					&s->workers[i])) != 0)
			goto fail_thread;
		s->workers_started = (int)i + 1;
	}
	if ((r = pthread_create(&s->jr.thread, NULL, sign_journal_main, s)) != 0)
		goto fail_thread;
	s->journal_started = 1;
	if ((r = pthread_create(&s->io.thread, NULL, sign_io_main, s)) != 0)
		goto fail_thread;
	s->io_started = 1;
	/* Named, for top -H and perf: the threads of a signature's path. */
	for (i = 0; i < s->n_workers; i++)
		pthread_setname_np(s->workers[i].thread, "cimdd-sign");
	pthread_setname_np(s->jr.thread, "cimdd-journal");
	pthread_setname_np(s->io.thread, "cimdd-signio");
	*ret = s;
	return 0;
fail_thread:
	snprintf(err, errlen, "pthread_create: %s", strerror(r));
	r = -r;
fail:
	signer_stop(&s);
	return r;
}

void signer_stop(struct signer **ps)
{
	struct signer *s = *ps;
	size_t i;

	if (s == NULL)
		return;
	__atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
	if (s->donefd >= 0 && write(s->donefd, &(uint64_t){1}, sizeof(uint64_t)) < 0)
		log_warn("sign socket: eventfd: %s", strerror(errno));
	if (s->io_started)
		pthread_join(s->io.thread, NULL);
	for (i = 0; i < s->n_workers; i++) {
		signq_wake(&s->workers[i].q);
		if ((int)i < s->workers_started)
			pthread_join(s->workers[i].thread, NULL);
		sign_jobs_free(s->workers[i].q.head);
	}
	/* The io thread journaled its last refusal counts on its way out; the
	 * journal thread commits everything queued, then ends. */
	__atomic_store_n(&s->journal_stop, 1, __ATOMIC_RELEASE);
	signq_wake(&s->jr.q);
	if (s->journal_started)
		pthread_join(s->jr.thread, NULL);
	sign_jobs_free(s->jr.q.head);
	sign_jobs_free(s->done.head);
	/* The threads are gone: what was theirs is the main thread's now. */
	sign_io_free(s);
	sign_policy_free(s);
	if (s->donefd >= 0)
		close(s->donefd);
	store_free(&s->io.reader);
	store_free(&s->jr.writer);
	free(s->stats.ents);
	free(s->inval.names);
	free(s->path);
	free(s);
	*ps = NULL;
}

uint64_t signer_answers(struct signer *s)
{
	uint64_t n;

	if (s == NULL)
		return 0;
	pthread_mutex_lock(&s->stats.mu);
	n = s->stats.total;
	pthread_mutex_unlock(&s->stats.mu);
	return n;
}

/* Prometheus text: assertions by client and result. */
int signer_metrics(struct signer *s, FILE *f)
{
	size_t i;
	int e;

	fprintf(f, "# HELP cimdd_assertions_total Signing requests answered, by client and "
		   "result.\n# TYPE cimdd_assertions_total counter\n");
	if (s == NULL)
		return 0;
	pthread_mutex_lock(&s->stats.mu);
	for (i = 0; i < STATS_CAP; i++) {
		if (s->stats.ents[i].name[0] == '\0')
			continue;
		for (e = 0; e < PE_SIGN_N; e++)
			if (s->stats.ents[i].n[e] > 0)
				fprintf(
				    f, "cimdd_assertions_total{client=\"%s\",result=\"%s\"} %llu\n",
				    s->stats.ents[i].name, proto_err_name((enum proto_err)e),
				    (unsigned long long)s->stats.ents[i].n[e]);
	}
	for (e = 0; e < PE_SIGN_N; e++)
		if (s->stats.unknown[e] > 0)
			fprintf(f, "cimdd_assertions_total{client=\"\",result=\"%s\"} %llu\n",
				proto_err_name((enum proto_err)e),
				(unsigned long long)s->stats.unknown[e]);
	fprintf(f,
		"# HELP cimdd_sign_backend_errors_total Signing requests the hardware failed.\n"
		"# TYPE cimdd_sign_backend_errors_total counter\n"
		"cimdd_sign_backend_errors_total %llu\n",
		(unsigned long long)s->stats.backend_errors);
	pthread_mutex_unlock(&s->stats.mu);
	return 0;
}
