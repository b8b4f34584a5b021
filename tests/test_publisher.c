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

#include <openssl/sha.h>

#include "harness.h"
#include "hmap.h"
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
		 "--publisher 3 --listen 127.0.0.1:%d --tls-cert %s/tls.crt --tls-key %s/tls.key\n",
		 port, c.dir, c.dir);
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

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	build_dir();
	test_image();
	test_channel();
	t_cleanup();
	return t_done();
}
