/*
 * signer_int.h — the signing socket's internal header: what its threads
 * share.  Not included outside the signer's files:
 *
 *   signer.c        start and stop, the queues between the threads, counters
 *   sign_io.c       the io thread: connections, lines, claims, answers
 *   sign_policy.c   client policies read for the io thread and cached
 *   sign_backend.c  one thread per key store, handing shares to its workers
 *   sign_journal.c  the journal thread (group commit)
 *   sign_fair.c     the io thread's turns: round-robin between uids, bad lines
 *   sign_refuse.c   refusals counted per uid, client and reason, journaled in sums
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

/* Hostile callers (docs/reliability.md, "Hostile callers on the signing
 * socket").  The io thread serves, in each round, one connection of each uid
 * that has work, for at most SIGN_LINES_PER_TURN lines: a uid with many
 * connections gets no more turns than a uid with one. */
#define SIGN_LINES_PER_TURN 4
/* Bad lines (refused for the caller's own doing: bad_request, too_large,
 * unknown_client, forbidden, audience_not_allowed, not_found) spend a token
 * of their uid's bucket; a uid without one is not read until it has one. */
#define SIGN_BAD_PER_SEC 20
#define SIGN_BAD_BURST 100
/* uids known to the io thread: those with connections, and those without
 * that still owe bad-line tokens (so that reconnecting forgives nothing). */
#define SIGN_UIDS_CAP (CIMD_SIGN_CONNS_MAX + 1024)
#define SIGN_UIDS_HASH 32768 /* >= 2 * SIGN_UIDS_CAP, a power of two */
#define SIGN_NONE UINT32_MAX
/* The refusal interval: forbidden requests are journaled as one
 * assertion.refuse record per (uid, client, reason) and interval, with a count;
 * the first of a new key at once. */
#define SIGN_REFUSE_INTERVAL 10
#define SIGN_REFUSE_CAP 4096	    /* keys counted at once, a power of two */
#define SIGN_REFUSE_NAMED_PER_UID 8 /* named clients per uid; more are counted unnamed */

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
	int approved;  /* it has an approved document: /metrics may name it */
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
	uint32_t slot, gen; /* the connection that asked; SIGN_NONE: no one to answer */
	struct policy *pol; /* a reference (NULL in a refusal of no client) */
	enum proto_err err;
	char msg[512];
	int refusal; /* journal a refusal (count of them, first to last), answer err */
	char client[CIMD_NAME_MAX + 1]; /* of a refusal; "": none named */
	uint64_t count;
	int64_t first, last;
	uid_t uid;
	int64_t gid; /* the group that allowed the caller, or -1: its uid did */
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
	uint32_t uent;	       /* its uid's entry (sign_fair.c) */
	int ready;	       /* on its uid's list of connections with work */
	uint32_t rprev, rnext; /* that list, by slot */
};

/* A uid as the io thread schedules it (sign_fair.c). */
struct sign_uid {
	int used;
	uid_t uid;
	unsigned conns;
	uint32_t head, tail;  /* its ready connections, by slot */
	uint32_t next;	      /* in the ring, the parked list or the free list */
	int queued;	      /* in the ring, parked, or having its turn */
	double tokens;	      /* bad lines it may still send */
	struct timespec last; /* tokens last refilled */
};

/* Written by the io thread only, as struct sign_io. */
struct sign_fair {
	struct sign_uid *ents; /* SIGN_UIDS_CAP */
	uint32_t *index;       /* SIGN_UIDS_HASH: uid -> entry, open addressing */
	uint32_t free_head;
	uint32_t ring_head, ring_tail; /* uids with work, in turn */
	size_t n_ring;
	uint32_t parked; /* uids with work but no bad-line token */
};

/* One key of counted refusals (sign_refuse.c). */
struct refuse_ent {
	int used;
	uid_t uid;
	enum proto_err err;
	char client[CIMD_NAME_MAX + 1]; /* "": no client named */
	pid_t pid;			/* of the latest */
	uint64_t count;			/* since its last record */
	int64_t first, last;
};

/* Written by the io thread only, as struct sign_io. */
struct sign_refusals {
	struct refuse_ent *v, *spare; /* SIGN_REFUSE_CAP each */
	size_t n;		      /* keys in v */
	time_t flushed;
	uint64_t lost; /* counted nowhere: the table was full */
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
	struct sign_fair fair; /* connections per uid, turns, bad lines */
	struct sign_refusals refusals;
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

/* Signatures in flight on one of a key store's workers (sign_backend.c):
 * the backend thread's until it hands them over, then the worker's until
 * done hands the jobs on (or the backend thread takes them back at the
 * deadline). */
#define SIGN_FLIGHTS (CIMD_KS_SESSIONS_MAX + 1) /* a key store's sessions at most, and one */
struct flight {
	struct backend_worker *w;
	int busy;		/* atomic: handed over, and neither done nor taken back */
	struct ks_pending pend; /* with the deadline */
	size_t n;
	struct job *jobs[CIMD_SIGN_BATCH];
	struct ks_sign_req reqs[CIMD_SIGN_BATCH];
};

/* One per key store: the thread and its queue (pushed by the io thread). */
struct backend_worker {
	struct signer *s;
	size_t idx;
	pthread_t thread;
	struct queue q;
	struct flight *flights[SIGN_FLIGHTS]; /* made as they are needed */
	struct timespec failed_at;	      /* the store last failed */
};

/* The journal thread: its handle; its queue is pushed by io and backends. */
struct sign_journal {
	pthread_t thread;
	struct store *writer;
	struct queue q;
	int lost; /* the database was out of reach at the last commit: said once */
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
	int journal_stop; /* the others are gone: the journal drains its queue and ends */
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
/* Takes up to max jobs, waiting for one unless stop is set (or, _until,
 * until deadline on CLOCK_MONOTONIC: NULL when none came). */
struct job *signq_take(struct queue *q, size_t max, const int *stop);
struct job *signq_take_until(struct queue *q, size_t max, const int *stop,
			     const struct timespec *deadline);
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
/* The name /metrics may count p under: published clients only, else NULL. */
const char *sign_metric_name(const struct policy *p);

/* ---- sign_fair.c (io thread) ---- */

int sign_fair_init(struct sign_fair *f);
void sign_fair_free(struct sign_fair *f);
/* One more connection of uid: its entry, or SIGN_NONE when uid holds max
 * already (or no entry is free). */
uint32_t sign_fair_take(struct sign_fair *f, uid_t uid, unsigned max);
/* A connection of entry u closed (taken off the ready list before). */
void sign_fair_release(struct sign_fair *f, uint32_t u);
/* Connection c has work: on its uid's list, its uid in the ring (or parked). */
void sign_fair_ready(struct sign_fair *f, struct conn *conns, struct conn *c);
/* Takes c off its uid's list (it closes). */
void sign_fair_unready(struct sign_fair *f, struct conn *conns, struct conn *c);
/* The next uid's turn: the slot of one of its ready connections, taken off
 * the list, and *ret_u its entry; SIGN_NONE when the ring is empty. */
uint32_t sign_fair_next(struct sign_fair *f, struct conn *conns, uint32_t *ret_u);
/* The turn of entry u ended; c (or NULL) still has work. */
void sign_fair_turn_end(struct sign_fair *f, struct conn *conns, uint32_t u, struct conn *c);
/* A bad line of entry u; whether u has a token left. */
void sign_fair_bad(struct sign_fair *f, uint32_t u);
int sign_fair_may(struct sign_fair *f, uint32_t u);
/* Parked uids with a token again go back to the ring; the milliseconds until
 * the next one will (-1: none parked). */
int sign_fair_wake(struct sign_fair *f);
/* Forgets uids without connections that owe nothing (once a second). */
void sign_fair_sweep(struct sign_fair *f);
/* Whether an answer of e is a bad line (above). */
int sign_bad_line(enum proto_err e);

/* ---- sign_refuse.c (io thread) ---- */

int sign_refuse_init(struct signer *s);
void sign_refuse_free(struct signer *s);
/* One forbidden request of uid (pid) for client ("": none named).  1 when
 * it is the first of its key: journal it now (sign_refuse_job); 0 when it was
 * counted. */
int sign_refuse_note(struct signer *s, uid_t uid, pid_t pid, const char *client, enum proto_err e);
/* A refusal record's job, to nobody (slot SIGN_NONE). */
struct job *sign_refuse_job(uid_t uid, pid_t pid, const char *client, enum proto_err e,
			    uint64_t count, int64_t first, int64_t last);
/* Journals what was counted (every SIGN_REFUSE_INTERVAL, and at the end)
 * and forgets the keys that were quiet for an interval. */
void sign_refuse_flush(struct signer *s);

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
