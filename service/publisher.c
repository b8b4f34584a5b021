/*
 * publisher.c — the network-facing publisher: `cimdd --publisher FD ...`, a
 * separate program image started by the custody process (publish.c).
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
 * "*") answers 304.
 */
#include <errno.h>
#include <stdarg.h>
#include <execinfo.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <grp.h>
#include <pwd.h>
#include <seccomp.h>
#include <sys/prctl.h>

#include <microhttpd.h>

#include "hmap.h"
#include "pubset.h"
#include "service.h"

#define PUB_PATH_MAX 1024
#define PUB_CONNS_MAX 1024   /* connections at once */
#define PUB_CONNS_PER_IP 64  /* from one address */
#define PUB_TIMEOUT_SEC 10   /* idle or slow connection */
#define PUB_CONN_MEMORY 8192 /* per-connection memory: request line and headers */
#define PUB_THREADS 2

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

enum pub_route pub_route_of(const char *url)
{
	size_t n = strlen(url);

	if (strncmp(url, "/clients/", 9) == 0 && strchr(url + 9, '/') == NULL)
		return PUB_ROUTE_DOCUMENT;
	if (strncmp(url, "/clients/", 9) == 0 && n > 10 && strcmp(url + n - 10, "/jwks.json") == 0)
		return PUB_ROUTE_JWKS;
	if ((strncmp(url, "/clients/", 9) == 0 && n > 17 &&
	     (strcmp(url + n - 17, "/attestation.json") == 0 ||
	      strcmp(url + n - 17, "/revocations.json") == 0)) ||
	    strncmp(url, "/.well-known/cimdd/", 19) == 0)
		return PUB_ROUTE_ATTESTATION;
	if (strcmp(url, "/healthz") == 0)
		return PUB_ROUTE_HEALTHZ;
	if (strcmp(url, "/metrics") == 0)
		return PUB_ROUTE_METRICS;
	return PUB_ROUTE_OTHER;
}

static int path_ok(const char *url)
{
	const char *c;
	size_t n = strlen(url);

	if (n == 0 || url[0] != '/' || strstr(url, "..") != NULL || strstr(url, "//") != NULL)
		return 0;
	for (c = url; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '/' || *c == '.' || *c == '_' || *c == '-'))
			return 0;
	return 1;
}

int pub_etag_matches(const char *inm, const char *etag)
{
	const char *p = inm;
	size_t el = strlen(etag);

	/* RFC 9110 §13.1.2: "*" or a list of entity tags; weak comparison, so a
	 * W/ prefix is ignored. */
	while (*p) {
		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (*p == '*')
			return 1;
		if (p[0] == 'W' && p[1] == '/')
			p += 2;
		if (strncmp(p, etag, el) == 0 && (p[el] == '\0' || p[el] == ',' || p[el] == ' '))
			return 1;
		while (*p && *p != ',')
			p++;
	}
	return 0;
}

/* The rules a request meets before any lookup, in the order they are applied:
 * the method, then a body, then the path's length, then its characters. */
int pub_request_check(const char *method, const char *url, int has_body)
{
	if (method == NULL || url == NULL)
		return MHD_HTTP_BAD_REQUEST;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return MHD_HTTP_METHOD_NOT_ALLOWED;
	if (has_body)
		return MHD_HTTP_BAD_REQUEST;
	if (strnlen(url, PUB_PATH_MAX + 1) > PUB_PATH_MAX)
		return MHD_HTTP_URI_TOO_LONG;
	if (!path_ok(url))
		return MHD_HTTP_BAD_REQUEST;
	return 0;
}

static struct MHD_Response *fixed(const char *text, const char *allow)
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
 * the table would hold more than CIMD_PUBSET_ENTRIES_MAX routes. */
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
		if (t->routes.n >= CIMD_PUBSET_ENTRIES_MAX && hmap_get(&t->routes, r->path) == NULL)
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
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (f == NULL)
		return MHD_NO;
	fwrite(rt->body, 1, rt->len, f);
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
	struct route *rt;
	enum MHD_Result ret;
	int has_body;

	(void)cls;
	(void)version;
	(void)upload_data;
	/* Two phases: the first call only sees the headers.  Answering on the
	 * second keeps the connection alive (an answer queued on the first call
	 * makes libmicrohttpd close it). */
	if (*con_cls == NULL) {
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
 * Confinement, once the socket is bound and the certificate read: the user
 * `nobody` (when started as root), no new privileges, and a seccomp filter
 * that allows what serving needs and kills the process on anything else (the
 * custody process then starts a new one).  What it keeps and why:
 * docs/threat-model.md.
 */
static int drop_privileges(void)
{
	struct passwd *pw;

	if (geteuid() != 0)
		return 0;
	if ((pw = getpwnam("nobody")) == NULL) {
		log_err("publisher: no user nobody to run as");
		return -1;
	}
	if (setgroups(0, NULL) < 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) {
		log_err("publisher: cannot drop to nobody: %s", strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) { /* must fail now */
		log_err("publisher: privileges were not dropped");
		return -1;
	}
	/* A change of credentials clears the parent-death signal: set it again,
	 * so that the publisher still ends with the custody process. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() == 1)
		return -1;
	return 0;
}

/* A system call outside the filter: say which, and end the process (the
 * custody process starts a new one).  Only async-signal-safe calls here. */
static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	char msg[80] = "cimdd-publisher: forbidden system call ";
	char num[16];
	int n = si->si_syscall, i = 0, len;

	(void)sig;
	(void)uc;
	do
		num[i++] = (char)('0' + n % 10);
	while ((n /= 10) > 0 && i < (int)sizeof(num));
	len = (int)strlen(msg);
	while (i > 0 && len < (int)sizeof(msg) - 2)
		msg[len++] = num[--i];
	msg[len++] = '\n';
	if (write(2, msg, (size_t)len) < 0) {
		/* nothing more to do */
	}
	/* Where it came from, for the bug report (backtrace() was warmed up
	 * before the filter, so it loads nothing now). */
	{
		void *frames[32];
		int nf = backtrace(frames, 32);

		backtrace_symbols_fd(frames, nf, 2);
	}
	_exit(3);
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
		log_warn("publisher: %s (and %lu more since the last such message)", msg, dropped);
	else
		log_warn("publisher: %s", msg);
	dropped = 0;
	pthread_mutex_unlock(&mu);
}

static int confine(void)
{
	void *warm[1];

	/* backtrace() loads its unwinder on first use: now, not in on_sigsys. */
	backtrace(warm, 1);
	/* Serving: sockets (accept, read, write, epoll), memory, time, futexes,
	 * signals delivered to threads, randomness for TLS, and exit.
	 *
	 * What glibc would call behind our back is kept out of reach rather than
	 * admitted: nothing here sorts (glibc's qsort asks sysinfo(2) for the
	 * machine's memory once an array passes 1 KiB, which killed the
	 * publisher at 14 clients), tables are hash tables (hmap.c), and large
	 * allocations only need mmap, munmap and mremap, allowed below.
	 * tests/test_scale.c serves 2,000 clients and test_daemon a JWKS of 16
	 * keys through this filter; the harness fails any test whose daemon log
	 * says "forbidden system call". */
	static const int allow[] = {
	    SCMP_SYS(read),
	    SCMP_SYS(write),
	    SCMP_SYS(readv),
	    SCMP_SYS(writev),
	    SCMP_SYS(close),
	    SCMP_SYS(accept),
	    SCMP_SYS(accept4),
	    SCMP_SYS(shutdown),
	    SCMP_SYS(recvfrom),
	    SCMP_SYS(sendto),
	    SCMP_SYS(recvmsg),
	    SCMP_SYS(sendmsg),
	    SCMP_SYS(sendfile),
	    SCMP_SYS(setsockopt),
	    SCMP_SYS(getsockopt),
	    SCMP_SYS(getsockname),
	    SCMP_SYS(getpeername),
	    SCMP_SYS(epoll_wait),
	    SCMP_SYS(epoll_pwait),
	    SCMP_SYS(epoll_ctl),
	    SCMP_SYS(poll),
	    SCMP_SYS(ppoll),
	    SCMP_SYS(select),
	    SCMP_SYS(pselect6),
	    SCMP_SYS(fcntl),
	    SCMP_SYS(futex),
	    SCMP_SYS(clock_gettime),
	    SCMP_SYS(clock_nanosleep),
	    SCMP_SYS(nanosleep),
	    SCMP_SYS(gettimeofday),
	    SCMP_SYS(time),
	    SCMP_SYS(mmap),
	    SCMP_SYS(munmap),
	    SCMP_SYS(mremap),
	    SCMP_SYS(brk),
	    SCMP_SYS(madvise),
	    SCMP_SYS(mprotect),
	    SCMP_SYS(rt_sigprocmask),
	    SCMP_SYS(rt_sigreturn),
	    SCMP_SYS(rt_sigaction),
	    SCMP_SYS(getpid),
	    SCMP_SYS(gettid),
	    SCMP_SYS(tgkill),
	    SCMP_SYS(getrandom),
	    SCMP_SYS(sched_yield),
	    SCMP_SYS(restart_syscall),
	    SCMP_SYS(exit),
	    SCMP_SYS(exit_group),
	    SCMP_SYS(lseek),
	    SCMP_SYS(fstat),
	    SCMP_SYS(newfstatat),
	    SCMP_SYS(eventfd2),
	    SCMP_SYS(membarrier),
	    SCMP_SYS(rseq),
	    SCMP_SYS(set_robust_list),
	    SCMP_SYS(getuid),
	    SCMP_SYS(geteuid),
	    SCMP_SYS(getgid),
	    SCMP_SYS(getegid),
	};
	scmp_filter_ctx ctx;
	size_t i;
	int r = -1;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		log_err("publisher: no_new_privs: %s", strerror(errno));
		return -1;
	}
#if defined(__SANITIZE_ADDRESS__)
	/* A sanitizer build (make asan) needs system calls of its own (leak
	 * checking stops the world with ptrace): confinement stays off there. */
	return 0;
#endif
	{
		struct sigaction sa = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGSYS, &sa, NULL) < 0)
			return -1;
	}
	if ((ctx = seccomp_init(SCMP_ACT_TRAP)) == NULL)
		return -1;
	for (i = 0; i < sizeof(allow) / sizeof(allow[0]); i++)
		if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allow[i], 0) < 0)
			goto out;
	/* Opening a file fails (EACCES) instead of killing the process: glibc's
	 * malloc, shrinking a thread arena under load, reads
	 * /proc/sys/vm/overcommit_memory once (arena.c, check_may_shrink_heap) and
	 * copes with the failure.  Nothing can be opened either way. */
	if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(openat), 0) < 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(open), 0) < 0)
		goto out;
	/* libmicrohttpd's pool threads name themselves as they start, which can
	 * be after the filter is in place: prctl(PR_SET_NAME) only. */
	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
			     SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME, 0)) < 0)
		goto out;
	/* Every thread of libmicrohttpd's pool, not only this one. */
	if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) < 0 || seccomp_load(ctx) < 0)
		goto out;
	r = 0;
out:
	if (r < 0)
		log_err("publisher: cannot install the seccomp filter");
	seccomp_release(ctx);
	return r;
}

/* No percent-decoding at all: the path we look up is the path that was sent. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
	(void)cls;
	(void)c;
	return strlen(s);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
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
	fclose(f);
	fclose(m);
	return buf;
}

int publisher_main(int argc, char **argv)
{
	const char *listen = NULL, *cert = NULL, *key = NULL;
	char *certpem = NULL, *keypem = NULL, host[256], *colon;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST},
			*ai = NULL;
	struct MHD_Daemon *mhd = NULL;
	struct table *t, *building = NULL;
	uint8_t hdr[PUBSET_HDR_LEN], *set = NULL;
	uint32_t len;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
	int fd = -1, plain = 0, i, port, rc = 1;

	log_init("cimdd-publisher", 1);
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--publisher") == 0 && i + 1 < argc)
			fd = atoi(argv[++i]);
		else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
			listen = argv[++i];
		else if (strcmp(argv[i], "--tls-cert") == 0 && i + 1 < argc)
			cert = argv[++i];
		else if (strcmp(argv[i], "--tls-key") == 0 && i + 1 < argc)
			key = argv[++i];
		else if (strcmp(argv[i], "--plain") == 0)
			plain = 1;
		else {
			log_err("publisher: unexpected argument %s", argv[i]);
			return 2;
		}
	}
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	if (fd < 3 || listen == NULL || (!plain && (cert == NULL || key == NULL))) {
		log_err("publisher: needs --publisher FD --listen HOST:PORT and TLS or --plain");
		return 2;
	}
	snprintf(host, sizeof(host), "%s", listen);
	if ((colon = strrchr(host, ':')) == NULL || (port = atoi(colon + 1)) <= 0 || port > 65535) {
		log_err("publisher: listen %s is not HOST:PORT", listen);
		return 2;
	}
	*colon = '\0';
	if (host[0] == '[' && colon[-1] == ']') {
		colon[-1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) {
		log_err("publisher: listen %s: not a numeric address", listen);
		return 2;
	}
	if (plain)
		log_warn("publisher: serving plain HTTP on %s (allow_http): only behind a "
			 "TLS-terminating proxy",
			 listen);
	if (!plain) {
		if ((certpem = slurp(cert)) == NULL || (keypem = slurp(key)) == NULL) {
			log_err("publisher: cannot read %s or %s", cert, key);
			goto out;
		}
		flags |= MHD_USE_TLS;
	}
	if ((r400 = fixed("bad request\n", NULL)) == NULL ||
	    (r404 = fixed("not found\n", NULL)) == NULL ||
	    (r405 = fixed("method not allowed\n", "GET, HEAD")) == NULL ||
	    (r414 = fixed("path too long\n", NULL)) == NULL)
		goto out;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	mhd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, NULL,
			       MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first: all of them */
			       MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
			       (unsigned)PUB_CONNS_MAX, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
			       (unsigned)PUB_CONNS_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
			       (unsigned)PUB_TIMEOUT_SEC, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
			       (size_t)PUB_CONN_MEMORY, MHD_OPTION_THREAD_POOL_SIZE,
			       (unsigned)PUB_THREADS, MHD_OPTION_UNESCAPE_CALLBACK, no_unescape,
			       NULL, plain ? MHD_OPTION_END : MHD_OPTION_HTTPS_MEM_CERT, certpem,
			       MHD_OPTION_HTTPS_MEM_KEY, keypem, MHD_OPTION_END);
	if (mhd == NULL) {
		log_err("publisher: cannot serve on %s", listen);
		goto out;
	}
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
	if (drop_privileges() < 0 || confine() < 0)
		goto out;
	/* The channel: messages until end of file (the custody process is gone).
	 * A full table is built aside (BEGIN ... COMMIT) while the old one is
	 * served; an update changes the served table under the write lock, for
	 * as long as it takes to swap a few pointers. */
	for (;;) {
		struct route *list = NULL, *gone = NULL;
		uint8_t mflags;
		int r;

		if (read_full(fd, hdr, PUBSET_HDR_LEN) < 0)
			break;
		if (pubset_header(hdr, &len) < 0) {
			log_err("publisher: malformed publication message header");
			break;
		}
		if ((set = malloc(len)) == NULL || read_full(fd, set, len) < 0)
			break;
		/* Checked whole before anything is built from it. */
		if (pubset_decode(set, len, &mflags, NULL, NULL, NULL) < 0 ||
		    ((mflags & PUBSET_BEGIN) && building != NULL)) {
			log_err("publisher: malformed publication message");
			break;
		}
		if ((mflags & PUBSET_BEGIN) && (building = calloc(1, sizeof(*building))) == NULL)
			break;
		if ((r = pubset_decode(set, len, NULL, NULL, build_route, &list)) < 0) {
			free_list(list);
			log_err("publisher: cannot build the published responses: %s",
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
			log_err("publisher: cannot apply a publication message: %s", strerror(-r));
			break;
		}
	}
	rc = 0;
out:
	table_free(building);
	free(set);
	if (mhd != NULL)
		MHD_stop_daemon(mhd);
	if (ai != NULL)
		freeaddrinfo(ai);
	free(certpem);
	free(keypem);
	return rc;
}
