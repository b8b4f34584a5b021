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
#include <stdarg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "service.h"

/* An admin connection: the line server's (lineserv.c) and whether its uid is
 * no operator (one answer, then closed). */
struct conn {
	struct ls_conn ls;
	int stranger;
};

struct admin_server {
	struct svc *d;
	struct tlog *tlog;
	int lfd;
	char *path;
	struct conn conns[CIMD_ADMIN_CONNS_MAX];
	struct ls_uids uids; /* connections per uid */
};

/* The admin socket's codes are a subset of the protocol's (proto_err.c). */
const char *admin_err_name(enum admin_err e)
{
	return proto_err_name((enum proto_err)e);
}

/* The handler table: every operation, the role it needs, its wire handler
 * (admin_ops.c). */
static const struct {
	const char *op;
	unsigned role;
	enum admin_err (*fn)(struct admin_req *q);
} ops[] = {
    {"status", CIMD_ROLE_READ, admin_op_status},
    {"client.add", CIMD_ROLE_SUBMIT, admin_op_client_add},
    {"client.list", CIMD_ROLE_READ, admin_op_client_list},
    {"client.show", CIMD_ROLE_READ, admin_op_client_show},
    {"client.allow", CIMD_ROLE_SUBMIT, admin_op_client_allow},
    {"client.audience", CIMD_ROLE_SUBMIT, admin_op_client_audience},
    {"client.policy", CIMD_ROLE_SUBMIT, admin_op_client_policy},
    {"attest.show", CIMD_ROLE_READ, admin_op_attest_show},
    {"attest_key.rotate", CIMD_ROLE_ROTATE, admin_op_attest_key_rotate},
    {"doc.submit", CIMD_ROLE_SUBMIT, admin_op_doc_submit},
    {"doc.approve", CIMD_ROLE_APPROVE, admin_op_doc_approve},
    {"doc.show", CIMD_ROLE_READ, admin_op_doc_show},
    {"key.list", CIMD_ROLE_READ, admin_op_key_list},
    {"key.rotate", CIMD_ROLE_ROTATE, admin_op_key_rotate},
    {"key.activate", CIMD_ROLE_ROTATE, admin_op_key_activate},
    {"key.revoke", CIMD_ROLE_REVOKE, admin_op_key_revoke},
    {"journal.show", CIMD_ROLE_READ, admin_op_journal_show},
    {"journal.verify", CIMD_ROLE_READ, admin_op_journal_verify},
    {"journal.prove", CIMD_ROLE_READ, admin_op_journal_prove},
    {"journal.consistency", CIMD_ROLE_READ, admin_op_journal_consistency},
    {"audit.export", CIMD_ROLE_READ, admin_op_audit_export},
};

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

/* Handles one request line; returns the response (without newline). */
static char *handle(struct admin_server *srv, const struct ucred *cr, const char *line, size_t len,
		    int *ret_close)
{
	struct svc *d = srv->d;
	struct admin_req q = {.d = d, .tlog = srv->tlog};
	const struct cimd_operator *op;
	struct cimd_operator stranger = {0};
	const char *opname = NULL;
	json_t *req = NULL, *resp;
	enum admin_err e;
	char *out;
	size_t i;

	/* Who asks is known before what is asked: even a malformed request is
	 * journaled under its operator's name. */
	q.op = config_operator(d->cfg, cr->uid);
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
	if (req == NULL || !json_is_object(req) ||
	    (opname = json_string_value(json_object_get(req, "op"))) == NULL) {
		e = AE_BAD_REQUEST;
		snprintf(q.msg, sizeof(q.msg), "expected a JSON object with an \"op\" member");
		opname = NULL;
		*ret_close = 1; /* a malformed message ends the connection (STYLE.md 7) */
		goto done;
	}
	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(ops[i].op, opname) == 0)
			break;
	if (i == sizeof(ops) / sizeof(ops[0])) {
		e = AE_BAD_REQUEST;
		snprintf(q.msg, sizeof(q.msg), "unknown operation '%.40s'", opname);
		goto done;
	}
	if ((op = q.op) == NULL) {
		e = AE_FORBIDDEN;
		snprintf(q.msg, sizeof(q.msg), "uid %d is not an operator of this appliance",
			 (int)cr->uid);
		goto done;
	}
	q.op = op;
	if (!(op->roles & ops[i].role)) {
		char have[64], need[64];
		e = AE_FORBIDDEN;
		snprintf(q.msg, sizeof(q.msg), "operator %s (roles %s) lacks the %s role for %s",
			 op->name, config_roles_str(op->roles, have, sizeof(have)),
			 config_roles_str(ops[i].role, need, sizeof(need)), opname);
		goto done;
	}
	q.args = req;
	e = ops[i].fn(&q);
done:
	if (q.op == NULL) {
		snprintf(stranger.name, sizeof(stranger.name), "uid:%d", (int)cr->uid);
		q.op = &stranger;
	}
	if (e == AE_BACKEND_UNAVAILABLE)
		custody_failed(d->custody);
	journal_request(d, q.op->name, cr, opname, req, e);
	if (e != AE_OK) {
		log_info("admin: %s: %s refused (%s): %s", q.op->name, opname ? opname : "request",
			 admin_err_name(e), q.msg);
		resp = json_pack("{sbssss}", "ok", 0, "error", admin_err_name(e), "message", q.msg);
	} else {
		resp = json_pack("{sb}", "ok", 1);
		if (q.result != NULL)
			json_object_update(resp, q.result);
		if (q.msg[0] != '\0')
			json_object_set_new(resp, "message", json_string(q.msg));
	}
	json_decref(q.result);
	json_decref(req);
	out = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
	json_decref(resp);
	return out;
}

static void conn_close(struct admin_server *srv, struct conn *c)
{
	ls_uids_release(&srv->uids, c->ls.cred.uid);
	ls_conn_close(&c->ls);
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
 * the daemon buffer answers without bound or starve the others. */
static void conn_handle(struct admin_server *srv, struct conn *c)
{
	const char *line;
	size_t len;

	if (c->ls.closing || c->ls.out_len != 0 || (line = ls_conn_line(&c->ls, &len)) == NULL)
		return;
	queue(c, handle(srv, &c->ls.cred, line, len, &c->ls.closing));
	ls_conn_consume(&c->ls, len, time(NULL));
	if (c->stranger)
		c->ls.closing = 1;
}

int admin_server_busy(const struct admin_server *srv)
{
	size_t j, len;

	for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++) {
		const struct conn *c = &srv->conns[j];
		if (c->ls.fd >= 0 && !c->ls.closing && c->ls.out_len == 0 &&
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
		log_warn("admin: %d connections open; refusing another", CIMD_ADMIN_CONNS_MAX);
		close(fd);
		return;
	}
	/* Bounded per uid, so that one uid cannot take every connection: an
	 * operator may hold a few; a stranger one, for one answer. */
	stranger = config_operator(srv->d->cfg, cred.uid) == NULL;
	same = ls_uids_count(&srv->uids, cred.uid);
	if (!ls_uids_take(&srv->uids, cred.uid, stranger ? 1 : CIMD_ADMIN_CONNS_PER_UID)) {
		log_warn("admin: uid %d holds %u connections; refusing another", (int)cred.uid,
			 same);
		close(fd);
		return;
	}
	ls_conn_open(&c->ls, fd, &cred, time(NULL));
	c->ls.line_start = c->ls.last;
	c->stranger = stranger;
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
	for (i = 0; i < CIMD_ADMIN_CONNS_MAX; i++)
		srv->conns[i].ls.fd = -1;
	if (ls_uids_init(&srv->uids, CIMD_ADMIN_CONNS_MAX) < 0) {
		free(srv);
		return -ENOMEM;
	}
	if ((r = unix_listen(d->cfg->admin_socket, d->cfg->admin_socket_mode,
			     d->cfg->admin_socket_gid, 16, &srv->lfd, err, errlen)) < 0) {
		ls_uids_free(&srv->uids);
		free(srv);
		return r;
	}
	if ((srv->path = strdup(d->cfg->admin_socket)) == NULL) {
		close(srv->lfd);
		unlink(d->cfg->admin_socket);
		ls_uids_free(&srv->uids);
		free(srv);
		return -ENOMEM;
	}
	*ret = srv;
	return 0;
}

void admin_server_free(struct admin_server **psrv)
{
	struct admin_server *srv = *psrv;
	size_t i;

	if (srv == NULL)
		return;
	for (i = 0; i < CIMD_ADMIN_CONNS_MAX; i++)
		if (srv->conns[i].ls.fd >= 0)
			conn_close(srv, &srv->conns[i]);
	close(srv->lfd);
	unlink(srv->path);
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
		if (c->ls.fd < 0)
			continue;
		/* Stop reading while answers are pending: a peer that never reads
		 * cannot make us buffer without bound. */
		fds[n++] =
		    (struct pollfd){.fd = c->ls.fd, .events = c->ls.out_len ? POLLOUT : POLLIN};
	}
	return n;
}

void admin_server_dispatch(struct admin_server *srv, const struct pollfd *fds, size_t n)
{
	time_t now = time(NULL);
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
	for (j = 0; j < CIMD_ADMIN_CONNS_MAX; j++) {
		struct conn *c = &srv->conns[j];
		if (c->ls.fd < 0)
			continue;
		conn_handle(srv, c);
		/* Idle too long, or a line begun and not finished in time. */
		if ((c->ls.closing && c->ls.out_len == 0) ||
		    ls_conn_stalled(&c->ls, now, CIMD_ADMIN_LINE_SEC, CIMD_ADMIN_IDLE_SEC))
			conn_close(srv, c);
	}
	if (n > 0 && (fds[0].revents & POLLIN))
		accept_one(srv);
}
