/*
 * test_lineserv — the two halves of the line protocol over a socket pair: the
 * daemon's bounded line server (service/lineserv.c) and the clients' line I/O
 * (tools/lineio.c), and the one table of the protocol's error names
 * (service/proto_err.c) against docs/protocol.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "lineio.h"
#include "service.h"

static void test_names(void)
{
	/* docs/protocol.md: the signing socket's, then the admin socket's own. */
	static const struct {
		enum proto_err e;
		const char *name;
	} want[] = {
	    {PE_OK, "ok"},
	    {PE_BAD_REQUEST, "bad_request"},
	    {PE_TOO_LARGE, "too_large"},
	    {PE_FORBIDDEN, "forbidden"},
	    {PE_UNKNOWN_CLIENT, "unknown_client"},
	    {PE_AUDIENCE, "audience_not_allowed"},
	    {PE_NO_ACTIVE_KEY, "no_active_key"},
	    {PE_UNAVAILABLE, "backend_unavailable"},
	    {PE_RATE_LIMITED, "rate_limited"},
	    {PE_INTERNAL, "internal"},
	    {PE_NOT_FOUND, "not_found"},
	    {PE_NOT_CHECKPOINTED, "not_checkpointed"},
	    {PE_CONFLICT, "conflict"},
	    {PE_INVALID_DOCUMENT, "invalid_document"},
	};
	size_t i, bad = 0;

	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (strcmp(proto_err_name(want[i].e), want[i].name) != 0) {
			printf("# %d: %s, not %s\n", (int)want[i].e, proto_err_name(want[i].e),
			       want[i].name);
			bad++;
		}
	t_ok(bad == 0 && sizeof(want) / sizeof(want[0]) == PE_N,
	     "every protocol error has its documented name (%zu wrong)", bad);
	t_ok(strcmp(proto_err_name(PE_N), "internal") == 0 &&
		 strcmp(proto_err_name((enum proto_err) - 1), "internal") == 0,
	     "a code out of range is named internal");
	/* admin_err_name is proto_err_name of the code (admin.c). */
	t_ok(strcmp(proto_err_name((enum proto_err)AE_BACKEND_UNAVAILABLE),
		    "backend_unavailable") == 0 &&
		 strcmp(proto_err_name((enum proto_err)AE_CONFLICT), "conflict") == 0 &&
		 strcmp(proto_err_name((enum proto_err)AE_INVALID_DOCUMENT), "invalid_document") ==
		     0 &&
		 strcmp(proto_err_name((enum proto_err)AE_NOT_FOUND), "not_found") == 0 &&
		 strcmp(proto_err_name((enum proto_err)AE_INTERNAL), "internal") == 0,
	     "the admin socket's codes are the same table's");
}

static void test_uids(void)
{
	struct ls_uids u;
	int ok;

	if (!t_ok(ls_uids_init(&u, 3) == 0, "a table for 3 uids"))
		return;
	ok = ls_uids_take(&u, 1000, 2) && ls_uids_take(&u, 1000, 2) && !ls_uids_take(&u, 1000, 2);
	t_ok(ok && ls_uids_count(&u, 1000) == 2, "a uid is held to its cap (2)");
	ok = ls_uids_take(&u, 5, 1) && ls_uids_take(&u, 70000, 1) && !ls_uids_take(&u, 6, 1);
	t_ok(ok && ls_uids_count(&u, 5) == 1 && ls_uids_count(&u, 70000) == 1 &&
		 ls_uids_count(&u, 6) == 0,
	     "uids are counted apart; a fourth does not fit a table of three");
	ls_uids_release(&u, 1000);
	ls_uids_release(&u, 5);
	ls_uids_release(&u, 42); /* never taken: nothing happens */
	t_ok(ls_uids_count(&u, 1000) == 1 && ls_uids_count(&u, 5) == 0 && ls_uids_take(&u, 6, 1) &&
		 ls_uids_count(&u, 70000) == 1,
	     "released, a connection makes room again");
	ls_uids_free(&u);
}

/* The server's end of a socket pair as a line server connection. */
static int pair(struct ls_conn *c, int *ret_client)
{
	struct ucred cred = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	ls_conn_open(c, sv[0], &cred, time(NULL));
	*ret_client = sv[1];
	return 0;
}

static void test_lines(void)
{
	struct lineio_buf b = {0};
	struct ls_conn c;
	const char *line;
	char big[200];
	size_t len = 0;
	int fd = -1, r;

	if (!t_ok(pair(&c, &fd) == 0, "a socket pair"))
		return;
	t_ok(ls_conn_read(&c, 64, time(NULL)) == -EAGAIN, "nothing sent: the server would wait");
	r = lineio_send(fd, "{\"op\":\"a\"}\n{\"op\"", 16, 1000);
	t_ok(r == 0 && ls_conn_read(&c, 64, time(NULL)) == 16, "a line and a half arrive");
	line = ls_conn_line(&c, &len);
	t_ok(line != NULL && len == 10 && memcmp(line, "{\"op\":\"a\"}", 10) == 0,
	     "the first line is complete, without its newline");
	ls_conn_consume(&c, len, time(NULL));
	t_ok(ls_conn_line(&c, &len) == NULL && c.in_len == 5 && c.line_start != 0,
	     "the rest waits for its newline, its clock running");
	t_ok(ls_conn_send(&c, "{\"ok\":true}\n", 12) == 0 && ls_conn_flush(&c) == 1 &&
		 c.out_len == 0,
	     "an answer is queued and written");
	r = lineio_read(fd, &b, 64, 1000, &len);
	t_ok(r == 0 && len == 11 && strcmp(b.buf, "{\"ok\":true}") == 0,
	     "the client reads the answer line");
	t_ok(lineio_read(fd, &b, 64, 50, &len) == -ETIMEDOUT, "no answer: a timeout, not a hang");
	t_ok(!ls_conn_overlong(&c, 64), "a short unfinished line is not over the cap");
	memset(big, 'x', sizeof(big));
	lineio_send(fd, big, 100, 1000);
	t_ok(ls_conn_read(&c, 64, time(NULL)) == 60 && ls_conn_overlong(&c, 64),
	     "at most cap + 1 bytes are read, and a line without a newline by then is over it");
	t_ok(ls_conn_stalled(&c, time(NULL) + 6, 5, 60) && !ls_conn_stalled(&c, time(NULL), 5, 60),
	     "an unfinished line stalls after its time");

	/* The client's cap: an answer longer than max is refused, not cut. */
	memset(big, 'y', sizeof(big));
	big[150] = '\n';
	t_ok(ls_conn_send(&c, big, 151) == 0 && ls_conn_flush(&c) == 1, "a 150-byte answer");
	t_ok(lineio_read(fd, &b, 100, 1000, &len) == -EMSGSIZE,
	     "a client with a cap of 100 refuses it");
	ls_conn_close(&c);
	t_ok(c.fd == -1 && c.in == NULL && c.out == NULL, "closed, the slot is free");
	t_ok(lineio_read(fd, &b, 100, 1000, &len) == 0 && len == 50,
	     "what came after the refused part is a line of its own (50 bytes)");
	t_ok(lineio_read(fd, &b, 100, 1000, &len) == -ECONNRESET && b.len == 0,
	     "the server gone before answering: the connection is reset, nothing read");
	t_ok(lineio_send(fd, "x\n", 2, 1000) == -EPIPE,
	     "and a request cannot be sent (no SIGPIPE)");
	close(fd);
	lineio_buf_free(&b);
}

int main(void)
{
	test_names();
	test_uids();
	test_lines();
	return t_done();
}
