/*
 * bench_cluster.c — a cluster of two cimdd (docs/scaling.md, "A cluster";
 * issue 17): nodes a and b, each on its own SoftHSM2 token (sessions=<cores>),
 * sharing one PostgreSQL cluster on this machine (Unix socket, fsync on,
 * synchronous_commit on; tests/harness.c, t_pg_start) and one base_url, with
 * one client whose JWKS holds a key of each node.
 *
 *   append    assertions per second, p50 and p99, with N libcimd clients all
 *             on node a, and with N/2 on each node (1 client: node a only);
 *             each figure the median of APPEND_RUNS runs, one node and two
 *             alternating; the ratio two-node / one-node, and the journal
 *             transactions per second and assertions per transaction.  Every
 *             assertion is journaled in PostgreSQL before its answer, and both
 *             nodes append to one hash chain under one advisory lock: this is
 *             what a second node adds to, or takes from, the journal's rate.
 *             The journal's assertion records are counted before and after.
 *   failover  ROUNDS rounds: FAIL_CLIENTS clients signing on node a and
 *             STAY_CLIENTS on node b; node a killed with SIGKILL; a client
 *             whose request fails waits RETRY_MS and asks the next node of its
 *             list (a, b).  Measured: the time from the SIGKILL to each node-a
 *             client's next assertion, the longest gap between two successive
 *             assertions of any client from the kill on (and before it, for
 *             comparison), the failed requests, and the same gaps for the
 *             clients that stay on node b; node a is restarted (how long until
 *             it answers again is printed) before the next round.  The issue's
 *             target: no gap longer than a client's retry, since node b's key
 *             was already active — a node-a client fails once and node b
 *             answers its retry.
 *
 * A separate program rather than a section of bench_assert: it needs its own
 * PostgreSQL cluster and two daemons, its own figures file, and can be run
 * alone.  CIMD_BENCH_SECONDS sets the time per append figure (default 3);
 * CIMD_BENCH_OUT, a directory for bench_cluster.json (bench/out.h).  Clients,
 * both nodes, their tokens and PostgreSQL share this machine's cores.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tests/harness.h"
#include "cimd.h"
#include "load.h"
#include "out.h"

#define ROUNDS 3
#define FAIL_CLIENTS 4 /* on node a, then failing over */
#define STAY_CLIENTS 2 /* on node b throughout */
#define RETRY_MS 20    /* a client's wait before it retries */
#define READY_MS 60000 /* for a node to answer an assertion */
#define APPEND_RUNS 3  /* runs of each append figure; the median is printed */

static double seconds = 3.0;
static int cores = 1;
static struct t_pg pg;
static struct t_softhsm ha, hb;
static struct t_cimdd na, nb;
static char client_id[256];
static const char aud[] = "https://as.example.com/token";

/* ---- the cluster ---- */

/* Node name on its token h, under base_url (NULL: its own). */
static int node_start(struct t_cimdd *n, const char *name, struct t_softhsm *h,
		      const char *base_url)
{
	char backend[1200], extra[1200];

	snprintf(backend, sizeof(backend), "%s;sessions=%d", h->conf, cores);
	/* jwks_max_age: node b's key of the client is active once the union
	 * naming it has been published that long (keys.c). */
	snprintf(extra, sizeof(extra),
		 "store = postgresql\nconninfo = %s\nnode = %s\njwks_max_age = 2\n"
		 "cimd_max_age = 2\n",
		 pg.conninfo, name);
	if (t_cimdd_start_as(n, name, backend, extra, base_url) < 0) {
		printf("node %s did not start\n", name);
		t_sh("tail -20 %s", n->dm.log);
		return -1;
	}
	return 0;
}

/* One number from the cluster's database, -1 when none. */
static long sql_long(const char *query)
{
	char out[64] = "";

	return t_pg_sql(&pg, out, sizeof(out), "%s", query) == 0 && out[0] ? atol(out) : -1;
}

/* The ms from t0 until the node answers an assertion (asked every 10 ms, for
 * at most READY_MS), or -1. */
static double node_ready(const char *sock, double t0)
{
	struct cimd *c = NULL;
	char *jwt = NULL;
	int r;

	do {
		if ((r = cimd_open(sock, &c)) == CIMD_OK)
			r = cimd_assert(c, client_id, aud, 0, &jwt, NULL);
		free(jwt);
		jwt = NULL;
		cimd_close(&c);
		if (r == CIMD_OK)
			return t_now_ms() - t0;
		usleep(10000);
	} while (t_now_ms() - t0 < READY_MS);
	return -1;
}

/* PostgreSQL, node a, node b (each right after its own token: SOFTHSM2_CONF
 * is the environment a daemon starts with), the client, added on node a, and
 * both nodes' keys of it active.  0, or -1 (said). */
static int cluster_up(void)
{
	double t0;

	if (t_pg_start(&pg) < 0 || t_softhsm_init(&ha, "node-a", "246810") < 0 ||
	    node_start(&na, "a", &ha, NULL) < 0 || t_softhsm_init(&hb, "node-b", "246810") < 0 ||
	    node_start(&nb, "b", &hb, na.base) < 0)
		return -1;
	if (t_cimdd_client(&na, "agent-a", aud) < 0)
		return -1;
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", na.base);
	for (t0 = t_now_ms(); t_now_ms() - t0 < READY_MS; usleep(100000))
		if (sql_long("SELECT count(DISTINCT node) FROM keys WHERE client = 'agent-a' AND "
			     "state = 'active'") == 2)
			break;
	if (node_ready(na.sign_sock, t_now_ms()) < 0 || node_ready(nb.sign_sock, t_now_ms()) < 0) {
		printf("the client has no active key on both nodes\n");
		return -1;
	}
	return 0;
}

/* Node a again, on its own token: the ms from its start until it answers an
 * assertion, or -1. */
static double node_a_restart(void)
{
	char conf[600];
	double t0 = t_now_ms();

	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", ha.dir);
	setenv("SOFTHSM2_CONF", conf, 1);
	if (t_daemon_start(&na.dm) < 0) {
		t_sh("tail -20 %s", na.dm.log);
		return -1;
	}
	return node_ready(na.sign_sock, t0);
}

/* ---- append: one node and two ---- */

/* One figure and the journal transactions that carried its assertions. */
struct append_fig {
	struct socket_fig f;
	long txns; /* -1: not known */
};

static const char append_hdr[] = "%-26s %7s %9s %7s %7s %9s %9s %7s %7s %7s\n";
static const char append_fmt[] = "%-26s %7s %9.0f %7.2f %7.2f %9.0f %9s %7.0f %7.1f %7s";

/* Transactions per second and assertions per transaction, or -1. */
static double txn_rate(const struct append_fig *a)
{
	return a->txns > 0 && a->f.rate > 0 ? (double)a->txns / ((double)a->f.ops / a->f.rate) : -1;
}

static double txn_size(const struct append_fig *a)
{
	return a->txns > 0 ? (double)a->f.ops / (double)a->txns : -1;
}

static json_t *append_json(const struct append_fig *runs, int nodes, double ratio)
{
	const struct append_fig *a = &runs[APPEND_RUNS / 2];
	const struct socket_fig *f = &a->f;
	json_t *o = json_pack(
	    "{s:i, s:i, s:o, s:o, s:o, s:o, s:o, s:i, s:o, s:o, s:[]}", "clients", f->clients,
	    "nodes", nodes, "assertions_per_s", bench_num(f->rate), "p50_ms", bench_num(f->p50),
	    "p99_ms", bench_num(f->p99), "node_a_per_s", bench_num(f->sock_rate[0]), "node_b_per_s",
	    bench_num(nodes > 1 ? f->sock_rate[1] : -1), "failed_requests", (int)f->fails,
	    "transactions_per_s", bench_num(txn_rate(a)), "assertions_per_transaction",
	    bench_num(txn_size(a)), "runs_assertions_per_s");
	int k;

	for (k = 0; k < APPEND_RUNS; k++)
		json_array_append_new(json_object_get(o, "runs_assertions_per_s"),
				      bench_num(runs[k].f.rate));
	if (nodes > 1)
		json_object_set_new(o, "ratio_to_one_node", bench_num(ratio));
	return o;
}

/* One run: n clients over the first `nodes` nodes.  The transactions are
 * counted by their ids (xmin) on the journal's rows: one per group commit. */
static void append_run(int n, int nodes, struct append_fig *a)
{
	struct load_spec s = {.socks = {na.sign_sock, nb.sign_sock},
			      .nsocks = nodes,
			      .client_id = client_id,
			      .aud = aud,
			      .seconds = seconds};
	char q[256];
	long seq = sql_long("SELECT coalesce(max(seq), 0) FROM journal");

	socket_run(&s, n, &a->f);
	snprintf(q, sizeof(q),
		 "SELECT count(DISTINCT xmin::text) FROM journal WHERE seq > %ld AND "
		 "kind = 'assertion.issue'",
		 seq);
	a->txns = seq >= 0 ? sql_long(q) : -1;
}

static int cmp_rate(const void *x, const void *y)
{
	double a = ((const struct append_fig *)x)->f.rate;
	double b = ((const struct append_fig *)y)->f.rate;

	return a < b ? -1 : a > b;
}

/* The median run (by rate) of runs, printed, with every run's rate. */
static void append_print(const char *what, const char *who, struct append_fig *runs, int nodes,
			 double ratio)
{
	const struct append_fig *a = &runs[APPEND_RUNS / 2];
	const struct socket_fig *f = &a->f;
	char b[32], r[16];
	long fails = 0;
	int k;

	snprintf(b, sizeof(b), "%.0f", f->sock_rate[1]);
	if (ratio > 0)
		snprintf(r, sizeof(r), "%.2f", ratio);
	else
		snprintf(r, sizeof(r), "%s", nodes > 1 ? "-" : "");
	printf(append_fmt, what, who, f->rate, f->p50, f->p99, f->sock_rate[0], nodes > 1 ? b : "-",
	       txn_rate(a), txn_size(a), r);
	for (k = 0; k < APPEND_RUNS; k++) {
		printf("%s%.0f", k ? ", " : "  runs ", runs[k].f.rate);
		fails += runs[k].f.fails;
	}
	printf("%s\n", fails ? "  (some requests failed)" : "");
}

/* APPEND_RUNS runs of each, one node and two alternating (which goes first
 * alternates too), so that the machine's drift falls on both; sorted by rate. */
static void append_runs(int n, struct append_fig one[APPEND_RUNS],
			struct append_fig two[APPEND_RUNS])
{
	int k;

	memset(two, 0, APPEND_RUNS * sizeof(*two));
	for (k = 0; k < APPEND_RUNS; k++) {
		two[k].f.rate = -1;
		if (n >= 2 && k % 2 == 1)
			append_run(n, 2, &two[k]);
		append_run(n, 1, &one[k]);
		if (n >= 2 && k % 2 == 0)
			append_run(n, 2, &two[k]);
	}
	qsort(one, APPEND_RUNS, sizeof(*one), cmp_rate);
	qsort(two, APPEND_RUNS, sizeof(*two), cmp_rate);
}

static void run_append(json_t *root)
{
	static const int clients[] = {1, 8, 32};
	struct append_fig one[APPEND_RUNS], two[APPEND_RUNS];
	json_t *arr = json_array();
	long before, after, answers = 0;
	double r1, r2, ratio;
	char who[32];
	size_t i;
	int k;

	printf(append_hdr, "", "clients", "/s", "p50 ms", "p99 ms", "node a/s", "node b/s", "txn/s",
	       "per txn", "two/one");
	before = sql_long("SELECT count(*) FROM journal WHERE kind = 'assertion.issue'");
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++) {
		append_runs(clients[i], one, two);
		for (k = 0; k < APPEND_RUNS; k++)
			answers += one[k].f.ops + two[k].f.ops;
		r1 = one[APPEND_RUNS / 2].f.rate;
		r2 = two[APPEND_RUNS / 2].f.rate;
		ratio = r1 > 0 && r2 > 0 ? r2 / r1 : -1;
		snprintf(who, sizeof(who), "%d", clients[i]);
		append_print("append, one node (a)", who, one, 1, -1);
		json_array_append_new(arr, append_json(one, 1, -1));
		if (clients[i] < 2)
			continue;
		snprintf(who, sizeof(who), "%d+%d", (clients[i] + 1) / 2, clients[i] / 2);
		append_print("append, two nodes (a, b)", who, two, 2, ratio);
		json_array_append_new(arr, append_json(two, 2, ratio));
	}
	after = sql_long("SELECT count(*) FROM journal WHERE kind = 'assertion.issue'");
	printf("journal: %ld assertion records added, %ld assertions answered%s\n", after - before,
	       answers, after - before == answers ? "" : " (they differ)");
	json_object_set_new(root, "append", arr);
	json_object_set_new(root, "journal",
			    json_pack("{s:I, s:I}", "assertion_records_added",
				      (json_int_t)(before >= 0 && after >= 0 ? after - before : -1),
				      "assertions_answered", (json_int_t)answers));
}

/* ---- failover ---- */

struct times {
	double *v;
	size_t n, cap;
};

static void times_add(struct times *t, double v)
{
	double *p;

	if (t->n == t->cap) {
		if ((p = realloc(t->v, (t->cap ? t->cap * 2 : 4096) * sizeof(*p))) == NULL)
			return;
		t->v = p;
		t->cap = t->cap ? t->cap * 2 : 4096;
	}
	t->v[t->n++] = v;
}

struct fo_client {
	pthread_t th;
	int stay;	     /* 1: node b only; 0: node a, then the next */
	struct times ok;     /* when each assertion was answered, ms */
	struct times failed; /* when each request failed */
	char err[200];	     /* the last failure */
};

static int fo_stop;

static void *fo_client_main(void *arg)
{
	struct fo_client *c = arg;
	const char *socks[2] = {na.sign_sock, nb.sign_sock};
	struct cimd *h = NULL;
	char *jwt = NULL;
	int cur = c->stay ? 1 : 0, r;

	while (!__atomic_load_n(&fo_stop, __ATOMIC_ACQUIRE)) {
		if (h == NULL && (r = cimd_open(socks[cur], &h)) != CIMD_OK)
			goto failed;
		if ((r = cimd_assert(h, client_id, aud, 0, &jwt, NULL)) == CIMD_OK) {
			times_add(&c->ok, t_now_ms());
			free(jwt);
			jwt = NULL;
			continue;
		}
	failed:
		times_add(&c->failed, t_now_ms());
		snprintf(c->err, sizeof(c->err), "%s: %s", cimd_status_name(r), cimd_message(h));
		cimd_close(&h);
		usleep(RETRY_MS * 1000); /* a client's retry */
		if (!c->stay)
			cur = (cur + 1) % 2;
	}
	cimd_close(&h);
	return NULL;
}

/* What one class of clients saw in one round, ms: the time from the kill to
 * the next assertion (median and max over clients); the longest gap between
 * successive assertions that spans the kill, ends before it, and begins after
 * it (or from a client's last assertion to the round's end); the most failed
 * requests of one client after the kill; clients with no assertion after it. */
struct fo_fig {
	double next_med, next_max;
	double gap_across, gap_before, gap_after;
	long fails_after;
	int none;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void fo_client_fig(const struct fo_client *c, double t_kill, double t_end, struct fo_fig *f,
			  double *ret_next)
{
	double prev = -1, t, g, *worst;
	long fails = 0;
	size_t i;

	*ret_next = -1;
	for (i = 0; i < c->ok.n; prev = t, i++) {
		t = c->ok.v[i];
		if (t > t_kill && *ret_next < 0)
			*ret_next = t - t_kill;
		if (prev < 0)
			continue;
		g = t - prev;
		worst = t <= t_kill	 ? &f->gap_before
			: prev <= t_kill ? &f->gap_across
					 : &f->gap_after;
		if (g > *worst)
			*worst = g;
	}
	/* A client stuck since its last answer: that gap too. */
	worst = prev > t_kill ? &f->gap_after : &f->gap_across;
	if (prev >= 0 && t_end - prev > *worst)
		*worst = t_end - prev;
	for (i = 0; i < c->failed.n; i++)
		fails += c->failed.v[i] > t_kill;
	if (fails > f->fails_after)
		f->fails_after = fails;
	if (*ret_next < 0)
		f->none++;
}

/* Clients [from, to) of cs into f. */
static void fo_fig(const struct fo_client *cs, int from, int to, double t_kill, double t_end,
		   struct fo_fig *f)
{
	double next[FAIL_CLIENTS + STAY_CLIENTS];
	int i, k = 0;

	memset(f, 0, sizeof(*f));
	for (i = from; i < to; i++) {
		fo_client_fig(&cs[i], t_kill, t_end, f, &next[k]);
		if (next[k] >= 0)
			k++;
	}
	qsort(next, (size_t)k, sizeof(double), cmp_double);
	f->next_med = k > 0 ? next[k / 2] : -1;
	f->next_max = k > 0 ? next[k - 1] : -1;
}

static json_t *fo_json(const struct fo_fig *f)
{
	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:i, s:i}", "next_assertion_ms_median",
			 bench_num(f->next_med), "next_assertion_ms_max", bench_num(f->next_max),
			 "longest_gap_across_kill_ms", bench_num(f->gap_across),
			 "longest_gap_before_kill_ms", bench_num(f->gap_before),
			 "longest_gap_after_kill_ms", bench_num(f->gap_after),
			 "failed_requests_after_kill_max", (int)f->fails_after,
			 "clients_without_assertion_after_kill", f->none);
}

static void fo_print(const char *who, int n, const struct fo_fig *f)
{
	printf("  %s %d clients: ", who, n);
	if (f->next_max >= 0)
		printf("next assertion %.1f ms after the kill (median), %.1f ms (max); ",
		       f->next_med, f->next_max);
	printf("longest gap across the kill %.1f ms, before it %.1f ms, after it %.1f ms; "
	       "failed requests after the kill: %ld (most of one client)%s\n",
	       f->gap_across, f->gap_before, f->gap_after, f->fails_after,
	       f->none ? "; SOME CLIENT GOT NO ASSERTION AFTER THE KILL" : "");
}

/* One round: the clients, node a killed, the figures.  0, or -1 when node a
 * was not running. */
static int fo_round(int round, struct fo_fig *fa, struct fo_fig *fb)
{
	struct fo_client cs[FAIL_CLIENTS + STAY_CLIENTS];
	double pre = seconds / 2 > 1 ? seconds / 2 : 1, post = seconds / 2 > 2 ? seconds / 2 : 2;
	double t0, t_kill, t_end;
	int i, n = FAIL_CLIENTS + STAY_CLIENTS;

	if (na.dm.pid <= 0)
		return -1;
	memset(cs, 0, sizeof(cs));
	__atomic_store_n(&fo_stop, 0, __ATOMIC_RELEASE);
	t0 = t_now_ms();
	for (i = 0; i < n; i++) {
		cs[i].stay = i >= FAIL_CLIENTS;
		pthread_create(&cs[i].th, NULL, fo_client_main, &cs[i]);
	}
	usleep((useconds_t)(pre * 1e6));
	t_kill = t_now_ms();
	t_daemon_stop(&na.dm, SIGKILL);
	usleep((useconds_t)(post * 1e6));
	__atomic_store_n(&fo_stop, 1, __ATOMIC_RELEASE);
	t_end = t_now_ms();
	for (i = 0; i < n; i++)
		pthread_join(cs[i].th, NULL);
	fo_fig(cs, 0, FAIL_CLIENTS, t_kill, t_end, fa);
	fo_fig(cs, FAIL_CLIENTS, n, t_kill, t_end, fb);
	printf("round %d: node a killed %.2f s into the round, the round ended %.2f s after\n",
	       round, (t_kill - t0) / 1000, (t_end - t_kill) / 1000);
	fo_print("node a's", FAIL_CLIENTS, fa);
	fo_print("node b's", STAY_CLIENTS, fb);
	for (i = 0; i < n; i++) {
		if (cs[i].err[0] && (i == 0 || cs[i].stay))
			printf("  a failure of a node %s client: %s\n", cs[i].stay ? "b" : "a",
			       cs[i].err);
		free(cs[i].ok.v);
		free(cs[i].failed.v);
	}
	return 0;
}

static void fo_worst(struct fo_fig *w, const struct fo_fig *f)
{
	w->next_med = f->next_med > w->next_med ? f->next_med : w->next_med;
	w->next_max = f->next_max > w->next_max ? f->next_max : w->next_max;
	w->gap_across = f->gap_across > w->gap_across ? f->gap_across : w->gap_across;
	w->gap_before = f->gap_before > w->gap_before ? f->gap_before : w->gap_before;
	w->gap_after = f->gap_after > w->gap_after ? f->gap_after : w->gap_after;
	w->fails_after = f->fails_after > w->fails_after ? f->fails_after : w->fails_after;
	w->none += f->none;
}

static void run_failover(json_t *root)
{
	struct fo_fig fa, fb, wa = {0}, wb = {0};
	json_t *arr = json_array(), *o;
	double restart = -1;
	int i, done = 0;

	printf("failover: %d clients on node a, %d on node b; a failed request: %d ms, then the "
	       "next node\n",
	       FAIL_CLIENTS, STAY_CLIENTS, RETRY_MS);
	for (i = 1; i <= ROUNDS; i++) {
		if (fo_round(i, &fa, &fb) < 0)
			break;
		done++;
		fo_worst(&wa, &fa);
		fo_worst(&wb, &fb);
		restart = node_a_restart();
		printf("  node a restarted: it answers again %.2f s after its start\n",
		       restart / 1000);
		o = json_pack("{s:i, s:o, s:o, s:o}", "round", i, "node_a_clients", fo_json(&fa),
			      "node_b_clients", fo_json(&fb), "node_a_restart_to_assertion_ms",
			      bench_num(restart));
		json_array_append_new(arr, o);
		if (restart < 0)
			break;
	}
	if (done > 0) {
		printf("worst of %d rounds:\n", done);
		fo_print("node a's", FAIL_CLIENTS, &wa);
		fo_print("node b's", STAY_CLIENTS, &wb);
		/* The target: node b's key was already active, so a
		 * client of node a loses one request and its retry is answered;
		 * node b's own clients lose none. */
		printf("target, no gap longer than a client's retry: %s (node a's clients: at "
		       "most %ld failed request(s) each, the gap across the kill at most %.1f ms, "
		       "the %d ms wait included; node b's clients: %ld failed)\n",
		       wa.fails_after <= 1 && wa.none == 0 && wb.fails_after == 0 ? "met"
										  : "missed",
		       wa.fails_after, wa.gap_across, RETRY_MS, wb.fails_after);
	}
	o = json_pack("{s:i, s:i, s:i, s:o, s:o, s:o}", "retry_ms", RETRY_MS, "clients_on_node_a",
		      FAIL_CLIENTS, "clients_on_node_b", STAY_CLIENTS, "rounds", arr,
		      "worst_node_a_clients", done ? fo_json(&wa) : json_null(),
		      "worst_node_b_clients", done ? fo_json(&wb) : json_null());
	json_object_set_new(root, "failover", o);
}

int main(void)
{
	const char *env = getenv("CIMD_BENCH_SECONDS");
	json_t *root = json_object();
	int rc = 1;

	signal(SIGPIPE, SIG_IGN);
	if (env != NULL && atof(env) > 0)
		seconds = atof(env);
	if ((cores = (int)sysconf(_SC_NPROCESSORS_ONLN)) < 1)
		cores = 1;
	printf("a cluster of two nodes (SoftHSM2, sessions=%d each) on one PostgreSQL, ES256, "
	       "%.0f s per figure, %d cores shared by clients, nodes and database\n",
	       cores, seconds, cores);
	if (cluster_up() == 0) {
		run_append(root);
		run_failover(root);
		rc = 0;
	}
	t_daemon_stop(&nb.dm, SIGTERM);
	t_daemon_stop(&na.dm, SIGTERM);
	t_pg_stop(&pg);
	t_cleanup();
	json_object_set_new(root, "seconds_per_figure", json_real(seconds));
	json_object_set_new(root, "cores", json_integer(cores));
	json_object_set_new(root, "sessions_per_node", json_integer(cores));
	return bench_out_write("bench_cluster", root) < 0 ? 1 : rc;
}
