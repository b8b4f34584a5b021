/*
 * sign_io.c — the signing socket's io thread (signer_int.h): epoll over the
 * listening socket and every connection.  Reads lines (lineserv.c), parses
 * them (sign_request.c), checks the client's policy (sign_policy.c), builds
 * the header and every claim, hands a job on to the backend of the client's
 * key, writes answers.  Never blocks on a peer or on hardware.
 *
 * A connection has at most one request in flight, so answers come in order and
 * a peer that does not read its answers stalls only itself.  A peer that
 * pipelines as fast as it can stalls no one either: connections with work are
 * served in turns, round-robin between uids, and bad lines slow their own uid
 * down (sign_fair.c).  Forbidden requests are journaled in sums
 * (sign_refuse.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "signer_int.h"

#define TAG_LISTEN UINT64_MAX
#define TAG_DONE (UINT64_MAX - 1)

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

/* ---- connections ---- */

int sign_io_init(struct signer *s, char *err, size_t errlen)
{
	const struct cimd_config *cfg = s->d->cfg;
	struct epoll_event ev;
	size_t i;
	int r;

	s->io.conns = calloc(CIMD_SIGN_CONNS_MAX, sizeof(*s->io.conns));
	s->io.free_slots = calloc(CIMD_SIGN_CONNS_MAX, sizeof(*s->io.free_slots));
	if (!s->io.conns || !s->io.free_slots || sign_fair_init(&s->io.fair) < 0 ||
	    sign_refuse_init(s) < 0) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < CIMD_SIGN_CONNS_MAX; i++) {
		s->io.conns[i].ls.fd = -1;
		s->io.free_slots[CIMD_SIGN_CONNS_MAX - 1 - i] = (uint32_t)i;
	}
	s->io.n_free = CIMD_SIGN_CONNS_MAX;
	if ((s->io.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		r = -errno;
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		return r;
	}
	if ((r = unix_listen(cfg->sign_socket, cfg->sign_socket_mode, cfg->sign_socket_gid, 512,
			     &s->io.lfd, err, errlen)) < 0)
		return r;
	ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = TAG_LISTEN};
	if (epoll_ctl(s->io.epfd, EPOLL_CTL_ADD, s->io.lfd, &ev) < 0)
		goto fail_errno;
	ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = TAG_DONE};
	if (epoll_ctl(s->io.epfd, EPOLL_CTL_ADD, s->donefd, &ev) < 0)
		goto fail_errno;
	return 0;
fail_errno:
	r = -errno;
	snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
	return r;
}

static void conn_close(struct signer *s, struct conn *c)
{
	epoll_ctl(s->io.epfd, EPOLL_CTL_DEL, c->ls.fd, NULL);
	sign_fair_unready(&s->io.fair, s->io.conns, c);
	sign_fair_release(&s->io.fair, c->uent);
	ls_conn_close(&c->ls);
	c->gen++; /* a job still in flight for it is answered to no one */
	c->busy = 0;
	s->io.free_slots[s->io.n_free++] = (uint32_t)(c - s->io.conns);
	s->io.n_conns--;
}

/* After the threads are joined (signer_stop). */
void sign_io_free(struct signer *s)
{
	size_t i;

	for (i = 0; s->io.conns != NULL && i < CIMD_SIGN_CONNS_MAX; i++)
		if (s->io.conns[i].ls.fd >= 0)
			conn_close(s, &s->io.conns[i]);
	if (s->io.lfd >= 0) {
		close(s->io.lfd);
		unlink(s->path);
	}
	if (s->io.epfd >= 0)
		close(s->io.epfd);
	free(s->io.conns);
	free(s->io.free_slots);
	sign_fair_free(&s->io.fair);
	sign_refuse_free(s);
	s->io.conns = NULL;
	s->io.free_slots = NULL;
	s->io.lfd = s->io.epfd = -1;
}

static void conn_want(struct signer *s, struct conn *c, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(c - s->io.conns)};

	if (c->events != events && epoll_ctl(s->io.epfd, EPOLL_CTL_MOD, c->ls.fd, &ev) == 0)
		c->events = events;
}

static void conn_error(struct conn *c, enum proto_err e, const char *msg)
{
	char esc[1100], line[1200];
	int n;

	if (json_escape(msg, esc, sizeof(esc)) < 0)
		snprintf(esc, sizeof(esc), "%s", proto_err_name(e));
	n = snprintf(line, sizeof(line), "{\"ok\":false,\"error\":\"%s\",\"message\":\"%s\"}\n",
		     proto_err_name(e), esc);
	if (n > 0 && (size_t)n < sizeof(line))
		ls_conn_send(&c->ls, line, (size_t)n);
}

/* c has work: it waits for its uid's turn, not for epoll. */
static void conn_ready(struct signer *s, struct conn *c)
{
	sign_fair_ready(&s->io.fair, s->io.conns, c);
	conn_want(s, c, 0);
}

/* Whether the caller may sign for the client: by its uid (*ret_gid -1), or by
 * its primary or a supplementary group (*ret_gid that group, journaled with
 * the assertion so that an audit can tell which entry allowed it). */
static int caller_allowed(const struct conn *c, const struct policy *p, int64_t *ret_gid)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	size_t i, j, n;

	*ret_gid = -1;
	for (i = 0; i < p->n_uids; i++)
		if (p->uids[i] == c->ls.cred.uid)
			return 1;
	if (p->n_gids == 0)
		return 0;
	for (i = 0; i < p->n_gids; i++)
		if (p->gids[i] == c->ls.cred.gid) {
			*ret_gid = p->gids[i];
			return 1;
		}
	/* Supplementary groups, as the kernel recorded them at connect(2). */
	if (getsockopt(c->ls.fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return 0;
	n = len / sizeof(gid_t);
	for (i = 0; i < n; i++)
		for (j = 0; j < p->n_gids; j++)
			if (groups[i] == p->gids[j]) {
				*ret_gid = p->gids[j];
				return 1;
			}
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
 * The journal record of assertion jti, when it was issued to uid: its seq and
 * a copy of its bytes (*ret_seq 0 when there is none).
 */
static int issued_to(struct store *st, const char *jti, uid_t uid, int64_t *ret_seq, char **ret_rec,
		     size_t *ret_len)
{
	struct store_rows *q = NULL;
	json_t *rec, *u;
	int r = 0;

	*ret_seq = 0;
	if (store_query(st, &q, "SELECT seq, record FROM journal WHERE jti = ?", "s", jti) < 0)
		return -EIO;
	if (store_next(q) > 0) {
		rec = json_loadb(store_blob(q, 1), store_len(q, 1), 0, NULL);
		u = json_object_get(rec, "uid");
		if (json_is_integer(u) && json_integer_value(u) == (json_int_t)uid) {
			*ret_len = store_len(q, 1);
			if ((*ret_rec = malloc(*ret_len + 1)) == NULL) {
				r = -ENOMEM;
			} else {
				memcpy(*ret_rec, store_blob(q, 1), *ret_len);
				(*ret_rec)[*ret_len] = '\0';
				*ret_seq = store_int(q, 0);
			}
		}
		json_decref(rec);
	}
	store_done(st, q);
	return r;
}

/*
 * {"op":"receipt","jti"}: the journal record of an assertion this uid was
 * issued, its inclusion proof and the checkpoint it is proved against
 * (tlog.c, docs/audit.md).  Answered here, so it must cost little: the record
 * by an index, the proof from the tree in memory and at most one read of
 * leaves (two statements in all).  Another uid's jti is "not_found", like an
 * unknown one: a receipt does not tell who else was issued what.
 */
static enum proto_err receipt(struct signer *s, struct conn *c, const char *jti)
{
	json_t *o = NULL, *ans;
	char msg[256], *text, *rec = NULL;
	int64_t seq = 0;
	size_t len = 0;
	int r;

	if (issued_to(s->io.reader, jti, c->ls.cred.uid, &seq, &rec, &len) < 0) {
		conn_error(c, PE_INTERNAL, "database error");
		return PE_INTERNAL;
	}
	if (seq == 0) {
		snprintf(msg, sizeof(msg), "no assertion %.64s was issued to uid %u", jti,
			 (unsigned)c->ls.cred.uid);
		conn_error(c, PE_NOT_FOUND, msg);
		return PE_NOT_FOUND;
	}
	r = tlog_inclusion(s->tlog, s->io.reader, seq, rec, len, &o);
	free(rec);
	if (r == -EAGAIN) {
		snprintf(msg, sizeof(msg),
			 "journal record %lld is not under a checkpoint yet; ask again within "
			 "checkpoint_interval",
			 (long long)seq);
		conn_error(c, PE_NOT_CHECKPOINTED, msg);
		return PE_NOT_CHECKPOINTED;
	}
	if (r < 0 || (ans = json_pack("{sbso}", "ok", 1, "receipt", o)) == NULL) {
		json_decref(o);
		conn_error(c, PE_INTERNAL, "could not build the receipt");
		return PE_INTERNAL;
	}
	r = 0;
	if ((text = json_dumps(ans, JSON_COMPACT)) == NULL ||
	    ls_conn_send(&c->ls, text, strlen(text)) < 0 || ls_conn_send(&c->ls, "\n", 1) < 0) {
		conn_error(c, PE_INTERNAL, "out of memory");
		r = -ENOMEM;
	}
	free(text);
	json_decref(ans);
	return r < 0 ? PE_INTERNAL : PE_OK;
}

/*
 * What the policy says of an allowed caller's request: the audience, the key
 * and its publication, the backend, the rate.  PE_OK with j->aud set, or the
 * refusal with its words in msg.
 */
static enum proto_err admit(struct signer *s, struct job *j, const char *name, const char *aud,
			    char *msg, size_t msglen)
{
	const struct policy *p = j->pol;
	size_t i;

	for (i = 0; i < p->n_auds; i++)
		if (strcmp(p->auds[i], aud) == 0)
			break;
	if (i == p->n_auds) {
		snprintf(msg, msglen, "%.300s is not an audience of %s", aud, name);
		return PE_AUDIENCE;
	}
	j->aud = p->auds[i];
	if (!p->has_key) {
		snprintf(msg, msglen, "%s has no active key", name);
		return PE_NO_ACTIVE_KEY;
	}
	/* A key activated at once (a revocation's replacement) signs only once
	 * the JWKS that carries it has reached the publisher. */
	if (!p->published && !__atomic_load_n(&s->all_published, __ATOMIC_ACQUIRE)) {
		snprintf(msg, msglen,
			 "%s: its new key %s is not published yet; ask again in a moment", name,
			 p->kid);
		return PE_NO_ACTIVE_KEY;
	}
	if (p->backend >= s->n_workers) {
		snprintf(msg, msglen, "%s: its backend is not configured", name);
		return PE_UNAVAILABLE;
	}
	if (!sign_rate_allow(
		s, name, p->rate >= 0 ? p->rate : __atomic_load_n(&s->rate, __ATOMIC_RELAXED))) {
		snprintf(msg, msglen, "%s: over its rate limit", name);
		return PE_RATE_LIMITED;
	}
	return PE_OK;
}

/* A new job of connection c for policy p (taken). */
static struct job *job_new(struct signer *s, struct conn *c, struct policy **p)
{
	struct job *j;

	if ((j = calloc(1, sizeof(*j))) == NULL)
		return NULL;
	j->slot = (uint32_t)(c - s->io.conns);
	j->gen = c->gen;
	j->uid = c->ls.cred.uid;
	j->pid = c->ls.cred.pid;
	j->pol = *p;
	*p = NULL;
	clock_gettime(CLOCK_MONOTONIC, &j->queued);
	return j;
}

/*
 * A caller who may not sign for the client gets one answer, whether the client
 * exists, has no approved document, or exists and does not list the caller
 * (docs/protocol.md): a stranger learns nothing of which clients exist.  The
 * refusal is counted per (uid, client, reason) (sign_refuse.c): the first of
 * its key is journaled before it is answered, the others are answered at once
 * and journaled in sums.  p: the client's policy, NULL when there is none.
 */
static void forbid(struct signer *s, struct conn *c, struct policy *p, const char *client_id)
{
	const char *name = p != NULL ? p->name : "";
	int64_t now = (int64_t)time(NULL);
	struct job *j;
	char msg[512];

	snprintf(msg, sizeof(msg), "uid %u may not sign for %.300s", (unsigned)c->ls.cred.uid,
		 client_id);
	if (sign_refuse_note(s, c->ls.cred.uid, c->ls.cred.pid, name, PE_FORBIDDEN) &&
	    (j = sign_refuse_job(c->ls.cred.uid, c->ls.cred.pid, name, PE_FORBIDDEN, 1, now,
				 now)) != NULL) {
		j->slot = (uint32_t)(c - s->io.conns);
		j->gen = c->gen;
		if ((j->pol = p) != NULL) /* for the metrics' label */
			__atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
		snprintf(j->msg, sizeof(j->msg), "%s", msg);
		c->busy = 1;
		signq_push(&s->jr.q, j);
		return;
	}
	sign_count(s, sign_metric_name(p), PE_FORBIDDEN);
	conn_error(c, PE_FORBIDDEN, msg);
}

/* The lifetime and claims of an admitted request. */
static enum proto_err job_claims(struct signer *s, struct job *j, const struct sign_request *rq,
				 char *msg, size_t msglen)
{
	long max_ttl = __atomic_load_n(&s->max_ttl, __ATOMIC_RELAXED), ttl = rq->ttl;

	if (ttl == 0)
		ttl = j->pol->ttl > 0 ? j->pol->ttl
				      : __atomic_load_n(&s->default_ttl, __ATOMIC_RELAXED);
	if (ttl > max_ttl)
		ttl = max_ttl; /* a client policy set before the cap was lowered */
	j->iat = (int64_t)time(NULL);
	j->exp = j->iat + ttl;
	if (build_claims(j, rq->client_id) < 0) {
		snprintf(msg, msglen, "could not build the assertion");
		return PE_INTERNAL;
	}
	return PE_OK;
}

/*
 * One request line.  Either answers at once (into the connection's output) or
 * hands a job on and marks the connection busy.  Returns what the answer is
 * (PE_OK: an assertion on its way, or a receipt).
 */
static enum proto_err handle_line(struct signer *s, struct conn *c, const char *line, size_t len)
{
	struct sign_request rq = {0};
	const char *name;
	struct policy *p = NULL;
	struct job *j = NULL;
	enum proto_err e = PE_BAD_REQUEST;
	char msg[512];
	int64_t gid;
	int r;

	if (sign_request_parse(line, len, __atomic_load_n(&s->max_ttl, __ATOMIC_RELAXED), &rq, msg,
			       sizeof(msg)) < 0)
		goto refuse;
	if (rq.op == SIGN_OP_RECEIPT) {
		e = receipt(s, c, rq.jti);
		goto out;
	}
	e = PE_UNKNOWN_CLIENT; /* not even of the form of a client_id of ours */
	if ((name = sign_client_name(s, rq.client_id)) == NULL) {
		snprintf(msg, sizeof(msg), "%.300s is not a client_id of this appliance",
			 rq.client_id);
		goto refuse;
	}
	if ((r = sign_policy_get(s, name, &p)) < 0 && r != -ENOENT) {
		e = store_lost(s->io.reader) ? PE_UNAVAILABLE : PE_INTERNAL;
		snprintf(msg, sizeof(msg), "%s",
			 e == PE_UNAVAILABLE ? "the state database is unreachable"
					     : "database error");
		goto refuse;
	}
	if (p == NULL || !caller_allowed(c, p, &gid)) {
		forbid(s, c, p, rq.client_id);
		e = PE_FORBIDDEN;
		goto out;
	}
	if ((j = job_new(s, c, &p)) == NULL) {
		e = PE_INTERNAL;
		snprintf(msg, sizeof(msg), "out of memory");
		goto refuse;
	}
	j->gid = gid;
	if ((e = admit(s, j, name, rq.aud, msg, sizeof(msg))) != PE_OK ||
	    (e = job_claims(s, j, &rq, msg, sizeof(msg))) != PE_OK)
		goto refuse;
	c->busy = 1;
	signq_push(&s->workers[j->pol->backend].q, j);
	goto out;
refuse:
	sign_count(s, sign_metric_name(j != NULL ? j->pol : p), e);
	conn_error(c, e, msg);
	sign_job_free(j);
out:
	sign_policy_unref(p);
	sign_request_clear(&rq);
	return e;
}

/*
 * One turn of connection c (sign_fair.c): lines read and handled until it
 * must wait -- for its job, for the peer to read, for more input -- or has
 * had SIGN_LINES_PER_TURN lines, or its uid has no bad-line token left.
 * 1 when it still has work (it waits for its uid's next turn), else 0.
 */
static int conn_turn(struct signer *s, struct conn *c)
{
	time_t now = time(NULL);
	const char *line;
	size_t len;
	int n, lines = 0;

	for (;;) {
		if (ls_conn_flush(&c->ls) < 0)
			goto gone;
		if (c->ls.out_len > 0) {
			conn_want(s, c, EPOLLOUT);
			return 0;
		}
		if (c->ls.closing)
			goto gone;
		if (c->busy) {
			conn_want(s, c, 0);
			return 0;
		}
		if (lines == SIGN_LINES_PER_TURN || !sign_fair_may(&s->io.fair, c->uent))
			return 1;
		if ((line = ls_conn_line(&c->ls, &len)) != NULL) {
			c->ls.last = now;
			lines++;
			if (sign_bad_line(handle_line(s, c, line, len)))
				sign_fair_bad(&s->io.fair, c->uent);
			ls_conn_consume(&c->ls, len, now);
			continue;
		}
		if (ls_conn_overlong(&c->ls, CIMD_SIGN_LINE_MAX)) {
			char msg[64];

			snprintf(msg, sizeof(msg), "a request line is at most %d bytes",
				 CIMD_SIGN_LINE_MAX);
			sign_count(s, NULL, PE_TOO_LARGE);
			sign_fair_bad(&s->io.fair, c->uent);
			conn_error(c, PE_TOO_LARGE, msg);
			c->ls.closing = 1;
			continue;
		}
		n = ls_conn_read(&c->ls, CIMD_SIGN_LINE_MAX, now);
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN) {
			conn_want(s, c, EPOLLIN);
			return 0;
		}
		if (n < 0)
			goto gone;
	}
gone:
	conn_close(s, c);
	return 0;
}

/* One round: each uid with work has one turn, of one of its connections. */
static void serve_round(struct signer *s)
{
	size_t k = s->io.fair.n_ring;
	uint32_t slot, u;
	struct conn *c;

	while (k-- > 0 && (slot = sign_fair_next(&s->io.fair, s->io.conns, &u)) != SIGN_NONE) {
		c = &s->io.conns[slot];
		sign_fair_turn_end(&s->io.fair, s->io.conns, u, conn_turn(s, c) ? c : NULL);
	}
}

static void accept_all(struct signer *s)
{
	struct epoll_event ev;
	struct conn *c;
	struct ucred cred;
	uint32_t u;
	int fd, k, r;

	for (k = 0; k < 256; k++) {
		if ((r = ls_accept(s->io.lfd, &fd, &cred)) == -ENOTCONN)
			continue;
		if (r < 0)
			return;
		if (s->io.n_free == 0 ||
		    (u = sign_fair_take(&s->io.fair, cred.uid, CIMD_SIGN_CONNS_PER_UID)) ==
			SIGN_NONE) {
			close(fd); /* full: the peer sees the connection end */
			continue;
		}
		c = &s->io.conns[s->io.free_slots[--s->io.n_free]];
		ls_conn_open(&c->ls, fd, &cred, time(NULL));
		c->events = EPOLLIN;
		c->uent = u;
		c->ready = 0;
		ev = (struct epoll_event){.events = EPOLLIN,
					  .data.u64 = (uint64_t)(c - s->io.conns)};
		if (epoll_ctl(s->io.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			sign_fair_release(&s->io.fair, u);
			ls_conn_close(&c->ls);
			s->io.free_slots[s->io.n_free++] = (uint32_t)(c - s->io.conns);
			continue;
		}
		s->io.n_conns++;
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
		if (j->slot == SIGN_NONE) { /* a refusal record: counted when refused */
			sign_job_free(j);
			continue;
		}
		sign_count(s, sign_metric_name(j->pol), j->err);
		c = &s->io.conns[j->slot];
		if (c->ls.fd < 0 || c->gen != j->gen) {
			sign_job_free(j);
			continue;
		}
		c->busy = 0;
		if (j->err != PE_OK) {
			conn_error(c, j->err, j->msg);
		} else {
			n = j->jws_len + 200;
			if ((line = malloc(n)) != NULL) {
				int w = snprintf(line, n,
						 "{\"ok\":true,\"assertion\":\"%s\",\"kid\":\"%s\","
						 "\"jti\":\"%s\",\"exp\":%lld}\n",
						 j->jws, j->pol->kid, j->jti, (long long)j->exp);
				if (w > 0 && (size_t)w < n)
					ls_conn_send(&c->ls, line, (size_t)w);
				free(line);
			}
		}
		sign_job_free(j);
		conn_ready(s, c);
	}
}

static void expire(struct signer *s, time_t now)
{
	size_t i;

	for (i = 0; i < CIMD_SIGN_CONNS_MAX; i++) {
		struct conn *c = &s->io.conns[i];

		if (c->ls.fd < 0 || c->busy)
			continue;
		if (ls_conn_stalled(&c->ls, now, CIMD_SIGN_LINE_SEC, CIMD_SIGN_IDLE_SEC))
			conn_close(s, c);
	}
	sign_fair_sweep(&s->io.fair);
}

/* What epoll_wait may wait: nothing while uids wait in the ring, until the
 * first parked uid has a token again, else a second (expiry, refusal counts). */
static int io_timeout(struct signer *s)
{
	int wake = sign_fair_wake(&s->io.fair);

	if (s->io.fair.n_ring > 0)
		return 0;
	return wake >= 0 && wake < 1000 ? wake : 1000;
}

void *sign_io_main(void *arg)
{
	struct signer *s = arg;
	struct epoll_event evs[64];
	time_t last_expire = time(NULL), now;
	struct conn *c;
	int i, n;

	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		n = epoll_wait(s->io.epfd, evs, 64, io_timeout(s));
		for (i = 0; i < n; i++) {
			if (evs[i].data.u64 == TAG_LISTEN) {
				accept_all(s);
				continue;
			}
			if (evs[i].data.u64 == TAG_DONE) {
				deliver(s);
				continue;
			}
			c = &s->io.conns[evs[i].data.u64];
			if (c->ls.fd < 0)
				continue;
			if (evs[i].events & (EPOLLHUP | EPOLLERR))
				/* Gone both ways: no one to answer to. */
				conn_close(s, c);
			else
				conn_ready(s, c);
		}
		serve_round(s);
		if ((now = time(NULL)) != last_expire) {
			last_expire = now;
			expire(s, now);
		}
		if (now - s->io.refusals.flushed >= SIGN_REFUSE_INTERVAL)
			sign_refuse_flush(s);
	}
	sign_refuse_flush(s); /* a clean stop loses no count */
	return NULL;
}
