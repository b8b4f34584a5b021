/*
 * publisher.h — cimdd-publisher's one internal header.
 *
 * cimdd-publisher is the network-facing program that the custody process
 * (service/publish.c) execs: it serves pre-rendered public bytes over HTTPS and
 * holds no key handle and no database handle.  It links the publication
 * channel's codec (codec/), libmicrohttpd (GnuTLS) and libseccomp, and never
 * service/ or firmware/: none of their headers may be included here, so that
 * no custody library (libp11, tss2, SQLite, OpenSSL, jansson) ends up in its
 * image (tests/test_publisher.c checks the image).
 *
 *   bounds                                                    (below)
 *   messages to stderr                                        (log.c)
 *   the request rules, pure and fuzzed                        (request.c)
 *   privileges and the seccomp filter                         (confine.c)
 *   arguments, the channel, the table, serving               (publisher.c)
 */
#ifndef CIMD_PUBLISHER_H
#define CIMD_PUBLISHER_H

/* ---- bounds: what a peer on the network controls is capped here ---- */

#define PUB_PATH_MAX 1024
#define PUB_CONNS_MAX 1024   /* connections at once */
#define PUB_CONNS_PER_IP 64  /* from one address */
#define PUB_TIMEOUT_SEC 10   /* idle or slow connection */
#define PUB_CONN_MEMORY 8192 /* per-connection memory: request line and headers */
#define PUB_THREADS 2

/* ---- messages (log.c): stderr, one line each, as the custody process's
 * own in the foreground; the custody process's stderr is ours ---- */

void pub_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pub_log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- the request rules (request.c) ---- */

/* What the publisher decides from a request before any lookup, pure functions
 * of the request, fuzzed on their own (fuzz_http_path).  The route a path
 * counts under in the metrics: */
enum pub_route {
	PUB_ROUTE_DOCUMENT,
	PUB_ROUTE_JWKS,
	PUB_ROUTE_ATTESTATION,
	PUB_ROUTE_HEALTHZ,
	PUB_ROUTE_METRICS,
	PUB_ROUTE_OTHER,
	PUB_ROUTE_N
};
enum pub_route pub_route_of(const char *url);
/* 0 when the path may be looked up, else the HTTP status that refuses it: 405
 * for a method other than GET and HEAD, 400 for a body, 414 for a path longer
 * than 1 KiB, 400 for a path that is not "/" then [A-Za-z0-9/._-] without ".."
 * or "//" (so no '%': nothing is ever percent-decoded). */
int pub_request_check(const char *method, const char *url, int has_body);
/* If-None-Match (RFC 9110 §13.1.2) against a strong ETag: "*" or a list. */
int pub_etag_matches(const char *if_none_match, const char *etag);

/* ---- confinement (confine.c) ---- */

/* The user `nobody` when started as root, and the parent-death signal again:
 * 0, or -1. */
int pub_drop_privileges(void);
/* no_new_privs and the seccomp filter, for every thread: 0, or -1 (logged). */
int pub_confine(void);

#endif
