/*
 * signer_int.h — the signing socket's internal header: what its threads
 * share.  Not included outside the signer's files:
 *
 *   signer.c        start and stop, the queues between the threads, counters
 *   sign_io.c       the io thread: connections, lines, claims, answers
 *   sign_policy.c   client policies read for the io thread and cached
 *   sign_backend.c  one signing thread per key store
 *   sign_journal.c  the journal thread (group commit)
 *
 * State is grouped by the thread that writes it (STYLE.md 19): each thread's
 * own fields are a struct of their own in struct signer, and every other field
 * says who writes it.
 */
#ifndef CIMD_SIGNER_INT_H
#define CIMD_SIGNER_INT_H

#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "service.h"

#define CACHE_CAP 16384 /* > CIMD_CLIENTS_MAX, a power of two */
#define INVAL_MAX 4096	/* client invalidations held before the whole cache is dropped */
#define STATS_CAP 16384 /* > CIMD_CLIENTS_MAX, a power of two */

/* One client's policy as the io thread caches it; shared with the jobs that
 * name it, freed with the last reference.  Written by the io thread while it
 * loads it (sign_policy.c), read-only after, but for key. */
struct policy {
	int refs;
	char name[CIMD_NAME_MAX + 1];
	size_t backend; /* index into cfg->backends */
	uid_t uids[CIMD_CALLERS_MAX];
	size_t n_uids;
	gid_t gids[CIMD_CALLERS_MAX];
	size_t n_gids;
	char *auds[CIMD_AUDIENCES_MAX];
	size_t n_auds;
	long ttl;  /* 0: the configuration's default */
	long rate; /* -1: the configuration's default, 0: none */
	int has_key;
	int published; /* a JWKS naming the key was handed on (keys.published) */
	char kid[CIMD_KID_LEN + 1];
	enum cimd_alg alg;
	uint8_t *ref;
	size_t ref_len;
	char *header; /* base64url of the protected header, fixed per key */
	/* Touched only by the backend thread of this policy's backend. */
	struct ks_key *key;
};

/* A request on its way: made by the io thread, owned by whichever queue holds
 * it, so by one thread at a time. */
struct job {
	struct job *next;
	uint32_t slot, gen; /* the connection that asked */
	struct policy *pol; /* a reference */
	enum proto_err err;
	char msg[512];
	int refusal; /* journal a refusal, answer err */
	uid_t uid;
	pid_t pid;
	char jti[24];
	int64_t iat, exp;
	const char *aud; /* points into pol->auds */
	char *jws;	 /* header.claims, then .signature */
	size_t jws_len;
	struct timespec queued;
};

struct queue {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *head, **tail;
	size_t n;
};

/* A signing connection: the line server's connection and what the signer
 * adds to it. */
struct conn {
	struct ls_conn ls;
	uint32_t gen;
	int busy; /* a job is in flight */
	uint32_t events;
};

/* Per-client counters and rate bucket; the table lives as long as the signer. */
struct stat_ent {
	char name[CIMD_NAME_MAX + 1];
	uint64_t n[PE_SIGN_N];
	double tokens;
	struct timespec last;
};

/* Written by the io thread only (sign_io.c); made before it starts and freed
 * after it ends (sign_io_init, sign_io_free). */
struct sign_io {
	pthread_t thread;
	int lfd, epfd;
	struct conn *conns;
	uint32_t *free_slots;
	size_t n_free, n_conns;
	struct ls_uids uids;  /* connections per uid */
	struct store *reader; /* policies and receipts */
};

/* Written by the io thread only (sign_policy.c), as struct sign_io. */
struct sign_policies {
	struct policy **cache; /* open addressing by name */
	size_t n_cached;
	unsigned long cached_generation;
};

/* Written by the main thread (signer_invalidate_client) and drained by the
 * io thread, both under mu. */
struct sign_inval {
	pthread_mutex_t mu;
	char (*names)[CIMD_NAME_MAX + 1];
	size_t n;
	int pending; /* also read without mu, atomically */
};

/* Written by every thread, under mu (signer.c). */
struct sign_stats {
	pthread_mutex_t mu;
	struct stat_ent *ents;
	uint64_t unknown[PE_SIGN_N]; /* requests naming no known client */
	uint64_t backend_errors;
	uint64_t total; /* every answer, for "did the counters move" */
};

/* One per key store: the thread and its queue (pushed by the io thread). */
struct backend_worker {
	struct signer *s;
	size_t idx;
	pthread_t thread;
	struct queue q;
};

/* The journal thread: its handle; its queue is pushed by io and backends. */
struct sign_journal {
	pthread_t thread;
	struct store *writer;
	struct queue q;
};

struct signer {
	/* Written by signer_start before any thread runs; read-only after. */
	struct svc *d;
	struct tlog *tlog; /* receipts' inclusion proofs (set at start, read by io) */
	char *path;
	int donefd;		   /* written by backends and journal, read by io */
	char prefix[CIMD_URL_MAX]; /* base_url "/clients/" */
	size_t prefix_len;
	size_t n_workers;
	/* Written by signer_start and signer_stop (main thread) only. */
	int io_started, journal_started, workers_started;
	/* Written by the main thread, read by the others atomically. */
	int stop;					  /* signer_stop */
	long default_ttl, max_ttl, rate;		  /* signer_configure */
	unsigned long generation;			  /* signer_invalidate */
	int all_published;				  /* signer_publish_nothing */
	struct sign_inval inval;			  /* main writes, io drains */
	struct sign_io io;				  /* io thread */
	struct sign_policies pol;			  /* io thread */
	struct backend_worker workers[CIMD_BACKENDS_MAX]; /* each its own thread */
	struct sign_journal jr;				  /* journal thread */
	struct queue done;	 /* pushed by backends and journal, drained by io */
	struct sign_stats stats; /* every thread, under stats.mu */
};

/* ---- signer.c: queues, jobs, counters ---- */

void signq_init(struct queue *q);
void signq_push(struct queue *q, struct job *j);
/* Takes up to max jobs, waiting for one unless stop is set. */
struct job *signq_take(struct queue *q, size_t max, const int *stop);
void signq_wake(struct queue *q);
/* Hands a finished job to the io thread. */
void sign_done_push(struct signer *s, struct job *j);
void sign_job_free(struct job *j);
void sign_jobs_free(struct job *j);
long sign_elapsed_ns(const struct timespec *a, const struct timespec *b);
/* One answer of result e for client (NULL: no known client). */
void sign_count(struct signer *s, const char *client, enum proto_err e);
/* Token bucket of rate per second; 0 when client is over it. */
int sign_rate_allow(struct signer *s, const char *client, long rate);

/* ---- sign_policy.c (io thread) ---- */

void sign_policy_unref(struct policy *p);
/* The cached policy of name, loaded on a miss; a new reference.
 * -ENOENT: no such client. */
int sign_policy_get(struct signer *s, const char *name, struct policy **ret);
void sign_policy_flush(struct signer *s);
int sign_policy_init(struct signer *s);
void sign_policy_free(struct signer *s);
/* The name of a client_id of this appliance, or NULL. */
const char *sign_client_name(const struct signer *s, const char *client_id);
uint64_t sign_hash_name(const char *s);

/* ---- the threads ---- */

/* sign_io.c: the io thread's fields made (before it runs) and freed (after). */
int sign_io_init(struct signer *s, char *err, size_t errlen);
void sign_io_free(struct signer *s);
void *sign_io_main(void *arg);
void *sign_backend_main(void *arg); /* sign_backend.c, arg: its backend_worker */
void *sign_journal_main(void *arg); /* sign_journal.c */

#endif /* CIMD_SIGNER_INT_H */
