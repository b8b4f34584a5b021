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
 *   backend  one per configured key store (a serial device): signs jobs in
 *            order.  When the hardware fails, every job queued before the
 *            failure is answered at once rather than waiting its own deadline,
 *            so backend_unavailable comes within one key store deadline.
 *   journal  group commit: what the backends signed since the last commit is
 *            journaled in one transaction; answers leave only after COMMIT
 *            (synchronous = FULL), so no workload holds an assertion the
 *            journal lacks.  The key's state is read again inside that
 *            transaction: an assertion whose key was revoked or retired while
 *            it was being signed is never handed out.
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
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "service.h"

enum serr {
	SE_OK,
	SE_BAD_REQUEST,
	SE_TOO_LARGE,
	SE_FORBIDDEN,
	SE_UNKNOWN_CLIENT,
	SE_AUDIENCE,
	SE_NO_ACTIVE_KEY,
	SE_UNAVAILABLE,
	SE_RATE_LIMITED,
	SE_INTERNAL,
	SE_NOT_FOUND,
	SE_NOT_CHECKPOINTED,
	SE_N
};

/* The protocol's error names (docs/protocol.md), also the metric's labels. */
static const char *const serr_name[SE_N] = {
    [SE_OK] = "ok",
    [SE_BAD_REQUEST] = "bad_request",
    [SE_TOO_LARGE] = "too_large",
    [SE_FORBIDDEN] = "forbidden",
    [SE_UNKNOWN_CLIENT] = "unknown_client",
    [SE_AUDIENCE] = "audience_not_allowed",
    [SE_NO_ACTIVE_KEY] = "no_active_key",
    [SE_UNAVAILABLE] = "backend_unavailable",
    [SE_RATE_LIMITED] = "rate_limited",
    [SE_INTERNAL] = "internal",
    [SE_NOT_FOUND] = "not_found",
    [SE_NOT_CHECKPOINTED] = "not_checkpointed",
};

/* One client's policy as the io thread caches it; shared with the jobs that
 * name it, freed with the last reference. */
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

struct job {
	struct job *next;
	uint32_t slot, gen; /* the connection that asked */
	struct policy *pol; /* a reference */
	enum serr err;
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

/* Per-client counters and rate bucket; the table lives as long as the signer. */
struct stat_ent {
	char name[CIMD_NAME_MAX + 1];
	uint64_t n[SE_N];
	double tokens;
	struct timespec last;
};
#define STATS_CAP 16384 /* > CIMD_CLIENTS_MAX, a power of two */

struct conn {
	int fd;
	uint32_t gen;
	struct ucred cred;
	char *in;
	size_t in_len;
	char *out;
	size_t out_len, out_off;
	int busy;    /* a job is in flight */
	int closing; /* close once out is written */
	uint32_t events;
	time_t last, line_start;
};

struct uid_count {
	uid_t uid;
	unsigned n;
};

#define CACHE_CAP 16384 /* > CIMD_CLIENTS_MAX, a power of two */
#define INVAL_MAX 4096	/* client invalidations held before the whole cache is dropped */
#define TAG_LISTEN UINT64_MAX
#define TAG_DONE (UINT64_MAX - 1)

struct backend_worker {
	struct signer *s;
	size_t idx;
	pthread_t thread;
	int started;
	struct queue q;
};

struct signer {
	struct cimdd *d;
	char *path;
	int lfd, epfd, donefd;
	int stop;
	/* settings the main thread changes (signer_configure), read atomically */
	long default_ttl, max_ttl, rate;
	unsigned long generation; /* bumped by signer_invalidate */
	unsigned long cached_generation;

	/* io thread only */
	pthread_t io;
	struct conn *conns;
	uint32_t *free_slots;
	size_t n_free, n_conns;
	struct uid_count *uids; /* sorted by uid */
	size_t n_uids;
	struct policy **cache; /* open addressing by name */
	size_t n_cached;
	struct store *reader;
	char prefix[CIMD_URL_MAX]; /* base_url "/clients/" */
	size_t prefix_len;

	struct backend_worker workers[CIMD_BACKENDS_MAX];
	size_t n_workers;

	pthread_t journal;
	struct store *writer;
	struct queue jq;

	struct queue done;

	/* nothing is published: every key counts (signer_publish_nothing) */
	int all_published;
	/* clients whose cached policy the io thread drops at its next look
	 * (signer_invalidate_client); more than INVAL_MAX at once: all of them */
	pthread_mutex_t inval_mu;
	char (*inval)[CIMD_NAME_MAX + 1];
	size_t n_inval;
	int inval_pending;

	pthread_mutex_t stats_mu;
	struct stat_ent *stats;
	uint64_t unknown[SE_N]; /* requests naming no known client */
	uint64_t backend_errors;
	uint64_t total; /* every answer, for "did the counters move" */
	int io_started, journal_started;
};

/* ---- small helpers ---- */

static void queue_init(struct queue *q)
{
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	q->head = NULL;
	q->tail = &q->head;
	q->n = 0;
}

static void queue_push(struct queue *q, struct job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&q->mu);
	*q->tail = j;
	q->tail = &j->next;
	q->n++;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

/* Takes up to max jobs, waiting for one unless stop is set. */
static struct job *queue_take(struct queue *q, size_t max, const int *stop)
{
	struct job *head, **p;
	size_t n;

	pthread_mutex_lock(&q->mu);
	while (q->head == NULL && !__atomic_load_n(stop, __ATOMIC_ACQUIRE))
		pthread_cond_wait(&q->cv, &q->mu);
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

static void queue_wake(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

static void policy_unref(struct policy *p)
{
	size_t i;

	if (p == NULL || __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	for (i = 0; i < p->n_auds; i++)
		free(p->auds[i]);
	free(p->ref);
	free(p->header);
	ks_key_free(&p->key);
	free(p);
}

static void job_free(struct job *j)
{
	if (j == NULL)
		return;
	policy_unref(j->pol);
	free(j->jws);
	free(j);
}

static uint64_t hash_name(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ULL;
	return h;
}

static long elapsed_ns(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1000000000L + (b->tv_nsec - a->tv_nsec);
}

/* JSON string contents: quote, backslash and control characters escaped; the
 * rest (already valid UTF-8) copied.  Returns the length written, or -1 when it
 * would not fit. */
static int json_escape(const char *s, char *out, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (o + 7 > cap)
			return -1;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20) {
			memcpy(out + o, "\\u00", 4);
			out[o + 4] = hex[c >> 4];
			out[o + 5] = hex[c & 15];
			o += 6;
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = '\0';
	return (int)o;
}

/* ---- statistics and rate limits ---- */

static struct stat_ent *stat_get(struct signer *s, const char *name)
{
	size_t i = (size_t)hash_name(name) & (STATS_CAP - 1), k;

	for (k = 0; k < STATS_CAP; k++, i = (i + 1) & (STATS_CAP - 1)) {
		if (s->stats[i].name[0] == '\0') {
			snprintf(s->stats[i].name, sizeof(s->stats[i].name), "%s", name);
			return &s->stats[i];
		}
		if (strcmp(s->stats[i].name, name) == 0)
			return &s->stats[i];
	}
	return NULL;
}

static void count(struct signer *s, const char *client, enum serr e)
{
	struct stat_ent *st;

	pthread_mutex_lock(&s->stats_mu);
	if (client != NULL && (st = stat_get(s, client)) != NULL)
		st->n[e]++;
	else
		s->unknown[e]++;
	if (e == SE_UNAVAILABLE)
		s->backend_errors++;
	s->total++;
	pthread_mutex_unlock(&s->stats_mu);
}

/* Token bucket of rate per second, holding at most one second's worth. */
static int rate_allow(struct signer *s, const char *client, long rate)
{
	struct timespec now;
	struct stat_ent *st;
	int ok = 1;

	if (rate <= 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&s->stats_mu);
	if ((st = stat_get(s, client)) != NULL) {
		if (st->last.tv_sec == 0)
			st->tokens = (double)rate;
		else
			st->tokens += (double)rate * (double)elapsed_ns(&st->last, &now) / 1e9;
		if (st->tokens > (double)rate)
			st->tokens = (double)rate;
		st->last = now;
		if (st->tokens >= 1.0)
			st->tokens -= 1.0;
		else
			ok = 0;
	}
	pthread_mutex_unlock(&s->stats_mu);
	return ok;
}

/* ---- the policy cache (io thread) ---- */

static void cache_flush(struct signer *s)
{
	size_t i;

	for (i = 0; i < CACHE_CAP && s->n_cached > 0; i++)
		if (s->cache[i] != NULL) {
			policy_unref(s->cache[i]);
			s->cache[i] = NULL;
			s->n_cached--;
		}
}

/* Reads one client's policy from the database.  -ENOENT: no such client. */
static int policy_load(struct signer *s, const char *name, struct policy **ret)
{
	const struct cimd_config *cfg = s->d->cfg;
	struct policy *p;
	sqlite3_stmt *q = NULL;
	json_t *hdr = NULL;
	char *hj = NULL;
	const char *backend;
	size_t i;
	int rc, r = -EIO;

	if ((p = calloc(1, sizeof(*p))) == NULL)
		return -ENOMEM;
	p->refs = 1;
	snprintf(p->name, sizeof(p->name), "%s", name);
	if (store_query(s->reader, &q,
			"SELECT backend, assertion_ttl, rate_limit FROM clients WHERE name = ?",
			"s", name) < 0)
		goto out;
	if ((rc = sqlite3_step(q)) == SQLITE_DONE) {
		r = -ENOENT;
		goto out;
	}
	if (rc != SQLITE_ROW)
		goto out;
	backend = (const char *)sqlite3_column_text(q, 0);
	for (i = 0; i < cfg->n_backends; i++)
		if (backend != NULL && strcmp(cfg->backends[i].name, backend) == 0)
			break;
	p->backend = i; /* n_backends: a backend no longer configured */
	p->ttl = sqlite3_column_type(q, 1) == SQLITE_NULL ? 0 : sqlite3_column_int64(q, 1);
	p->rate = sqlite3_column_type(q, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(q, 2);
	store_done(s->reader, q);
	q = NULL;

	if (store_query(s->reader, &q, "SELECT kind, id FROM client_callers WHERE client = ?", "s",
			name) < 0)
		goto out;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const char *kind = (const char *)sqlite3_column_text(q, 0);
		int64_t id = sqlite3_column_int64(q, 1);

		if (kind != NULL && strcmp(kind, "uid") == 0 && p->n_uids < CIMD_CALLERS_MAX)
			p->uids[p->n_uids++] = (uid_t)id;
		else if (kind != NULL && strcmp(kind, "gid") == 0 && p->n_gids < CIMD_CALLERS_MAX)
			p->gids[p->n_gids++] = (gid_t)id;
	}
	if (rc != SQLITE_DONE)
		goto out;
	store_done(s->reader, q);
	q = NULL;

	if (store_query(s->reader, &q, "SELECT aud FROM client_audiences WHERE client = ?", "s",
			name) < 0)
		goto out;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW && p->n_auds < CIMD_AUDIENCES_MAX) {
		if ((p->auds[p->n_auds] = strdup((const char *)sqlite3_column_text(q, 0))) ==
		    NULL) {
			r = -ENOMEM;
			goto out;
		}
		p->n_auds++;
	}
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		goto out;
	store_done(s->reader, q);
	q = NULL;

	if (store_query(s->reader, &q,
			"SELECT kid, alg, ref, published FROM keys WHERE client = ? AND state = "
			"'active'",
			"s", name) < 0)
		goto out;
	if ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const char *kid = (const char *)sqlite3_column_text(q, 0);
		int n = sqlite3_column_bytes(q, 2);

		p->alg = cimd_alg_from_name((const char *)sqlite3_column_text(q, 1));
		if (kid == NULL || strlen(kid) != CIMD_KID_LEN || p->alg == CIMD_ALG_NONE ||
		    n <= 0 || (p->ref = malloc((size_t)n)) == NULL)
			goto out;
		memcpy(p->kid, kid, CIMD_KID_LEN + 1);
		memcpy(p->ref, sqlite3_column_blob(q, 2), (size_t)n);
		p->ref_len = (size_t)n;
		p->published = sqlite3_column_type(q, 3) != SQLITE_NULL;
		/* RFC 7523 §3 and draft-ietf-oauth-rfc7523bis: typ names the use. */
		hdr = json_pack("{ssssss}", "alg", cimd_alg_name(p->alg), "kid", p->kid, "typ",
				"client-authentication+jwt");
		if (hdr == NULL || (hj = json_dumps(hdr, JSON_COMPACT)) == NULL ||
		    b64url_encode_alloc((const uint8_t *)hj, strlen(hj), &p->header) < 0) {
			r = -ENOMEM;
			goto out;
		}
		p->has_key = 1;
	} else if (rc != SQLITE_DONE) {
		goto out;
	}
	*ret = p;
	p = NULL;
	r = 0;
out:
	store_done(s->reader, q);
	json_decref(hdr);
	free(hj);
	policy_unref(p);
	return r;
}

void signer_publish_nothing(struct signer *s)
{
	if (s != NULL)
		__atomic_store_n(&s->all_published, 1, __ATOMIC_RELEASE);
}

void signer_invalidate_client(struct signer *s, const char *name)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->inval_mu);
	if (s->n_inval < INVAL_MAX)
		snprintf(s->inval[s->n_inval], sizeof(s->inval[0]), "%s", name);
	s->n_inval++;
	__atomic_store_n(&s->inval_pending, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->inval_mu);
}

/* Removes name's policy from the cache (linear probing: the entries after
 * it shift back, so that every lookup still ends at the first empty slot). */
static void cache_drop(struct signer *s, const char *name)
{
	size_t i = (size_t)hash_name(name) & (CACHE_CAP - 1), j, k, n;

	for (n = 0; n < CACHE_CAP && s->cache[i] != NULL; n++, i = (i + 1) & (CACHE_CAP - 1))
		if (strcmp(s->cache[i]->name, name) == 0)
			break;
	if (n == CACHE_CAP || s->cache[i] == NULL)
		return;
	policy_unref(s->cache[i]);
	s->cache[i] = NULL;
	s->n_cached--;
	for (j = (i + 1) & (CACHE_CAP - 1); s->cache[j] != NULL; j = (j + 1) & (CACHE_CAP - 1)) {
		k = (size_t)hash_name(s->cache[j]->name) & (CACHE_CAP - 1);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		s->cache[i] = s->cache[j];
		s->cache[j] = NULL;
		i = j;
	}
}

/* The io thread takes the names invalidated since it last looked. */
static void cache_follow(struct signer *s)
{
	size_t i, n;

	if (!__atomic_load_n(&s->inval_pending, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&s->inval_mu);
	n = s->n_inval;
	if (n > INVAL_MAX)
		cache_flush(s);
	else
		for (i = 0; i < n; i++)
			cache_drop(s, s->inval[i]);
	s->n_inval = 0;
	__atomic_store_n(&s->inval_pending, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->inval_mu);
}

/* The cached policy of name, loaded on a miss; a new reference. */
static int policy_get(struct signer *s, const char *name, struct policy **ret)
{
	unsigned long g = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
	size_t i, k;
	struct policy *p;
	int r;

	if (g != s->cached_generation) {
		cache_flush(s);
		s->cached_generation = g;
	}
	cache_follow(s);
	i = (size_t)hash_name(name) & (CACHE_CAP - 1);
	for (k = 0; k < CACHE_CAP && s->cache[i] != NULL; k++, i = (i + 1) & (CACHE_CAP - 1))
		if (strcmp(s->cache[i]->name, name) == 0) {
			__atomic_add_fetch(&s->cache[i]->refs, 1, __ATOMIC_RELAXED);
			*ret = s->cache[i];
			return 0;
		}
	if ((r = policy_load(s, name, &p)) < 0)
		return r;
	if (s->n_cached < CIMD_CLIENTS_MAX && s->cache[i] == NULL) {
		__atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
		s->cache[i] = p;
		s->n_cached++;
	}
	*ret = p;
	return 0;
}

/* ---- connections (io thread) ---- */

static int uid_find(struct signer *s, uid_t uid, size_t *ret_pos)
{
	size_t lo = 0, hi = s->n_uids;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (s->uids[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	*ret_pos = lo;
	return lo < s->n_uids && s->uids[lo].uid == uid;
}

/* Counts a connection of uid; 0 when that uid is at its cap. */
static int uid_take(struct signer *s, uid_t uid)
{
	size_t pos;

	if (uid_find(s, uid, &pos)) {
		if (s->uids[pos].n >= CIMD_SIGN_CONNS_PER_UID)
			return 0;
		s->uids[pos].n++;
		return 1;
	}
	memmove(&s->uids[pos + 1], &s->uids[pos], (s->n_uids - pos) * sizeof(s->uids[0]));
	s->uids[pos] = (struct uid_count){uid, 1};
	s->n_uids++;
	return 1;
}

static void uid_release(struct signer *s, uid_t uid)
{
	size_t pos;

	if (!uid_find(s, uid, &pos))
		return;
	if (--s->uids[pos].n == 0) {
		memmove(&s->uids[pos], &s->uids[pos + 1],
			(s->n_uids - pos - 1) * sizeof(s->uids[0]));
		s->n_uids--;
	}
}

static void conn_close(struct signer *s, struct conn *c)
{
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->gen++; /* a job still in flight for it is answered to no one */
	free(c->in);
	free(c->out);
	c->in = c->out = NULL;
	c->in_len = c->out_len = c->out_off = 0;
	c->busy = c->closing = 0;
	uid_release(s, c->cred.uid);
	s->free_slots[s->n_free++] = (uint32_t)(c - s->conns);
	s->n_conns--;
}

static void conn_want(struct signer *s, struct conn *c, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(c - s->conns)};

	if (c->events != events && epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->events = events;
}

/* Queues text for the peer. */
static int conn_send(struct conn *c, const char *text, size_t n)
{
	char *o;

	if ((o = realloc(c->out, c->out_len + n)) == NULL)
		return -ENOMEM;
	memcpy(o + c->out_len, text, n);
	c->out = o;
	c->out_len += n;
	return 0;
}

static void conn_error(struct conn *c, enum serr e, const char *msg)
{
	char esc[1100], line[1200];
	int n;

	if (json_escape(msg, esc, sizeof(esc)) < 0)
		snprintf(esc, sizeof(esc), "%s", serr_name[e]);
	n = snprintf(line, sizeof(line), "{\"ok\":false,\"error\":\"%s\",\"message\":\"%s\"}\n",
		     serr_name[e], esc);
	if (n > 0 && (size_t)n < sizeof(line))
		conn_send(c, line, (size_t)n);
}

static void conn_work(struct signer *s, struct conn *c);

/* The name of a client_id of this appliance, or NULL. */
static const char *client_name(struct signer *s, const char *client_id)
{
	const char *name;

	if (strncmp(client_id, s->prefix, s->prefix_len) != 0)
		return NULL;
	name = client_id + s->prefix_len;
	return cimd_valid_name(name) ? name : NULL;
}

static int caller_allowed(const struct conn *c, const struct policy *p)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	size_t i, j, n;

	for (i = 0; i < p->n_uids; i++)
		if (p->uids[i] == c->cred.uid)
			return 1;
	if (p->n_gids == 0)
		return 0;
	for (i = 0; i < p->n_gids; i++)
		if (p->gids[i] == c->cred.gid)
			return 1;
	/* Supplementary groups, as the kernel recorded them at connect(2). */
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return 0;
	n = len / sizeof(gid_t);
	for (i = 0; i < n; i++)
		for (j = 0; j < p->n_gids; j++)
			if (groups[i] == p->gids[j])
				return 1;
	return 0;
}

/* Builds header.claims for an allowed request (RFC 7523 §3). */
static int build_claims(struct job *j, const char *client_id)
{
	char cid[CIMD_URL_MAX * 2], aud[CIMD_URL_MAX * 2 + 8], claims[4 * CIMD_URL_MAX + 256];
	uint8_t rnd[16];
	size_t hl = strlen(j->pol->header), cl;
	int n;

	/* RFC 7519 §4.1.7: jti unique; 128 bits from the OS CSPRNG. */
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		return -EIO;
	b64url_encode(rnd, sizeof(rnd), j->jti);
	if (json_escape(client_id, cid, sizeof(cid)) < 0 ||
	    json_escape(j->aud, aud, sizeof(aud)) < 0)
		return -E2BIG;
	n = snprintf(claims, sizeof(claims),
		     "{\"iss\":\"%s\",\"sub\":\"%s\",\"aud\":\"%s\",\"iat\":%lld,\"nbf\":%lld,"
		     "\"exp\":%lld,\"jti\":\"%s\"}",
		     cid, cid, aud, (long long)j->iat, (long long)j->iat, (long long)j->exp,
		     j->jti);
	if (n < 0 || (size_t)n >= sizeof(claims))
		return -E2BIG;
	cl = b64url_encoded_len((size_t)n);
	/* header '.' claims, then room for '.' and the signature (journal thread). */
	if ((j->jws = malloc(hl + 1 + cl + 1 + b64url_encoded_len(CIMD_SIG_MAX) + 1)) == NULL)
		return -ENOMEM;
	memcpy(j->jws, j->pol->header, hl);
	j->jws[hl] = '.';
	b64url_encode((const uint8_t *)claims, (size_t)n, j->jws + hl + 1);
	j->jws_len = hl + 1 + cl;
	return 0;
}

/*
 * {"op":"receipt","jti"}: the journal record of an assertion this uid was
 * issued, its inclusion proof and the checkpoint it is proved against
 * (tlog.c, docs/audit.md).  Answered here: a lookup by an index and a proof
 * from the tree in memory.  Another uid's jti is "not_found", like an unknown
 * one: a receipt does not tell who else was issued what.
 */
static void receipt(struct signer *s, struct conn *c, const char *jti)
{
	sqlite3_stmt *q = NULL;
	json_t *o = NULL, *ans;
	char msg[256], *text;
	int64_t seq = 0, uid = -1;
	int r;

	if (store_query(s->reader, &q,
			"SELECT seq, json_extract(CAST(record AS TEXT), '$.uid') FROM journal "
			"WHERE jti = ?",
			"s", jti) < 0) {
		conn_error(c, SE_INTERNAL, "database error");
		return;
	}
	if (sqlite3_step(q) == SQLITE_ROW) {
		seq = sqlite3_column_int64(q, 0);
		uid = sqlite3_column_type(q, 1) == SQLITE_INTEGER ? sqlite3_column_int64(q, 1) : -1;
	}
	store_done(s->reader, q);
	if (seq == 0 || uid != (int64_t)c->cred.uid) {
		snprintf(msg, sizeof(msg), "no assertion %.64s was issued to uid %u", jti,
			 (unsigned)c->cred.uid);
		conn_error(c, SE_NOT_FOUND, msg);
		return;
	}
	if ((r = tlog_inclusion(s->d->tlog, s->reader, seq, &o)) == -EAGAIN) {
		snprintf(msg, sizeof(msg),
			 "journal record %lld is not under a checkpoint yet; ask again within "
			 "checkpoint_interval",
			 (long long)seq);
		conn_error(c, SE_NOT_CHECKPOINTED, msg);
		return;
	}
	if (r < 0 || (ans = json_pack("{sbso}", "ok", 1, "receipt", o)) == NULL) {
		json_decref(o);
		conn_error(c, SE_INTERNAL, "could not build the receipt");
		return;
	}
	if ((text = json_dumps(ans, JSON_COMPACT)) == NULL ||
	    conn_send(c, text, strlen(text)) < 0 || conn_send(c, "\n", 1) < 0)
		conn_error(c, SE_INTERNAL, "out of memory");
	free(text);
	json_decref(ans);
}

/*
 * One request line.  Either answers at once (into c->out) or hands a job on and
 * marks the connection busy.
 */
static void handle_line(struct signer *s, struct conn *c, const char *line, size_t len)
{
	struct sign_request rq = {0};
	const char *client_id, *aud, *name = NULL;
	struct policy *p = NULL;
	struct job *j = NULL;
	enum serr e = SE_BAD_REQUEST;
	char msg[512];
	long ttl, max_ttl;
	size_t i;
	int r;

	max_ttl = __atomic_load_n(&s->max_ttl, __ATOMIC_RELAXED);
	if (sign_request_parse(line, len, max_ttl, &rq, msg, sizeof(msg)) < 0)
		goto refuse;
	if (rq.op == SIGN_OP_RECEIPT) {
		receipt(s, c, rq.jti);
		goto out;
	}
	client_id = rq.client_id;
	aud = rq.aud;
	ttl = rq.ttl;
	e = SE_UNKNOWN_CLIENT;
	if ((name = client_name(s, client_id)) == NULL) {
		snprintf(msg, sizeof(msg), "%.300s is not a client of this appliance", client_id);
		goto refuse;
	}
	if ((r = policy_get(s, name, &p)) < 0) {
		if (r != -ENOENT)
			e = SE_INTERNAL;
		snprintf(msg, sizeof(msg), r == -ENOENT ? "no client %s" : "database error", name);
		name = NULL;
		goto refuse;
	}
	if ((j = calloc(1, sizeof(*j))) == NULL) {
		e = SE_INTERNAL;
		snprintf(msg, sizeof(msg), "out of memory");
		goto refuse;
	}
	j->slot = (uint32_t)(c - s->conns);
	j->gen = c->gen;
	j->uid = c->cred.uid;
	j->pid = c->cred.pid;
	j->pol = p;
	p = NULL;
	clock_gettime(CLOCK_MONOTONIC, &j->queued);
	if (!caller_allowed(c, j->pol)) {
		/* Journaled with the caller's uid and pid, then answered. */
		j->refusal = 1;
		j->err = SE_FORBIDDEN;
		snprintf(j->msg, sizeof(j->msg), "uid %u may not sign for %.300s",
			 (unsigned)c->cred.uid, client_id);
		c->busy = 1;
		queue_push(&s->jq, j);
		goto out;
	}
	for (i = 0; i < j->pol->n_auds; i++)
		if (strcmp(j->pol->auds[i], aud) == 0)
			break;
	if (i == j->pol->n_auds) {
		e = SE_AUDIENCE;
		snprintf(msg, sizeof(msg), "%.300s is not an audience of %s", aud, name);
		goto refuse;
	}
	j->aud = j->pol->auds[i];
	if (!j->pol->has_key) {
		e = SE_NO_ACTIVE_KEY;
		snprintf(msg, sizeof(msg), "%s has no active key", name);
		goto refuse;
	}
	/* A key activated at once (a revocation's replacement) signs only once
	 * the JWKS that carries it has reached the publisher. */
	if (!j->pol->published && !__atomic_load_n(&s->all_published, __ATOMIC_ACQUIRE)) {
		e = SE_NO_ACTIVE_KEY;
		snprintf(msg, sizeof(msg),
			 "%s: its new key %s is not published yet; ask again in a moment", name,
			 j->pol->kid);
		goto refuse;
	}
	if (j->pol->backend >= s->n_workers) {
		e = SE_UNAVAILABLE;
		snprintf(msg, sizeof(msg), "%s: its backend is not configured", name);
		goto refuse;
	}
	if (!rate_allow(s, name,
			j->pol->rate >= 0 ? j->pol->rate
					  : __atomic_load_n(&s->rate, __ATOMIC_RELAXED))) {
		e = SE_RATE_LIMITED;
		snprintf(msg, sizeof(msg), "%s: over its rate limit", name);
		goto refuse;
	}
	if (ttl == 0)
		ttl = j->pol->ttl > 0 ? j->pol->ttl
				      : __atomic_load_n(&s->default_ttl, __ATOMIC_RELAXED);
	if (ttl > max_ttl)
		ttl = max_ttl; /* a client policy set before the cap was lowered */
	j->iat = (int64_t)time(NULL);
	j->exp = j->iat + ttl;
	if (build_claims(j, client_id) < 0) {
		e = SE_INTERNAL;
		snprintf(msg, sizeof(msg), "could not build the assertion");
		goto refuse;
	}
	c->busy = 1;
	queue_push(&s->workers[j->pol->backend].q, j);
	goto out;
refuse:
	count(s, name, e);
	conn_error(c, e, msg);
	job_free(j);
out:
	policy_unref(p);
	sign_request_clear(&rq);
}

/* Writes what is queued; -1 when the connection is gone. */
static int conn_flush(struct conn *c)
{
	ssize_t n;

	while (c->out_off < c->out_len) {
		n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n <= 0)
			return -1;
		c->out_off += (size_t)n;
	}
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = 0;
	return 0;
}

/* Reads and handles lines until the connection must wait: for a job, for the
 * peer to read, or for more input. */
static void conn_work(struct signer *s, struct conn *c)
{
	time_t now = time(NULL);
	char *nl;
	ssize_t n;

	for (;;) {
		if (conn_flush(c) < 0) {
			conn_close(s, c);
			return;
		}
		if (c->out_len > 0) {
			conn_want(s, c, EPOLLOUT);
			return;
		}
		if (c->closing) {
			conn_close(s, c);
			return;
		}
		if (c->busy) {
			conn_want(s, c, 0);
			return;
		}
		if (c->in_len > 0 && (nl = memchr(c->in, '\n', c->in_len)) != NULL) {
			size_t len = (size_t)(nl - c->in);

			c->last = now;
			handle_line(s, c, c->in, len);
			memmove(c->in, nl + 1, c->in_len - len - 1);
			c->in_len -= len + 1;
			c->line_start = c->in_len > 0 ? now : 0;
			continue;
		}
		if (c->in_len > CIMD_SIGN_LINE_MAX) {
			char msg[64];

			snprintf(msg, sizeof(msg), "a request line is at most %d bytes",
				 CIMD_SIGN_LINE_MAX);
			count(s, NULL, SE_TOO_LARGE);
			conn_error(c, SE_TOO_LARGE, msg);
			c->closing = 1;
			continue;
		}
		if (c->in == NULL && (c->in = malloc(CIMD_SIGN_LINE_MAX + 1)) == NULL) {
			conn_close(s, c);
			return;
		}
		n = read(c->fd, c->in + c->in_len, CIMD_SIGN_LINE_MAX + 1 - c->in_len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			conn_want(s, c, EPOLLIN);
			return;
		}
		if (n <= 0) {
			conn_close(s, c);
			return;
		}
		if (c->in_len == 0)
			c->line_start = now;
		c->in_len += (size_t)n;
		c->last = now;
	}
}

static void accept_all(struct signer *s)
{
	struct epoll_event ev;
	socklen_t len;
	struct conn *c;
	struct ucred cred;
	int fd, k;

	for (k = 0; k < 256; k++) {
		fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		len = sizeof(cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || s->n_free == 0 ||
		    !uid_take(s, cred.uid)) {
			close(fd); /* full: the peer sees the connection end */
			continue;
		}
		c = &s->conns[s->free_slots[--s->n_free]];
		c->fd = fd;
		c->cred = cred;
		c->last = time(NULL);
		c->line_start = 0;
		c->events = EPOLLIN;
		ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = (uint64_t)(c - s->conns)};
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			uid_release(s, cred.uid);
			close(fd);
			c->fd = -1;
			s->free_slots[s->n_free++] = (uint32_t)(c - s->conns);
			continue;
		}
		s->n_conns++;
	}
}

/* Answers that the journal thread (or a backend) finished. */
static void deliver(struct signer *s)
{
	struct job *j, *next;
	struct conn *c;
	uint64_t v;
	char *line;
	size_t n;

	if (read(s->donefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&s->done.mu);
	j = s->done.head;
	s->done.head = NULL;
	s->done.tail = &s->done.head;
	s->done.n = 0;
	pthread_mutex_unlock(&s->done.mu);
	for (; j != NULL; j = next) {
		next = j->next;
		count(s, j->pol ? j->pol->name : NULL, j->err);
		c = &s->conns[j->slot];
		if (c->fd < 0 || c->gen != j->gen) {
			job_free(j);
			continue;
		}
		c->busy = 0;
		if (j->err != SE_OK) {
			conn_error(c, j->err, j->msg);
		} else {
			n = j->jws_len + 200;
			if ((line = malloc(n)) != NULL) {
				int w = snprintf(line, n,
						 "{\"ok\":true,\"assertion\":\"%s\",\"kid\":\"%s\","
						 "\"jti\":\"%s\",\"exp\":%lld}\n",
						 j->jws, j->pol->kid, j->jti, (long long)j->exp);
				if (w > 0 && (size_t)w < n)
					conn_send(c, line, (size_t)w);
				free(line);
			}
		}
		job_free(j);
		conn_work(s, c);
	}
}

static void expire(struct signer *s, time_t now)
{
	size_t i;

	for (i = 0; i < CIMD_SIGN_CONNS_MAX; i++) {
		struct conn *c = &s->conns[i];

		if (c->fd < 0 || c->busy)
			continue;
		if ((c->line_start != 0 && now - c->line_start > CIMD_SIGN_LINE_SEC) ||
		    now - c->last > CIMD_SIGN_IDLE_SEC)
			conn_close(s, c);
	}
}

static void *io_main(void *arg)
{
	struct signer *s = arg;
	struct epoll_event evs[64];
	time_t last_expire = time(NULL);
	int i, n;

	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		n = epoll_wait(s->epfd, evs, 64, 1000);
		for (i = 0; i < n; i++) {
			if (evs[i].data.u64 == TAG_LISTEN)
				accept_all(s);
			else if (evs[i].data.u64 == TAG_DONE)
				deliver(s);
			else if (s->conns[evs[i].data.u64].fd < 0)
				continue;
			else if (s->conns[evs[i].data.u64].busy &&
				 (evs[i].events & (EPOLLHUP | EPOLLERR)))
				/* Gone while its job runs: nothing to answer to. */
				conn_close(s, &s->conns[evs[i].data.u64]);
			else
				conn_work(s, &s->conns[evs[i].data.u64]);
		}
		if (time(NULL) != last_expire) {
			last_expire = time(NULL);
			expire(s, last_expire);
		}
	}
	return NULL;
}

/* ---- backend threads ---- */

static void done_push(struct signer *s, struct job *j)
{
	uint64_t one = 1;

	queue_push(&s->done, j);
	if (write(s->donefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_err("sign socket: eventfd: %s", strerror(errno));
}

/* Answers j with the failure r of its backend. */
static void backend_fail(struct signer *s, struct backend_worker *w, struct job *j, int r,
			 const char *detail)
{
	/* A key the database holds that the hardware does not is a hardware
	 * fault (a token away, a module gone stale): the caller may try again. */
	j->err = r == -CIMD_EUNAVAILABLE || r == -CIMD_ENOKEY ? SE_UNAVAILABLE : SE_INTERNAL;
	snprintf(j->msg, sizeof(j->msg), "backend %s: %s", s->d->cfg->backends[w->idx].name,
		 cimd_strerror(r));
	log_err("sign socket: %s, key %s: %s (%s)", j->pol->name, j->pol->kid, cimd_strerror(r),
		detail);
	done_push(s, j);
}

static void *backend_main(void *arg)
{
	struct backend_worker *w = arg;
	struct signer *s = w->s;
	struct timespec failed_at = {0, 0};
	struct ks_sign_req *reqs;
	struct job *ready[CIMD_SIGN_BATCH], *j, *next;
	struct key_store *ks;
	size_t n, i;
	int r;

	if ((reqs = calloc(CIMD_SIGN_BATCH, sizeof(*reqs))) == NULL) {
		log_err("sign socket: out of memory");
		return NULL;
	}
	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		/* What is queued, up to a batch: one handoff to the hardware. */
		j = queue_take(&w->q, CIMD_SIGN_BATCH, &s->stop);
		ks = custody_at(s->d->custody, w->idx);
		for (n = 0; j != NULL; j = next) {
			next = j->next;
			if (ks == NULL || elapsed_ns(&j->queued, &failed_at) >= 0) {
				/* Not open, or failed after this job was queued: answer
				 * now rather than wait another deadline. */
				j->err = SE_UNAVAILABLE;
				snprintf(j->msg, sizeof(j->msg), "backend %s is unavailable",
					 s->d->cfg->backends[w->idx].name);
				done_push(s, j);
				continue;
			}
			if (j->pol->key == NULL &&
			    (r = key_store_load(ks, j->pol->alg, j->pol->ref, j->pol->ref_len,
						&j->pol->key)) < 0) {
				if (r == -CIMD_EUNAVAILABLE)
					clock_gettime(CLOCK_MONOTONIC, &failed_at);
				backend_fail(s, w, j, r, key_store_errmsg(ks));
				continue;
			}
			reqs[n] = (struct ks_sign_req){
			    .key = j->pol->key, .msg = (const uint8_t *)j->jws, .len = j->jws_len};
			ready[n++] = j;
		}
		if (n == 0)
			continue;
		if ((r = key_store_sign_batch(ks, reqs, n)) < 0) {
			if (r == -CIMD_EUNAVAILABLE)
				clock_gettime(CLOCK_MONOTONIC, &failed_at);
			for (i = 0; i < n; i++)
				backend_fail(s, w, ready[i], r, key_store_errmsg(ks));
			continue;
		}
		for (i = 0; i < n; i++) {
			j = ready[i];
			if (reqs[i].r < 0) {
				backend_fail(s, w, j, reqs[i].r, "in a batch");
				continue;
			}
			j->jws[j->jws_len++] = '.';
			b64url_encode(reqs[i].sig, reqs[i].sig_len, j->jws + j->jws_len);
			j->jws_len += b64url_encoded_len(reqs[i].sig_len);
			queue_push(&s->jq, j);
		}
	}
	free(reqs);
	return NULL;
}

/* ---- the journal thread ---- */

/* Whether kid may still sign: active, or retiring (already published to every
 * verifier that honours caching; retired and revoked keys never). */
static int key_signs(struct store *st, const char *kid)
{
	sqlite3_stmt *q = NULL;
	int ok = 0;

	if (store_query(st, &q, "SELECT state FROM keys WHERE kid = ?", "s", kid) == 0 &&
	    sqlite3_step(q) == SQLITE_ROW) {
		const char *state = (const char *)sqlite3_column_text(q, 0);
		ok = state != NULL &&
		     (strcmp(state, "active") == 0 || strcmp(state, "retiring") == 0);
	}
	store_done(st, q);
	return ok;
}

static int journal_job(struct store *st, struct job *j)
{
	char actor[32];
	json_t *f;
	int r;

	snprintf(actor, sizeof(actor), "uid:%u", (unsigned)j->uid);
	if (j->refusal)
		f = json_pack("{sssssIsI}", "client", j->pol->name, "error", serr_name[j->err],
			      "uid", (json_int_t)j->uid, "pid", (json_int_t)j->pid);
	else
		f = json_pack("{sssssssssIsIsIsI}", "client", j->pol->name, "kid", j->pol->kid,
			      "jti", j->jti, "aud", j->aud, "iat", (json_int_t)j->iat, "exp",
			      (json_int_t)j->exp, "uid", (json_int_t)j->uid, "pid",
			      (json_int_t)j->pid);
	if (f == NULL)
		return -ENOMEM;
	r = journal_append(st, j->refusal ? "assertion.refuse" : "assertion.issue", actor, f, NULL);
	json_decref(f);
	return r;
}

static void *journal_main(void *arg)
{
	struct signer *s = arg;
	struct job *batch, *j, *next;
	char ok_kid[CIMD_KID_LEN + 1], bad_kid[CIMD_KID_LEN + 1];
	int r;

	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		if ((batch = queue_take(&s->jq, CIMD_JOURNAL_BATCH_MAX, &s->stop)) == NULL)
			continue;
		ok_kid[0] = bad_kid[0] = '\0';
		r = store_begin(s->writer);
		for (j = batch; r == 0 && j != NULL; j = j->next) {
			if (!j->refusal && strcmp(j->pol->kid, ok_kid) != 0) {
				if (strcmp(j->pol->kid, bad_kid) == 0 ||
				    !key_signs(s->writer, j->pol->kid)) {
					snprintf(bad_kid, sizeof(bad_kid), "%s", j->pol->kid);
					j->err = SE_NO_ACTIVE_KEY;
					snprintf(j->msg, sizeof(j->msg),
						 "key %s of %s was retired or revoked", j->pol->kid,
						 j->pol->name);
					continue;
				}
				snprintf(ok_kid, sizeof(ok_kid), "%s", j->pol->kid);
			}
			r = journal_job(s->writer, j);
		}
		if (r == 0)
			r = store_commit(s->writer);
		if (r < 0) {
			store_rollback(s->writer);
			log_err("sign socket: journal: %s; %s", strerror(-r),
				"assertions of this batch withheld");
		}
		for (j = batch; j != NULL; j = next) {
			next = j->next;
			if (r < 0) {
				/* Fail closed: no record, no assertion. */
				j->err = SE_INTERNAL;
				snprintf(j->msg, sizeof(j->msg), "the journal cannot be written");
			}
			done_push(s, j);
		}
	}
	return NULL;
}

/* ---- life cycle ---- */

/* Room for every connection the socket may hold. */
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

int signer_start(struct cimdd *d, struct signer **ret, char *err, size_t errlen)
{
	struct epoll_event ev;
	struct signer *s;
	char dbpath[1100];
	size_t i;
	int r;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return -ENOMEM;
	s->d = d;
	s->lfd = s->epfd = s->donefd = -1;
	queue_init(&s->jq);
	queue_init(&s->done);
	pthread_mutex_init(&s->stats_mu, NULL);
	pthread_mutex_init(&s->inval_mu, NULL);
	signer_configure(s, d->cfg);
	snprintf(s->prefix, sizeof(s->prefix), "%s/clients/", d->cfg->base_url);
	s->prefix_len = strlen(s->prefix);
	s->conns = calloc(CIMD_SIGN_CONNS_MAX, sizeof(*s->conns));
	s->free_slots = calloc(CIMD_SIGN_CONNS_MAX, sizeof(*s->free_slots));
	s->uids = calloc(CIMD_SIGN_CONNS_MAX, sizeof(*s->uids));
	s->cache = calloc(CACHE_CAP, sizeof(*s->cache));
	s->stats = calloc(STATS_CAP, sizeof(*s->stats));
	s->inval = calloc(INVAL_MAX, sizeof(*s->inval));
	s->path = strdup(d->cfg->sign_socket);
	if (!s->conns || !s->free_slots || !s->uids || !s->cache || !s->stats || !s->inval ||
	    !s->path) {
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (i = 0; i < CIMD_SIGN_CONNS_MAX; i++) {
		s->conns[i].fd = -1;
		s->free_slots[CIMD_SIGN_CONNS_MAX - 1 - i] = (uint32_t)i;
	}
	s->n_free = CIMD_SIGN_CONNS_MAX;
	raise_nofile();
	snprintf(dbpath, sizeof(dbpath), "%s/cimdd.db", d->cfg->state_dir);
	if ((r = store_open(dbpath, &s->reader, err, errlen)) < 0 ||
	    (r = store_open(dbpath, &s->writer, err, errlen)) < 0)
		goto fail;
	/* A journal that cannot take the write lock this soon fails the batch:
	 * signing fails closed rather than queueing without bound. */
	sqlite3_busy_timeout(store_db(s->writer), 2000);
	if ((s->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    (s->donefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		r = -errno;
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		goto fail;
	}
	if ((r = unix_listen(d->cfg->sign_socket, d->cfg->sign_socket_mode, d->cfg->sign_socket_gid,
			     512, &s->lfd, err, errlen)) < 0)
		goto fail;
	ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = TAG_LISTEN};
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &ev) < 0)
		goto fail_errno;
	ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = TAG_DONE};
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->donefd, &ev) < 0)
		goto fail_errno;
	s->n_workers = d->cfg->n_backends;
	for (i = 0; i < s->n_workers; i++) {
		s->workers[i].s = s;
		s->workers[i].idx = i;
		queue_init(&s->workers[i].q);
	}
	for (i = 0; i < s->n_workers; i++) {
		if ((r = pthread_create(&s->workers[i].thread, NULL, backend_main,
					&s->workers[i])) != 0)
			goto fail_thread;
		s->workers[i].started = 1;
	}
	if ((r = pthread_create(&s->journal, NULL, journal_main, s)) != 0)
		goto fail_thread;
	s->journal_started = 1;
	if ((r = pthread_create(&s->io, NULL, io_main, s)) != 0)
		goto fail_thread;
	s->io_started = 1;
	*ret = s;
	return 0;
fail_thread:
	snprintf(err, errlen, "pthread_create: %s", strerror(r));
	r = -r;
	goto fail;
fail_errno:
	r = -errno;
	snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
fail:
	signer_stop(&s);
	return r;
}

static void free_jobs(struct job *j)
{
	struct job *next;

	for (; j != NULL; j = next) {
		next = j->next;
		job_free(j);
	}
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
		pthread_join(s->io, NULL);
	for (i = 0; i < s->n_workers; i++) {
		queue_wake(&s->workers[i].q);
		if (s->workers[i].started)
			pthread_join(s->workers[i].thread, NULL);
		free_jobs(s->workers[i].q.head);
	}
	queue_wake(&s->jq);
	if (s->journal_started)
		pthread_join(s->journal, NULL);
	free_jobs(s->jq.head);
	free_jobs(s->done.head);
	for (i = 0; s->conns != NULL && i < CIMD_SIGN_CONNS_MAX; i++)
		if (s->conns[i].fd >= 0)
			conn_close(s, &s->conns[i]);
	if (s->cache != NULL)
		cache_flush(s);
	if (s->lfd >= 0) {
		close(s->lfd);
		unlink(s->path);
	}
	if (s->epfd >= 0)
		close(s->epfd);
	if (s->donefd >= 0)
		close(s->donefd);
	store_free(&s->reader);
	store_free(&s->writer);
	free(s->conns);
	free(s->free_slots);
	free(s->uids);
	free(s->cache);
	free(s->stats);
	free(s->inval);
	free(s->path);
	free(s);
	*ps = NULL;
}

uint64_t signer_answers(struct signer *s)
{
	uint64_t n;

	if (s == NULL)
		return 0;
	pthread_mutex_lock(&s->stats_mu);
	n = s->total;
	pthread_mutex_unlock(&s->stats_mu);
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
	pthread_mutex_lock(&s->stats_mu);
	for (i = 0; i < STATS_CAP; i++) {
		if (s->stats[i].name[0] == '\0')
			continue;
		for (e = 0; e < SE_N; e++)
			if (s->stats[i].n[e] > 0)
				fprintf(
				    f, "cimdd_assertions_total{client=\"%s\",result=\"%s\"} %llu\n",
				    s->stats[i].name, serr_name[e],
				    (unsigned long long)s->stats[i].n[e]);
	}
	for (e = 0; e < SE_N; e++)
		if (s->unknown[e] > 0)
			fprintf(f, "cimdd_assertions_total{client=\"\",result=\"%s\"} %llu\n",
				serr_name[e], (unsigned long long)s->unknown[e]);
	fprintf(f,
		"# HELP cimdd_sign_backend_errors_total Signing requests the hardware failed.\n"
		"# TYPE cimdd_sign_backend_errors_total counter\n"
		"cimdd_sign_backend_errors_total %llu\n",
		(unsigned long long)s->backend_errors);
	pthread_mutex_unlock(&s->stats_mu);
	return 0;
}
