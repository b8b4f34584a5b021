/* harness.c — see harness.h. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/pem.h>

#include "harness.h"
#include "service.h"

static int n_pass, n_fail, n_tests;
static char prefix[64];

void t_set_prefix(const char *p)
{
	snprintf(prefix, sizeof(prefix), "%s", p ? p : "");
}
static char tmp_root[PATH_MAX];

int t_ok(int cond, const char *fmt, ...)
{
	char msg[2048], *p;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One result, one line: output quoted into a message stays on it. */
	for (p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	printf("%s %d - %s%s\n", cond ? "ok" : "not ok", ++n_tests, prefix, msg);
	fflush(stdout);
	if (cond)
		n_pass++;
	else
		n_fail++;
	return cond;
}

int t_done(void)
{
	t_cleanup();
	printf("# %d passed, %d failed\n", n_pass, n_fail);
	fflush(stdout);
	return n_fail == 0 ? 0 : 1;
}

double t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

const char *t_tmpdir(void)
{
	const char *base = getenv("TMPDIR");

	if (tmp_root[0] != '\0')
		return tmp_root;
	snprintf(tmp_root, sizeof(tmp_root), "%s/cimdd-test.XXXXXX", base ? base : "/tmp");
	if (mkdtemp(tmp_root) == NULL) {
		perror("mkdtemp");
		exit(2);
	}
	return tmp_root;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 ? -1 : 0;
}

void t_cleanup(void)
{
	if (tmp_root[0] == '\0' || getenv("CIMD_TEST_KEEP") != NULL)
		return;
	if (nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
		fprintf(stderr, "cannot remove %s\n", tmp_root);
	tmp_root[0] = '\0';
}

int t_write_file(const char *path, const void *buf, size_t len)
{
	int fd, r = 0;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return -errno;
	if (write(fd, buf, len) != (ssize_t)len)
		r = -EIO;
	close(fd);
	return r;
}

int t_sh(const char *fmt, ...)
{
	char cmd[8192], line[1024];
	va_list ap;
	FILE *f;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	if ((f = popen(cmd, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		printf("#   %s", line);
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int t_sh_out(char *out, size_t len, const char *fmt, ...)
{
	char cmd[8192];
	size_t n = 0, k;
	va_list ap;
	FILE *f;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	if ((f = popen(cmd, "r")) == NULL)
		return -1;
	while (n + 1 < len && (k = fread(out + n, 1, len - 1 - n, f)) > 0)
		n += k;
	out[n] = '\0';
	while (fread(cmd, 1, sizeof(cmd), f) > 0)
		; /* drain */
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

const char *t_bin(const char *name, char *buf, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (n < 0)
		n = 0;
	exe[n] = '\0';
	/* BUILD/tests/test_x -> BUILD/bin/NAME */
	if ((slash = strrchr(exe, '/')) != NULL)
		*slash = '\0';
	if ((slash = strrchr(exe, '/')) != NULL)
		*slash = '\0';
	snprintf(buf, len, "%s/bin/%s", exe, name);
	return buf;
}

static int unix_open(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int s, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = connect(s, (struct sockaddr *)&sa, sizeof(sa));
	close(s);
	return r == 0;
}

int t_daemon_start(struct t_daemon *d)
{
	char bin[PATH_MAX];
	double t0;
	int fd, st;

	t_bin("cimdd", bin, sizeof(bin));
	if ((d->pid = fork()) < 0)
		return -errno;
	if (d->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if ((fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execl(bin, "cimdd", "-c", d->conf, "-f", d->arg, (char *)NULL);
		_exit(127);
	}
	for (t0 = t_now_ms(); t_now_ms() - t0 < 10000; usleep(20000)) {
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			return -ECHILD;
		}
		if (unix_open(d->sock))
			return 0;
	}
	return -ETIMEDOUT;
}

int t_daemon_stop(struct t_daemon *d, int sig)
{
	int st = 0;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, sig);
	waitpid(d->pid, &st, 0);
	d->pid = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int t_log_count(const struct t_daemon *d, const char *needle)
{
	char line[4096];
	FILE *f = fopen(d->log, "r");
	int n = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strstr(line, needle) != NULL)
			n++;
	fclose(f);
	return n;
}

int t_softhsm_init(struct t_softhsm *h, const char *label, const char *pin)
{
	char path[700], buf[1024];
	int n;

	snprintf(h->dir, sizeof(h->dir), "%s/softhsm-%s", t_tmpdir(), label);
	snprintf(path, sizeof(path), "%s/tokens", h->dir);
	if (mkdir(h->dir, 0700) < 0 || mkdir(path, 0700) < 0)
		return -errno;
	n = snprintf(buf, sizeof(buf),
		     "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
		     path);
	snprintf(path, sizeof(path), "%s/softhsm2.conf", h->dir);
	if (t_write_file(path, buf, (size_t)n) < 0)
		return -EIO;
	/* The module reads SOFTHSM2_CONF when it is first initialised. */
	setenv("SOFTHSM2_CONF", path, 1);
	if (t_sh("softhsm2-util --init-token --free --label '%s' --pin '%s' --so-pin 87654321 "
		 ">/dev/null",
		 label, pin) != 0)
		return -EIO;
	snprintf(h->pin_file, sizeof(h->pin_file), "%s/pin", h->dir);
	n = snprintf(buf, sizeof(buf), "%s\n", pin);
	if (t_write_file(h->pin_file, buf, (size_t)n) < 0)
		return -EIO;
	snprintf(h->conf, sizeof(h->conf), "pkcs11:module=%s;token=%s;pin-file=%s",
		 T_SOFTHSM_MODULE, label, h->pin_file);
	return 0;
}

static int swtpm_spawn(struct t_swtpm *s)
{
	char log[600];

	snprintf(log, sizeof(log), "%s.log", s->dir);
	return dev_swtpm_spawn(s->dir, s->port, log, &s->pid);
}

int t_swtpm_start(struct t_swtpm *s)
{
	int tries, r = -EADDRINUSE;

	/* tpm2-tss logs its errors to stderr unless told otherwise; the tests
	 * check the errors they expect themselves. */
	setenv("TSS2_LOG", "all+none", 0);
	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "%s/swtpm.XXXXXX", t_tmpdir());
	if (mkdtemp(s->dir) == NULL)
		return -errno;
	/* Another process may take the ports between our probe and swtpm's bind:
	 * then swtpm exits and we try other ports. */
	for (tries = 0; tries < 5 && r == -EADDRINUSE; tries++) {
		if ((s->port = dev_free_port_pair()) < 0)
			return -EADDRINUSE;
		r = swtpm_spawn(s);
	}
	snprintf(s->conf, sizeof(s->conf), "tpm2:tcti=swtpm:host=127.0.0.1,port=%d", s->port);
	return r;
}

int t_swtpm_restart(struct t_swtpm *s)
{
	return swtpm_spawn(s);
}

void t_swtpm_kill(struct t_swtpm *s)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

/* ---- the key store contract, shared by the PKCS#11 and TPM tests ---- */

static int write_jwk(const char *path, const json_t *jwk)
{
	char *s = json_dumps(jwk, JSON_COMPACT);
	int r;

	if (s == NULL)
		return -ENOMEM;
	r = t_write_file(path, s, strlen(s));
	free(s);
	return r;
}

static int has_private_member(const json_t *jwk)
{
	static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth"};
	size_t i;

	for (i = 0; i < sizeof(priv) / sizeof(priv[0]); i++)
		if (json_object_get(jwk, priv[i]) != NULL)
			return 1;
	return 0;
}

/* The openssl CLI verifies the JWS signing input with the public key as PEM. */
static int openssl_verify(const char *dir, const char *jws, const json_t *jwk, enum cimd_alg alg)
{
	char path[700], pem[700], sig[700];
	const char *d2 = strrchr(jws, '.');
	uint8_t *raw = NULL, *der = NULL;
	size_t rawn, dern;
	EVP_PKEY *pk = NULL;
	FILE *f;
	int r = -1;

	snprintf(path, sizeof(path), "%s/input", dir);
	snprintf(pem, sizeof(pem), "%s/pub.pem", dir);
	snprintf(sig, sizeof(sig), "%s/sig.bin", dir);
	if (t_write_file(path, jws, (size_t)(d2 - jws)) < 0 ||
	    b64url_decode(d2 + 1, strlen(d2 + 1), &raw, &rawn) < 0 || jwk_to_evp(jwk, &pk) < 0)
		goto out;
	if ((f = fopen(pem, "w")) == NULL)
		goto out;
	PEM_write_PUBKEY(f, pk);
	fclose(f);
	if (cimd_alg_ec_size(alg) != 0) {
		if (ecdsa_raw_to_der(raw, cimd_alg_ec_size(alg), &der, &dern) < 0 ||
		    t_write_file(sig, der, dern) < 0)
			goto out;
		r = t_sh("openssl dgst -%s -verify %s -signature %s %s >/dev/null",
			 alg == CIMD_ALG_ES384 ? "sha384" : "sha256", pem, sig, path);
	} else {
		if (t_write_file(sig, raw, rawn) < 0)
			goto out;
		r = t_sh(
		    "openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt "
		    "rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256 -verify %s -signature %s %s "
		    ">/dev/null",
		    pem, sig, path);
	}
out:
	free(raw);
	free(der);
	EVP_PKEY_free(pk);
	return r;
}

static int jose_verify(const char *dir, const char *jws, const json_t *jwk)
{
	char jp[700], sp[700];

	snprintf(jp, sizeof(jp), "%s/jwk.json", dir);
	snprintf(sp, sizeof(sp), "%s/jws.txt", dir);
	if (write_jwk(jp, jwk) < 0 || t_write_file(sp, jws, strlen(jws)) < 0)
		return -1;
	return t_sh("node tests/interop/jws-verify.mjs %s %s", jp, sp);
}

void t_keystore_roundtrip(const char *conf, enum cimd_alg alg)
{
	const char *name = cimd_alg_name(alg);
	struct key_store *ks = NULL;
	struct ks_key *key = NULL, *key2 = NULL, *again = NULL;
	json_t *jwk = NULL, *jwk2 = NULL, *claims = NULL;
	char tp[CIMD_KID_LEN + 1], *jws = NULL, *jws2 = NULL, dir[600], errbuf[256];
	const uint8_t *ref;
	uint8_t *refcopy = NULL, *payload = NULL, sig[CIMD_SIG_MAX];
	size_t ref_len = 0, plen, slen;
	static const char msg[] = "{\"iss\":\"https://keys.example.com/clients/a\"}";
	int r;

	snprintf(dir, sizeof(dir), "%s/%s-%s", t_tmpdir(), conf[0] == 'p' ? "p11" : "tpm", name);
	mkdir(dir, 0700);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	if (!t_ok(r == 0, "%s: open key store (%s)", name, r < 0 ? errbuf : "ok"))
		goto out;
	r = key_store_generate(ks, alg, NULL, &key);
	if (!t_ok(r == 0, "%s: generate (%s)", name, r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	jwk = ks_key_jwk(key);
	t_ok(!has_private_member(jwk), "%s: JWK has no private member", name);
	t_ok(jwk_thumbprint(jwk, tp) == 0 && strcmp(tp, ks_key_kid(key)) == 0 &&
		 strcmp(json_string_value(json_object_get(jwk, "kid")), tp) == 0,
	     "%s: kid is the RFC 7638 thumbprint", name);
	t_ok(strcmp(json_string_value(json_object_get(jwk, "alg")), name) == 0 &&
		 strcmp(json_string_value(json_object_get(jwk, "use")), "sig") == 0,
	     "%s: JWK names alg and use", name);
	claims = json_pack("{s:s}", "typ", "client-authentication+jwt");
	r = jws_sign(ks, key, claims, (const uint8_t *)msg, strlen(msg), &jws);
	if (!t_ok(r == 0, "%s: JWS signed (%s)", name, r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	r = jws_verify(jws, jwk, NULL, &payload, &plen);
	t_ok(r == 0 && plen == strlen(msg) && memcmp(payload, msg, plen) == 0,
	     "%s: JWS verifies with our verifier (%s)", name, cimd_strerror(r));
	t_ok(openssl_verify(dir, jws, jwk, alg) == 0, "%s: JWS verifies with the openssl CLI",
	     name);
	t_ok(jose_verify(dir, jws, jwk) == 0, "%s: JWS verifies with node jose compactVerify",
	     name);

	/* A changed payload or signature must fail the signature check itself, or
	 * the checks above prove nothing. */
	{
		char *pl = strchr(jws, '.') + 2, *sg = strrchr(jws, '.') + 2, keep;
		free(payload);
		payload = NULL;
		keep = *pl;
		*pl = keep == 'A' ? 'B' : 'A';
		r = jws_verify(jws, jwk, NULL, &payload, &plen);
		t_ok(r == -CIMD_EVERIFY, "%s: changed payload fails verification (%s)", name,
		     cimd_strerror(r));
		*pl = keep;
		keep = *sg;
		*sg = keep == 'A' ? 'B' : 'A';
		r = jws_verify(jws, jwk, NULL, &payload, &plen);
		t_ok(r == -CIMD_EVERIFY, "%s: changed signature fails verification (%s)", name,
		     cimd_strerror(r));
		*sg = keep;
	}

	/* Restart: the key store goes away, a fresh one finds the key from its
	 * stored reference. */
	ks_key_ref(key, &ref, &ref_len);
	refcopy = malloc(ref_len);
	memcpy(refcopy, ref, ref_len);
	ks_key_free(&key);
	key_store_free(&ks);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	if (!t_ok(r == 0, "%s: key store opens again", name))
		goto out;
	r = key_store_load(ks, alg, refcopy, ref_len, &key2);
	if (!t_ok(r == 0, "%s: load from reference (%s)", name,
		  r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	jwk2 = ks_key_jwk(key2);
	t_ok(json_equal(jwk, jwk2), "%s: reloaded key has the same public JWK", name);
	free(payload);
	payload = NULL;
	r = jws_sign(ks, key2, claims, (const uint8_t *)msg, strlen(msg), &jws2);
	t_ok(r == 0 && jws_verify(jws2, jwk, NULL, &payload, &plen) == 0,
	     "%s: reloaded key signs and verifies", name);
	t_ok(jose_verify(dir, jws2, jwk) == 0, "%s: reloaded key's JWS verifies with jose", name);

	/* A key of another algorithm is refused on load. */
	r = key_store_load(ks, alg == CIMD_ALG_PS256 ? CIMD_ALG_ES256 : CIMD_ALG_PS256, refcopy,
			   ref_len, &again);
	t_ok(r == -CIMD_EALG, "%s: load as another algorithm is refused (%s)", name,
	     cimd_strerror(r));
	ks_key_free(&again);

	/* Destroy through one handle; a second handle to the same key then fails. */
	r = key_store_load(ks, alg, refcopy, ref_len, &again);
	t_ok(r == 0, "%s: a second handle to the key", name);
	r = key_store_destroy(ks, &key2);
	t_ok(r == 0 && key2 == NULL, "%s: destroy (%s)", name, r < 0 ? key_store_errmsg(ks) : "ok");
	if (strncmp(conf, "pkcs11:", 7) == 0 && again != NULL) {
		r = key_store_sign(ks, again, (const uint8_t *)msg, strlen(msg), sig, &slen);
		t_ok(r < 0, "%s: a destroyed key no longer signs (%s)", name, cimd_strerror(r));
		ks_key_free(&again);
		r = key_store_load(ks, alg, refcopy, ref_len, &again);
		t_ok(r == -CIMD_ENOKEY, "%s: a destroyed key no longer loads (%s)", name,
		     cimd_strerror(r));
	}
	ks_key_free(&again);
out:
	free(payload);
	free(refcopy);
	free(jws);
	free(jws2);
	json_decref(jwk);
	json_decref(jwk2);
	json_decref(claims);
	ks_key_free(&key);
	ks_key_free(&key2);
	key_store_free(&ks);
}

void t_keystore_batch(const char *conf)
{
	static const enum cimd_alg algs[] = {CIMD_ALG_ES256, CIMD_ALG_ES384, CIMD_ALG_PS256};
	struct key_store *ks = NULL;
	struct ks_key *keys[3] = {NULL, NULL, NULL}, *gone = NULL;
	struct ks_sign_req *reqs = NULL;
	char msgs[CIMD_SIGN_BATCH_MAX][64], err[256];
	size_t i, n = 9, good = 0;
	json_t *jwk;
	int r;

	err[0] = '\0';
	if (!t_ok(key_store_open(conf, &ks, err, sizeof(err)) == 0, "batch: open %s", err))
		return;
	for (i = 0; i < 3; i++)
		if (key_store_generate(ks, algs[i], NULL, &keys[i]) < 0)
			goto out;
	/* A key destroyed under a handle that is still held: its request fails alone. */
	if (key_store_generate(ks, CIMD_ALG_ES256, NULL, &gone) < 0)
		goto out;
	reqs = calloc(CIMD_SIGN_BATCH_MAX + 1, sizeof(*reqs));
	for (i = 0; reqs != NULL && i < n; i++) {
		snprintf(msgs[i], sizeof(msgs[i]), "header.claims-%zu", i);
		reqs[i] = (struct ks_sign_req){
		    .key = keys[i % 3], .msg = (const uint8_t *)msgs[i], .len = strlen(msgs[i])};
	}
	r = key_store_sign_batch(ks, reqs, n);
	for (i = 0; r == 0 && i < n; i++) {
		jwk = ks_key_jwk(reqs[i].key);
		if (reqs[i].r == 0 &&
		    jws_verify_signature(jwk, algs[i % 3], reqs[i].msg, reqs[i].len, reqs[i].sig,
					 reqs[i].sig_len) == 0)
			good++;
		json_decref(jwk);
	}
	t_ok(r == 0 && good == n,
	     "batch: 9 signatures by ES256, ES384 and PS256 keys in one call, each verifies "
	     "(%zu)",
	     good);
	/* PKCS#11 only: a TPM key is a blob the caller keeps, so "destroyed"
	 * there means forgotten, and the blob would still load. */
	if (strncmp(conf, "pkcs11:", 7) == 0) {
		struct ks_key *twin = NULL;
		const uint8_t *ref;
		size_t ref_len;

		ks_key_ref(gone, &ref, &ref_len);
		key_store_load(ks, CIMD_ALG_ES256, ref, ref_len, &twin);
		key_store_destroy(ks, &twin);
		reqs[1].key = gone;
		r = key_store_sign_batch(ks, reqs, 3);
		t_ok(r == 0 && reqs[0].r == 0 && reqs[1].r < 0 && reqs[2].r == 0,
		     "batch: a destroyed key fails its own request only (%s)",
		     cimd_strerror(reqs[1].r));
	}
	t_ok(key_store_sign_batch(ks, reqs, 0) == -EINVAL &&
		 key_store_sign_batch(ks, reqs, CIMD_SIGN_BATCH_MAX + 1) == -EINVAL,
	     "batch: empty and oversized batches are refused");
out:
	for (i = 0; i < 3; i++)
		key_store_destroy(ks, &keys[i]);
	ks_key_free(&gone);
	free(reqs);
	key_store_free(&ks);
}

int t_cimdd_start(struct t_cimdd *c, const char *name, const char *backend_conf, const char *extra)
{
	char conf[4096], run[500];
	int n;

	memset(c, 0, sizeof(*c));
	chmod(t_tmpdir(), 0711);
	snprintf(c->dir, sizeof(c->dir), "%s/%s", t_tmpdir(), name);
	snprintf(run, sizeof(run), "%s/run", c->dir);
	if ((mkdir(c->dir, 0711) < 0 && errno != EEXIST) ||
	    (mkdir(run, 0711) < 0 && errno != EEXIST))
		return -errno;
	snprintf(c->dm.conf, sizeof(c->dm.conf), "%s/cimdd.conf", c->dir);
	snprintf(c->dm.log, sizeof(c->dm.log), "%s/cimdd.log", c->dir);
	snprintf(c->dm.sock, sizeof(c->dm.sock), "%s/admin.sock", run);
	snprintf(c->sign_sock, sizeof(c->sign_sock), "%s/sign.sock", run);
	snprintf(c->db, sizeof(c->db), "%s/state/cimdd.db", c->dir);
	snprintf(c->ca, sizeof(c->ca), "%s/tls.crt", c->dir);
	t_bin("cimdctl", c->ctl, sizeof(c->ctl));
	c->port = dev_free_port_pair();
	snprintf(c->base, sizeof(c->base), "https://127.0.0.1:%d", c->port);
	if (t_sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
		 "%s/tls.key -out %s/tls.crt -days 2 -subj /CN=127.0.0.1 -addext "
		 "subjectAltName=IP:127.0.0.1 2>/dev/null >/dev/null",
		 c->dir, c->dir) != 0)
		return -EIO;
	n = snprintf(conf, sizeof(conf),
		     "state_dir = %s/state\n"
		     "base_url = %s\n"
		     "backend = %s\n"
		     "admin_socket = %s\n"
		     "sign_socket = %s\n"
		     "listen = %s\n"
		     "tls_cert = %s/tls.crt\n"
		     "tls_key = %s/tls.key\n"
		     "two_person_rule = no\n"
		     "operator = alice uid=%d roles=submit,approve,rotate,revoke,read\n"
		     "%s",
		     c->dir, c->base, backend_conf, c->dm.sock, c->sign_sock, c->base + 8, c->dir,
		     c->dir, (int)geteuid(), extra ? extra : "");
	if (n < 0 || (size_t)n >= sizeof(conf) || t_write_file(c->dm.conf, conf, (size_t)n) < 0)
		return -EIO;
	return t_daemon_start(&c->dm);
}

int t_cimdd_ctl(struct t_cimdd *c, char *out, size_t len, const char *fmt, ...)
{
	char args[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	return t_sh_out(out, len, "%s -s %s %s 2>&1", c->ctl, c->dm.sock, args);
}

int t_cimdd_client(struct t_cimdd *c, const char *name, const char *aud)
{
	static const char doc[] = "{\"client_name\":\"Agent\",\"grant_types\":"
				  "[\"client_credentials\"],\"response_types\":[]}\n";
	char path[600], out[4096];
	int rc;

	snprintf(path, sizeof(path), "%s/%s.json", c->dir, name);
	if (t_write_file(path, doc, strlen(doc)) < 0)
		return -1;
	if ((rc = t_cimdd_ctl(c, out, sizeof(out), "client add %s --owner team-a --metadata %s",
			      name, path)) == 0 &&
	    (rc = t_cimdd_ctl(c, out, sizeof(out), "doc approve %s 1", name)) == 0 &&
	    (rc = t_cimdd_ctl(c, out, sizeof(out), "client allow %s --uid %d", name,
			      (int)geteuid())) == 0)
		rc = t_cimdd_ctl(c, out, sizeof(out), "client audience %s --add %s", name, aud);
	if (rc != 0) {
		printf("# client %s: %s\n", name, out);
		return -1;
	}
	return 0;
}

int t_cimdd_get(struct t_cimdd *c, const char *path, char *out, size_t len)
{
	return t_sh_out(out, len, "curl -s --max-time 5 --cacert %s %s%s", c->ca, c->base, path);
}

int t_cimdd_fetch(struct t_cimdd *c, const char *path, const char *file)
{
	char out[64];

	t_sh_out(out, sizeof(out),
		 "curl -s --max-time 5 --cacert %s -o %s/%s -w '%%{http_code}' %s%s", c->ca, c->dir,
		 file, c->base, path);
	return atoi(out);
}
