/*
 * test_faults.c — hardware faults, with the daemon serving on: a wrong PIN at
 * start, a SoftHSM2 token directory taken away and given back, and swtpm killed
 * and restarted.  In each: a clear error in the log, /healthz, /metrics and
 * `cimdctl status` reflect the state, the existing documents stay published,
 * signing answers backend_unavailable, and signing recovers by itself when the
 * hardware returns.
 */
#include <errno.h>
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

static struct t_daemon dm;
static struct t_softhsm hsm;
static struct t_swtpm tpm;
static char dir[256], base[64], ca[600], ctl_bin[700], sign_sock[700], client_id[256];
static const char aud[] = "https://as.example.com/token";

static const char conf_text[] = "state_dir = %s/state\n"
				"base_url = %s\n"
				"backend = %s\n"
				"admin_socket = %s/admin.sock\n"
				"sign_socket = %s/sign.sock\n"
				"jwks_max_age = 1\n"
				"cimd_max_age = 1\n"
				"two_person_rule = no\n"
				"operator = alice uid=%d roles=submit,approve,rotate,revoke,read\n"
				"listen = %s\n"
				"tls_cert = %s/tls.crt\n"
				"tls_key = %s/tls.key\n";

static int ctl(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ctl(char *out, size_t len, const char *fmt, ...)
{
	char args[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	return t_sh_out(out, len, "%s -s %s/admin.sock %s 2>&1", ctl_bin, dir, args);
}

static int http(const char *path, char *out, size_t len)
{
	return t_sh_out(out, len, "curl -s --max-time 5 --cacert %s %s%s", ca, base, path);
}

static int sign_once(void)
{
	struct cimd *c = NULL;
	char *jwt = NULL;
	int r;

	if ((r = cimd_open(sign_sock, &c)) == CIMD_OK)
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

static int setup(const char *name, const char *backend)
{
	char out[8192], conf[4096], path[700];
	int n, rc;

	t_set_prefix(name);
	snprintf(dir, sizeof(dir), "%s/%.*s", t_tmpdir(), (int)strlen(name) - 2, name);
	mkdir(dir, 0700);
	memset(&dm, 0, sizeof(dm));
	snprintf(dm.conf, sizeof(dm.conf), "%s/cimdd.conf", dir);
	snprintf(dm.log, sizeof(dm.log), "%s/cimdd.log", dir);
	snprintf(dm.sock, sizeof(dm.sock), "%s/admin.sock", dir);
	snprintf(sign_sock, sizeof(sign_sock), "%s/sign.sock", dir);
	snprintf(base, sizeof(base), "https://127.0.0.1:%d", dev_free_port_pair());
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", base);
	snprintf(ca, sizeof(ca), "%s/tls.crt", dir);
	t_sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
	     "%s/tls.key -out %s/tls.crt -days 2 -subj /CN=127.0.0.1 -addext "
	     "subjectAltName=IP:127.0.0.1 2>/dev/null >/dev/null",
	     dir, dir);
	n = snprintf(conf, sizeof(conf), conf_text, dir, base, backend, dir, dir, (int)geteuid(),
		     base + 8, dir, dir);
	t_write_file(dm.conf, conf, (size_t)n);
	if ((rc = t_daemon_start(&dm)) < 0)
		return rc;
	snprintf(path, sizeof(path), "%s/agent-a.json", dir);
	{
		static const char doc[] = "{\"client_name\":\"Agent A\",\"grant_types\":"
					  "[\"client_credentials\"],\"response_types\":[]}\n";

		t_write_file(path, doc, strlen(doc));
	}
	if ((rc = ctl(out, sizeof(out), "client add agent-a --owner team-a --metadata %s", path)) ==
		0 &&
	    (rc = ctl(out, sizeof(out), "doc approve agent-a 1")) == 0 &&
	    (rc = ctl(out, sizeof(out), "client allow agent-a --uid %d", (int)geteuid())) == 0)
		rc = ctl(out, sizeof(out), "client audience agent-a --add %s", aud);
	if (rc != 0)
		printf("# %s\n", out);
	return rc == 0 ? 0 : -EIO;
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
		 strstr(out, "\"client_name\":\"Agent A\"") != NULL,
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

	snprintf(conf, sizeof(conf), "%s", hsm.conf);
	if (!t_ok(setup("pkcs11: ", conf) == 0, "cimdd with a client"))
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
		t_sh("grep -v 'admin:' %s | tail -30", dm.log);

	/* A wrong PIN at start: the backend stays closed, the daemon serves. */
	t_daemon_stop(&dm, SIGTERM);
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
	rc = t_daemon_start(&dm);
	t_ok(rc == 0, "cimdd starts with a wrong PIN");
	t_ok(t_log_count(&dm, "backend pkcs11:") >= 1 && t_log_count(&dm, "PIN") >= 1,
	     "and says the PIN is wrong");
	if (t_log_count(&dm, "PIN") < 1)
		t_sh("tail -5 %s", dm.log);
	while_down("wrong PIN");
	t_write_file(hsm.pin_file, pin_saved, strlen(pin_saved));
	when_back("PIN fixed");
	ctl(out, sizeof(out), "status");
	t_ok(strstr(out, "pkcs11: open") != NULL, "cimdctl status: open");
	t_daemon_stop(&dm, SIGTERM);
}

static void test_tpm2(void)
{
	if (!t_ok(t_swtpm_start(&tpm) == 0, "tpm2: swtpm started"))
		return;
	if (!t_ok(setup("tpm2: ", tpm.conf) == 0, "cimdd with a client"))
		return;
	t_ok(sign_once() == CIMD_OK && wait_health("ok", 5000) >= 0, "signing, and healthz ok");
	t_swtpm_kill(&tpm);
	while_down("swtpm killed");
	t_ok(t_swtpm_restart(&tpm) == 0, "swtpm restarted");
	when_back("swtpm back");
	t_daemon_stop(&dm, SIGTERM);
	t_swtpm_kill(&tpm);
}

int main(void)
{
	char src[700];

	signal(SIGPIPE, SIG_IGN);
	snprintf(ctl_bin, sizeof(ctl_bin), "%s", t_bin("cimdctl", src, sizeof(src)));
	if (!t_ok(t_softhsm_init(&hsm, "faults", "654321") == 0, "SoftHSM2 token"))
		return t_done();
	test_pkcs11();
	test_tpm2();
	return t_done();
}
