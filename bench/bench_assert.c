/*
 * bench_assert.c — client assertions per second and latency through cimdd's
 * signing socket, beside what they are compared with, in one run:
 *
 *   backend   the key store's own in-process signing rate on the same kind of
 *             hardware (a second SoftHSM2 token / a second swtpm), one thread,
 *             one signature per call (as bench_sign measures it) and 16 per call
 *             (key_store_sign_batch, as the signer uses it): what the socket
 *             path adds to
 *   socket    a real cimdd (journal on, synchronous = FULL, group commit) and
 *             1, 8 and 32 libcimd clients, each one connection asking in a loop;
 *             every answer is a complete assertion the journal holds
 *   jose      node's jose signing the same assertions in-process with a key file
 *             (tests/interop/peer-jose-sign.mjs): the usual alternative
 *
 * Printed: assertions per second, p50 and p99 latency, and the ratios of the
 * socket's rate to the backend's (one per call, and batched) and to jose's.  CIMD_BENCH_SECONDS
 * sets the time per figure (default 3).  Clients and daemon share this machine's cores.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../tests/harness.h"
#include "cimd.h"
#include "service.h"

#define LAT_MAX 400000 /* latencies kept per client */

static double seconds = 3.0;
static char sign_sock[700], client_id[256];
static const char aud[] = "https://as.example.com/token";

struct client {
	pthread_t th;
	long ops, fails;
	float *lat; /* ms */
	size_t n_lat;
};

static void *client_main(void *arg)
{
	struct client *c = arg;
	struct cimd *h = NULL;
	char *jwt;
	double t0, end;

	c->lat = malloc(LAT_MAX * sizeof(float));
	if (cimd_open(sign_sock, &h) != CIMD_OK || c->lat == NULL) {
		c->fails++;
		cimd_close(&h);
		return NULL;
	}
	end = t_now_ms() + seconds * 1000;
	while ((t0 = t_now_ms()) < end) {
		jwt = NULL;
		if (cimd_assert(h, client_id, aud, 0, &jwt, NULL) != CIMD_OK) {
			c->fails++;
			continue;
		}
		free(jwt);
		c->ops++;
		if (c->n_lat < LAT_MAX)
			c->lat[c->n_lat++] = (float)(t_now_ms() - t0);
	}
	cimd_close(&h);
	return NULL;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x < y ? -1 : x > y;
}

/* n clients for `seconds`; rate, p50, p99. */
static int socket_run(int n, double *ret_rate, double *ret_p50, double *ret_p99, long *ret_fails)
{
	struct client *cs = calloc((size_t)n, sizeof(*cs));
	float *all;
	size_t total = 0, k = 0;
	long ops = 0, fails = 0;
	double t0, el;
	int i;

	if (cs == NULL)
		return -1;
	t0 = t_now_ms();
	for (i = 0; i < n; i++)
		pthread_create(&cs[i].th, NULL, client_main, &cs[i]);
	for (i = 0; i < n; i++)
		pthread_join(cs[i].th, NULL);
	el = (t_now_ms() - t0) / 1000;
	for (i = 0; i < n; i++) {
		ops += cs[i].ops;
		fails += cs[i].fails;
		total += cs[i].n_lat;
	}
	all = malloc((total + 1) * sizeof(float));
	for (i = 0; i < n; i++) {
		if (all != NULL && cs[i].lat != NULL)
			memcpy(all + k, cs[i].lat, cs[i].n_lat * sizeof(float));
		k += cs[i].n_lat;
		free(cs[i].lat);
	}
	free(cs);
	if (all == NULL || total == 0) {
		free(all);
		return -1;
	}
	qsort(all, total, sizeof(float), cmp_float);
	*ret_rate = (double)ops / el;
	*ret_p50 = all[total / 2];
	*ret_p99 = all[(size_t)((double)total * 0.99)];
	*ret_fails = fails;
	free(all);
	return 0;
}

/* The key store's own rate, one thread, on conf: one signature per call
 * (key_store_sign, as bench_sign measures it), or `batch` per call
 * (key_store_sign_batch, as the signer's backend threads use it). */
static double backend_rate(const char *conf, size_t batch)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	struct ks_sign_req reqs[CIMD_SIGN_BATCH];
	uint8_t sig[CIMD_SIG_MAX], msg[400];
	size_t sl, i;
	char err[256];
	double t0, end;
	long n = 0;

	memset(msg, 'a', sizeof(msg));
	if (key_store_open(conf, &ks, err, sizeof(err)) < 0 ||
	    key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) < 0) {
		fprintf(stderr, "backend: %s\n", err);
		key_store_free(&ks);
		return 0;
	}
	t0 = t_now_ms();
	end = t0 + seconds * 1000;
	while (t_now_ms() < end) {
		if (batch <= 1) {
			if (key_store_sign(ks, key, msg, sizeof(msg), sig, &sl) == 0)
				n++;
			continue;
		}
		for (i = 0; i < batch; i++)
			reqs[i] = (struct ks_sign_req){.key = key, .msg = msg, .len = sizeof(msg)};
		if (key_store_sign_batch(ks, reqs, batch) == 0)
			for (i = 0; i < batch; i++)
				n += reqs[i].r == 0;
	}
	key_store_destroy(ks, &key);
	key_store_free(&ks);
	return (double)n / ((t_now_ms() - t0) / 1000);
}

static double jose_rate(void)
{
	char out[256];
	double r = 0;

	if (t_sh_out(out, sizeof(out), "cd tests/interop && node peer-jose-sign.mjs %g", seconds) !=
		0 ||
	    sscanf(out, "jose %lf", &r) != 1)
		return 0;
	return r;
}

static const char conf_text[] = "state_dir = %s/state\n"
				"base_url = https://keys.example.com\n"
				"backend = %s\n"
				"admin_socket = %s/admin.sock\n"
				"sign_socket = %s/sign.sock\n"
				"two_person_rule = no\n"
				"operator = bench uid=%d roles=submit,approve,rotate,revoke,read\n";

/* The peer's hardware is prepared once the daemon runs: a SoftHSM2 token is
 * found through SOFTHSM2_CONF, which the daemon must inherit for its own. */
static struct t_softhsm hsm_peer;
static struct t_swtpm tpm_peer;

static const char *peer_pkcs11(void)
{
	return t_softhsm_init(&hsm_peer, "bench-p", "123456") == 0 ? hsm_peer.conf : NULL;
}

static const char *peer_tpm2(void)
{
	return t_swtpm_start(&tpm_peer) == 0 ? tpm_peer.conf : NULL;
}

static void run_backend(const char *name, const char *daemon_conf, const char *(*peer)(void),
			double jose)
{
	static const int clients[] = {1, 8, 32};
	struct t_daemon dm = {0};
	char dir[400], conf[4096], ctl[800], doc[700];
	double backend, batched, rate, p50, p99;
	long fails;
	size_t i;
	int n;

	snprintf(dir, sizeof(dir), "%s/%s", t_tmpdir(), name);
	mkdir(dir, 0700);
	snprintf(dm.conf, sizeof(dm.conf), "%s/cimdd.conf", dir);
	snprintf(dm.log, sizeof(dm.log), "%s/cimdd.log", dir);
	snprintf(dm.sock, sizeof(dm.sock), "%s/admin.sock", dir);
	snprintf(sign_sock, sizeof(sign_sock), "%s/sign.sock", dir);
	snprintf(client_id, sizeof(client_id), "https://keys.example.com/clients/agent-a");
	n = snprintf(conf, sizeof(conf), conf_text, dir, daemon_conf, dir, dir, (int)geteuid());
	t_write_file(dm.conf, conf, (size_t)n);
	if (t_daemon_start(&dm) < 0) {
		printf("%-8s cimdd did not start\n", name);
		t_sh("cat %s", dm.log);
		return;
	}
	snprintf(doc, sizeof(doc), "%s/doc.json", dir);
	{
		static const char text[] = "{\"client_name\":\"A\",\"grant_types\":"
					   "[\"client_credentials\"],\"response_types\":[]}\n";

		t_write_file(doc, text, strlen(text));
	}
	t_bin("cimdctl", ctl, sizeof(ctl));
	if (t_sh("%s -s %s client add agent-a --owner o --metadata %s >/dev/null && "
		 "%s -s %s doc approve agent-a 1 >/dev/null && "
		 "%s -s %s client allow agent-a --uid %d >/dev/null && "
		 "%s -s %s client audience agent-a --add %s >/dev/null",
		 ctl, dm.sock, doc, ctl, dm.sock, ctl, dm.sock, (int)geteuid(), ctl, dm.sock,
		 aud) != 0) {
		printf("%-8s client setup failed\n", name);
		t_daemon_stop(&dm, SIGTERM);
		return;
	}
	if (peer() == NULL) {
		backend = batched = 0;
	} else {
		const char *pc = peer == peer_pkcs11 ? hsm_peer.conf : tpm_peer.conf;

		backend = backend_rate(pc, 1);
		batched = backend_rate(pc, CIMD_SIGN_BATCH);
	}
	printf("%-8s backend in-process, 1 per call   %8.0f /s\n", name, backend);
	printf("%-8s backend in-process, %d per call  %8.0f /s\n", name, CIMD_SIGN_BATCH, batched);
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++) {
		if (socket_run(clients[i], &rate, &p50, &p99, &fails) < 0) {
			printf("%-8s socket, %2d clients: no assertions\n", name, clients[i]);
			continue;
		}
		printf("%-8s socket, %2d client%s           %8.0f /s   p50 %6.2f ms  p99 %6.2f ms"
		       "   /backend %.2f  /batched %.2f  /jose %.2f%s\n",
		       name, clients[i], clients[i] == 1 ? " " : "s", rate, p50, p99,
		       backend > 0 ? rate / backend : 0, batched > 0 ? rate / batched : 0,
		       jose > 0 ? rate / jose : 0, fails ? "  (some failed)" : "");
	}
	t_daemon_stop(&dm, SIGTERM);
}

int main(void)
{
	struct t_softhsm hsm_daemon;
	struct t_swtpm tpm_daemon;
	const char *env = getenv("CIMD_BENCH_SECONDS");
	double jose;

	signal(SIGPIPE, SIG_IGN);
	if (env != NULL && atof(env) > 0)
		seconds = atof(env);
	printf("client assertions, ES256, %.0f s per figure, %ld cores\n", seconds,
	       sysconf(_SC_NPROCESSORS_ONLN));
	jose = jose_rate();
	printf("%-8s node jose in-process, key file  %8.0f /s\n", "jose", jose);
	if (t_softhsm_init(&hsm_daemon, "bench-d", "123456") == 0)
		run_backend("pkcs11", hsm_daemon.conf, peer_pkcs11, jose);
	if (t_swtpm_start(&tpm_daemon) == 0)
		run_backend("tpm2", tpm_daemon.conf, peer_tpm2, jose);
	t_swtpm_kill(&tpm_daemon);
	t_swtpm_kill(&tpm_peer);
	t_cleanup();
	return 0;
}
