/*
 * bench_assert.c — client assertions per second and latency through cimdd's
 * signing socket, beside what they are compared with, in one run:
 *
 *   backend   the key store's own in-process signing rate on the same kind of
 *             hardware (a second SoftHSM2 token / a second swtpm): one session,
 *             one thread, one signature per call (as bench_sign measures it) and
 *             16 per call (key_store_sign_batch, as the signer uses it); on
 *             PKCS#11 also the multi-session rate, the store opened with
 *             sessions=<cores> and 16 per call from one thread (as the signer's
 *             backend thread calls it), and from <cores> threads sharing the store:
 *             what the socket path adds to
 *   socket    a real cimdd (journal on, synchronous = FULL, group commit; on
 *             PKCS#11 with sessions=<cores>) and 1, 8 and 32 libcimd clients,
 *             each one connection asking in a loop; every answer is a complete
 *             assertion the journal holds
 *   jose      node's jose signing the same assertions in-process with a key file
 *             (tests/interop/peer-jose-sign.mjs): the usual alternative
 *   stores    the socket figures again with the daemon's state on SQLite and on a
 *             PostgreSQL cluster on this machine (issue 17), alternating
 *
 * Printed: assertions per second, p50 and p99 latency, and the ratios of the
 * socket's rate to the backend's (one per call, batched, multi-session) and to
 * jose's, then issue 16's targets (8 clients: >= 1.5x jose, >= 0.9x the
 * multi-session in-process rate).  The sessions column is what the in-process
 * store reports (key_store_sessions), and for the socket what cimdd.conf asks
 * for.  CIMD_BENCH_SECONDS sets the time per figure (default 3); CIMD_BENCH_OUT,
 * a directory for bench_assert.json (bench/out.h).  Clients and daemon share
 * this machine's cores.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../tests/harness.h"
#include "cimd.h"
#include "load.h"
#include "out.h"
#include "service.h"

#define TARGET_CLIENTS 8 /* issue 16's targets, at 8 clients: */
#define TARGET_JOSE 1.5	 /*   socket / jose in-process */
#define TARGET_MULTI 0.9 /*   socket / multi-session in-process */
#define THREADS_MAX 64	 /* calling threads of an in-process figure */

static double seconds = 3.0;
static int cores = 1;
static json_t *out_backends; /* bench_assert.json's "backends" */
static json_t *out_root;     /* bench_assert.json itself */
static char sign_sock[700], client_id[256];
static const char aud[] = "https://as.example.com/token";

/* n clients on sign_sock for `seconds` (load.h). */
static int clients_run(int n, struct socket_fig *f)
{
	struct load_spec s = {.socks = {sign_sock},
			      .nsocks = 1,
			      .client_id = client_id,
			      .aud = aud,
			      .seconds = seconds};

	return socket_run(&s, n, f);
}

/* One in-process figure: sessions (asked; then as the store reports them),
 * signatures per call, calling threads sharing the store, signatures/s. */
struct backend_fig {
	int sessions;
	size_t batch;
	int threads;
	double rate;
};

struct backend_thread {
	pthread_t th;
	struct key_store *ks;
	struct ks_key *key;
	size_t batch;
	long n;
};

/* Signs in a loop for `seconds`: one signature per call (key_store_sign, as
 * bench_sign measures it), or `batch` per call (key_store_sign_batch, as the
 * signer's backend thread uses it). */
static void *backend_main(void *arg)
{
	struct backend_thread *t = arg;
	struct ks_sign_req reqs[CIMD_SIGN_BATCH];
	uint8_t sig[CIMD_SIG_MAX], msg[400];
	double end = t_now_ms() + seconds * 1000;
	size_t sl, i;

	memset(msg, 'a', sizeof(msg));
	while (t_now_ms() < end) {
		if (t->batch <= 1) {
			if (key_store_sign(t->ks, t->key, msg, sizeof(msg), sig, &sl) == 0)
				t->n++;
			continue;
		}
		for (i = 0; i < t->batch; i++)
			reqs[i] =
			    (struct ks_sign_req){.key = t->key, .msg = msg, .len = sizeof(msg)};
		if (key_store_sign_batch(t->ks, reqs, t->batch) == 0)
			for (i = 0; i < t->batch; i++)
				t->n += reqs[i].r == 0;
	}
	return NULL;
}

/* The key store's own rate on conf (";sessions=N" appended when f->sessions >
 * 0), f->threads threads sharing one store and one key; 0 when it cannot open. */
static void backend_rate(const char *conf, struct backend_fig *f)
{
	struct backend_thread t[THREADS_MAX];
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	char c[1200], err[256] = "";
	double t0;
	long n = 0;
	int i;

	f->rate = 0;
	if (f->sessions > 0)
		snprintf(c, sizeof(c), "%s;sessions=%d", conf, f->sessions);
	else
		snprintf(c, sizeof(c), "%s", conf);
	if (key_store_open(c, &ks, err, sizeof(err)) < 0 ||
	    key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) < 0) {
		fprintf(stderr, "backend %s: %s\n", c, err[0] ? err : key_store_errmsg(ks));
		key_store_free(&ks);
		return;
	}
	f->sessions = key_store_sessions(ks);
	memset(t, 0, sizeof(t));
	t0 = t_now_ms();
	for (i = 0; i < f->threads && i < THREADS_MAX; i++) {
		t[i] = (struct backend_thread){.ks = ks, .key = key, .batch = f->batch};
		pthread_create(&t[i].th, NULL, backend_main, &t[i]);
	}
	for (i = 0; i < f->threads && i < THREADS_MAX; i++) {
		pthread_join(t[i].th, NULL);
		n += t[i].n;
	}
	f->rate = (double)n / ((t_now_ms() - t0) / 1000);
	key_store_destroy(ks, &key);
	key_store_free(&ks);
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

/* A cimdd in t_tmpdir()/NAME on the backend daemon_conf, with the client
 * agent-a approved, allowed for this uid and its audience; 0, or -1 (said). */
static int daemon_up(const char *name, const char *daemon_conf, struct t_daemon *dm)
{
	static const char text[] = "{\"client_name\":\"A\",\"grant_types\":"
				   "[\"client_credentials\"],\"response_types\":[]}\n";
	char dir[400], conf[4096], ctl[800], doc[700];
	int n;

	snprintf(dir, sizeof(dir), "%s/%s", t_tmpdir(), name);
	mkdir(dir, 0700);
	snprintf(dm->conf, sizeof(dm->conf), "%s/cimdd.conf", dir);
	snprintf(dm->log, sizeof(dm->log), "%s/cimdd.log", dir);
	snprintf(dm->sock, sizeof(dm->sock), "%s/admin.sock", dir);
	snprintf(sign_sock, sizeof(sign_sock), "%s/sign.sock", dir);
	snprintf(client_id, sizeof(client_id), "https://keys.example.com/clients/agent-a");
	n = snprintf(conf, sizeof(conf), conf_text, dir, daemon_conf, dir, dir, (int)geteuid());
	t_write_file(dm->conf, conf, (size_t)n);
	if (t_daemon_start(dm) < 0) {
		printf("%-8s cimdd did not start\n", name);
		t_sh("cat %s", dm->log);
		return -1;
	}
	snprintf(doc, sizeof(doc), "%s/doc.json", dir);
	t_write_file(doc, text, strlen(text));
	t_bin("cimdctl", ctl, sizeof(ctl));
	if (t_sh("%s -s %s client add agent-a --owner o --metadata %s >/dev/null && "
		 "%s -s %s doc approve agent-a 1 >/dev/null && "
		 "%s -s %s client allow agent-a --uid %d >/dev/null && "
		 "%s -s %s client audience agent-a --add %s >/dev/null",
		 ctl, dm->sock, doc, ctl, dm->sock, ctl, dm->sock, (int)geteuid(), ctl, dm->sock,
		 aud) != 0) {
		printf("%-8s client setup failed\n", name);
		t_daemon_stop(dm, SIGTERM);
		return -1;
	}
	return 0;
}

/* A backend as this benchmark runs it. */
struct backend {
	const char *name;
	const char *(*peer)(void); /* prepares the in-process figures' hardware */
	int one;		   /* sessions= of the one-session figures; 0: none (TPM) */
	int multi;		   /* sessions= of the multi-session figures and of the
				      daemon; 0: the backend has one session (TPM) */
};

/* The in-process figures, in this order. */
enum { B_ONE, B_BATCHED, B_MULTI, B_MULTI_THREADS, B_COUNT };

static const char in_process_fmt[] = "%-8s %-30s %8d %8zu %8d %9.0f\n";
static const char socket_fmt[] = "%-8s %-30s %8s %8s %8d %9.0f %7.2f %7.2f %8s %8s %8s %8s%s\n";

static const char *const b_what[B_COUNT] = {
    "in-process", "in-process, batched", "in-process, multi-session", "in-process, multi-session"};

static int backend_figs(const struct backend *be, struct backend_fig b[B_COUNT])
{
	const char *pc;
	int i, n = be->multi > 0 ? B_COUNT : B_MULTI;

	b[B_ONE] = (struct backend_fig){be->one, 1, 1, 0};
	b[B_BATCHED] = (struct backend_fig){be->one, CIMD_SIGN_BATCH, 1, 0};
	b[B_MULTI] = (struct backend_fig){be->multi, CIMD_SIGN_BATCH, 1, 0};
	b[B_MULTI_THREADS] = (struct backend_fig){be->multi, CIMD_SIGN_BATCH, be->multi, 0};
	if ((pc = be->peer()) == NULL)
		return 0;
	for (i = 0; i < n; i++) {
		backend_rate(pc, &b[i]);
		printf(in_process_fmt, be->name, b_what[i], b[i].sessions, b[i].batch, b[i].threads,
		       b[i].rate);
	}
	return n;
}

static json_t *backend_json(const struct backend_fig *b, const char *what)
{
	return json_pack("{s:s, s:i, s:i, s:i, s:o}", "row", what, "sessions", b->sessions,
			 "per_call", (int)b->batch, "threads", b->threads, "sig_per_s",
			 bench_num(b->rate > 0 ? b->rate : -1));
}

/* "%.2f" of a / b into buf, or "-" when either is unknown. */
static const char *ratio_str(char buf[16], double a, double b)
{
	if (a > 0 && b > 0)
		snprintf(buf, 16, "%.2f", a / b);
	else
		snprintf(buf, 16, "-");
	return buf;
}

static json_t *socket_json(const struct socket_fig *f, int sessions, const double *refs,
			   const char *const *ref_names, int nrefs)
{
	json_t *o =
	    json_pack("{s:i, s:o, s:i, s:o, s:o, s:o}", "clients", f->clients, "sessions",
		      sessions > 0 ? json_integer(sessions) : json_null(), "failed_requests",
		      (int)f->fails, "assertions_per_s", bench_num(f->rate), "p50_ms",
		      bench_num(f->p50), "p99_ms", bench_num(f->p99));
	char key[64];
	int i;

	for (i = 0; i < nrefs; i++) {
		snprintf(key, sizeof(key), "ratio_to_%s", ref_names[i]);
		json_object_set_new(o, key,
				    bench_num(refs[i] > 0 && f->rate > 0 ? f->rate / refs[i] : -1));
	}
	return o;
}

/* Issue 16's targets at TARGET_CLIENTS clients, printed and into targets. */
static void targets(const struct backend *be, const struct socket_fig *f, double jose, double multi,
		    json_t *out)
{
	const struct {
		const char *over;
		double ref, min;
	} t[] = {{"jose", jose, TARGET_JOSE}, {"multi", multi, TARGET_MULTI}};
	size_t i;
	double r;

	printf("%-8s %d clients:", be->name, f->clients);
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		r = t[i].ref > 0 && f->rate > 0 ? f->rate / t[i].ref : -1;
		if (r < 0)
			printf("%s /%s - (target >= %.2f)", i ? "," : "", t[i].over, t[i].min);
		else
			printf("%s /%s %.2f (target >= %.2f, %s)", i ? "," : "", t[i].over, r,
			       t[i].min, r >= t[i].min ? "met" : "missed");
		json_array_append_new(out, json_pack("{s:i, s:s, s:o, s:f}", "clients", f->clients,
						     "over", t[i].over, "ratio", bench_num(r),
						     "target_min", t[i].min));
	}
	printf("\n");
}

/* perf record -a -g for the time of one figure, into path. */
static pid_t perf_start(const char *path)
{
	char secs[32];
	pid_t pid;

	snprintf(secs, sizeof(secs), "%g", seconds);
	if ((pid = fork()) == 0) {
		execlp("perf", "perf", "record", "-q", "-a", "-g", "-o", path, "--", "sleep", secs,
		       (char *)NULL);
		_exit(127);
	}
	usleep(200000); /* perf is recording before the clients start */
	return pid;
}

static void run_backend(const struct backend *be, const char *daemon_conf, double jose)
{
	static const int clients[] = {1, 8, 32};
	static const char *const ref_names[] = {"backend", "batched", "multi", "jose"};
	struct t_daemon dm = {0};
	struct backend_fig b[B_COUNT];
	struct socket_fig f[sizeof(clients) / sizeof(clients[0])];
	json_t *o, *in = json_array(), *sock = json_array(), *tg = json_array();
	char conf[1200], r[4][16], sessions[16];
	double refs[4];
	size_t i;
	int n, rc;

	if (be->multi > 0)
		snprintf(conf, sizeof(conf), "%s;sessions=%d", daemon_conf, be->multi);
	else
		snprintf(conf, sizeof(conf), "%s", daemon_conf);
	snprintf(sessions, sizeof(sessions), "%d", be->multi > 0 ? be->multi : 1);
	if (daemon_up(be->name, conf, &dm) < 0)
		return;
	n = backend_figs(be, b);
	refs[0] = n > B_ONE ? b[B_ONE].rate : 0;
	refs[1] = n > B_BATCHED ? b[B_BATCHED].rate : 0;
	refs[2] = n > B_MULTI ? b[B_MULTI].rate : 0;
	refs[3] = jose;
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++) {
		pid_t perf = -1;

		/* CIMD_BENCH_PERF=FILE: a system-wide profile of the 8-client run
		 * (docs/benchmarks.md, where the time goes). */
		if (clients[i] == TARGET_CLIENTS && be->multi > 0 && getenv("CIMD_BENCH_PERF"))
			perf = perf_start(getenv("CIMD_BENCH_PERF"));
		rc = clients_run(clients[i], &f[i]);
		if (perf > 0)
			waitpid(perf, NULL, 0);
		if (rc < 0) {
			printf("%-8s socket, %2d clients: no assertions\n", be->name, clients[i]);
			continue;
		}
		printf(socket_fmt, be->name, "socket", sessions, "-", clients[i], f[i].rate,
		       f[i].p50, f[i].p99, ratio_str(r[0], f[i].rate, refs[0]),
		       ratio_str(r[1], f[i].rate, refs[1]), ratio_str(r[2], f[i].rate, refs[2]),
		       ratio_str(r[3], f[i].rate, refs[3]), f[i].fails ? "  (some failed)" : "");
		json_array_append_new(
		    sock, socket_json(&f[i], be->multi > 0 ? be->multi : 1, refs, ref_names, 4));
	}
	t_daemon_stop(&dm, SIGTERM);
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++)
		if (clients[i] == TARGET_CLIENTS && be->multi > 0)
			targets(be, &f[i], jose, refs[2], tg);
	for (i = 0; i < (size_t)n; i++)
		json_array_append_new(in, backend_json(&b[i], b_what[i]));
	o = json_pack("{s:s, s:o, s:o, s:o}", "backend", be->name, "in_process", in, "socket", sock,
		      "targets", tg);
	json_array_append_new(out_backends, o);
}

/*
 * The state database's part (issue 17): the same daemon on SoftHSM2 with its
 * journal on SQLite and on a PostgreSQL cluster on this machine (fsync on,
 * synchronous_commit on; tests/harness.c, t_pg_start), 1, 8 and 32 clients,
 * the two stores alternating by figure so that the machine's drift falls on
 * both.  Each assertion is durable in its store before the answer.
 */
static void run_stores(const char *daemon_conf)
{
	static const char *const stores[] = {"sqlite", "postgresql"};
	static const int clients[] = {1, 8, 32};
	struct t_daemon dm[2] = {{0}};
	struct socket_fig f;
	json_t *arr = json_array();
	char name[32], conf[1200], sock[2][sizeof(sign_sock)];
	double rate[2];
	size_t i, k;
	int up[2];

	if ((size_t)snprintf(conf, sizeof(conf), "%s;sessions=%d", daemon_conf, cores) >=
	    sizeof(conf))
		return;
	for (k = 0; k < 2; k++) {
		setenv("CIMD_TEST_STORE", stores[k], 1);
		snprintf(name, sizeof(name), "store-%s", stores[k]);
		up[k] = daemon_up(name, conf, &dm[k]) == 0;
		memcpy(sock[k], sign_sock, sizeof(sign_sock));
	}
	unsetenv("CIMD_TEST_STORE");
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++) {
		for (k = 0; k < 2; k++) {
			rate[k] = -1;
			if (!up[k])
				continue;
			memcpy(sign_sock, sock[k], sizeof(sign_sock));
			if (clients_run(clients[i], &f) == 0)
				rate[k] = f.rate;
			printf("%-8s %-30s %8d %8s %8d %9.0f %7.2f %7.2f%s\n", "pkcs11",
			       k == 0 ? "socket, store sqlite" : "socket, store postgresql", cores,
			       "-", clients[i], rate[k], f.p50, f.p99,
			       f.fails ? "  (some failed)" : "");
			json_array_append_new(
			    arr, json_pack("{s:s, s:i, s:o, s:o, s:o}", "store", stores[k],
					   "clients", clients[i], "per_s", bench_num(rate[k]),
					   "p50_ms", bench_num(f.p50), "p99_ms", bench_num(f.p99)));
		}
		if (rate[0] > 0 && rate[1] > 0)
			printf("%-8s %d clients: postgresql / sqlite %.2f\n", "pkcs11", clients[i],
			       rate[1] / rate[0]);
	}
	for (k = 0; k < 2; k++)
		if (up[k])
			t_daemon_stop(&dm[k], SIGTERM);
	json_object_set_new(out_root, "stores", arr);
}

static void print_header(void)
{
	printf("%-8s %-30s %8s %8s %8s %9s %7s %7s %8s %8s %8s %8s\n", "", "", "sessions",
	       "per call", "callers", "/s", "p50 ms", "p99 ms", "/backend", "/batched", "/multi",
	       "/jose");
}

int main(void)
{
	struct t_softhsm hsm_daemon, hsm_stores;
	struct t_swtpm tpm_daemon;
	const char *env = getenv("CIMD_BENCH_SECONDS");
	json_t *root = out_root = json_object();
	double jose;

	signal(SIGPIPE, SIG_IGN);
	if (env != NULL && atof(env) > 0)
		seconds = atof(env);
	if ((cores = (int)sysconf(_SC_NPROCESSORS_ONLN)) < 1)
		cores = 1;
	out_backends = json_array();
	printf("client assertions, ES256, %.0f s per figure, %d cores; callers: threads "
	       "in-process, connections on the socket\n",
	       seconds, cores);
	print_header();
	jose = jose_rate();
	printf("%-8s %-30s %8s %8s %8d %9.0f\n", "jose", "node jose in-process, key file", "-", "1",
	       1, jose);
	if (t_softhsm_init(&hsm_daemon, "bench-d", "123456") == 0)
		run_backend(&(struct backend){"pkcs11", peer_pkcs11, 1, cores}, hsm_daemon.conf,
			    jose);
	if (t_swtpm_start(&tpm_daemon) == 0)
		run_backend(&(struct backend){"tpm2", peer_tpm2, 0, 0}, tpm_daemon.conf, jose);
	if (t_softhsm_init(&hsm_stores, "bench-s", "123456") == 0)
		run_stores(hsm_stores.conf);
	t_swtpm_kill(&tpm_daemon);
	t_swtpm_kill(&tpm_peer);
	t_cleanup();
	json_object_set_new(root, "seconds_per_figure", json_real(seconds));
	json_object_set_new(root, "cores", json_integer(cores));
	json_object_set_new(root, "jose_assertions_per_s", bench_num(jose > 0 ? jose : -1));
	json_object_set_new(root, "backends", out_backends);
	return bench_out_write("bench_assert", root) < 0 ? 1 : 0;
}
