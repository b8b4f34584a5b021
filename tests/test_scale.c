/*
 * test_scale.c — an appliance holding thousands of clients (issue 13).
 *
 * A real cimdd on SoftHSM2 is given CIMD_TEST_SCALE_N clients (default 2000), each
 * added and approved through the admin socket by a small client in this file
 * (one JSON line per request, docs/protocol.md): spawning cimdctl per request
 * would measure process start-up, not the appliance.  Checked:
 *
 *   - every client's document is served over HTTPS by the publisher with the
 *     approved bytes (SHA-256 = the doc.approve answer's), and every client's
 *     JWKS carries the kid client.add answered; fetched over one keep-alive TLS
 *     connection by a small OpenSSL client in this file;
 *   - the publisher never died (no forbidden system call at this size:
 *     STYLE.md 20);
 *   - the time of one add+approve at N clients is at most 2x that at
 *     CIMD_TEST_SCALE_BASE clients (default 200): the median of the 100 operations
 *     that end at each size, a ratio within this run, never an absolute time.
 *
 * A stuck daemon fails the test rather than hanging it: each admin request
 * waits at most SCALE_ADMIN_TIMEOUT_MS.  Slowness alone does not: a loaded
 * machine (other suites, sanitizers, fuzzing on the same cores) once made each
 * add+approve 135 ms instead of 16, and a budget of 240 s for the whole
 * growth failed a run that was correct.  CIMD_TEST_SCALE_SECONDS (default
 * 1800) is only a last bound on the growth, well within CI's clock.
 *
 * The admin and HTTPS clients and the helpers above main() are shared with
 * bench/bench_scale.c, which includes this file with SCALE_NO_MAIN defined.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "harness.h"
#include "service.h"

#define SCALE_ADMIN_ANSWER_MAX (64 * 1024) /* one admin answer line we accept */
#define SCALE_ADMIN_TIMEOUT_MS 120000	   /* one wait of an admin request, for room or answer */
#define SCALE_ADMIN_IDLE_MS 30000	   /* reconnect before the daemon's 60 s idle close */
#define SCALE_HTTP_HEAD_MAX (16 * 1024)	   /* status line and headers of one answer */
#define SCALE_HTTP_BODY_MAX (1024 * 1024)  /* one body: a document or a JWKS */
#define SCALE_IO_TIMEOUT_SEC 10		   /* one read or write on the TLS connection */
#define SCALE_WINDOW_MAX 100		   /* add+approve operations behind one figure */

/* ---- the admin socket: one JSON line per request, one per answer ---- */

struct scale_admin {
	int fd;
	char path[600];
	double last_ms; /* when the connection was last used */
	char in[SCALE_ADMIN_ANSWER_MAX];
};

static void scale_admin_close(struct scale_admin *a)
{
	if (a->fd >= 0)
		close(a->fd);
	a->fd = -1;
}

/* Connects, trying again for up to wait_ms (a daemon that is starting). */
static int scale_admin_connect(struct scale_admin *a, int wait_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	double end = t_now_ms() + wait_ms;
	int fd, r;

	scale_admin_close(a);
	if (strlen(a->path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
	for (;;) {
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		r = -errno;
		close(fd);
		if (t_now_ms() >= end)
			return r;
		usleep(10000);
	}
	a->fd = fd;
	a->last_ms = t_now_ms();
	return 0;
}

static int scale_admin_open(struct scale_admin *a, const char *path)
{
	memset(a, 0, sizeof(*a));
	a->fd = -1;
	snprintf(a->path, sizeof(a->path), "%s", path);
	return scale_admin_connect(a, 10000);
}

/*
 * One request; takes req.  0 and *ret_answer (the answer object; NULL allowed)
 * when the daemon answered ok; -EREMOTEIO with "error: message" in err when it
 * refused; another negative errno when the connection failed (err says how).
 */
static int scale_admin_call(struct scale_admin *a, json_t *req, json_t **ret_answer, char *err,
			    size_t errlen)
{
	json_t *ans = NULL;
	int r;

	err[0] = '\0';
	if (req == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((a->fd < 0 || t_now_ms() - a->last_ms > SCALE_ADMIN_IDLE_MS) &&
	    (r = scale_admin_connect(a, 10000)) < 0) {
		snprintf(err, errlen, "connect %.300s: %s", a->path, strerror(-r));
		goto out;
	}
	/* The line and its newline out, the answer line in (tools/lineio.c). */
	r = t_line_call(a->fd, req, a->in, sizeof(a->in), SCALE_ADMIN_TIMEOUT_MS);
	req = NULL;
	if (r < 0) {
		snprintf(err, errlen, "admin socket: %s", strerror(-r));
		scale_admin_close(a);
		goto out;
	}
	a->last_ms = t_now_ms();
	if ((ans = json_loads(a->in, 0, NULL)) == NULL || !json_is_object(ans)) {
		snprintf(err, errlen, "an answer that is not a JSON object");
		r = -EPROTO;
		scale_admin_close(a);
		goto out;
	}
	if (!json_is_true(json_object_get(ans, "ok"))) {
		const char *e = json_string_value(json_object_get(ans, "error")),
			   *m = json_string_value(json_object_get(ans, "message"));

		snprintf(err, errlen, "%s: %s", e ? e : "(no error member)", m ? m : "");
		r = -EREMOTEIO;
		goto out;
	}
	if (ret_answer != NULL) {
		*ret_answer = ans;
		ans = NULL;
	}
	r = 0;
out:
	json_decref(ans);
	json_decref(req);
	return r;
}

/* Client i's name: fixed width, so that names sort as they were added. */
static void scale_name(int i, char ret_name[16])
{
	snprintf(ret_name, 16, "c%05d", i);
}

struct scale_client {
	char kid[CIMD_KID_LEN + 1]; /* of the key client.add created */
	char sha256[65];	    /* hex, of the approved document version 1 */
};

/* client.add and doc.approve of client i: the client's kid and document
 * hash, and the time of both requests in ms. */
static int scale_add(struct scale_admin *a, int i, struct scale_client *ret_client, double *ret_ms,
		     char *err, size_t errlen)
{
	char name[16], title[32];
	const char *kid, *sha;
	json_t *ans = NULL, *ans2 = NULL, *doc;
	double t0;
	int r;

	scale_name(i, name);
	snprintf(title, sizeof(title), "Scale %d", i);
	doc = json_pack("{sss[s]s[]}", "client_name", title, "grant_types", "client_credentials",
			"response_types");
	t0 = t_now_ms();
	if ((r = scale_admin_call(a,
				  json_pack("{sssssssO}", "op", "client.add", "name", name, "owner",
					    "scale", "metadata", doc),
				  &ans, err, errlen)) < 0 ||
	    (r = scale_admin_call(
		 a, json_pack("{sssssi}", "op", "doc.approve", "name", name, "version", 1), &ans2,
		 err, errlen)) < 0)
		goto out;
	*ret_ms = t_now_ms() - t0;
	kid = json_string_value(json_object_get(ans, "kid"));
	sha = json_string_value(json_object_get(ans2, "sha256"));
	if (kid == NULL || strlen(kid) != CIMD_KID_LEN || sha == NULL || strlen(sha) != 64) {
		snprintf(err, errlen, "%s: an answer without kid or sha256", name);
		r = -EPROTO;
		goto out;
	}
	memcpy(ret_client->kid, kid, CIMD_KID_LEN + 1);
	memcpy(ret_client->sha256, sha, 65);
	r = 0;
out:
	json_decref(doc);
	json_decref(ans);
	json_decref(ans2);
	return r;
}

/* ---- HTTPS: one keep-alive TLS connection to the publisher ---- */

struct scale_https {
	SSL_CTX *ctx;
	SSL *ssl;
	int fd;
	int port;
};

static void https_drop(struct scale_https *h)
{
	if (h->ssl != NULL)
		SSL_free(h->ssl);
	if (h->fd >= 0)
		close(h->fd);
	h->ssl = NULL;
	h->fd = -1;
}

static void scale_https_free(struct scale_https *h)
{
	https_drop(h);
	SSL_CTX_free(h->ctx);
	h->ctx = NULL;
}

/* Trusts ca only, for the name 127.0.0.1 (the harness's certificate). */
static int scale_https_init(struct scale_https *h, const char *ca, int port)
{
	memset(h, 0, sizeof(*h));
	h->fd = -1;
	h->port = port;
	if ((h->ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_load_verify_locations(h->ctx, ca, NULL) != 1 ||
	    X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(h->ctx), "127.0.0.1") != 1) {
		scale_https_free(h);
		return -EINVAL;
	}
	SSL_CTX_set_verify(h->ctx, SSL_VERIFY_PEER, NULL);
	return 0;
}

static int https_connect(struct scale_https *h)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)h->port)};
	struct timeval tv = {.tv_sec = SCALE_IO_TIMEOUT_SEC};
	int one = 1, r;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((h->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -errno;
	setsockopt(h->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(h->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(h->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		https_drop(h);
		return r;
	}
	if ((h->ssl = SSL_new(h->ctx)) == NULL || SSL_set_fd(h->ssl, h->fd) != 1 ||
	    SSL_connect(h->ssl) != 1) {
		ERR_clear_error();
		https_drop(h);
		return -EPROTO;
	}
	return 0;
}

/* The value of header name (lower case, with its colon) in head, or NULL. */
static const char *http_header(const char *head, const char *name)
{
	const char *p = strstr(head, "\r\n");

	while (p != NULL && p[2] != '\r') {
		p += 2;
		if (strncasecmp(p, name, strlen(name)) == 0)
			return p + strlen(name) + strspn(p + strlen(name), " \t");
		p = strstr(p, "\r\n");
	}
	return NULL;
}

/* One GET on the open connection.  The status, the body (NUL-terminated) and
 * whether the server closes the connection after it. */
static int https_once(struct scale_https *h, const char *path, int *ret_status, char **ret_body,
		      size_t *ret_len, int *ret_close)
{
	char req[1200], head[SCALE_HTTP_HEAD_MAX + 1], *end = NULL, *body = NULL;
	const char *cl, *conn;
	size_t n = 0, have, want;
	int k, status, r;

	k = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", path,
		     h->port);
	if (k < 0 || (size_t)k >= sizeof(req))
		return -ENAMETOOLONG;
	if (SSL_write(h->ssl, req, k) != k)
		return -EIO;
	while (end == NULL) {
		if (n == SCALE_HTTP_HEAD_MAX)
			return -EMSGSIZE;
		if ((k = SSL_read(h->ssl, head + n, (int)(SCALE_HTTP_HEAD_MAX - n))) <= 0)
			return -EIO;
		n += (size_t)k;
		head[n] = '\0';
		end = strstr(head, "\r\n\r\n");
	}
	end[2] = '\0'; /* keeps the last header's CRLF for http_header */
	if (sscanf(head, "HTTP/1.%*d %d", &status) != 1)
		return -EPROTO;
	cl = http_header(head, "content-length:");
	conn = http_header(head, "connection:");
	want = cl != NULL ? strtoul(cl, NULL, 10) : 0;
	if (want > SCALE_HTTP_BODY_MAX)
		return -EMSGSIZE;
	if ((body = malloc(want + 1)) == NULL)
		return -ENOMEM;
	have = n - (size_t)(end + 4 - head);
	if (have > want)
		have = want; /* nothing is pipelined: more would be the server's error */
	memcpy(body, end + 4, have);
	while (have < want) {
		if ((k = SSL_read(h->ssl, body + have, (int)(want - have))) <= 0) {
			r = -EIO;
			free(body);
			return r;
		}
		have += (size_t)k;
	}
	body[want] = '\0';
	*ret_status = status;
	*ret_body = body;
	*ret_len = want;
	*ret_close = conn != NULL && strncasecmp(conn, "close", 5) == 0;
	return 0;
}

/*
 * GET path over the kept connection (opened if needed; opened once more if the
 * server had closed it).  0 with the status and the body (free() it), or a
 * negative errno when no answer came.
 */
static int scale_https_get(struct scale_https *h, const char *path, int *ret_status,
			   char **ret_body, size_t *ret_len)
{
	int attempt, reused, close_after = 0, r = -EIO;

	for (attempt = 0; attempt < 2; attempt++) {
		reused = h->ssl != NULL;
		if (h->ssl == NULL && (r = https_connect(h)) < 0)
			return r;
		r = https_once(h, path, ret_status, ret_body, ret_len, &close_after);
		if (r == 0 && close_after)
			https_drop(h);
		if (r == 0)
			return 0;
		https_drop(h);
		if (!reused)
			break;
	}
	return r;
}

/* Lower-case hex SHA-256 of buf. */
static void sha256_hex(const void *buf, size_t len, char ret_hex[65])
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	size_t i;

	SHA256(buf, len, md);
	for (i = 0; i < sizeof(md); i++)
		snprintf(ret_hex + 2 * i, 3, "%02x", md[i]);
}

/* Whether jwks (a JWKS document) holds a key with this kid. */
static int jwks_has_kid(const char *jwks, size_t len, const char *kid)
{
	json_t *doc = json_loadb(jwks, len, 0, NULL), *k;
	size_t i;
	int found = 0;

	json_array_foreach(json_object_get(doc, "keys"), i, k)
	{
		const char *v = json_string_value(json_object_get(k, "kid"));

		found |= v != NULL && strcmp(v, kid) == 0;
	}
	json_decref(doc);
	return found;
}

/*
 * Client i as the publisher serves it: 1 when /clients/NAME has the approved
 * bytes and /clients/NAME/jwks.json holds the client's kid, 0 when not (what
 * was wrong into why), a negative errno when the publisher did not answer.
 */
static int scale_served(struct scale_https *h, int i, const struct scale_client *c, char *why,
			size_t whylen)
{
	char name[16], path[64], hex[65];
	char *body = NULL;
	size_t len;
	int status, r;

	scale_name(i, name);
	snprintf(path, sizeof(path), "/clients/%s", name);
	if ((r = scale_https_get(h, path, &status, &body, &len)) < 0)
		return r;
	sha256_hex(body, len, hex);
	if (status != 200 || strcmp(hex, c->sha256) != 0) {
		snprintf(why, whylen, "%s: %d, %s", path, status,
			 status == 200 ? "not the approved bytes" : "not served");
		free(body);
		return 0;
	}
	free(body);
	body = NULL;
	snprintf(path, sizeof(path), "/clients/%s/jwks.json", name);
	if ((r = scale_https_get(h, path, &status, &body, &len)) < 0)
		return r;
	r = status == 200 && jwks_has_kid(body, len, c->kid);
	if (!r)
		snprintf(why, whylen, "%s: %d, %s", path, status,
			 status == 200 ? "without the client's kid" : "not served");
	free(body);
	return r;
}

/* Polls GET path until it answers 200, at most wait_ms; 0, or -ETIMEDOUT. */
static int scale_wait_served(struct scale_https *h, const char *path, int wait_ms)
{
	double end = t_now_ms() + wait_ms;
	char *body = NULL;
	size_t len;
	int status = 0;

	for (;;) {
		if (scale_https_get(h, path, &status, &body, &len) == 0) {
			free(body);
			body = NULL;
			if (status == 200)
				return 0;
		}
		if (t_now_ms() >= end)
			return -ETIMEDOUT;
		usleep(2000);
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* The p-quantile (0..1, nearest rank) of v[0..n), which is sorted; -1 if n = 0. */
static double scale_quantile(double *v, size_t n, double p)
{
	size_t k;

	if (n == 0)
		return -1;
	qsort(v, n, sizeof(*v), cmp_double);
	k = (size_t)(p * (double)n + 0.999999);
	return v[k > 0 ? k - 1 : 0];
}

/* Whether the daemon's log says the publisher died. */
static int scale_publisher_died(const struct t_daemon *d)
{
	return t_log_count(d, "forbidden system call") + t_log_count(d, "killed by signal") +
	       t_log_count(d, "exited with");
}

#ifndef SCALE_NO_MAIN

/* Reads a positive integer from the environment, or def. */
static long env_long(const char *name, long def)
{
	const char *v = getenv(name);
	char *end;
	long n;

	if (v == NULL || *v == '\0')
		return def;
	n = strtol(v, &end, 10);
	return *end == '\0' && n > 0 ? n : def;
}

int main(void)
{
	struct t_softhsm hsm;
	struct t_cimdd cd;
	struct scale_admin *adm = NULL;
	struct scale_https https = {.fd = -1};
	struct scale_client *cl = NULL;
	double *ms = NULL, t0, add_s, fetch_s, small_med, big_med, w_small[SCALE_WINDOW_MAX],
	       w_big[SCALE_WINDOW_MAX];
	long n = env_long("CIMD_TEST_SCALE_N", 2000), base = env_long("CIMD_TEST_SCALE_BASE", 200);
	long limit_s = env_long("CIMD_TEST_SCALE_SECONDS", 1800);
	char err[512], why[256] = "", path[64], name[16];
	int i, added = 0, good = 0, rc, r = 0;
	size_t w;

	signal(SIGPIPE, SIG_IGN);
	if (n > CIMD_CLIENTS_MAX)
		n = CIMD_CLIENTS_MAX;
	if (base >= n)
		base = n / 2;
	/* The window: the operations that end at each size. */
	w = (size_t)(base / 2 < SCALE_WINDOW_MAX ? base / 2 : SCALE_WINDOW_MAX);
	if (!t_ok(w >= 1, "sizes: %ld clients, compared with %ld", n, base))
		return t_done();
	if (!t_ok(t_softhsm_init(&hsm, "scale", "246810") == 0, "SoftHSM2 token"))
		return t_done();
	rc = t_cimdd_start(&cd, "run", hsm.conf, NULL);
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc)))
		return t_done();
	cl = calloc((size_t)n, sizeof(*cl));
	ms = calloc((size_t)n, sizeof(*ms));
	if ((adm = malloc(sizeof(*adm))) != NULL)
		adm->fd = -1;
	rc = cl == NULL || ms == NULL || adm == NULL ? -ENOMEM : scale_admin_open(adm, cd.dm.sock);
	if (rc == 0)
		rc = scale_https_init(&https, cd.ca, cd.port);
	if (!t_ok(rc == 0, "admin socket and TLS client (%s)", strerror(-rc)))
		goto out;

	t0 = t_now_ms();
	for (i = 0; i < n; i++) {
		if (t_now_ms() - t0 > (double)limit_s * 1000) {
			snprintf(err, sizeof(err), "stopped after %ld s (CIMD_TEST_SCALE_SECONDS)",
				 limit_s);
			r = -ETIMEDOUT;
			break;
		}
		if ((r = scale_add(adm, i, &cl[i], &ms[i], err, sizeof(err))) < 0)
			break;
		added++;
	}
	add_s = (t_now_ms() - t0) / 1000;
	t_ok(added == n, "%d of %ld clients added and approved in %.1f s (%.1f ms each)%s%s", added,
	     n, add_s, added ? add_s * 1000 / added : 0, r < 0 ? ": " : "", r < 0 ? err : "");
	if (added >= base + (long)w) {
		memcpy(w_small, ms + base - (long)w, w * sizeof(double));
		memcpy(w_big, ms + added - (long)w, w * sizeof(double));
		small_med = scale_quantile(w_small, w, 0.5);
		big_med = scale_quantile(w_big, w, 0.5);
		if (added == n)
			t_ok(big_med <= 2 * small_med,
			     "one add+approve at %ld clients takes at most 2x its time at %ld: "
			     "median %.2f ms against %.2f ms (%.2fx; medians of %zu operations "
			     "each)",
			     n, base, big_med, small_med, small_med > 0 ? big_med / small_med : 0,
			     w);
		else /* what the stopped run says about the growth, not a check */
			printf("# add+approve median: %.2f ms at %ld clients, %.2f ms at %d "
			       "(%.2fx)\n",
			       small_med, base, big_med, added,
			       small_med > 0 ? big_med / small_med : 0);
	}

	/* Publication follows the database; the last client served means the
	 * set that holds them all has reached the publisher. */
	scale_name(added > 0 ? added - 1 : 0, name);
	snprintf(path, sizeof(path), "/clients/%s/jwks.json", name);
	t0 = t_now_ms();
	rc = added > 0 ? scale_wait_served(&https, path, 30000) : -ENOENT;
	t_ok(rc == 0, "the last client's JWKS is served %.0f ms after it was added",
	     t_now_ms() - t0);
	/* Every client, even when the last was not served: the count says how
	 * far publication got. */
	t0 = t_now_ms();
	for (i = 0; i < added; i++) {
		char one[256];

		if ((r = scale_served(&https, i, &cl[i], one, sizeof(one))) < 0) {
			snprintf(why, sizeof(why), "c%05d: the publisher did not answer (%s)", i,
				 strerror(-r));
			break;
		}
		if (r == 0 && why[0] == '\0')
			snprintf(why, sizeof(why), "%s", one);
		good += r;
	}
	fetch_s = (t_now_ms() - t0) / 1000;
	t_ok(added > 0 && good == added,
	     "every client's document (the approved bytes) and JWKS (its kid) served over "
	     "HTTPS: %d of %d, in %.1f s on one keep-alive connection%s%s",
	     good, added, fetch_s, why[0] ? "; first wrong: " : "", why);
	if (!t_ok(scale_publisher_died(&cd.dm) == 0 &&
		      t_log_count(&cd.dm, "publisher: started") == 1,
		  "the publisher never died (started once; no forbidden system call, no exit)"))
		t_sh("grep -m 3 -E 'publisher|forbidden system call|killed by signal|exited with' "
		     "%s",
		     cd.dm.log);
out:
	if (adm != NULL)
		scale_admin_close(adm);
	scale_https_free(&https);
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stops cleanly");
	free(adm);
	free(cl);
	free(ms);
	return t_done();
}

#endif /* SCALE_NO_MAIN */
