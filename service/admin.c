/*
 * admin.c — the admin socket: newline-delimited JSON, one request per line.
 *
 * The caller is who the kernel says (SO_PEERCRED), mapped to an operator and
 * roles by the configuration; what the request claims is never asked.  A
 * handler table names each operation, the role it needs and its handler.  Every
 * request, allowed or refused, is a journal record naming the operator (or the
 * bare uid of a stranger).  A malformed or oversized line ends that connection,
 * never the daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "service.h"

/* A request handed to the slow operations' thread (below): waiting for the
 * next run, or answered by the one under way. */
enum { SLOW_NONE, SLOW_WAITING, SLOW_RUNNING };

/* An admin connection: the line server's (lineserv.c), whether its uid is
 * no operator (one answer, then closed), and a slow request it waits on (its
 * parsed line, the operation's index in ops[] and the operator who sent it,
 * copied: a reload may change the configuration's operators meanwhile). */
struct conn {
	struct ls_conn ls;
	int stranger;
	int slow;
	json_t *req;
	size_t opi;
	struct cimd_operator who;
};

/*
 * The slow operations' thread: an operation that reads the whole journal
 * (journal.verify: 8.1 s at 1.79M records, issue 15) runs here, on a database
 * handle of its own that writes nothing (PRAGMA query_only), so that the main
 * loop (other operators, the scheduler, publication) never waits for it.  One
 * run at a time: requests that arrive during a run wait for the next one, and
 * every waiting request with the same operation and members is answered by
 * that one run, so that many verifies cost at most two runs, never one each.
 * The main thread writes every field but q.result, q.msg and e, which the
 * thread writes during a run; pthread_create and pthread_join order the two.
 */
struct slow_run {
	pthread_t thread;
	int running;
	int efd;	      /* eventfd: the thread is done */
	struct store *reader; /* the thread's handle */
	struct svc svc;	      /* the reader alone: a slow operation reads nothing else */
	struct cimd_operator who;
	struct admin_req q;
	json_t *req;
	size_t opi;
	enum admin_err e;
};

struct admin_server {
	struct svc *d;
	struct tlog *tlog;
	int lfd;
	char *path;
	struct conn conns[CIMD_ADMIN_CONNS_MAX];
	struct ls_uids uids;	     /* connections per uid */
	struct ls_refusals refusals; /* refused connections, for the log */
	struct slow_run slow;
};

/* The admin socket's codes are a subset of the protocol's (proto_err.c). */
const char *admin_err_name(enum admin_err e)
{
	return proto_err_name((enum proto_err)e);
}

/* The handler table: every operation, the role it needs (any one of them),
 * its wire handler (admin_ops.c), and whether it is slow: run on the slow
 * operations' thread, where q->d holds the thread's read-only database handle
 * and nothing else (no configuration, no custody, no transparency log). */
static const struct {
	const char *op;
	unsigned role;
	enum admin_err (*fn)(struct admin_req *q);
	int slow;
} ops[] = {
    {"status", CIMD_ROLE_READ, admin_op_status, 0},
    {"client.add", CIMD_ROLE_SUBMIT, admin_op_client_add, 0},
    {"client.list", CIMD_ROLE_READ, admin_op_client_list, 0},
    {"client.show", CIMD_ROLE_READ, admin_op_client_show, 0},
    {"client.allow", CIMD_ROLE_SUBMIT, admin_op_client_allow, 0},
    {"client.audience", CIMD_ROLE_SUBMIT, admin_op_client_audience, 0},
    {"client.policy", CIMD_ROLE_SUBMIT, admin_op_client_policy, 0},
    {"change.list", CIMD_ROLE_READ, admin_op_change_list, 0},
    {"change.approve", CIMD_ROLE_APPROVE, admin_op_change_approve, 0},
    /* Its submitter withdraws a change; an approver rejects anyone's. */
    {"change.reject", CIMD_ROLE_SUBMIT | CIMD_ROLE_APPROVE, admin_op_change_reject, 0},
    {"attest.show", CIMD_ROLE_READ, admin_op_attest_show, 0},
    {"attest_key.rotate", CIMD_ROLE_ROTATE, admin_op_attest_key_rotate, 0},
    {"doc.submit", CIMD_ROLE_SUBMIT, admin_op_doc_submit, 0},
    {"doc.approve", CIMD_ROLE_APPROVE, admin_op_doc_approve, 0},
    {"doc.show", CIMD_ROLE_READ, admin_op_doc_show, 0},
    {"key.list", CIMD_ROLE_READ, admin_op_key_list, 0},
    {"key.rotate", CIMD_ROLE_ROTATE, admin_op_key_rotate, 0},
    {"key.activate", CIMD_ROLE_ROTATE, admin_op_key_activate, 0},
    {"key.revoke", CIMD_ROLE_REVOKE, admin_op_key_revoke, 0},
    {"node.list", CIMD_ROLE_READ, admin_op_node_list, 0},
    {"node.revoke", CIMD_ROLE_REVOKE, admin_op_node_revoke, 0},
    {"journal.show", CIMD_ROLE_READ, admin_op_journal_show, 0},
    {"journal.verify", CIMD_ROLE_READ, admin_op_journal_verify, 1},
    {"journal.prove", CIMD_ROLE_READ, admin_op_journal_prove, 0},
    {"journal.consistency", CIMD_ROLE_READ, admin_op_journal_consistency, 0},
    {"audit.export", CIMD_ROLE_READ, admin_op_audit_export, 0},
};

#define N_OPS (sizeof(ops) / sizeof(ops[0]))

/* One journal record per request, in a transaction of its own (the handler's
 * own changes are committed, or rolled back, by then). */
static void journal_request(struct svc *d, const char *actor, const struct ucred *cr,
			    const char *op, const json_t *args, enum admin_err e)
{
	const char *client = json_string_value(json_object_get(args, "name"));
	char opbuf[65];
	json_t *f;

	/* What the caller named, bounded: the record must always fit. */
	snprintf(opbuf, sizeof(opbuf), "%s", op ? op : "?");
	f = json_pack("{sssisiss}", "op", opbuf, "uid", (int)cr->uid, "pid", (int)cr->pid, "result",
		      admin_err_name(e));

	if (f != NULL && client != NULL && strlen(client) <= CIMD_NAME_MAX)
		json_object_set_new(f, "client", json_string(client));
	if (f == NULL || store_begin(d->st) < 0 ||
	    journal_append(d->st, "admin.request", actor, f, NULL) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		log_err("journal: cannot record %s by %s", op ? op : "?", actor);
	}
	json_decref(f);
}

/* The answer to a request once its handler ran, or once it was refused
 * before: the request's journal record, a refusal's log line, and the answer
 * line (malloc'd, without newline; NULL when none could be made).  q->result
 * stays the caller's. */
static char *answer(struct svc *d, const struct ucred *cr, const char *actor, const char *opname,
		    const json_t *req, const struct admin_req *q, enum admin_err e)
{
	json_t *resp;
	char *out;

	if (e == AE_BACKEND_UNAVAILABLE)
		custody_failed(d->custody);
	journal_request(d, actor, cr, opname, req, e);
	if (e != AE_OK) {
		log_info("admin: %s: %s refused (%s): %s", actor, opname ? opname : "request",
			 admin_err_name(e), q->msg);
		resp =
		    json_pack("{sbssss}", "ok", 0, "error", admin_err_name(e), "message", q->msg);
	} else {
		resp = json_pack("{sb}", "ok", 1);
		if (q->result != NULL)
			json_object_update(resp, q->result);
		if (q->msg[0] != '\0')
			json_object_set_new(resp, "message", json_string(q->msg));
	}
	out = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
	json_decref(resp);
	return out;
}

/* Handles one request line of c: returns the answer (without newline), or
 * NULL with *ret_deferred set when the request went to the slow operations'
 * thread (c then holds it). */
static char *handle(struct admin_server *srv, struct conn *c, const char *line, size_t len,
		    int *ret_deferred)
{
	struct svc *d = srv->d;
	struct admin_req q = {.d = d, .tlog = srv->tlog};
	const struct cimd_operator *op;
	struct cimd_operator stranger = {0};
	const char *opname = NULL;
	json_t *req = NULL;
	enum admin_err e;
	char *out;
	size_t i;

	/* Who asks is known before what is asked: even a malformed request is
	 * journaled under its operator's name. */
	q.op = config_operator(d->cfg, c->ls.cred.uid);
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
	if (req == NULL || !json_is_object(req) ||
	    (opname = json_string_value(json_object_get(req, "op"))) == NULL) {
		e = AE_BAD_REQUEST;
		snprintf(q.msg, sizeof(q.msg), "expected a JSON object with an \"op\" member");
		opname = NULL;
		c->ls.closing = 1; /* a malformed message ends the connection (STYLE.md 7) */
		goto done;
	}
	for (i = 0; i < N_OPS; i++)
		if (strcmp(ops[i].op, opname) == 0)
			break;
	if (i == N_OPS) {
		e = AE_BAD_REQUEST;
		snprintf(q.msg, sizeof(q.msg), "unknown operation '%.40s'", opname);
		goto done;
	}
	if ((op = q.op) == NULL) {
		e = AE_FORBIDDEN;
		snprintf(q.msg, sizeof(q.msg), "uid %d is not an operator of this appliance",
			 (int)c->ls.cred.uid);
		goto done;
	}
	if (!(op->roles & ops[i].role)) {
		char have[64], need[64];
		e = AE_FORBIDDEN;
		snprintf(q.msg, sizeof(q.msg), "operator %s (roles %s) lacks the %s role for %s",
			 op->name, config_roles_str(op->roles, have, sizeof(have)),
			 config_roles_str(ops[i].role, need, sizeof(need)), opname);
		goto done;
	}
	if (ops[i].slow) {
		/* Answered, and journaled, when its run is over. */
		c->slow = SLOW_WAITING;
		c->req = req;
		c->opi = i;
		c->who = *op;
		*ret_deferred = 1;
		return NULL;
	}
	q.args = req;
	e = ops[i].fn(&q);
done:
	if (q.op == NULL) {
		snprintf(stranger.name, sizeof(stranger.name), "uid:%d", (int)c->ls.cred.uid);
		q.op = &stranger;
	}
	out = answer(d, &c->ls.cred, q.op->name, opname, req, &q, e);
	json_decref(q.result);
	json_decref(req);
	return out;
}

static void conn_close(struct admin_server *srv, struct conn *c)
{
	ls_uids_release(&srv->uids, c->ls.cred.uid);
	ls_conn_close(&c->ls);
	json_decref(c->req);
	c->req = NULL;
	c->slow = SLOW_NONE;
	c->stranger = 0;
}

/* Queues an answer line; NULL (no answer could be made) closes. */
static void queue(struct conn *c, char *resp)
{
	if (resp == NULL) {
		c->ls.closing = 1;
		return;
	}
	if (ls_conn_send(&c->ls, resp, strlen(resp)) < 0 || ls_conn_send(&c->ls, "\n", 1) < 0)
		c->ls.closing = 1;
	free(resp);
}

/* ---- the slow operations' thread ---- */

static void *slow_main(void *arg)
{
	struct slow_run *run = arg;
	uint64_t one = 1;
	ssize_t n;

	run->e = ops[run->opi].fn(&run->q);
	/* Wakes the main loop, which joins and answers (an eventfd takes one
	 * write per run without blocking). */
	n = write(run->efd, &one, sizeof(one));
	(void)n;
	return NULL;
}

/* Every request the run answers gets its answer and its journal record, in
 * its own operator's name. */
static void slow_answer(struct admin_server *srv)
{
	struct slow_run *run = &srv->slow;
	time_t now = time(NULL);
	size_t j;

	for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++) {
		struct conn *c = &srv->conns[j];
		if (c->ls.fd < 0 || c->slow != SLOW_RUNNING)
			continue;
		queue(c, answer(srv->d, &c->ls.cred, c->who.name, ops[c->opi].op, c->req, &run->q,
				run->e));
		json_decref(c->req);
		c->req = NULL;
		c->slow = SLOW_NONE;
		c->ls.last = now; /* it waited on us, not we on it */
	}
	json_decref(run->q.result);
	json_decref(run->req);
	run->req = NULL;
	run->q = (struct admin_req){0};
}

/* Starts the next run, if none is under way and a request waits: it
 * answers every waiting request with the same operation and members. */
static void slow_start(struct admin_server *srv)
{
	struct slow_run *run = &srv->slow;
	struct conn *first;
	size_t j;
	int r;

	while (!run->running) {
		for (j = 0, first = NULL; j < CIMD_ADMIN_CONNS_MAX && first == NULL; j++)
			if (srv->conns[j].ls.fd >= 0 && srv->conns[j].slow == SLOW_WAITING)
				first = &srv->conns[j];
		if (first == NULL)
			return;
		run->opi = first->opi;
		run->req = json_incref(first->req);
		run->who = first->who;
		for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++) {
			struct conn *c = &srv->conns[j];
			if (c->ls.fd >= 0 && c->slow == SLOW_WAITING && c->opi == run->opi &&
			    json_equal(c->req, run->req))
				c->slow = SLOW_RUNNING;
		}
		run->q = (struct admin_req){.d = &run->svc, .op = &run->who, .args = run->req};
		if ((r = pthread_create(&run->thread, NULL, slow_main, run)) == 0) {
			run->running = 1;
			return;
		}
		run->e = AE_INTERNAL;
		snprintf(run->q.msg, sizeof(run->q.msg), "cannot start a thread: %s", strerror(r));
		slow_answer(srv);
	}
}

/* Once per turn: a run that is over is joined and answered, and the next
 * one started.  Read here rather than from poll's answer alone, so that a
 * full poll set cannot delay it past the loop's one-second turn. */
static void slow_poll(struct admin_server *srv)
{
	struct slow_run *run = &srv->slow;
	uint64_t v;

	if (!run->running || read(run->efd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		return;
	pthread_join(run->thread, NULL);
	run->running = 0;
	slow_answer(srv);
	slow_start(srv);
}

/* ---- connections ---- */

static void conn_read(struct conn *c)
{
	int n = ls_conn_read(&c->ls, CIMD_ADMIN_LINE_MAX, time(NULL));

	if (n < 0) {
		if (n != -EAGAIN && n != -EINTR)
			c->ls.closing = 1, c->ls.in_len = 0;
		return;
	}
	if (ls_conn_overlong(&c->ls, CIMD_ADMIN_LINE_MAX)) {
		queue(c, strdup("{\"ok\":false,\"error\":\"too_large\",\"message\":\"request line "
				"over 16384 bytes\"}"));
		c->ls.closing = 1;
		c->ls.in_len = 0;
	}
}

/* Answers one complete line, if there is one and the last answer is out:
 * one request per connection per turn of the loop, so no connection can make
 * the daemon buffer answers without bound or starve the others.  A
 * connection waiting on a slow request reads nothing more until answered. */
static void conn_handle(struct admin_server *srv, struct conn *c)
{
	const char *line;
	size_t len;
	char *resp;
	int deferred = 0;

	if (c->ls.closing || c->ls.out_len != 0 || c->slow != SLOW_NONE ||
	    (line = ls_conn_line(&c->ls, &len)) == NULL)
		return;
	resp = handle(srv, c, line, len, &deferred);
	ls_conn_consume(&c->ls, len, time(NULL));
	if (deferred) {
		slow_start(srv);
		return;
	}
	queue(c, resp);
	if (c->stranger)
		c->ls.closing = 1;
}

int admin_server_busy(const struct admin_server *srv)
{
	size_t j, len;

	for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++) {
		const struct conn *c = &srv->conns[j];
		if (c->ls.fd >= 0 && !c->ls.closing && c->ls.out_len == 0 && c->slow == SLOW_NONE &&
		    ls_conn_line(&c->ls, &len) != NULL)
			return 1;
	}
	return 0;
}

/* Writes what the peer can take; -1 when it is gone. */
static int conn_write(struct conn *c)
{
	int r = ls_conn_flush(&c->ls);

	if (r > 0)
		c->ls.last = time(NULL);
	return r < 0 ? -1 : 0;
}

/* A connection refused by a cap: closed, and logged at most once per
 * CIMD_REFUSAL_LOG_SEC (the rest are counted: admin_server_dispatch). */
static int refused(struct admin_server *srv, int fd, uid_t uid)
{
	close(fd);
	return ls_refusal_note(&srv->refusals, uid, time(NULL), CIMD_REFUSAL_LOG_SEC);
}

static void accept_one(struct admin_server *srv)
{
	struct conn *c = NULL;
	struct ucred cred;
	unsigned same;
	int fd, stranger;
	size_t i;

	if (ls_accept(srv->lfd, &fd, &cred) < 0)
		return;
	for (i = 0; i < CIMD_ADMIN_CONNS_MAX; i++)
		if (srv->conns[i].ls.fd < 0) {
			c = &srv->conns[i];
			break;
		}
	if (c == NULL) {
		if (refused(srv, fd, cred.uid))
			log_warn("admin: %d connections open; refusing another (uid %d)",
				 CIMD_ADMIN_CONNS_MAX, (int)cred.uid);
		return;
	}
	/* Bounded per uid, so that one uid cannot take every connection: an
	 * operator may hold a few; a stranger one, for one answer. */
	stranger = config_operator(srv->d->cfg, cred.uid) == NULL;
	same = ls_uids_count(&srv->uids, cred.uid);
	if (!ls_uids_take(&srv->uids, cred.uid, stranger ? 1 : CIMD_ADMIN_CONNS_PER_UID)) {
		if (refused(srv, fd, cred.uid))
			log_warn("admin: uid %d holds %u connections; refusing another",
				 (int)cred.uid, same);
		return;
	}
	ls_conn_open(&c->ls, fd, &cred, time(NULL));
	c->ls.line_start = c->ls.last;
	c->stranger = stranger;
}

/* The slow operations' database handle: the daemon's database, opened once
 * more, that writes nothing. */
static int slow_open(struct admin_server *srv, char *err, size_t errlen)
{
	int r;

	if ((r = store_open_config(srv->d->cfg, &srv->slow.reader, err, errlen)) < 0)
		return r;
	if (store_read_only(srv->slow.reader) < 0) {
		snprintf(err, errlen, "the state database: cannot make a read-only handle");
		return -EIO;
	}
	srv->slow.svc.st = srv->slow.reader;
	if ((srv->slow.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		r = -errno;
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return r;
	}
	return 0;
}

int admin_server_new(struct svc *d, struct tlog *tl, struct admin_server **ret, char *err,
		     size_t errlen)
{
	struct admin_server *srv;
	size_t i;
	int r;

	if ((srv = calloc(1, sizeof(*srv))) == NULL)
		return -ENOMEM;
	srv->d = d;
	srv->tlog = tl;
	srv->lfd = srv->slow.efd = -1;
	for (i = 0; i < CIMD_ADMIN_CONNS_MAX; i++)
		srv->conns[i].ls.fd = -1;
	if (ls_uids_init(&srv->uids, CIMD_ADMIN_CONNS_MAX) < 0) {
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if ((r = slow_open(srv, err, errlen)) < 0 ||
	    (r = unix_listen(d->cfg->admin_socket, d->cfg->admin_socket_mode,
			     d->cfg->admin_socket_gid, 16, &srv->lfd, err, errlen)) < 0)
		goto fail;
	if ((srv->path = strdup(d->cfg->admin_socket)) == NULL) {
		close(srv->lfd);
		srv->lfd = -1;
		unlink(d->cfg->admin_socket);
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	*ret = srv;
	return 0;
fail:
	admin_server_free(&srv);
	return r;
}

void admin_server_free(struct admin_server **psrv)
{
	struct admin_server *srv = *psrv;
	size_t i;

	if (srv == NULL)
		return;
	if (srv->slow.running) {
		/* A run under way ends at its next step (an interrupted statement fails). */
		store_interrupt(srv->slow.reader);
		pthread_join(srv->slow.thread, NULL);
		json_decref(srv->slow.q.result);
		json_decref(srv->slow.req);
	}
	for (i = 0; i < CIMD_ADMIN_CONNS_MAX; i++)
		if (srv->conns[i].ls.fd >= 0)
			conn_close(srv, &srv->conns[i]);
	if (srv->lfd >= 0)
		close(srv->lfd);
	if (srv->path != NULL)
		unlink(srv->path);
	if (srv->slow.efd >= 0)
		close(srv->slow.efd);
	store_free(&srv->slow.reader);
	ls_uids_free(&srv->uids);
	free(srv->path);
	free(srv);
	*psrv = NULL;
}

size_t admin_server_pollfds(struct admin_server *srv, struct pollfd *fds, size_t max)
{
	size_t i, n = 0;

	if (max == 0)
		return 0;
	fds[n++] = (struct pollfd){.fd = srv->lfd, .events = POLLIN};
	for (i = 0; i < CIMD_ADMIN_CONNS_MAX && n < max; i++) {
		struct conn *c = &srv->conns[i];
		/* One waiting on a slow request is not read (it stays as it is). */
		if (c->ls.fd < 0 || c->slow != SLOW_NONE)
			continue;
		/* Stop reading while answers are pending: a peer that never reads
		 * cannot make us buffer without bound. */
		fds[n++] =
		    (struct pollfd){.fd = c->ls.fd, .events = c->ls.out_len ? POLLOUT : POLLIN};
	}
	/* A run's end wakes the loop at once (slow_poll reads it). */
	if (srv->slow.running && n < max)
		fds[n++] = (struct pollfd){.fd = srv->slow.efd, .events = POLLIN};
	return n;
}

void admin_server_dispatch(struct admin_server *srv, const struct pollfd *fds, size_t n)
{
	time_t now = time(NULL);
	unsigned long more;
	size_t i, j;

	for (i = 1; i < n; i++) {
		for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++)
			if (srv->conns[j].ls.fd == fds[i].fd)
				break;
		if (j == CIMD_ADMIN_CONNS_MAX)
			continue;
		if (fds[i].revents & POLLOUT) {
			if (conn_write(&srv->conns[j]) < 0)
				conn_close(srv, &srv->conns[j]);
		} else if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
			conn_read(&srv->conns[j]);
	}
	slow_poll(srv);
	for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++) {
		struct conn *c = &srv->conns[j];
		if (c->ls.fd < 0)
			continue;
		conn_handle(srv, c);
		/* Idle too long, or a line begun and not finished in time; one that
		 * waits on a slow request waits on us. */
		if ((c->ls.closing && c->ls.out_len == 0) ||
		    (c->slow == SLOW_NONE &&
		     ls_conn_stalled(&c->ls, now, CIMD_ADMIN_LINE_SEC, CIMD_ADMIN_IDLE_SEC)))
			conn_close(srv, c);
	}
	if (n > 0 && (fds[0].revents & POLLIN))
		accept_one(srv);
	if (ls_refusal_due(&srv->refusals, now, CIMD_REFUSAL_LOG_SEC, &more))
		log_warn("admin: %lu more connections refused by the caps since the last such "
			 "message (the latest from uid %d)",
			 more, (int)srv->refusals.last_uid);
}
