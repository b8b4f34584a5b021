/*
 * publisher.c — cimdd-publisher: the network-facing program, started by the
 * custody process (service/publish.c) as
 *   cimdd-publisher --publisher FD --listen HOST:PORT (--tls-cert-fd FD --tls-key-fd FD | --plain)
 * with the read end of the publication channel on FD (3), and the TLS
 * certificate and key open on the other two (4 and 5): the custody process
 * opens them, so that the publisher's own user need not be able to.
 *
 * It holds no key handle, no database handle and no socket but its listening
 * socket and the read end of the publication channel.  It serves only
 * pre-rendered public bytes: every response is built once, when a set
 * arrives, and each request only looks a path up and queues the response
 * (no allocation, no JSON).  A compromised HTTP parser can at worst serve stale
 * public bytes, which attestations make detectable.
 *
 * Requests: GET and HEAD only (405 otherwise, with Allow); no body; a path of
 * at most 1 KiB of [A-Za-z0-9/._-] without "..", never percent-decoded (400
 * for any '%', so no encoded dot, slash or NUL can ever reach a lookup); 404
 * for unknown paths; never a redirect.  If-None-Match with the strong ETag (or
 * "*") answers 304.  A head in doubt (a NUL in the target, Host missing or
 * twice, two Content-Lengths) is a 400 that closes the connection.  TLS 1.2
 * and 1.3 only, with AEAD ciphers.  The rules: request.c; which connections
 * are kept: conns.c; confinement: confine.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <microhttpd.h>

#include "hmap.h"
#include "publisher.h"
#include "pubset.h"

struct route {
	struct hmap_item it; /* key: path */
	char *path;
	char etag[PUBSET_ETAG_MAX + 1];
	struct MHD_Response *ok;	   /* 200, full headers */
	struct MHD_Response *not_modified; /* 304 */
	int metrics;			   /* /metrics: custody text + our counters */
	char *body;			   /* kept for /metrics only */
	size_t len;
	struct route *next; /* in a list of changes being applied */
};

struct table {
	struct hmap routes;
};

static pthread_rwlock_t table_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct table *current;
static struct MHD_Response *r400, *r404, *r405, *r414;

/* Requests by route and outcome, for /metrics. */
enum { M_200, M_304, M_400, M_404, M_405, M_414, M_N };
static const char *const m_status[M_N] = {"200", "304", "400", "404", "405", "414"};
static const char *const m_route[PUB_ROUTE_N] = {"document", "jwks",	"attestation",
						 "healthz",  "metrics", "other"};
static atomic_ulong counts[PUB_ROUTE_N][M_N];
static _Thread_local int cur_route; /* the route of the request this thread answers */

static struct MHD_Response *fixed(const char *text, const char *allow, int close)
{
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);

	if (r == NULL)
		return NULL;
	MHD_add_response_header(r, "Content-Type", "text/plain");
	MHD_add_response_header(r, "Cache-Control", "no-store");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	if (allow != NULL)
		MHD_add_response_header(r, "Allow", allow);
	/* After a request we could not read, what follows on the connection
	 * cannot be framed with confidence (RFC 9112 §6.3 item 5). */
	if (close)
		MHD_add_response_header(r, "Connection", "close");
	return r;
}

static void route_free(struct route *r)
{
	if (r == NULL)
		return;
	/* MHD counts references: a response still being sent lives on. */
	if (r->ok)
		MHD_destroy_response(r->ok);
	if (r->not_modified)
		MHD_destroy_response(r->not_modified);
	free(r->path);
	free(r->body);
	free(r);
}

static void route_item_free(struct hmap_item *it)
{
	route_free((struct route *)it);
}

static void table_free(struct table *t)
{
	if (t == NULL)
		return;
	hmap_clear(&t->routes, route_item_free);
	free(t);
}

/* ---- the channel: messages of the one codec (pubset.c) ---- */

static int read_full(int fd, void *buf, size_t n)
{
	size_t off = 0;
	ssize_t k;

	while (off < n) {
		if ((k = read(fd, (uint8_t *)buf + off, n - off)) < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		off += (size_t)k;
	}
	return 0;
}

/* One decoded entry as a route, built before any lock is taken: a put's
 * responses are made (and its bytes copied) here, a delete is a route with
 * no response. */
static int build_route(void *arg, const struct pubset_entry *e)
{
	struct route **list = arg, *r;
	char cc[96];

	if ((r = calloc(1, sizeof(*r))) == NULL || (r->path = strdup(e->path)) == NULL)
		goto bad;
	r->next = *list;
	*list = r;
	if (e->op == PUBSET_OP_DELETE)
		return 0;
	snprintf(r->etag, sizeof(r->etag), "%s", e->etag);
	r->metrics = strcmp(r->path, "/metrics") == 0;
	if (e->max_age == 0)
		snprintf(cc, sizeof(cc), "no-store");
	else
		snprintf(cc, sizeof(cc), "public, max-age=%u, stale-if-error=%u", e->max_age,
			 e->stale);
	if (r->metrics) {
		if ((r->body = malloc(e->len + 1)) == NULL)
			return -ENOMEM;
		memcpy(r->body, e->body, e->len);
		r->body[e->len] = '\0';
		r->len = e->len;
		return 0;
	}
	/* Built once, copied once: serving it allocates nothing. */
	if ((r->ok = MHD_create_response_from_buffer(e->len, (void *)e->body,
						     MHD_RESPMEM_MUST_COPY)) == NULL ||
	    (r->not_modified = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)) ==
		NULL)
		return -ENOMEM;
	MHD_add_response_header(r->ok, "Content-Type", e->ctype);
	MHD_add_response_header(r->ok, "ETag", r->etag);
	MHD_add_response_header(r->ok, "Cache-Control", cc);
	MHD_add_response_header(r->ok, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r->not_modified, "ETag", r->etag);
	MHD_add_response_header(r->not_modified, "Cache-Control", cc);
	return 0;
bad:
	free(r);
	return -ENOMEM;
}

/* Applies a list of changes to t; what they replace or delete goes on
 * *ret_old, to be freed once no request can see it.  -ENOMEM, or -E2BIG when
 * the table would hold more than PUBSET_ENTRIES_MAX routes. */
static int apply(struct table *t, struct route **list, struct route **ret_old)
{
	struct hmap_item *old;
	struct route *r;
	int rc = 0;

	while ((r = *list) != NULL) {
		*list = r->next;
		r->next = NULL;
		if (r->ok == NULL && r->body == NULL) { /* a delete */
			if ((old = hmap_del(&t->routes, r->path)) != NULL) {
				((struct route *)old)->next = *ret_old;
				*ret_old = (struct route *)old;
			}
			route_free(r);
			continue;
		}
		if (t->routes.n >= PUBSET_ENTRIES_MAX && hmap_get(&t->routes, r->path) == NULL)
			rc = -E2BIG;
		if (rc < 0 || hmap_put(&t->routes, &r->it, r->path, &old) < 0) {
			route_free(r);
			rc = rc < 0 ? rc : -ENOMEM;
			continue;
		}
		if (old != NULL) {
			((struct route *)old)->next = *ret_old;
			*ret_old = (struct route *)old;
		}
	}
	return rc;
}

static void free_list(struct route *r)
{
	struct route *n;

	for (; r != NULL; r = n) {
		n = r->next;
		route_free(r);
	}
}

/* ---- serving ---- */

/*
 * TLS 1.2 and 1.3 only, AEAD ciphers only (AES-GCM, ChaCha20-Poly1305), ECDHE
 * key exchange and no SHA-1 signatures: RFC 9325 (BCP 195) §4.1-4.2.  Clients
 * here are authorization servers and verifiers, none of them from before 2008.
 */
#define TLS_PRIORITIES                                                                             \
	"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"        \
	"+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:-SIGN-RSA-SHA1:"        \
	"-SIGN-ECDSA-SHA1:%SERVER_PRECEDENCE"

static enum MHD_Result count_field(void *cls, enum MHD_ValueKind kind, const char *key,
				   const char *value)
{
	struct pub_request_head *h = cls;

	(void)kind;
	(void)value;
	if (strcasecmp(key, "Host") == 0)
		h->hosts++;
	else if (strcasecmp(key, "Content-Length") == 0)
		h->content_lengths++;
	return MHD_YES;
}

/*
 * What the head held.  libmicrohttpd 0.9 parses the request line in place:
 * the version string starts one byte after the target's end (the space it
 * turns into a NUL), so the target was version - 1 - url bytes long, and
 * pub_conns_uri saw how far strlen() got on it before any split.  Shorter:
 * a NUL byte cut the target (the URL handed to us ends there).  Should a
 * libmicrohttpd ever keep these strings elsewhere, every request fails this
 * check: closed, never open (tests/test_publisher.c serves requests).
 */
static void head_of(struct MHD_Connection *c, const char *url, const char *version,
		    struct pub_request_head *ret)
{
	size_t seen = pub_conns_uri_len(c);

	*ret = (struct pub_request_head){.http11 = strcmp(version, MHD_HTTP_VERSION_1_1) == 0};
	MHD_get_connection_values(c, MHD_HEADER_KIND, count_field, ret);
	ret->target_cut =
	    version[0] == '\0' || version <= url || (size_t)(version - 1 - url) != seen;
}

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status, struct MHD_Response *r,
			     int m)
{
	atomic_fetch_add(&counts[cur_route][m], 1);
	return MHD_queue_response(c, status, r);
}

static enum MHD_Result serve_metrics(struct MHD_Connection *c, const struct route *rt)
{
	char *out = NULL;
	size_t len = 0, i, j;
	FILE *f = open_memstream(&out, &len);
	struct pub_conns_stats cs;
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (f == NULL)
		return MHD_NO;
	fwrite(rt->body, 1, rt->len, f);
	pub_conns_stats(&cs);
	fprintf(f,
		"# HELP cimdd_http_connections Publisher connections open.\n"
		"# TYPE cimdd_http_connections gauge\n"
		"cimdd_http_connections %lu\n"
		"# HELP cimdd_http_connections_refused_total Connections closed at once, by "
		"reason.\n"
		"# TYPE cimdd_http_connections_refused_total counter\n"
		"cimdd_http_connections_refused_total{reason=\"prefix\"} %lu\n"
		"cimdd_http_connections_refused_total{reason=\"reserve\"} %lu\n"
		"cimdd_http_connections_refused_total{reason=\"full\"} %lu\n"
		"# HELP cimdd_http_connections_evicted_total Idle connections closed to make "
		"room.\n"
		"# TYPE cimdd_http_connections_evicted_total counter\n"
		"cimdd_http_connections_evicted_total %lu\n",
		cs.open, cs.refused_prefix, cs.refused_reserve, cs.refused_full, cs.evicted);
	fprintf(f, "# HELP cimdd_http_requests_total Publisher requests by route and status.\n"
		   "# TYPE cimdd_http_requests_total counter\n");
	for (j = 0; j < PUB_ROUTE_N; j++)
		for (i = 0; i < M_N; i++)
			fprintf(f, "cimdd_http_requests_total{route=\"%s\",status=\"%s\"} %lu\n",
				m_route[j], m_status[i], atomic_load(&counts[j][i]));
	fclose(f);
	r = MHD_create_response_from_buffer(len, out, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(out);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
	MHD_add_response_header(r, "Cache-Control", "no-store");
	ret = queue(c, MHD_HTTP_OK, r, M_200);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *upload_data,
			       size_t *upload_data_size, void **con_cls)
{
	static int first;
	const char *inm, *cl;
	struct pub_request_head head;
	struct route *rt;
	enum MHD_Result ret;
	int has_body;

	(void)cls;
	(void)upload_data;
	/* Two phases: the first call only sees the headers.  Answering on the
	 * second keeps the connection alive (an answer queued on the first call
	 * makes libmicrohttpd close it).  A connection that conns.c does not
	 * track was refused (shut down): it gets no answer. */
	if (*con_cls == NULL) {
		if (pub_conns_uri_len(c) == (size_t)-1)
			return MHD_NO;
		pub_conns_busy(c);
		*con_cls = &first;
		return MHD_YES;
	}
	cur_route = pub_route_of(url);
	if (*upload_data_size != 0) {
		*upload_data_size = 0; /* a body: refused below, once it is read */
		*con_cls = (void *)method;
		return MHD_YES;
	}
	cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
	has_body = *con_cls != &first || (cl != NULL && strcmp(cl, "0") != 0) ||
		   MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding") != NULL;
	head_of(c, url, version, &head);
	if (pub_request_head_check(&head) != 0)
		return queue(c, MHD_HTTP_BAD_REQUEST, r400, M_400);
	switch (pub_request_check(method, url, has_body)) {
	case 0:
		break;
	case MHD_HTTP_METHOD_NOT_ALLOWED:
		return queue(c, MHD_HTTP_METHOD_NOT_ALLOWED, r405, M_405);
	case MHD_HTTP_URI_TOO_LONG:
		return queue(c, MHD_HTTP_URI_TOO_LONG, r414, M_414);
	default:
		return queue(c, MHD_HTTP_BAD_REQUEST, r400, M_400);
	}
	pthread_rwlock_rdlock(&table_lock);
	rt = current ? hmap_get(&current->routes, url) : NULL;
	if (rt == NULL)
		ret = queue(c, MHD_HTTP_NOT_FOUND, r404, M_404);
	else if (rt->metrics)
		ret = serve_metrics(c, rt);
	else if ((inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-None-Match")) != NULL &&
		 pub_etag_matches(inm, rt->etag))
		ret = queue(c, MHD_HTTP_NOT_MODIFIED, rt->not_modified, M_304);
	else
		ret = queue(c, MHD_HTTP_OK, rt->ok, M_200);
	pthread_rwlock_unlock(&table_lock);
	return ret;
}

/*
 * libmicrohttpd's messages (a TLS handshake that failed, a malformed request):
 * each says what a peer did, and a hostile peer can make thousands a second.
 * At most one a second reaches the log, with the count of those dropped.
 */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	static time_t last;
	static unsigned long dropped;
	char msg[256];
	time_t now = time(NULL);
	size_t n;

	(void)cls;
	pthread_mutex_lock(&mu);
	if (now == last) {
		dropped++;
		pthread_mutex_unlock(&mu);
		return;
	}
	last = now;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	if (dropped > 0)
		pub_log_warn("publisher: %s (and %lu more since the last such message)", msg,
			     dropped);
	else
		pub_log_warn("publisher: %s", msg);
	dropped = 0;
	pthread_mutex_unlock(&mu);
}

/* No percent-decoding at all: the path we look up is the path that was sent. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
	(void)cls;
	(void)c;
	return strlen(s);
}

/* All of an inherited descriptor (at most 1 MiB), which is then closed. */
static char *slurp_fd(int fd)
{
	FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
	char *buf = NULL;
	size_t len = 0;
	FILE *m;
	char chunk[4096];
	size_t n;

	if (f == NULL || (m = open_memstream(&buf, &len)) == NULL) {
		if (f)
			fclose(f);
		return NULL;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && len < 1024 * 1024)
		fwrite(chunk, 1, n, m);
	explicit_bzero(chunk, sizeof(chunk)); /* the key passed through here */
	fclose(f);
	fclose(m);
	return buf;
}

/* What the command line names: the channel from custody, the address to
 * serve on and the TLS files, or --plain for behind a TLS-terminating proxy. */
struct pub_args {
	const char *listen;
	int fd, cert, key, plain;
};

/* -EINVAL, logged, on an argument it does not know. */
static int parse_args(int argc, char **argv, struct pub_args *ret_args)
{
	struct pub_args a = {.fd = -1, .cert = -1, .key = -1};
	int i, r;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--publisher") == 0 && i + 1 < argc)
			a.fd = atoi(argv[++i]);
		else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
			a.listen = argv[++i];
		else if (strcmp(argv[i], "--tls-cert-fd") == 0 && i + 1 < argc)
			a.cert = atoi(argv[++i]);
		else if (strcmp(argv[i], "--tls-key-fd") == 0 && i + 1 < argc)
			a.key = atoi(argv[++i]);
		else if (strcmp(argv[i], "--plain") == 0)
			a.plain = 1;
		else {
			pub_log_err("publisher: unexpected argument %s", argv[i]);
			r = -EINVAL;
			goto out;
		}
	}
	*ret_args = a;
	r = 0;
out:
	return r;
}

/* HOST:PORT or [HOST]:PORT, the host a numeric address: the publisher is
 * confined before it could ask a resolver, and must not depend on one. */
static int parse_listen(const char *listen, struct addrinfo **ret_ai, int *ret_port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST},
			*ai = NULL;
	char host[256], *colon;
	int port, r;

	snprintf(host, sizeof(host), "%s", listen);
	if ((colon = strrchr(host, ':')) == NULL || (port = atoi(colon + 1)) <= 0 || port > 65535) {
		pub_log_err("publisher: listen %s is not HOST:PORT", listen);
		r = -EINVAL;
		goto out;
	}
	*colon = '\0';
	if (host[0] == '[' && colon[-1] == ']') {
		colon[-1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) {
		pub_log_err("publisher: listen %s: not a numeric address", listen);
		r = -EINVAL;
		goto out;
	}
	*ret_ai = ai;
	*ret_port = port;
	r = 0;
out:
	return r;
}

/* The answers that are the same for every request, made once. */
static int fixed_responses(void)
{
	if ((r400 = fixed("bad request\n", NULL, 1)) == NULL ||
	    (r404 = fixed("not found\n", NULL, 0)) == NULL ||
	    (r405 = fixed("method not allowed\n", "GET, HEAD", 0)) == NULL ||
	    (r414 = fixed("path too long\n", NULL, 1)) == NULL)
		return -ENOMEM;
	return 0;
}

/* libmicrohttpd serving on ai with every limit from the bounds header; with
 * TLS unless a->plain (then certpem and keypem are NULL). */
static int start_daemon(const struct pub_args *a, const struct addrinfo *ai, int port,
			const char *certpem, const char *keypem, struct MHD_Daemon **ret_mhd)
{
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
	struct MHD_Daemon *mhd;
	int r;

	if (!a->plain)
		flags |= MHD_USE_TLS;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* conns.c decides which connections are kept; libmicrohttpd's own
	 * limit (split between its threads) is set so that it never binds
	 * first, and a per-address limit would only be weaker than conns.c's
	 * per-prefix one. */
	mhd = MHD_start_daemon(
	    flags, (uint16_t)port, pub_conns_accept, NULL, handler, NULL,
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first: all of them */
	    MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
	    (unsigned)(PUB_THREADS * (PUB_CONNS_MAX + PUB_CONNS_SLACK)),
	    MHD_OPTION_NOTIFY_CONNECTION, pub_conns_notify, NULL, MHD_OPTION_NOTIFY_COMPLETED,
	    pub_conns_done, NULL, MHD_OPTION_URI_LOG_CALLBACK, pub_conns_uri, NULL,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)PUB_TIMEOUT_SEC,
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)PUB_CONN_MEMORY,
	    MHD_OPTION_THREAD_POOL_SIZE, (unsigned)PUB_THREADS, MHD_OPTION_UNESCAPE_CALLBACK,
	    no_unescape, NULL, a->plain ? MHD_OPTION_END : MHD_OPTION_HTTPS_PRIORITIES,
	    TLS_PRIORITIES, MHD_OPTION_HTTPS_MEM_CERT, certpem, MHD_OPTION_HTTPS_MEM_KEY, keypem,
	    MHD_OPTION_END);
	if (mhd == NULL) {
		pub_log_err("publisher: cannot serve on %s", a->listen);
		r = -EIO;
		goto out;
	}
	*ret_mhd = mhd;
	r = 0;
out:
	return r;
}

/* Reads one publication message whole: the header, then exactly the length
 * it gives.  Negative at end of file (the custody process is gone) and on a
 * malformed header. */
static int read_message(int fd, uint8_t **ret_set, uint32_t *ret_len)
{
	uint8_t hdr[PUBSET_HDR_LEN], *set = NULL;
	uint32_t len;
	int r;

	if ((r = read_full(fd, hdr, PUBSET_HDR_LEN)) < 0)
		goto out;
	if ((r = pubset_header(hdr, &len)) < 0) {
		pub_log_err("publisher: malformed publication message header");
		goto out;
	}
	if ((set = malloc(len)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = read_full(fd, set, len)) < 0)
		goto out;
	*ret_set = set;
	set = NULL;
	*ret_len = len;
	r = 0;
out:
	free(set);
	return r;
}

/*
 * The channel: messages until end of file (the custody process is gone), or
 * until one that cannot be applied.  A full table is built aside (BEGIN ...
 * COMMIT) while the old one is served; an update changes the served table
 * under the write lock, for as long as it takes to swap a few pointers.
 */
static void serve_channel(int fd)
{
	struct table *t, *building = NULL;
	uint8_t *set = NULL;
	uint32_t len;

	for (;;) {
		struct route *list = NULL, *gone = NULL;
		uint8_t mflags;
		int r;

		if (read_message(fd, &set, &len) < 0)
			break;
		/* Checked whole before anything is built from it. */
		if (pubset_decode(set, len, &mflags, NULL, NULL, NULL) < 0 ||
		    ((mflags & PUBSET_BEGIN) && building != NULL)) {
			pub_log_err("publisher: malformed publication message");
			break;
		}
		if ((mflags & PUBSET_BEGIN) && (building = calloc(1, sizeof(*building))) == NULL)
			break;
		if ((r = pubset_decode(set, len, NULL, NULL, build_route, &list)) < 0) {
			free_list(list);
			pub_log_err("publisher: cannot build the published responses: %s",
				    strerror(-r));
			break;
		}
		free(set);
		set = NULL;
		if (building != NULL) {
			r = apply(building, &list, &gone);
			if (r == 0 && (mflags & PUBSET_COMMIT)) {
				pthread_rwlock_wrlock(&table_lock);
				t = current;
				current = building;
				pthread_rwlock_unlock(&table_lock);
				building = NULL;
				table_free(t);
			}
		} else {
			if (current == NULL && (current = calloc(1, sizeof(*current))) == NULL)
				break;
			pthread_rwlock_wrlock(&table_lock);
			r = apply(current, &list, &gone);
			pthread_rwlock_unlock(&table_lock);
		}
		free_list(gone);
		if (r < 0) {
			pub_log_err("publisher: cannot apply a publication message: %s",
				    strerror(-r));
			break;
		}
	}
	table_free(building);
	free(set);
}

int main(int argc, char **argv)
{
	struct pub_args a;
	struct addrinfo *ai = NULL;
	struct MHD_Daemon *mhd = NULL;
	char *certpem = NULL, *keypem = NULL;
	int port, rc = 1;

	if (parse_args(argc, argv, &a) < 0)
		return 2;
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	if (a.fd < 3 || a.listen == NULL || (!a.plain && (a.cert < 3 || a.key < 3))) {
		pub_log_err("publisher: needs --publisher FD --listen HOST:PORT and "
			    "--tls-cert-fd FD --tls-key-fd FD or --plain");
		return 2;
	}
	if (parse_listen(a.listen, &ai, &port) < 0)
		return 2;
	if (a.plain)
		pub_log_warn("publisher: serving plain HTTP on %s (allow_http): only behind a "
			     "TLS-terminating proxy",
			     a.listen);
	if (!a.plain) {
		/* Both read (and their descriptors closed) whatever happens: no
		 * descriptor of the key file stays open in the confined process. */
		certpem = slurp_fd(a.cert);
		keypem = slurp_fd(a.key);
		if (certpem == NULL || keypem == NULL) {
			pub_log_err("publisher: cannot read the TLS certificate (fd %d) or key "
				    "(fd %d)",
				    a.cert, a.key);
			goto out;
		}
	}
	if (fixed_responses() < 0 || start_daemon(&a, ai, port, certpem, keypem, &mhd) < 0)
		goto out;
	if (keypem != NULL) {
		memset(keypem, 0, strlen(keypem)); /* libmicrohttpd has its own copy */
	}
	/* Whatever the C library would open later (the time zone for Date
	 * headers) is opened now, before the filter forbids opening anything. */
	{
		time_t now = time(NULL);
		struct tm tm;
		tzset();
		localtime_r(&now, &tm);
	}
	if (pub_drop_privileges() < 0 || pub_confine() < 0)
		goto out;
	serve_channel(a.fd);
	rc = 0;
out:
	if (mhd != NULL)
		MHD_stop_daemon(mhd);
	if (ai != NULL)
		freeaddrinfo(ai);
	free(certpem);
	free(keypem);
	return rc;
}
