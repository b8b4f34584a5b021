/*
 * cimd.h — libcimd, the client of cimdd's signing socket.
 *
 * A workload asks the appliance for a fresh RFC 7523 client assertion and sends
 * it as client_assertion in its token request (docs/integration.md).  The
 * protocol is in docs/protocol.md; this library is one connection and one call.
 *
 *   struct cimd *c;
 *   char *jwt;
 *
 *   if (cimd_open(NULL, &c) != CIMD_OK) ... cimd_message(c) says why
 *   if (cimd_assert(c, client_id, aud, 0, &jwt, NULL) == CIMD_OK) {
 *           ... use jwt ...
 *           free(jwt);
 *   }
 *   cimd_close(&c);
 *
 * A connection is used by one thread at a time; open one per thread.  A
 * connection the daemon closed (a restart) is reopened once, transparently.
 */
#ifndef CIMD_H
#define CIMD_H

#ifdef __cplusplus
extern "C" {
#endif

/* Results.  The first group are the daemon's refusals (the request will not
 * succeed as it is); the second, conditions that may pass. */
enum cimd_status {
	CIMD_OK = 0,
	CIMD_BAD_REQUEST = 1,
	CIMD_TOO_LARGE = 2,
	CIMD_FORBIDDEN = 3,
	CIMD_UNKNOWN_CLIENT = 4,
	CIMD_AUDIENCE_NOT_ALLOWED = 5,
	CIMD_NO_ACTIVE_KEY = 6,
	CIMD_RATE_LIMITED = 7,
	CIMD_NOT_FOUND = 8, /* receipt: no such assertion issued to this uid */

	CIMD_BACKEND_UNAVAILABLE = 20,
	CIMD_INTERNAL = 21,
	CIMD_UNREACHABLE = 22, /* no daemon on the socket, or the connection broke */
	CIMD_PROTOCOL = 23,    /* the daemon's answer was not understood */
	CIMD_NOMEM = 24,
	CIMD_NOT_CHECKPOINTED = 25, /* receipt: not under a checkpoint yet; ask again */
};

/* What an assertion answer carries besides the assertion. */
struct cimd_info {
	char kid[64];
	char jti[64];
	long long exp; /* seconds since the epoch */
};

struct cimd;

/* The socket used when path is NULL: $CIMD_SIGN_SOCKET, else this. */
#define CIMD_DEFAULT_SOCKET "/run/cimdd/sign.sock"

/* Connects to the signing socket.  *ret is set even on failure (unless
 * CIMD_NOMEM), so that cimd_message can say why; close it either way. */
int cimd_open(const char *path, struct cimd **ret);
void cimd_close(struct cimd **c);

/* Asks for an assertion for client_id (its CIMD URL) to present to aud; ttl in
 * seconds, 0 for the client's policy.  On CIMD_OK *ret_assertion is the compact
 * JWS (free() it) and *ret_info, if not NULL, is filled. */
int cimd_assert(struct cimd *c, const char *client_id, const char *aud, long ttl,
		char **ret_assertion, struct cimd_info *ret_info);

/* The receipt of an assertion this process's uid was issued (its jti, from
 * cimd_info): on CIMD_OK *ret_receipt (free() it) is the JSON object
 * {"seq","leaf_index","tree_size","record","proof","checkpoint"}: the
 * assertion's journal record, its RFC 9162 inclusion proof and the signed
 * checkpoint it leads to (docs/audit.md).  CIMD_NOT_CHECKPOINTED until the
 * next checkpoint covers it. */
int cimd_receipt(struct cimd *c, const char *jti, char **ret_receipt);

/* The last failure's message (the daemon's, or the library's); never NULL. */
const char *cimd_message(const struct cimd *c);
/* The protocol's name of a status: "forbidden", "backend_unavailable", ... */
const char *cimd_status_name(int status);
/* Whether a status is a refusal (retrying the same request will not help). */
int cimd_status_refused(int status);

#ifdef __cplusplus
}
#endif

#endif /* CIMD_H */
