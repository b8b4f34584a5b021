/*
 * lineserv.c — what the admin socket (admin.c) and the signing socket
 * (sign_io.c) share as line servers (docs/protocol.md: newline-delimited JSON,
 * one request per line): accepting with the peer's credentials from the kernel
 * (SO_PEERCRED) and a cap of connections per uid, reading lines into a buffer
 * of the line cap plus one byte (so an over-long line is seen without reading
 * further), queueing and writing answers; refused connections counted, so that
 * a connect loop writes a log line per interval rather than one per connection.
 *
 * What stays with each socket, because it differs on purpose:
 *   - the wait: the admin socket is polled by the main thread, whose handlers
 *     own the store and the custody state; the signing socket has an epoll
 *     thread of its own with a job in flight per connection;
 *   - the slots: 32 admin connections scanned, 8192 signing ones in a free list;
 *   - the caps: an admin stranger holds one connection for one answer, an
 *     operator a few; a signing uid up to CIMD_SIGN_CONNS_PER_UID;
 *   - the answers: the admin socket's are built by jansson, the signer's by
 *     hand on its hot path, and the over-long line's words differ.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service.h"

/* ---- connections per uid ---- */

int ls_uids_init(struct ls_uids *u, size_t cap)
{
	if ((u->v = calloc(cap, sizeof(*u->v))) == NULL)
		return -ENOMEM;
	u->n = 0;
	u->cap = cap;
	return 0;
}

void ls_uids_free(struct ls_uids *u)
{
	free(u->v);
	u->v = NULL;
	u->n = u->cap = 0;
}

static int uid_find(const struct ls_uids *u, uid_t uid, size_t *ret_pos)
{
	size_t lo = 0, hi = u->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (u->v[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	*ret_pos = lo;
	return lo < u->n && u->v[lo].uid == uid;
}

unsigned ls_uids_count(const struct ls_uids *u, uid_t uid)
{
	size_t pos;

	return uid_find(u, uid, &pos) ? u->v[pos].n : 0;
}

int ls_uids_take(struct ls_uids *u, uid_t uid, unsigned max)
{
	size_t pos;

	if (uid_find(u, uid, &pos)) {
		if (u->v[pos].n >= max)
			return 0;
		u->v[pos].n++;
		return 1;
	}
	/* Never full: there are no more uids than connections. */
	if (max == 0 || u->n == u->cap)
		return 0;
	memmove(&u->v[pos + 1], &u->v[pos], (u->n - pos) * sizeof(u->v[0]));
	u->v[pos] = (struct ls_uid_count){uid, 1};
	u->n++;
	return 1;
}

void ls_uids_release(struct ls_uids *u, uid_t uid)
{
	size_t pos;

	if (!uid_find(u, uid, &pos))
		return;
	if (--u->v[pos].n == 0) {
		memmove(&u->v[pos], &u->v[pos + 1], (u->n - pos - 1) * sizeof(u->v[0]));
		u->n--;
	}
}

/* ---- refusals, logged once per interval ---- */

int ls_refusal_note(struct ls_refusals *r, uid_t uid, time_t now, long interval)
{
	r->last_uid = uid;
	if (r->n == 0 && now - r->since >= interval) {
		r->since = now;
		return 1;
	}
	r->n++;
	return 0;
}

int ls_refusal_due(struct ls_refusals *r, time_t now, long interval, unsigned long *ret_n)
{
	if (r->n == 0 || now - r->since < interval)
		return 0;
	*ret_n = r->n;
	r->n = 0;
	r->since = now; /* the next interval counts from this line */
	return 1;
}

/* ---- connections ---- */

int ls_accept(int lfd, int *ret_fd, struct ucred *ret_cred)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd;

	if ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	/* Who the kernel says connected, never what the peer claims. */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		close(fd);
		return -ENOTCONN;
	}
	*ret_fd = fd;
	*ret_cred = cred;
	return 0;
}

void ls_conn_open(struct ls_conn *c, int fd, const struct ucred *cred, time_t now)
{
	*c = (struct ls_conn){.fd = fd, .cred = *cred, .last = now};
}

void ls_conn_close(struct ls_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->in);
	free(c->out);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

int ls_conn_read(struct ls_conn *c, size_t max, time_t now)
{
	ssize_t n;

	if (c->in == NULL && (c->in = malloc(max + 1)) == NULL)
		return -ENOMEM;
	n = read(c->fd, c->in + c->in_len, max + 1 - c->in_len);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	if (n == 0)
		return -ECONNRESET;
	if (c->in_len == 0)
		c->line_start = now;
	c->in_len += (size_t)n;
	c->last = now;
	return (int)n;
}

const char *ls_conn_line(const struct ls_conn *c, size_t *ret_len)
{
	const char *nl;

	if (c->in_len == 0 || (nl = memchr(c->in, '\n', c->in_len)) == NULL)
		return NULL;
	*ret_len = (size_t)(nl - c->in);
	return c->in;
}

void ls_conn_consume(struct ls_conn *c, size_t len, time_t now)
{
	memmove(c->in, c->in + len + 1, c->in_len - len - 1);
	c->in_len -= len + 1;
	/* What remains is the start of the next line, begun now. */
	c->line_start = c->in_len > 0 ? now : 0;
}

int ls_conn_overlong(const struct ls_conn *c, size_t max)
{
	return c->in_len > max && memchr(c->in, '\n', c->in_len) == NULL;
}

int ls_conn_stalled(const struct ls_conn *c, time_t now, long line_sec, long idle_sec)
{
	/* A stalled writer holds a connection no longer than line_sec. */
	return (c->in_len > 0 && now - c->line_start > line_sec) || now - c->last > idle_sec;
}

int ls_conn_send(struct ls_conn *c, const char *text, size_t n)
{
	char *o;

	if ((o = realloc(c->out, c->out_len + n)) == NULL)
		return -ENOMEM;
	memcpy(o + c->out_len, text, n);
	c->out = o;
	c->out_len += n;
	return 0;
}

int ls_conn_flush(struct ls_conn *c)
{
	size_t done = 0;
	ssize_t n;

	while (c->out_off < c->out_len) {
		/* MSG_NOSIGNAL: a peer gone is this connection's end, not a SIGPIPE. */
		n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return (int)(done > 0);
		if (n <= 0)
			return -EPIPE;
		c->out_off += (size_t)n;
		done += (size_t)n;
	}
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = 0;
	return (int)(done > 0);
}
