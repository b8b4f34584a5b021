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
 *   connections: admission, prefix caps, eviction             (conns.c)
 *   privileges and the seccomp filter                         (confine.c)
 *   arguments, the channel, the table, serving               (publisher.c)
 */
#ifndef CIMD_PUBLISHER_H
#define CIMD_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <microhttpd.h>

/* ---- bounds: what a peer on the network controls is capped here ---- */

#define PUB_PATH_MAX 1024
#define PUB_CONNS_MAX 1024	/* connections at once */
#define PUB_CONNS_RESERVE 128	/* the last of them: only for light prefixes */
#define PUB_CONNS_LIGHT 8	/* a prefix holding fewer is light */
#define PUB_CONNS_PER_PREFIX 64 /* from one /24 (IPv4) or /64 (IPv6) */
#define PUB_CONNS_SLACK 64	/* evicted, not yet closed by libmicrohttpd */
#define PUB_TIMEOUT_SEC 10	/* idle or slow connection */
#define PUB_CONN_MEMORY 8192	/* per-connection memory: request line and headers */
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
/* What the request's head held that libmicrohttpd folds away before the URL and
 * headers reach the handler: */
struct pub_request_head {
	int http11;		  /* HTTP/1.1 (else HTTP/1.0) */
	unsigned hosts;		  /* Host field lines */
	unsigned content_lengths; /* Content-Length field lines */
	int target_cut;		  /* a NUL byte ended the URL before the request target did */
};
/* 0 when the head is well formed, else 400: a request target with a NUL in it
 * (RFC 9112 §3.2: no CTL is allowed), an HTTP/1.1 request without Host or any
 * request with more than one (RFC 9112 §3.2), more than one Content-Length
 * (RFC 9112 §6.3: we refuse rather than guess which one frames the message). */
int pub_request_head_check(const struct pub_request_head *h);

/* ---- connections (conns.c) ---- */

/* The prefix a peer's connections are counted under: its /24 for IPv4 (and an
 * IPv4-mapped IPv6 address), its /64 for IPv6.  The key is a family byte and
 * the prefix's bytes, zero-padded.  0, or -EAFNOSUPPORT (then every such peer
 * shares one key). */
#define PUB_PREFIX_LEN 9
int pub_peer_prefix(const struct sockaddr *sa, socklen_t len, uint8_t ret_key[PUB_PREFIX_LEN]);

/*
 * Admission, as libmicrohttpd's callbacks (publisher.c passes them):
 *   - at most PUB_CONNS_PER_PREFIX connections from one prefix;
 *   - once PUB_CONNS_MAX - PUB_CONNS_RESERVE are open, only a light prefix
 *     (fewer than PUB_CONNS_LIGHT open) gets another: the reserve is for new
 *     peers;
 *   - when PUB_CONNS_MAX are open, a newcomer evicts the oldest idle
 *     connection (no request being answered) of the heaviest prefix.
 * pub_conns_accept is the accept policy (a cheap refusal before any TLS
 * state exists); pub_conns_notify tracks each connection from start to close
 * (and decides for good, under the lock); pub_conns_busy marks a connection
 * that is answering a request, pub_conns_done one that has finished it.
 */
enum MHD_Result pub_conns_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen);
void pub_conns_notify(void *cls, struct MHD_Connection *c, void **socket_context,
		      enum MHD_ConnectionNotificationCode code);
void pub_conns_busy(struct MHD_Connection *c);
void pub_conns_done(void *cls, struct MHD_Connection *c, void **con_cls,
		    enum MHD_RequestTerminationCode toe);
/* The raw request target's length as libmicrohttpd saw it, before any NUL cut
 * it (MHD_OPTION_URI_LOG_CALLBACK), and back in the handler. */
void *pub_conns_uri(void *cls, const char *uri, struct MHD_Connection *c);
size_t pub_conns_uri_len(struct MHD_Connection *c);
/* Counters for /metrics. */
struct pub_conns_stats {
	unsigned long open, refused_prefix, refused_reserve, refused_full, evicted;
};
void pub_conns_stats(struct pub_conns_stats *ret);

/* ---- confinement (confine.c) ---- */

/* cimdd-publish (else nobody) when started as root; then, whatever the way it
 * was started, refuses (-1, logged) to serve as root or with a capability in
 * any set; and the parent-death signal again: 0, or -1. */
int pub_drop_privileges(void);
/* no_new_privs and the seccomp filter, for every thread: 0, or -1 (logged). */
int pub_confine(void);

#endif
