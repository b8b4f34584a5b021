/*
 * test_faults.c — hardware faults, with the daemon serving on: a wrong PIN at
 * start, a SoftHSM2 token directory taken away and given back, and swtpm killed
 * and restarted.  In each: a clear error in the log, /healthz, /metrics and
 * `cimdctl status` reflect the state, the existing documents stay published,
 * signing answers backend_unavailable, and signing recovers by itself when the
 * hardware returns.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cimd.h"
#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;
static struct t_swtpm tpm;
static char client_id[256];
static const char aud[] = "https://as.example.com/token";

#define ctl(out, len, ...) t_cimdd_ctl(&cd, out, len, __VA_ARGS__)

static int http(const char *path, char *out, size_t len)
{
	return t_cimdd_get(&cd, path, out, len);
}

static int sign_once(void)
{
	struct cimd *c = NULL;
	char *jwt = NULL;
	int r;

	if ((r = cimd_open(cd.sign_sock, &c)) == CIMD_OK)
		r = cimd_assert(c, client_id, aud, 0, &jwt, NULL);
	free(jwt);
	cimd_close(&c);
	return r;
}

/* Polls until healthz contains needle (or ms pass); the time it took, or -1. */
static double wait_health(const char *needle, double ms)
{
	char out[1024];
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < ms) {
		if (http("/healthz", out, sizeof(out)) == 0 && strstr(out, needle) != NULL)
			return t_now_ms() - t0;
		usleep(100 * 1000);
	}
	return -1;
}

static double wait_signing(double ms)
{
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < ms) {
		if (sign_once() == CIMD_OK)
			return t_now_ms() - t0;
		usleep(100 * 1000);
	}
	return -1;
}

/* cimdd in its own directory, dir, its one backend named the same. */
static int setup(const char *name, const char *dir, const char *backend)
{
	int rc;

	t_set_prefix(name);
	if ((rc = t_cimdd_start(&cd, dir, backend, "jwks_max_age = 1\ncimd_max_age = 1\n")) < 0)
		return rc;
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", cd.base);
	return t_cimdd_client(&cd, "agent-a", aud) == 0 ? 0 : -EIO;
}

/* What must hold while the hardware is away, and after it is back. */
static void while_down(const char *what)
{
	char out[65536];
	double t0 = t_now_ms(), ms;
	int r;

	ms = wait_health("degraded: unavailable backend", 8000);
	t_ok(ms >= 0, "%s: /healthz says which backend is unavailable (after %.1f s)", what,
	     ms / 1000);
	http("/metrics", out, sizeof(out));
	t_ok(strstr(out, "cimdd_backend_up{backend=") && strstr(out, "} 0\n"),
	     "%s: /metrics shows cimdd_backend_up 0", what);
	ctl(out, sizeof(out), "status");
	t_ok(strstr(out, "UNAVAILABLE") != NULL, "%s: cimdctl status says UNAVAILABLE", what);
	t_ok(http("/clients/agent-a", out, sizeof(out)) == 0 &&
		 strstr(out, "\"client_name\":\"Agent\"") != NULL,
	     "%s: the document is still published", what);
	t_ok(http("/clients/agent-a/jwks.json", out, sizeof(out)) == 0 && strstr(out, "\"kid\""),
	     "%s: and the JWKS", what);
	t0 = t_now_ms();
	r = sign_once();
	ms = t_now_ms() - t0;
	t_ok(r == CIMD_BACKEND_UNAVAILABLE && ms < 2000,
	     "%s: signing answers backend_unavailable in %.0f ms (%s)", what, ms,
	     cimd_status_name(r));
	t_ok(ctl(out, sizeof(out), "client list") == 0 && strstr(out, "agent-a"),
	     "%s: the admin socket serves", what);
}

static void when_back(const char *what)
{
	double ms = wait_signing(10000);

	t_ok(ms >= 0, "%s: signing resumes by itself (after %.1f s)", what, ms / 1000);
	ms = wait_health("ok", 8000);
	t_ok(ms >= 0, "%s: /healthz says ok again", what);
}

static void test_pkcs11(void)
{
	char conf[1100], out[8192], moved[700], tokens[700], pin_saved[64];
	int rc;

	/* More sessions than this machine may have cores: every fault below
	 * with signatures on several sessions. */
	snprintf(conf, sizeof(conf), "%s;sessions=3", hsm.conf);
	if (!t_ok(setup("pkcs11: ", "pkcs11", conf) == 0, "cimdd with a client"))
		return;
	t_ok(sign_once() == CIMD_OK && wait_health("ok", 5000) >= 0, "signing, and healthz ok");

	/* The token directory taken away under the running daemon. */
	snprintf(tokens, sizeof(tokens), "%s/tokens", hsm.dir);
	snprintf(moved, sizeof(moved), "%s/tokens.away", hsm.dir);
	rc = rename(tokens, moved);
	t_ok(rc == 0, "the SoftHSM2 token directory is taken away");
	while_down("token gone");
	rename(moved, tokens);
	when_back("token back");
	if (getenv("CIMD_TEST_VERBOSE"))
		t_sh("grep -v 'admin:' %s | tail -30", cd.dm.log);

	/* A wrong PIN at start: the backend stays closed, the daemon serves. */
	t_daemon_stop(&cd.dm, SIGTERM);
	{
		FILE *f = fopen(hsm.pin_file, "r");

		pin_saved[0] = '\0';
		if (f != NULL) {
			if (fgets(pin_saved, sizeof(pin_saved), f) == NULL)
				pin_saved[0] = '\0';
			fclose(f);
		}
	}
	t_write_file(hsm.pin_file, "000000\n", 7);
	rc = t_daemon_start(&cd.dm);
	t_ok(rc == 0, "cimdd starts with a wrong PIN");
	t_ok(t_log_count(&cd.dm, "backend pkcs11:") >= 1 && t_log_count(&cd.dm, "PIN") >= 1,
	     "and says the PIN is wrong");
	if (t_log_count(&cd.dm, "PIN") < 1)
		t_sh("tail -5 %s", cd.dm.log);
	while_down("wrong PIN");
	t_write_file(hsm.pin_file, pin_saved, strlen(pin_saved));
	when_back("PIN fixed");
	ctl(out, sizeof(out), "status");
	t_ok(strstr(out, "pkcs11: open, 3 sessions") != NULL, "cimdctl status: open, 3 sessions");
	t_daemon_stop(&cd.dm, SIGTERM);
}

struct late_signer {
	pthread_t th;
	double start_ms; /* when to ask, after t0 */
	double t0;
	int r;
	double answered_ms; /* after t0 */
};

static void *late_signer_main(void *arg)
{
	struct late_signer *l = arg;

	while (t_now_ms() - l->t0 < l->start_ms)
		usleep(1000);
	l->r = sign_once();
	l->answered_ms = t_now_ms() - l->t0;
	return NULL;
}

/* A token that stops answering mid-signature (tests/p11hang/: SoftHSM2
 * with a C_Sign that waits while a file exists), on three sessions: the
 * signing socket answers backend_unavailable within the store's deadline,
 * at once while it hangs, and signs again by itself when it answers. */
static void test_pkcs11_hang(void)
{
	char conf[1400], shim[700], flag[700], *slash;
	double t0, first, next;
	ssize_t n;
	int r1, r2;

	if ((n = readlink("/proc/self/exe", shim, sizeof(shim) - 16)) <= 0)
		return;
	shim[n] = '\0';
	if ((slash = strrchr(shim, '/')) == NULL)
		return;
	strcpy(slash, "/p11hang.so");
	snprintf(flag, sizeof(flag), "%s/p11hang.flag", t_tmpdir());
	setenv("P11HANG_FILE", flag, 1); /* the daemon inherits it */
	snprintf(conf, sizeof(conf), "pkcs11:module=%s;token=faults;pin-file=%s;sessions=3", shim,
		 hsm.pin_file);
	if (!t_ok(setup("pkcs11 hang: ", "p11hang", conf) == 0, "cimdd on a module that can hang"))
		goto out;
	t_ok(sign_once() == CIMD_OK, "signing");
	t_write_file(flag, "", 0);
	t0 = t_now_ms();
	r1 = sign_once();
	first = t_now_ms() - t0;
	t0 = t_now_ms();
	r2 = sign_once();
	next = t_now_ms() - t0;
	t_ok(r1 == CIMD_BACKEND_UNAVAILABLE && first < 2000,
	     "a signature the token does not answer: backend_unavailable in %.0f ms (< 2 s)",
	     first);
	t_ok(r2 == CIMD_BACKEND_UNAVAILABLE && next < 500,
	     "the next, while it hangs: backend_unavailable in %.0f ms", next);
	unlink(flag);
	t_ok(wait_signing(5000) >= 0, "the token answers again: signing resumes by itself");
	/* Three requests hang on the three sessions; a fourth, a second later,
	 * finds no free session.  The first three still get their answer at
	 * their own deadline, not one deadline after the fourth came. */
	{
		struct late_signer l[4];
		double start = t_now_ms();
		int i, ok = 1;

		t_write_file(flag, "", 0);
		for (i = 0; i < 4; i++) {
			l[i] = (struct late_signer){.start_ms = i < 3 ? 0 : 1000, .t0 = start};
			pthread_create(&l[i].th, NULL, late_signer_main, &l[i]);
		}
		for (i = 0; i < 4; i++)
			pthread_join(l[i].th, NULL);
		for (i = 0; i < 3; i++)
			ok &= l[i].r == CIMD_BACKEND_UNAVAILABLE && l[i].answered_ms < 2000;
		t_ok(ok && l[3].r == CIMD_BACKEND_UNAVAILABLE && l[3].answered_ms < 3000,
		     "three hung sessions and a fourth request a second later: the three answered "
		     "backend_unavailable in %.0f, %.0f and %.0f ms (< 2 s), the fourth at %.0f ms",
		     l[0].answered_ms, l[1].answered_ms, l[2].answered_ms, l[3].answered_ms);
		unlink(flag);
		t_ok(wait_signing(5000) >= 0, "and signing resumes by itself");
	}
	t_daemon_stop(&cd.dm, SIGTERM);
out:
	unlink(flag);
	unsetenv("P11HANG_FILE");
}

static void test_tpm2(void)
{
	t_set_prefix("");
	if (!t_ok(t_swtpm_start(&tpm) == 0, "tpm2: swtpm started"))
		return;
	if (!t_ok(setup("tpm2: ", "tpm2", tpm.conf) == 0, "cimdd with a client"))
		return;
	t_ok(sign_once() == CIMD_OK && wait_health("ok", 5000) >= 0, "signing, and healthz ok");
	t_swtpm_kill(&tpm);
	while_down("swtpm killed");
	t_ok(t_swtpm_restart(&tpm) == 0, "swtpm restarted");
	when_back("swtpm back");
	t_daemon_stop(&cd.dm, SIGTERM);
	t_swtpm_kill(&tpm);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (!t_ok(t_softhsm_init(&hsm, "faults", "654321") == 0, "SoftHSM2 token"))
		return t_done();
	test_pkcs11();
	test_pkcs11_hang();
	test_tpm2();
	return t_done();
}
