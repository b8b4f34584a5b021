/*
 * libcimd.c — client of the signing socket (docs/protocol.md, "Signing
 * socket"): one request line out, one answer line back.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "cimd.h"
#include "lineio.h"

#define LINE_MAX_IN (64 * 1024) /* an answer; assertions are far smaller */
#define ANSWER_MS 10000		/* the daemon answers within its deadlines */

struct cimd {
	int fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char msg[512];
	struct lineio_buf in; /* the answer being read */
};

static const struct {
	int status;
	const char *name;
} names[] = {
    {CIMD_OK, "ok"},
    {CIMD_BAD_REQUEST, "bad_request"},
    {CIMD_TOO_LARGE, "too_large"},
    {CIMD_FORBIDDEN, "forbidden"},
    {CIMD_UNKNOWN_CLIENT, "unknown_client"},
    {CIMD_AUDIENCE_NOT_ALLOWED, "audience_not_allowed"},
    {CIMD_NO_ACTIVE_KEY, "no_active_key"},
    {CIMD_RATE_LIMITED, "rate_limited"},
    {CIMD_NOT_FOUND, "not_found"},
    {CIMD_NOT_CHECKPOINTED, "not_checkpointed"},
    {CIMD_BACKEND_UNAVAILABLE, "backend_unavailable"},
    {CIMD_INTERNAL, "internal"},
    {CIMD_UNREACHABLE, "unreachable"},
    {CIMD_PROTOCOL, "protocol"},
    {CIMD_NOMEM, "nomem"},
};

const char *cimd_status_name(int status)
{
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].status == status)
			return names[i].name;
	return "unknown";
}

int cimd_status_refused(int status)
{
	return status >= CIMD_BAD_REQUEST && status <= CIMD_NOT_FOUND;
}

static int status_of(const char *name)
{
	size_t i;

	for (i = 0; name != NULL && i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(names[i].name, name) == 0 && names[i].status != CIMD_UNREACHABLE &&
		    names[i].status != CIMD_PROTOCOL && names[i].status != CIMD_NOMEM)
			return names[i].status;
	return CIMD_PROTOCOL;
}

static int fail(struct cimd *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct cimd *c, int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
	va_end(ap);
	return status;
}

static void disconnect(struct cimd *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->in.len = 0;
}

static int connect_to(struct cimd *c)
{
	int r;

	if ((r = lineio_connect(c->path, &c->fd)) < 0) {
		c->fd = -1;
		snprintf(c->msg, sizeof(c->msg), "%s: %s", c->path, strerror(-r));
		return CIMD_UNREACHABLE;
	}
	return CIMD_OK;
}

int cimd_open(const char *path, struct cimd **ret)
{
	struct cimd *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return CIMD_NOMEM;
	c->fd = -1;
	*ret = c;
	if (path == NULL && (path = getenv("CIMD_SIGN_SOCKET")) == NULL)
		path = CIMD_DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(c->path))
		return fail(c, CIMD_UNREACHABLE, "socket path too long: %s", path);
	memcpy(c->path, path, strlen(path) + 1);
	return connect_to(c);
}

void cimd_close(struct cimd **pc)
{
	struct cimd *c = *pc;

	if (c == NULL)
		return;
	disconnect(c);
	lineio_buf_free(&c->in);
	free(c);
	*pc = NULL;
}

const char *cimd_message(const struct cimd *c)
{
	return c != NULL ? c->msg : "out of memory";
}

/* One answer line into *ret_line (NUL-terminated, inside c->in). */
static int read_line(struct cimd *c, char **ret_line)
{
	size_t len;
	int r;

	switch ((r = lineio_read(c->fd, &c->in, LINE_MAX_IN, ANSWER_MS, &len))) {
	case 0:
		*ret_line = c->in.buf;
		return CIMD_OK;
	case -ENOMEM:
		return CIMD_NOMEM;
	case -EMSGSIZE:
		return fail(c, CIMD_PROTOCOL, "%s", "answer line too long");
	case -ETIMEDOUT:
		return fail(c, CIMD_UNREACHABLE, "%s", "no answer from the daemon");
	default:
		return fail(c, CIMD_UNREACHABLE, "%s", "the daemon closed the connection");
	}
}

/* Sends req and reads the answer; one reconnection when the connection had
 * been closed before anything of the answer arrived. */
static int exchange(struct cimd *c, const char *req, json_t **ret_answer)
{
	json_error_t jerr;
	char *line = NULL;
	int attempt, r = CIMD_UNREACHABLE;

	for (attempt = 0; attempt < 2; attempt++) {
		if (c->fd < 0 && (r = connect_to(c)) != CIMD_OK)
			return r;
		if ((r = lineio_send(c->fd, req, strlen(req), -1)) < 0) {
			r = fail(c, CIMD_UNREACHABLE, "send: %s", strerror(-r));
			disconnect(c);
			continue;
		}
		if ((r = read_line(c, &line)) != CIMD_OK) {
			int retry = r == CIMD_UNREACHABLE && c->in.len == 0;

			disconnect(c);
			if (retry)
				continue;
			return r;
		}
		if ((*ret_answer = json_loads(line, JSON_REJECT_DUPLICATES, &jerr)) == NULL ||
		    !json_is_object(*ret_answer)) {
			json_decref(*ret_answer);
			disconnect(c);
			return fail(c, CIMD_PROTOCOL, "answer not understood: %s", jerr.text);
		}
		return CIMD_OK;
	}
	return r;
}

/* Sends req as one line and takes the answer; a refusal becomes its status
 * with the daemon's words in c->msg.  *ret_answer (ok:true) on CIMD_OK. */
static int request(struct cimd *c, const json_t *req, json_t **ret_answer)
{
	const char *err, *msg;
	char *line = NULL, *copy;
	json_t *ans = NULL;
	size_t n;
	int r;

	if (req == NULL || (line = json_dumps(req, JSON_COMPACT)) == NULL)
		return fail(c, CIMD_NOMEM, "%s", "out of memory");
	n = strlen(line);
	if ((copy = realloc(line, n + 2)) == NULL) {
		free(line);
		return fail(c, CIMD_NOMEM, "%s", "out of memory");
	}
	line = copy;
	memcpy(line + n, "\n", 2);
	r = exchange(c, line, &ans);
	free(line);
	if (r != CIMD_OK)
		return r;
	if (!json_is_true(json_object_get(ans, "ok"))) {
		err = json_string_value(json_object_get(ans, "error"));
		msg = json_string_value(json_object_get(ans, "message"));
		snprintf(c->msg, sizeof(c->msg), "%s: %s", err ? err : "error", msg ? msg : "");
		r = status_of(err); /* before err goes with ans */
		json_decref(ans);
		return r;
	}
	*ret_answer = ans;
	return CIMD_OK;
}

int cimd_assert(struct cimd *c, const char *client_id, const char *aud, long ttl,
		char **ret_assertion, struct cimd_info *ret_info)
{
	json_t *req = NULL, *ans = NULL;
	const char *jws;
	char *copy;
	int r;

	if (c == NULL)
		return CIMD_NOMEM;
	if (client_id == NULL || aud == NULL || ttl < 0)
		return fail(c, CIMD_BAD_REQUEST, "%s", "client_id and aud are required");
	req = json_pack("{ssssss}", "op", "assert", "client_id", client_id, "aud", aud);
	if (req != NULL && ttl > 0)
		json_object_set_new(req, "ttl", json_integer(ttl));
	if ((r = request(c, req, &ans)) != CIMD_OK)
		goto out;
	if ((jws = json_string_value(json_object_get(ans, "assertion"))) == NULL) {
		r = fail(c, CIMD_PROTOCOL, "%s", "an answer without an assertion");
		goto out;
	}
	if ((copy = strdup(jws)) == NULL) {
		r = fail(c, CIMD_NOMEM, "%s", "out of memory");
		goto out;
	}
	if (ret_info != NULL) {
		const char *kid = json_string_value(json_object_get(ans, "kid"));
		const char *jti = json_string_value(json_object_get(ans, "jti"));

		snprintf(ret_info->kid, sizeof(ret_info->kid), "%s", kid ? kid : "");
		snprintf(ret_info->jti, sizeof(ret_info->jti), "%s", jti ? jti : "");
		ret_info->exp = (long long)json_integer_value(json_object_get(ans, "exp"));
	}
	c->msg[0] = '\0';
	*ret_assertion = copy;
	r = CIMD_OK;
out:
	json_decref(req);
	json_decref(ans);
	return r;
}

int cimd_receipt(struct cimd *c, const char *jti, char **ret_receipt)
{
	json_t *req = NULL, *ans = NULL;
	char *copy;
	int r;

	if (c == NULL)
		return CIMD_NOMEM;
	if (jti == NULL || *jti == '\0')
		return fail(c, CIMD_BAD_REQUEST, "%s", "a jti is required");
	req = json_pack("{ssss}", "op", "receipt", "jti", jti);
	if ((r = request(c, req, &ans)) != CIMD_OK)
		goto out;
	if (!json_is_object(json_object_get(ans, "receipt")) ||
	    (copy = json_dumps(json_object_get(ans, "receipt"), JSON_COMPACT)) == NULL) {
		r = fail(c, CIMD_PROTOCOL, "%s", "an answer without a receipt");
		goto out;
	}
	c->msg[0] = '\0';
	*ret_receipt = copy;
	r = CIMD_OK;
out:
	json_decref(req);
	json_decref(ans);
	return r;
}
