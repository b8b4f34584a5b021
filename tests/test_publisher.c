/*
 * test_publisher — cimdd-publisher as its own program (publisher/).
 *
 * Its image: BUILD/libexec/cimdd/cimdd-publisher links no custody library (no
 * libp11, tss2, SQLite, OpenSSL or jansson, by ldd and by its undefined
 * symbols), while the same checks find them in cimdd, so they can fail.
 *
 * Its place: cimdd runs the program it finds at ../libexec/cimdd/ from its own
 * bin/, whatever directory it was copied to, with the spawn protocol of
 * service/publish.c (the channel on fd 3, the same arguments); without one
 * there, cimdd refuses to start and names the path it tried.
 *
 * The channel end to end: a cimdd whose publisher is a recorder of fd 3, one
 * approved client, and every message recorded decoded by the publisher's own
 * decoder (codec/pubset.c).  What it gives back is what the custody process
 * rendered: each path's bytes equal export_dir's copy of them (written by the
 * custody process itself, without the codec), its content type, ETag and
 * max-age equal export_dir's nginx snippet, the ETag is the SHA-256 of the
 * bytes, and the max-ages are the configured ones.
 *
 * Hostile peers on the network, against a real publisher: TLS 1.0 and 1.1
 * refused (a local openssl s_server shows the client could speak them), CBC
 * suites refused on TLS 1.2, AEAD ones served; a raw NUL in the target, Host
 * missing or twice and two Content-Lengths each a 400; 17 addresses x 64 idle
 * TLS connections (the flood of issue 15) and more prefixes after them leave
 * /healthz answering within 1 s, through the per-prefix cap, the reserve and
 * eviction (counted in /metrics); one /24 holds at most 64 connections; the
 * /24 and /64 prefixes themselves (pub_peer_prefix).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include <openssl/sha.h>
#include <openssl/ssl.h>

#include "harness.h"
#include "hmap.h"
#include "publisher.h"
#include "pubset.h"
#include "service.h"

#define JWKS_AGE 120
#define DOC_AGE 240

static char build[1024];

static void build_dir(void)
{
	t_build_dir(build, sizeof(build));
}

static char *slurp(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	long n;

	if (f == NULL)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = calloc(1, (size_t)n + 1)) != NULL) {
		if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
			free(buf);
			buf = NULL;
		} else if (ret_len != NULL) {
			*ret_len = (size_t)n;
		}
	}
	fclose(f);
	return buf;
}

/* Whether a line of `cmd`'s output contains needle. */
static int output_has(const char *cmd, const char *needle)
{
	char line[1024];
	FILE *f = popen(cmd, "r");
	int found = 0;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strstr(line, needle) != NULL)
			found = 1;
	pclose(f);
	return found;
}

/* Custody libraries, by the names of their shared objects and of their symbols. */
static const struct {
	const char *lib, *sym;
} custody[] = {
    {"libp11.so", "PKCS11_"}, {"libtss2-", "Esys_"},	 {"libsqlite3", "sqlite3_"},
    {"libcrypto.so", "EVP_"}, {"libssl.so", "SSL_CTX_"}, {"libjansson", "json_"},
};

static void test_image(void)
{
	char pub[1100], cimdd[1100], cmd[1200];
	size_t i;

	snprintf(pub, sizeof(pub), "%s/libexec/cimdd/cimdd-publisher", build);
	snprintf(cimdd, sizeof(cimdd), "%s/bin/cimdd", build);
	if (!t_ok(access(pub, X_OK) == 0, "make built %s", pub))
		return;
	snprintf(cmd, sizeof(cmd), "ldd '%s'", pub);
	t_ok(output_has(cmd, "libmicrohttpd") == 1 && output_has(cmd, "libseccomp") == 1,
	     "cimdd-publisher links libmicrohttpd and libseccomp");
	for (i = 0; i < sizeof(custody) / sizeof(custody[0]); i++) {
		snprintf(cmd, sizeof(cmd), "ldd '%s'", pub);
		t_ok(output_has(cmd, custody[i].lib) == 0, "no %s in cimdd-publisher's image",
		     custody[i].lib);
		snprintf(cmd, sizeof(cmd), "nm -D --undefined-only '%s'", pub);
		t_ok(output_has(cmd, custody[i].sym) == 0,
		     "no %s* symbol needed by cimdd-publisher", custody[i].sym);
	}
	/* The same checks on the custody process find what it links. */
	snprintf(cmd, sizeof(cmd), "ldd '%s'", cimdd);
	t_ok(output_has(cmd, "libsqlite3") == 1 && output_has(cmd, "libcrypto.so") == 1 &&
		 output_has(cmd, "libp11.so") == 1 && output_has(cmd, "libtss2-") == 1,
	     "the check sees libsqlite3, libcrypto, libp11 and libtss2 in cimdd");
	snprintf(cmd, sizeof(cmd), "nm -D --undefined-only '%s'", cimdd);
	t_ok(output_has(cmd, "sqlite3_") == 1 && output_has(cmd, "EVP_") == 1,
	     "the check sees sqlite3_* and EVP_* symbols needed by cimdd");
	/* A program of its own: it says how it is started. */
	snprintf(cmd, sizeof(cmd), "'%s' 2>&1; echo \"exit $?\"", pub);
	t_ok(output_has(cmd, "needs --publisher FD --listen HOST:PORT") == 1 &&
		 output_has(cmd, "exit 2") == 1,
	     "cimdd-publisher alone: its usage, exit 2");
}

/* ---- the channel as recorded, decoded by the publisher's decoder ---- */

struct rec {
	struct hmap_item it;
	struct pubset_entry e; /* body points to data */
	uint8_t *data;
};

static void rec_free(struct hmap_item *it)
{
	struct rec *r = (struct rec *)it;

	free(r->data);
	free(r);
}

struct table {
	struct hmap paths;
	int failed;
};

static int apply(void *arg, const struct pubset_entry *e)
{
	struct table *t = arg;
	struct hmap_item *old = NULL;
	struct rec *r;

	if (e->op == PUBSET_OP_DELETE) {
		if ((old = hmap_del(&t->paths, e->path)) != NULL)
			rec_free(old);
		return 0;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL || (r->data = malloc(e->len + 1)) == NULL) {
		free(r);
		return -ENOMEM;
	}
	r->e = *e;
	memcpy(r->data, e->body, e->len);
	r->data[e->len] = '\0';
	r->e.body = r->data;
	if (hmap_put(&t->paths, &r->it, r->e.path, &old) < 0) {
		rec_free(&r->it);
		return -ENOMEM;
	}
	if (old != NULL)
		rec_free(old);
	return 0;
}

/* The table the recorded messages make, as the publisher applies them: a
 * message with BEGIN starts a new one.  0, or -EPROTO for a malformed message
 * (a partial last one is left for the next look). */
static int replay(const char *file, struct table *t)
{
	size_t len = 0, off = 0;
	uint8_t *all = (uint8_t *)slurp(file, &len), flags;
	uint32_t blen;
	int r = 0;

	hmap_clear(&t->paths, rec_free);
	if (all == NULL)
		return 0;
	while (r == 0 && len - off >= PUBSET_HDR_LEN) {
		if (pubset_header(all + off, &blen) < 0) {
			r = -EPROTO;
			break;
		}
		if (len - off - PUBSET_HDR_LEN < blen)
			break;
		off += PUBSET_HDR_LEN;
		if (pubset_decode(all + off, blen, &flags, NULL, NULL, NULL) < 0) {
			r = -EPROTO;
			break;
		}
		if (flags & PUBSET_BEGIN)
			hmap_clear(&t->paths, rec_free);
		r = pubset_decode(all + off, blen, NULL, NULL, apply, t);
		off += blen;
	}
	free(all);
	return r;
}

/* export_dir's file for a path (service/publish.c export_file). */
static void export_file(const char *dir, const char *path, char *out, size_t len)
{
	size_t n = strlen(path);

	if (strcmp(path, "/healthz") == 0)
		snprintf(out, len, "%s/healthz.txt", dir);
	else if (n > 5 && strcmp(path + n - 5, ".json") == 0)
		snprintf(out, len, "%s%s", dir, path);
	else
		snprintf(out, len, "%s%s/cimd.json", dir, path);
}

/* Whether every path handed on (but /metrics, which stays with the publisher)
 * is in export_dir with the same bytes, and its snippet with the same
 * headers; what differs first into why. */
static int agrees(struct table *t, const char *exp, char *why, size_t whylen)
{
	char file[2200], conf[2200], want[8192], *bytes, *snip;
	struct hmap_item *it;
	size_t pos = 0, n = 0;
	int ok = 1;

	while (ok && (it = hmap_next(&t->paths, &pos)) != NULL) {
		const struct pubset_entry *e = &((struct rec *)it)->e;
		const char *client = "_appliance";
		char name[64] = "";

		if (strcmp(e->path, "/metrics") == 0)
			continue;
		export_file(exp, e->path, file, sizeof(file));
		bytes = slurp(file, &n);
		if (bytes == NULL || n != e->len || memcmp(bytes, e->body, n) != 0) {
			snprintf(why, whylen, "%s: not the bytes of %s", e->path, file);
			ok = 0;
		}
		free(bytes);
		if (!ok)
			break;
		if (strncmp(e->path, "/clients/", 9) == 0) {
			snprintf(name, sizeof(name), "%.*s", (int)strcspn(e->path + 9, "/"),
				 e->path + 9);
			client = name;
		}
		snprintf(conf, sizeof(conf), "%s/conf/%s.conf", exp, client);
		if (e->max_age == 0)
			snprintf(want, sizeof(want),
				 "location = %s {\n    alias %s;\n    types { } default_type "
				 "\"%s\";\n    etag off;\n    if ($http_if_none_match = '%s') { "
				 "return 304; }\n    add_header ETag '%s' always;\n    add_header "
				 "Cache-Control \"no-store\" always;\n",
				 e->path, file, e->ctype, e->etag, e->etag);
		else
			snprintf(
			    want, sizeof(want),
			    "location = %s {\n    alias %s;\n    types { } default_type "
			    "\"%s\";\n    etag off;\n    if ($http_if_none_match = '%s') { "
			    "return 304; }\n    add_header ETag '%s' always;\n    add_header "
			    "Cache-Control \"public, max-age=%u, stale-if-error=%u\" always;\n",
			    e->path, file, e->ctype, e->etag, e->etag, e->max_age, e->stale);
		snip = slurp(conf, NULL);
		if (snip == NULL || strstr(snip, want) == NULL) {
			snprintf(why, whylen, "%s: type, ETag or max-age not as in %s", e->path,
				 conf);
			ok = 0;
		}
		free(snip);
	}
	return ok;
}

/* A copy of this build's cimdd at ROOT/bin/cimdd, started on conf with its
 * log at log: its pid once its admin socket answers, 0 if it exited first
 * (its status in *ret_status), -1 otherwise. */
static pid_t start_copy(const char *root, const char *conf, const char *log, const char *sock,
			int *ret_status)
{
	char bin[PATH_MAX];
	pid_t pid;
	int i, fd;

	snprintf(bin, sizeof(bin), "%s/bin/cimdd", root);
	if ((pid = fork()) < 0)
		return -1;
	if (pid == 0) {
		if ((fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(bin, "cimdd", "-c", conf, "-f", (char *)NULL);
		_exit(127);
	}
	for (i = 0; i < 500; i++) {
		if (waitpid(pid, ret_status, WNOHANG) == pid)
			return 0;
		if (t_unix_up(sock))
			return pid;
		usleep(20000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

static void stop(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
}

static void test_channel(void)
{
	struct t_cimdd c = {0};
	struct t_softhsm hsm;
	struct table t = {0};
	struct rec *r;
	char root[1100], bare[1100], conf[8192], path[PATH_MAX], exp[1024],
	    why[PATH_MAX + 128] = "nothing recorded", want[PATH_MAX + 256], etag[64], *text;
	uint8_t sha[32];
	double t0;
	pid_t pid = -1;
	int port, n, st = 0, ok = 0;

	if (!t_ok(t_softhsm_init(&hsm, "publisher", "654321") == 0, "SoftHSM2 token"))
		return;
	snprintf(c.dir, sizeof(c.dir), "%s/inst", t_tmpdir());
	snprintf(root, sizeof(root), "%s/prefix", t_tmpdir());
	snprintf(exp, sizeof(exp), "%s/export", c.dir);
	snprintf(c.dm.sock, sizeof(c.dm.sock), "%s/admin.sock", c.dir);
	snprintf(c.dm.log, sizeof(c.dm.log), "%s/cimdd.log", c.dir);
	snprintf(c.dm.conf, sizeof(c.dm.conf), "%s/cimdd.conf", c.dir);
	t_bin("cimdctl", c.ctl, sizeof(c.ctl));
	/* A prefix of our own: cimdd copied into it, a recorder of the channel
	 * where the publisher belongs. */
	if (!t_ok(
		t_sh("mkdir -p '%s/bin' '%s/libexec/cimdd' '%s' && cp '%s/bin/cimdd' '%s/bin/' && "
		     "printf '#!/bin/sh\\necho \"$@\" > %s/argv\\nexec cat <&3 > %s/channel\\n' "
		     "> '%s/libexec/cimdd/cimdd-publisher' && "
		     "chmod 0755 '%s/libexec/cimdd/cimdd-publisher'",
		     root, root, c.dir, build, root, c.dir, c.dir, root, root) == 0,
		"cimdd copied to %s/bin, a recorder as its publisher", root))
		return;
	if ((port = dev_free_port_pair()) < 0) {
		t_ok(0, "a free loopback port (%s)", cimd_strerror(port));
		return;
	}
	if (t_sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
		 "%s/tls.key -out %s/tls.crt -days 2 -subj /CN=127.0.0.1 2>/dev/null >/dev/null",
		 c.dir, c.dir) != 0)
		return;
	n = snprintf(conf, sizeof(conf),
		     "state_dir = %s/state\n"
		     "base_url = https://127.0.0.1:%d\n"
		     "backend = %s\n"
		     "admin_socket = %s\n"
		     "sign_socket = %s/sign.sock\n"
		     "listen = 127.0.0.1:%d\n"
		     "tls_cert = %s/tls.crt\n"
		     "tls_key = %s/tls.key\n"
		     "export_dir = %s\n"
		     "jwks_max_age = %d\n"
		     "cimd_max_age = %d\n"
		     "two_person_rule = no\n"
		     "operator = alice uid=%d roles=submit,approve,rotate,revoke,read\n",
		     c.dir, port, hsm.conf, c.dm.sock, c.dir, port, c.dir, c.dir, exp, JWKS_AGE,
		     DOC_AGE, (int)geteuid());
	if (n < 0 || (size_t)n >= sizeof(conf) || t_write_file(c.dm.conf, conf, (size_t)n) < 0)
		return;
	pid = start_copy(root, c.dm.conf, c.dm.log, c.dm.sock, &st);
	if (!t_ok(pid > 0, "the copied cimdd starts with the publisher at its ../libexec/cimdd/")) {
		t_sh("cat '%s'", c.dm.log);
		return;
	}
	if (!t_ok(t_cimdd_client(&c, "agent-a", "https://as.example.com") == 0,
		  "client agent-a added and approved"))
		goto out;
	/* Until the recorded table holds the client's document, JWKS and
	 * attestation, and export_dir agrees with all of it. */
	snprintf(path, sizeof(path), "%s/channel", c.dir);
	for (t0 = t_now_ms(); t_now_ms() - t0 < 15000 && !ok; usleep(100000)) {
		if (replay(path, &t) < 0) {
			snprintf(why, sizeof(why), "a recorded message is malformed");
			break;
		}
		ok = hmap_get(&t.paths, "/clients/agent-a") != NULL &&
		     hmap_get(&t.paths, "/clients/agent-a/jwks.json") != NULL &&
		     hmap_get(&t.paths, "/clients/agent-a/attestation.json") != NULL &&
		     hmap_get(&t.paths, "/healthz") != NULL && agrees(&t, exp, why, sizeof(why));
	}
	t_ok(ok,
	     "decoded by the publisher's decoder, the channel gives back what custody "
	     "rendered: bytes, types, ETags, max-ages of %zu paths (%s)",
	     t.paths.n, ok ? "export_dir agrees" : why);
	if ((r = hmap_get(&t.paths, "/clients/agent-a")) != NULL)
		t_ok(r->e.op == PUBSET_OP_PUT && strcmp(r->e.ctype, "application/json") == 0 &&
			 r->e.max_age == DOC_AGE && r->e.stale == DOC_AGE && r->e.len > 0 &&
			 strstr((const char *)r->e.body, "\"client_name\":\"Agent\"") != NULL,
		     "the document: application/json, max-age %d (cimd_max_age), its bytes",
		     DOC_AGE);
	if ((r = hmap_get(&t.paths, "/clients/agent-a/jwks.json")) != NULL) {
		t_ok(r->e.max_age == JWKS_AGE &&
			 strncmp((const char *)r->e.body, "{\"keys\":[{", 10) == 0,
		     "the JWKS: max-age %d (jwks_max_age), one key or more", JWKS_AGE);
		SHA256(r->e.body, r->e.len, sha);
		etag[0] = '"';
		b64url_encode(sha, 32, etag + 1);
		strcat(etag, "\"");
		t_ok(strcmp(r->e.etag, etag) == 0, "the JWKS's ETag is the SHA-256 of its bytes");
	}
	if ((r = hmap_get(&t.paths, "/healthz")) != NULL)
		t_ok(r->e.max_age == 0 && strcmp(r->e.ctype, "text/plain") == 0 && r->e.len == 2 &&
			 memcmp(r->e.body, "ok", 2) == 0,
		     "/healthz: text/plain, no-store, ok");
	/* The spawn protocol: the channel on fd 3, the same arguments. */
	snprintf(path, sizeof(path), "%s/argv", c.dir);
	snprintf(want, sizeof(want),
		 "--publisher 3 --listen 127.0.0.1:%d --tls-cert-fd 4 --tls-key-fd 5\n", port);
	text = slurp(path, NULL);
	t_ok(text != NULL && strcmp(text, want) == 0, "the publisher's arguments: %s",
	     text ? text : "(none)");
	free(text);
out:
	stop(pid);
	hmap_clear(&t.paths, rec_free);

	/* Without a publisher at ../libexec/cimdd/, no start. */
	snprintf(bare, sizeof(bare), "%s/bare", t_tmpdir());
	if (!t_ok(t_sh("mkdir -p '%s/bin' && cp '%s/bin/cimdd' '%s/bin/'", bare, build, bare) == 0,
		  "cimdd copied to %s/bin alone", bare))
		return;
	snprintf(c.dm.log, sizeof(c.dm.log), "%s/bare.log", c.dir);
	st = 0;
	pid = start_copy(bare, c.dm.conf, c.dm.log, c.dm.sock, &st);
	t_ok(pid == 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0,
	     "without its publisher cimdd refuses to start");
	snprintf(want, sizeof(want), "publisher: cannot run %s/libexec/cimdd/cimdd-publisher",
		 bare);
	text = slurp(c.dm.log, NULL);
	t_ok(text != NULL && strstr(text, want) != NULL, "and its log names the path it tried");
	free(text);
	if (pid > 0)
		stop(pid);
}

/* ---- hostile peers on the network ---- */

static SSL_CTX *cctx;
static int hport;

/* A TCP connection to the publisher from src (a loopback address), with a 5 s
 * timeout on each read and write: the descriptor, or -1. */
static int tcp_from(const char *src)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)hport)};
	struct sockaddr_in me = {.sin_family = AF_INET};
	struct timeval tv = {5, 0};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	inet_pton(AF_INET, src, &me.sin_addr);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (bind(fd, (struct sockaddr *)&me, sizeof(me)) < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* A TLS session from src, handshake done: it, or NULL (refused or closed). */
static SSL *tls_from(const char *src)
{
	int fd = tcp_from(src);
	SSL *s;

	if (fd < 0)
		return NULL;
	if ((s = SSL_new(cctx)) == NULL || SSL_set_fd(s, fd) != 1 || SSL_connect(s) != 1) {
		SSL_free(s);
		close(fd);
		return NULL;
	}
	return s;
}

static void tls_close(SSL **s)
{
	if (*s == NULL)
		return;
	close(SSL_get_fd(*s));
	SSL_free(*s);
	*s = NULL;
}

/* The status of the answer to raw request bytes over TLS, read until the
 * publisher closes (each request asks it to): 0 when there is none. */
static int raw_status(const char *req, size_t len)
{
	char buf[4096];
	int n, got = 0, st = 0;
	SSL *s = tls_from("127.0.0.1");

	if (s == NULL)
		return 0;
	if (SSL_write(s, req, (int)len) == (int)len)
		while (got < (int)sizeof(buf) - 1 &&
		       (n = SSL_read(s, buf + got, (int)sizeof(buf) - 1 - got)) > 0)
			got += n;
	buf[got] = '\0';
	if (strncmp(buf, "HTTP/1.", 7) == 0)
		st = atoi(buf + 9);
	tls_close(&s);
	return st;
}

/* What openssl s_client makes of a handshake with these options: 1 done, 0
 * refused. */
static int s_client(int port, const char *opts)
{
	return t_sh("openssl s_client -connect 127.0.0.1:%d %s </dev/null >/dev/null 2>&1", port,
		    opts) == 0;
}

/* Whether something accepts connections on 127.0.0.1:port. */
static int port_up(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), up;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	up = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return up;
}

/* The control: the same client options do speak TLS 1.0, 1.1 and a CBC suite
 * to an openssl s_server that allows them, so a refusal below is the
 * publisher's, not the client's. */
static void tls_control(struct t_cimdd *c)
{
	char key[600], ps[16];
	int port = dev_free_port_pair(), i, fd;
	pid_t srv;

	if (!t_ok(port > 0, "a free port for openssl s_server (%s)", cimd_strerror(port)))
		return;
	snprintf(key, sizeof(key), "%s/tls.key", c->dir);
	snprintf(ps, sizeof(ps), "%d", port);
	if ((srv = fork()) == 0) {
		if ((fd = open("/dev/null", O_RDWR)) >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp("openssl", "openssl", "s_server", "-accept", ps, "-cert", c->ca, "-key", key,
		       "-cipher", "DEFAULT@SECLEVEL=0", "-quiet", (char *)NULL);
		_exit(127);
	}
	for (i = 0; i < 250 && srv > 0 && !port_up(port); i++)
		usleep(20000);
	t_ok(s_client(port, "-tls1 -cipher 'DEFAULT@SECLEVEL=0'") &&
		 s_client(port, "-tls1_1 -cipher 'DEFAULT@SECLEVEL=0'") &&
		 s_client(port, "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA"),
	     "control: openssl s_client speaks TLS 1.0, 1.1 and CBC to an s_server that "
	     "allows them");
	if (srv > 0) {
		kill(srv, SIGKILL);
		waitpid(srv, NULL, 0);
	}
}

static void test_tls(struct t_cimdd *c)
{
	tls_control(c);
	t_ok(!s_client(c->port, "-tls1 -cipher 'DEFAULT@SECLEVEL=0'"), "TLS 1.0: refused");
	t_ok(!s_client(c->port, "-tls1_1 -cipher 'DEFAULT@SECLEVEL=0'"), "TLS 1.1: refused");
	t_ok(!s_client(c->port, "-tls1_2 -cipher AES128-SHA"), "TLS 1.2, AES128-SHA: refused");
	t_ok(!s_client(c->port, "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA"),
	     "TLS 1.2, ECDHE-ECDSA-AES128-SHA (CBC, SHA-1): refused");
	t_ok(!s_client(c->port, "-tls1_2 -cipher ECDHE-ECDSA-AES256-SHA384"),
	     "TLS 1.2, ECDHE-ECDSA-AES256-SHA384 (CBC): refused");
	t_ok(s_client(c->port, "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256"),
	     "TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256 (AEAD): served");
	t_ok(s_client(c->port, "-tls1_2 -cipher ECDHE-ECDSA-CHACHA20-POLY1305"),
	     "TLS 1.2, ECDHE-ECDSA-CHACHA20-POLY1305 (AEAD): served");
	t_ok(s_client(c->port, "-tls1_3"), "TLS 1.3: served");
}

static void test_router(void)
{
	static const struct {
		const char *req;
		size_t len;
		int status;
		const char *what;
	} v[] = {
#define R(s) s, sizeof(s) - 1
	    {R("GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 200,
	     "a plain request (the control)"},
	    {R("GET /healthz HTTP/1.0\r\n\r\n"), 200, "HTTP/1.0 without Host"},
	    {R("GET /healthz\0x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 400,
	     "a raw NUL in the request target"},
	    {R("GET /healthz\0 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 400,
	     "a raw NUL at the end of the request target"},
	    {R("GET /healthz\0HTTP/1.1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 400,
	     "a raw NUL, then what looks like a version"},
	    {R("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"), 400, "HTTP/1.1 without Host"},
	    {R("GET /healthz HTTP/1.1\r\nHost: h\r\nHost: evil\r\nConnection: close\r\n\r\n"), 400,
	     "two Host lines"},
	    {R("GET /healthz HTTP/1.0\r\nHost: h\r\nhost: h\r\n\r\n"), 400,
	     "two Host lines in HTTP/1.0, one in lower case"},
	    {R("GET /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: "
	       "5\r\nConnection: close\r\n\r\nxxxxx"),
	     400, "two Content-Lengths that disagree"},
	    {R("GET /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: "
	       "0\r\nConnection: close\r\n\r\n"),
	     400, "two Content-Lengths"},
#undef R
	};
	size_t i;
	int st;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		st = raw_status(v[i].req, v[i].len);
		t_ok(st == v[i].status, "%s: %d (got %d)", v[i].what, v[i].status, st);
	}
}

/* A number from the publisher's /metrics: the value of the line starting
 * with name, or -1. */
static long metric(struct t_cimdd *c, const char *name)
{
	static char out[65536];
	char *p;

	if (t_cimdd_get(c, "/metrics", out, sizeof(out)) != 0)
		return -1;
	for (p = out; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, name, strlen(name)) == 0 && p[strlen(name)] == ' ')
			return strtol(p + strlen(name) + 1, NULL, 10);
	return -1;
}

/* /healthz from 127.0.0.1 five times: the slowest, in ms, or -1 if one failed. */
static double healthz_worst(struct t_cimdd *c)
{
	char out[256];
	double worst = 0, t0;
	int i;

	for (i = 0; i < 5; i++) {
		t0 = t_now_ms();
		if (t_sh_out(out, sizeof(out), "curl -s --max-time 5 --cacert %s %s/healthz", c->ca,
			     c->base) != 0 ||
		    strncmp(out, "ok", 2) != 0)
			return -1;
		if (t_now_ms() - t0 > worst)
			worst = t_now_ms() - t0;
	}
	return worst;
}

#define FLOOD_MAX 1400

/* n TLS sessions from each of 127.0.x.1 .. 127.0.x.ny, handshake done: how
 * many were kept, appended to held. */
static int hold_tls(SSL **held, int *nheld, int x, int ny, int n)
{
	char src[32];
	int y, k, kept = 0;

	for (y = 1; y <= ny; y++)
		for (k = 0; k < n && *nheld < FLOOD_MAX; k++) {
			snprintf(src, sizeof(src), "127.0.%d.%d", x, y);
			if ((held[*nheld] = tls_from(src)) != NULL) {
				(*nheld)++;
				kept++;
			}
		}
	return kept;
}

/* n idle connections from each of 127.0.x.1, x from x0 to x0 + nx - 1, as a
 * flood opens them: connected (the kernel completes that whatever the
 * publisher does), no byte sent, appended to fds. */
static void hold_tcp(int *fds, int *nfds, int x0, int nx, int n)
{
	char src[32];
	int x, k;

	for (x = x0; x < x0 + nx; x++)
		for (k = 0; k < n && *nfds < FLOOD_MAX; k++) {
			snprintf(src, sizeof(src), "127.0.%d.1", x);
			fds[(*nfds)++] = tcp_from(src);
		}
}

/* Whether the publisher has closed this connection (end of file or reset). */
static int closed_by_peer(int fd)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	char b;

	return fd < 0 || (poll(&pf, 1, 0) == 1 && recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) <= 0);
}

static int count_closed(const int *fds, int from, int to)
{
	int i, n = 0;

	for (i = from; i < to; i++)
		n += closed_by_peer(fds[i]);
	return n;
}

/* Waits (5 s at most) until the publisher counts as open exactly the
 * connections we hold that it has not closed, and the one asking /metrics. */
static int settle(struct t_cimdd *c, const int *fds, int nfds)
{
	double t0 = t_now_ms();
	long open;

	do {
		open = metric(c, "cimdd_http_connections");
		if (open == nfds - count_closed(fds, 0, nfds) + 1)
			return 1;
		usleep(10000);
	} while (t_now_ms() - t0 < 5000);
	return 0;
}

static void release_tls(struct t_cimdd *c, SSL **held, int *nheld)
{
	while (*nheld > 0)
		tls_close(&held[--*nheld]);
	settle(c, NULL, 0);
}

static void release_tcp(struct t_cimdd *c, int *fds, int *nfds)
{
	while (*nfds > 0)
		if (fds[--*nfds] >= 0)
			close(fds[*nfds]);
	settle(c, NULL, 0);
}

/* One /24: 17 addresses x 8 TLS connections, at most 64 kept. */
static void test_prefix_cap(struct t_cimdd *c)
{
	static SSL *held[FLOOD_MAX];
	int nheld = 0, kept;
	long refused;

	kept = hold_tls(held, &nheld, 200, 17, 8);
	t_ok(kept == PUB_CONNS_PER_PREFIX,
	     "17 addresses of one /24, 136 TLS connections: %d kept (%d)", kept,
	     PUB_CONNS_PER_PREFIX);
	refused = metric(c, "cimdd_http_connections_refused_total{reason=\"prefix\"}");
	t_ok(refused >= 136 - PUB_CONNS_PER_PREFIX, "counted in /metrics (refused, prefix): %ld",
	     refused);
	release_tls(c, held, &nheld);
}

/*
 * Issue 15's flood: 17 addresses, each in a /24 of its own, 64 idle
 * connections each, opened as fast as the kernel completes them; /healthz
 * from 127.0.0.1 at once.  Then more prefixes until every place is taken and
 * newcomers must evict: 13 more /24s x 8 fill the reserve, 20 more x 1 take
 * the places of idle connections of the heaviest prefixes (the first 14 of the
 * flood, 64 each).
 */
static void test_flood(struct t_cimdd *c)
{
	static int fds[FLOOD_MAX];
	int nfds = 0, heavy = 14 * 64, flood = 17 * 64, kept, ev_old, ev_light, new_gone;
	double worst, t0;
	long ev0;

	t0 = t_now_ms();
	hold_tcp(fds, &nfds, 10, 17, 64);
	worst = healthz_worst(c);
	printf("# the flood opened in %.0f ms; /healthz at once: slowest of 5 in %.0f ms\n",
	       t_now_ms() - t0, worst);
	t_ok(worst >= 0 && worst < 1000,
	     "17 addresses x 64 idle connections: /healthz answers, slowest of 5 in %.0f ms "
	     "(< 1000)",
	     worst);
	t_ok(settle(c, fds, nfds), "the publisher's count of open connections agrees with ours");
	kept = nfds - count_closed(fds, 0, nfds);
	printf("# the flood: %d of %d connections kept\n", kept, flood);
	t_ok(kept <= PUB_CONNS_MAX - PUB_CONNS_RESERVE + 3 * PUB_CONNS_LIGHT,
	     "the reserve held: %d kept, at most %d (14 prefixes x 64, then light ones only)", kept,
	     PUB_CONNS_MAX - PUB_CONNS_RESERVE + 3 * PUB_CONNS_LIGHT);

	ev0 = metric(c, "cimdd_http_connections_evicted_total");
	ev_old = count_closed(fds, 0, heavy);
	ev_light = count_closed(fds, heavy, flood);
	hold_tcp(fds, &nfds, 40, 13, PUB_CONNS_LIGHT);
	hold_tcp(fds, &nfds, 60, 20, 1);
	t_ok(settle(c, fds, nfds), "the publisher's count agrees again");
	ev_old = count_closed(fds, 0, heavy) - ev_old;
	ev_light = count_closed(fds, heavy, flood) - ev_light;
	new_gone = count_closed(fds, flood, nfds);
	/* Each connection past PUB_CONNS_MAX evicted one. */
	t_ok(kept + nfds - flood > PUB_CONNS_MAX && ev_old >= kept + nfds - flood - PUB_CONNS_MAX &&
		 ev_light == 0 && new_gone == 0,
	     "then 13 more /24s x 8 and 20 /24s x 1: all %d kept (%d closed); %d idle "
	     "connections of the heaviest prefixes evicted, none of the light ones (%d)",
	     nfds - flood, new_gone, ev_old, ev_light);
	t_ok(metric(c, "cimdd_http_connections_evicted_total") - ev0 >= ev_old &&
		 metric(c, "cimdd_http_connections") <= PUB_CONNS_MAX,
	     "/metrics: the evictions counted, at most %d open", PUB_CONNS_MAX);
	worst = healthz_worst(c);
	t_ok(worst >= 0 && worst < 1000,
	     "with every place taken, /healthz still answers, slowest of 5 in %.0f ms (< 1000)",
	     worst);
	printf("# /healthz with every place taken: slowest of 5 in %.0f ms\n", worst);
	release_tcp(c, fds, &nfds);
}

static void test_prefixes(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET}, b = a;
	struct sockaddr_in6 x = {.sin6_family = AF_INET6}, y = x;
	struct sockaddr_un u = {.sun_family = AF_UNIX};
	uint8_t ka[PUB_PREFIX_LEN], kb[PUB_PREFIX_LEN];

	inet_pton(AF_INET, "192.0.2.5", &a.sin_addr);
	inet_pton(AF_INET, "192.0.2.250", &b.sin_addr);
	pub_peer_prefix((struct sockaddr *)&a, sizeof(a), ka);
	pub_peer_prefix((struct sockaddr *)&b, sizeof(b), kb);
	t_ok(memcmp(ka, kb, sizeof(ka)) == 0, "192.0.2.5 and 192.0.2.250: one /24");
	inet_pton(AF_INET, "192.0.3.5", &b.sin_addr);
	pub_peer_prefix((struct sockaddr *)&b, sizeof(b), kb);
	t_ok(memcmp(ka, kb, sizeof(ka)) != 0, "192.0.2.5 and 192.0.3.5: two");
	inet_pton(AF_INET6, "::ffff:192.0.2.77", &x.sin6_addr);
	pub_peer_prefix((struct sockaddr *)&x, sizeof(x), kb);
	t_ok(memcmp(ka, kb, sizeof(ka)) == 0, "::ffff:192.0.2.77 (IPv4-mapped) is in 192.0.2.0/24");
	inet_pton(AF_INET6, "2001:db8:0:1::1", &x.sin6_addr);
	inet_pton(AF_INET6, "2001:db8:0:1:ffff:ffff:ffff:ffff", &y.sin6_addr);
	pub_peer_prefix((struct sockaddr *)&x, sizeof(x), ka);
	pub_peer_prefix((struct sockaddr *)&y, sizeof(y), kb);
	t_ok(memcmp(ka, kb, sizeof(ka)) == 0, "2001:db8:0:1::1 and 2001:db8:0:1:ffff:...: one /64");
	inet_pton(AF_INET6, "2001:db8:0:2::1", &y.sin6_addr);
	pub_peer_prefix((struct sockaddr *)&y, sizeof(y), kb);
	t_ok(memcmp(ka, kb, sizeof(ka)) != 0, "2001:db8:0:1::1 and 2001:db8:0:2::1: two");
	inet_pton(AF_INET6, "2001:db8::1", &y.sin6_addr);
	pub_peer_prefix((struct sockaddr *)&y, sizeof(y), kb);
	t_ok(memcmp(ka, kb, sizeof(ka)) != 0, "2001:db8::1 is another /64 again");
	t_ok(pub_peer_prefix((struct sockaddr *)&u, sizeof(u), kb) == -EAFNOSUPPORT,
	     "another family: -EAFNOSUPPORT");
}

static void test_hostile(void)
{
	struct t_cimdd c = {0};
	struct t_softhsm hsm;
	int rc;

	test_prefixes();
	if (!t_ok(t_softhsm_init(&hsm, "hostile", "654321") == 0, "SoftHSM2 token"))
		return;
	rc = t_cimdd_start(&c, "hostile", hsm.conf, NULL);
	if (!t_ok(rc == 0, "cimdd starts with its publisher (%s)", cimd_strerror(rc)))
		return;
	hport = c.port;
	if ((cctx = SSL_CTX_new(TLS_client_method())) == NULL)
		goto out;
	SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
	test_tls(&c);
	test_router();
	test_prefix_cap(&c);
	test_flood(&c);
	t_ok(t_log_count(&c.dm, "publisher: pid") == 0, "the publisher never died under all of it");
out:
	SSL_CTX_free(cctx);
	t_daemon_stop(&c.dm, SIGTERM);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	build_dir();
	test_image();
	test_channel();
	test_hostile();
	t_cleanup();
	return t_done();
}
