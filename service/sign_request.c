/*
 * sign_request.c — one request line of the signing socket (docs/protocol.md,
 * "Signing socket"), parsed and checked before any policy is looked at.
 *
 * A pure function of its bytes and the configured lifetime cap: no I/O, no
 * state, so that it can be fuzzed on its own (tests/fuzz/fuzz_sign_request.c).
 * The line is one JSON object (RFC 8259) with exactly the members op,
 * client_id, aud and ttl: duplicates, other members, invalid UTF-8 and a NUL
 * escape are refused by the JSON parser itself (JSON_REJECT_DUPLICATES; jansson
 * rejects both without JSON_ALLOW_NUL).  Every refusal has its own message.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "service.h"

static const char *const members[] = {"op", "client_id", "aud", "ttl"};
static const char *const receipt_members[] = {"op", "jti"};
#define N_MEMBERS (sizeof(members) / sizeof(members[0]))

static int refuse(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(char *msg, size_t msglen, const char *fmt, ...)
{
	va_list ap;

	if (msg != NULL && msglen > 0) {
		va_start(ap, fmt);
		vsnprintf(msg, msglen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

int sign_request_parse(const char *line, size_t len, long max_ttl, struct sign_request *ret_req,
		       char *msg, size_t msglen)
{
	const char *op, *key;
	json_error_t jerr;
	json_t *req, *v;
	long ttl = 0;
	size_t i;
	int r;

	if (line == NULL || ret_req == NULL)
		return refuse(msg, msglen, "no request");
	/* The socket caps a line before it gets here; the cap holds for every caller. */
	if (len > CIMD_SIGN_LINE_MAX)
		return refuse(msg, msglen, "a request line is at most %d bytes",
			      CIMD_SIGN_LINE_MAX);
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(req)) {
		r = refuse(msg, msglen, "not a JSON object: %s", req ? "" : jerr.text);
		goto out;
	}
	if ((op = json_string_value(json_object_get(req, "op"))) == NULL) {
		r = refuse(msg, msglen, "op %s",
			   json_object_get(req, "op") ? "must be a string" : "is missing");
		goto out;
	}
	if (strcmp(op, "assert") != 0 && strcmp(op, "receipt") != 0) {
		r = refuse(msg, msglen, "unknown op \"%.64s\"", op);
		goto out;
	}
	json_object_foreach(req, key, v)
	{
		const char *const *m = op[0] == 'a' ? members : receipt_members;
		size_t n = op[0] == 'a' ? N_MEMBERS : 2;

		for (i = 0; i < n; i++)
			if (strcmp(key, m[i]) == 0)
				break;
		if (i == n) {
			r = refuse(msg, msglen, "unknown member \"%.64s\" for op %s", key, op);
			goto out;
		}
	}
	/* {"op":"receipt","jti":"..."}: the proof of an assertion issued before. */
	if (op[0] == 'r') {
		v = json_object_get(req, "jti");
		if (!json_is_string(v) || json_string_length(v) == 0 ||
		    json_string_length(v) > CIMD_JTI_MAX) {
			r = refuse(msg, msglen, "jti %s",
				   v == NULL ? "is missing"
					     : "must be the string an assertion carried");
			goto out;
		}
		ret_req->json = req;
		ret_req->op = SIGN_OP_RECEIPT;
		ret_req->jti = json_string_value(v);
		ret_req->client_id = ret_req->aud = NULL;
		ret_req->ttl = 0;
		req = NULL;
		r = 0;
		goto out;
	}
	for (i = 1; i <= 2; i++) {
		v = json_object_get(req, members[i]);
		if (!json_is_string(v)) {
			r = refuse(msg, msglen, "%s %s", members[i],
				   v == NULL ? "is missing" : "must be a string");
			goto out;
		}
	}
	if ((v = json_object_get(req, "ttl")) != NULL) {
		if (!json_is_integer(v) || json_integer_value(v) < 1) {
			r = refuse(msg, msglen, "ttl must be a whole number of seconds");
			goto out;
		}
		if (json_integer_value(v) > max_ttl) {
			r = refuse(msg, msglen, "ttl %lld exceeds assertion_max_ttl (%ld)",
				   (long long)json_integer_value(v), max_ttl);
			goto out;
		}
		ttl = (long)json_integer_value(v);
	}
	ret_req->json = req;
	ret_req->op = SIGN_OP_ASSERT;
	ret_req->jti = NULL;
	ret_req->client_id = json_string_value(json_object_get(req, "client_id"));
	ret_req->aud = json_string_value(json_object_get(req, "aud"));
	ret_req->ttl = ttl;
	req = NULL;
	r = 0;
out:
	json_decref(req);
	return r;
}

void sign_request_clear(struct sign_request *req)
{
	if (req == NULL)
		return;
	json_decref(req->json);
	memset(req, 0, sizeof(*req));
}
