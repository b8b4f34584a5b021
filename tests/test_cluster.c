/*
 * test_cluster.c — several appliances as one identity (issue 17;
 * docs/scaling.md, "A cluster").
 *
 * Two real cimdd, nodes a and b, each on its own SoftHSM2 token, share one
 * throwaway PostgreSQL cluster and one base_url (a load balancer's, in a
 * deployment: here node a's address, which both publishers' certificates
 * name).  Checked:
 *
 * - a client added on node a gets a key of node b's too, made in b's token
 *   and activated once the union naming it has been published for
 *   jwks_max_age; each node signs with its own key only;
 * - both publishers serve the same bytes (the same ETag) for the document,
 *   the JWKS (the union), attestation-keys.json and the checkpoint;
 * - jose verifies assertions from either node against either node's JWKS;
 * - admin requests on both nodes at once: no lost update, the journal (one
 *   chain, one tree for the cluster) verifies;
 * - node a killed with SIGKILL under load: node b keeps issuing with no gap
 *   longer than a retry, and every assertion a client received is journaled;
 * - PostgreSQL restarted under load: both nodes refuse while it is down and
 *   resume by themselves, with no lost record;
 * - node list; node revoke: every key of the node revoked in one step, gone
 *   from the union, the running node stops, and it is refused at its next
 *   start.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "cimd.h"
#include "harness.h"

#define JTI_MAX 200000
#define BOB 1001 /* the second operator's uid (approve) */

static struct t_cimdd na, nb;
static struct t_softhsm ha;
static struct t_swtpm tpm_b;
static struct t_pg pg;
static char client_id[256], extra_a[1200], extra_b[1200];
static const char aud[] = "https://as.example.com/token";

/* ---- the database, as a third party sees it ---- */

/* One number from a query of the cluster's database (the query with one %s,
 * arg), -1 when none. */
static long sql_long(const char *query, const char *arg)
{
	char q[1024], out[64] = "";
	const char *at = strstr(query, "%s");

	if (at == NULL)
		snprintf(q, sizeof(q), "%s", query);
	else
		snprintf(q, sizeof(q), "%.*s%s%s", (int)(at - query), query, arg, at + 2);
	return t_pg_sql(&pg, out, sizeof(out), "%s", q) == 0 && out[0] ? atol(out) : -1;
}

/* Waits up to ms for the query's number to reach want. */
static long wait_for(long want, int ms, const char *query, const char *arg)
{
	long v = -1;
	double t0 = t_now_ms();

	while ((v = sql_long(query, arg)) != want && t_now_ms() - t0 < ms)
		usleep(100000);
	return v;
}

/* ---- signing clients ---- */

struct load {
	struct t_cimdd *node; /* the node it signs on (NULL: stop) */
	pthread_mutex_t mu;
	int stop;
	long ok, failed;
	double last_ok_ms;
	char (*jti)[64];
	size_t n_jti;
	char err[256];
};

static struct load la = {.mu = PTHREAD_MUTEX_INITIALIZER}, lb = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *signer(void *arg)
{
	struct load *l = arg;
	struct cimd_info info;
	struct cimd *c = NULL;
	char *jwt = NULL;
	int r;

	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		if ((r = cimd_open(l->node->sign_sock, &c)) == CIMD_OK)
			r = cimd_assert(c, client_id, aud, 0, &jwt, &info);
		pthread_mutex_lock(&l->mu);
		if (r == CIMD_OK) {
			l->ok++;
			l->last_ok_ms = t_now_ms();
			if (l->n_jti < JTI_MAX)
				snprintf(l->jti[l->n_jti++], 64, "%s", info.jti);
		} else {
			l->failed++;
			snprintf(l->err, sizeof(l->err), "%d %s", r, c ? cimd_message(c) : "");
		}
		pthread_mutex_unlock(&l->mu);
		free(jwt);
		jwt = NULL;
		cimd_close(&c);
		if (r != CIMD_OK)
			usleep(20000); /* a client's retry */
	}
	return NULL;
}

static void load_start(struct load *l, struct t_cimdd *node, pthread_t *th, int n)
{
	int i;

	l->node = node;
	l->stop = 0;
	for (i = 0; i < n; i++)
		pthread_create(&th[i], NULL, signer, l);
}

static void load_stop(struct load *l, pthread_t *th, int n)
{
	int i;

	__atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
	for (i = 0; i < n; i++)
		pthread_join(th[i], NULL);
}

/* How many of the jtis a client received the journal lacks. */
static long missing_jtis(const struct load *l)
{
	size_t i;
	long missing = 0;

	for (i = 0; i < l->n_jti; i++)
		if (sql_long("SELECT count(*) FROM journal WHERE jti = '%s'", l->jti[i]) != 1)
			missing++;
	return missing;
}

/* ---- the nodes ---- */

static int start_node(struct t_cimdd *n, const char *name, const char *backend, char *extra,
		      size_t len, const char *base)
{
	snprintf(extra, len,
		 "store = postgresql\nconninfo = %s\nnode = %s\njwks_max_age = 2\n"
		 "cimd_max_age = 2\ncheckpoint_interval = 1\ntwo_person_rule = yes\n"
		 "admin_socket_mode = 0666\noperator = bob uid=%d roles=approve,read\n",
		 pg.conninfo, name, BOB);
	return t_cimdd_start_as(n, name, backend, extra, base);
}

/* Node a again, with its token's SOFTHSM2_CONF (the environment holds node
 * b's, the last made). */
static int restart_a(void)
{
	char conf[600];

	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", ha.dir);
	setenv("SOFTHSM2_CONF", conf, 1);
	return t_daemon_start(&na.dm);
}

/* GET path from a node's publisher: the body into body, the ETag into etag. */
static int get(struct t_cimdd *n, const char *path, char *body, size_t blen, char *etag,
	       size_t elen)
{
	char hdr[4096], *p;
	int rc;

	rc = t_sh_out(hdr, sizeof(hdr), "curl -s --cacert %s -D - -o /dev/null %s%s", n->ca,
		      n->base, path);
	etag[0] = '\0';
	if ((p = strcasestr(hdr, "\netag:")) != NULL) {
		p += 6 + strspn(p + 6, " ");
		snprintf(etag, elen, "%.*s", (int)strcspn(p, "\r\n"), p);
	}
	return rc != 0 ? rc : t_cimdd_get(n, path, body, blen);
}

static void same_bytes(const char *path)
{
	char a[16384], b[16384], ea[64], eb[64];

	if (!t_ok(get(&na, path, a, sizeof(a), ea, sizeof(ea)) == 0 &&
		      get(&nb, path, b, sizeof(b), eb, sizeof(eb)) == 0 && a[0] != '\0' &&
		      strcmp(a, b) == 0 && ea[0] != '\0' && strcmp(ea, eb) == 0,
		  "%s: both nodes serve the same bytes, ETag %s", path, ea))
		printf("# node a: %.300s\n# node b: %.300s\n", a, b);
}

/* Waits until both publishers serve the same bytes at path. */
static void converge(const char *path, int ms)
{
	char a[16384], b[16384];
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < ms &&
	       (t_cimdd_get(&na, path, a, sizeof(a)) != 0 ||
		t_cimdd_get(&nb, path, b, sizeof(b)) != 0 || strcmp(a, b) != 0))
		usleep(100000);
}

/* Assertions signed on node `on`, verified by jose against the JWKS that
 * node `from` serves. */
static void jose_check(struct t_cimdd *on, struct t_cimdd *from)
{
	char out[16384], path[700], bin[600];
	int rc;

	rc = t_sh_out(out, sizeof(out), "%s -s %s --client-id %s --aud %s",
		      t_bin("cimd-assert", bin, sizeof(bin)), on->sign_sock, client_id, aud);
	snprintf(path, sizeof(path), "%s/assertion.txt", t_tmpdir());
	t_write_file(path, out, strlen(out));
	if (rc == 0)
		rc = t_sh_out(out, sizeof(out),
			      "NODE_EXTRA_CA_CERTS=%s node tests/interop/assert-verify.mjs remote "
			      "%s/clients/agent-a/jwks.json '%s' '%s' 60 %s",
			      from->ca, from->base, client_id, aud, path);
	t_ok(rc == 0 && strstr(out, "\"verified\":1,\"failed\":0") != NULL,
	     "jose verifies an assertion of node %s against node %s's JWKS (%s)",
	     strstr(on->dir, "/a") ? "a" : "b", strstr(from->dir, "/a") ? "a" : "b", out);
}

/* The daemon's exit status once it has stopped by itself within ms; -1 (and
 * it is killed) when it did not. */
static int wait_exit(struct t_daemon *d, int ms)
{
	double t0 = t_now_ms();
	int st;

	while (t_now_ms() - t0 < ms) {
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		usleep(100000);
	}
	t_daemon_stop(d, SIGKILL);
	return -1;
}

/* cimdctl on node n as uid (-1: ourselves, alice); its exit status. */
static int ctl_as(struct t_cimdd *n, int uid, char *out, size_t len, const char *args)
{
	char pre[128] = "";

	if (uid >= 0)
		snprintf(pre, sizeof(pre), "setpriv --reuid=%d --regid=%d --clear-groups ", uid,
			 uid);
	return t_sh_out(out, len, "%s%s -s %s %s 2>&1", pre, n->ctl, n->dm.sock, args);
}

/* The id in "submitted as change N; ...", or 0. */
static int change_id(const char *out)
{
	const char *p = strstr(out, "submitted as change ");

	return p != NULL ? atoi(p + strlen("submitted as change ")) : 0;
}

/* The client, under the two-person rule across nodes: alice submits on node
 * a; alice approving on node b is still alice, refused; bob approves on
 * node b. */
static int setup_client(void)
{
	static const char doc[] = "{\"client_name\":\"Agent\",\"grant_types\":"
				  "[\"client_credentials\"],\"response_types\":[]}\n";
	char out[4096], args[1024], path[600];
	int rc, id;

	snprintf(path, sizeof(path), "%s/agent.json", t_tmpdir());
	t_write_file(path, doc, strlen(doc));
	snprintf(args, sizeof(args), "client add agent-a --owner team-a --metadata %s", path);
	if (!t_ok(ctl_as(&na, -1, out, sizeof(out), args) == 0, "alice adds a client on node a"))
		return -1;
	rc = ctl_as(&nb, -1, out, sizeof(out), "doc approve agent-a 1");
	t_ok(rc != 0 && strstr(out, "two-person rule"),
	     "alice approving her own document on node b is refused (%s)", strtok(out, "\n"));
	rc = ctl_as(&nb, BOB, out, sizeof(out), "doc approve agent-a 1");
	if (!t_ok(rc == 0, "bob approves it on node b (%s)", strtok(out, "\n")))
		return -1;
	snprintf(args, sizeof(args), "client allow agent-a --uid %d", (int)geteuid());
	ctl_as(&na, -1, out, sizeof(out), args);
	id = change_id(out);
	snprintf(args, sizeof(args), "change approve %d", id);
	rc = ctl_as(&nb, -1, out, sizeof(out), args);
	t_ok(id > 0 && rc != 0 && strstr(out, "two-person rule"),
	     "alice approving on node b the change she proposed on node a is refused (%s)",
	     strtok(out, "\n"));
	rc = ctl_as(&nb, BOB, out, sizeof(out), args);
	t_ok(rc == 0, "bob approves it on node b (%s)", strtok(out, "\n"));
	snprintf(args, sizeof(args), "client audience agent-a --add %s", aud);
	ctl_as(&na, -1, out, sizeof(out), args);
	id = change_id(out);
	snprintf(args, sizeof(args), "change approve %d", id);
	rc = ctl_as(&nb, BOB, out, sizeof(out), args);
	return t_ok(id > 0 && rc == 0, "and the audience (%s)", strtok(out, "\n")) ? 0 : -1;
}

/* ---- the checks ---- */

static void test_union(void)
{
	char out[16384];

	t_ok(wait_for(1, 20000,
		      "SELECT count(*) FROM keys WHERE client = '%s' AND node = 'b' AND "
		      "state = 'active'",
		      "agent-a") == 1,
	     "node b made its own key of a client added on node a, and activated it");
	t_ok(sql_long("SELECT count(*) FROM keys WHERE client = '%s' AND state = 'active'",
		      "agent-a") == 2,
	     "the client has one active key per node");
	converge("/clients/agent-a/jwks.json", 10000);
	same_bytes("/clients/agent-a/jwks.json");
	t_cimdd_get(&nb, "/clients/agent-a/jwks.json", out, sizeof(out));
	t_ok(strstr(out, "\"kid\"") != NULL && strstr(strstr(out, "\"kid\"") + 1, "\"kid\""),
	     "the JWKS is the union: both nodes' keys");
	converge("/clients/agent-a", 10000);
	same_bytes("/clients/agent-a");
	converge("/.well-known/cimdd/attestation-keys.json", 10000);
	same_bytes("/.well-known/cimdd/attestation-keys.json");
	t_cimdd_get(&na, "/.well-known/cimdd/attestation-keys.json", out, sizeof(out));
	t_ok(sql_long("SELECT count(DISTINCT node) FROM attest_keys WHERE state = '%s'",
		      "active") == 2,
	     "each node has its own attestation key, both in attestation-keys.json");
	converge("/.well-known/cimdd/checkpoint", 10000);
	same_bytes("/.well-known/cimdd/checkpoint");
	jose_check(&na, &nb);
	jose_check(&nb, &na);
	t_ok(t_cimdd_ctl(&nb, out, sizeof(out), "client list") == 0 && strstr(out, "agent-a"),
	     "client list on node b: %s", out);
	{
		char kid_b[64] = "";

		t_pg_sql(&pg, kid_b, sizeof(kid_b),
			 "SELECT kid FROM keys WHERE client = 'agent-a' AND node = 'b' AND state = "
			 "'active'");
		t_ok(t_cimdd_ctl(&nb, out, sizeof(out), "--json client show agent-a") == 0 &&
			 kid_b[0] != '\0' && strstr(out, kid_b),
		     "client show on node b names node b's active key %s", kid_b);
	}
	t_ok(t_cimdd_ctl(&nb, out, sizeof(out), "key list agent-a") == 0 && strstr(out, " a ") &&
		 strstr(out, " b "),
	     "key list on node b shows both nodes' keys:\n%s", out);
	t_ok(t_cimdd_ctl(&nb, out, sizeof(out), "node list") == 0 && strstr(out, "a ") &&
		 strstr(out, "(this node)") && strstr(out, "live"),
	     "node list shows both nodes:\n%s", out);
}

/* The audit bundle of the cluster, exported from either node, verifies
 * against the attestation keys either publishes; the served attestation
 * verifies against the served document and JWKS. */
static void test_audit(void)
{
	char out[16384];
	int rc;

	converge("/clients/agent-a/attestation.json", 10000);
	same_bytes("/clients/agent-a/attestation.json");
	t_cimdd_fetch(&na, "/.well-known/cimdd/attestation-keys.json", "ak.json");
	t_cimdd_fetch(&na, "/clients/agent-a/attestation.json", "att.json");
	t_cimdd_fetch(&na, "/clients/agent-a/jwks.json", "jwks.json");
	t_cimdd_fetch(&na, "/clients/agent-a", "cimd.json");
	rc = t_sh_out(out, sizeof(out),
		      "%s attest verify %s/att.json --trust %s/ak.json --document %s/cimd.json "
		      "--jwks %s/jwks.json 2>&1",
		      na.ctl, na.dir, na.dir, na.dir, na.dir);
	t_ok(rc == 0 && strstr(out, "is attested by node a") &&
		 strstr(out, "is attested by node b"),
	     "attest verify: the served set of statements covers the union JWKS:\n%s", out);
	{
		char path[600];
		json_t *set;

		/* Node b's statement left out: node b's key is attested by no one. */
		snprintf(path, sizeof(path), "%s/att.json", na.dir);
		set = json_load_file(path, 0, NULL);
		json_array_remove(json_object_get(set, "attestations"), 1);
		snprintf(path, sizeof(path), "%s/att-a.json", na.dir);
		json_dump_file(set, path, JSON_COMPACT);
		json_decref(set);
		rc = t_sh_out(
		    out, sizeof(out),
		    "%s attest verify %s/att-a.json --trust %s/ak.json --jwks %s/jwks.json "
		    "2>&1",
		    na.ctl, na.dir, na.dir, na.dir);
		t_ok(rc != 0 && strstr(out, "FAIL jwks") && strstr(out, "attested by node (none)"),
		     "a set without node b's statement does not verify: node b's key is attested "
		     "by no one");
	}
	t_sh("cp %s/ak.json %s/ak.json", na.dir, nb.dir);
	rc = t_cimdd_audit(&nb, "bundle", out, sizeof(out));
	t_ok(rc == 0, "audit export on node b and audit verify:\n%s", out);
}

/* Each node signs with the key in its own hardware. */
static void test_own_keys(void)
{
	char q[512], kid_a[64] = "", kid_b[64] = "";
	struct cimd_info info;
	struct cimd *c = NULL;
	char *jwt = NULL;

	snprintf(q, sizeof(q),
		 "SELECT kid FROM keys WHERE client = 'agent-a' AND node = '%s' AND "
		 "state = 'active'",
		 "a");
	t_pg_sql(&pg, kid_a, sizeof(kid_a), "%s", q);
	snprintf(q, sizeof(q),
		 "SELECT kid FROM keys WHERE client = 'agent-a' AND node = '%s' AND "
		 "state = 'active'",
		 "b");
	t_pg_sql(&pg, kid_b, sizeof(kid_b), "%s", q);
	if (cimd_open(na.sign_sock, &c) == CIMD_OK &&
	    cimd_assert(c, client_id, aud, 0, &jwt, &info) == CIMD_OK)
		t_ok(strcmp(info.kid, kid_a) == 0, "node a signs with its own key %s", kid_a);
	else
		t_ok(0, "node a signs");
	free(jwt);
	jwt = NULL;
	cimd_close(&c);
	if (cimd_open(nb.sign_sock, &c) == CIMD_OK &&
	    cimd_assert(c, client_id, aud, 0, &jwt, &info) == CIMD_OK)
		t_ok(strcmp(info.kid, kid_b) == 0 && strcmp(kid_a, kid_b) != 0,
		     "node b signs with its own key %s", kid_b);
	else
		t_ok(0, "node b signs");
	free(jwt);
	cimd_close(&c);
	/* A receipt from node b for an assertion node a issued: one journal, one
	 * tree (asked again while it is not under a checkpoint yet). */
	{
		char *rcpt = NULL;
		double t0 = t_now_ms();
		int r = CIMD_NOT_CHECKPOINTED;

		jwt = NULL;
		if (cimd_open(na.sign_sock, &c) == CIMD_OK &&
		    cimd_assert(c, client_id, aud, 0, &jwt, &info) == CIMD_OK) {
			cimd_close(&c);
			while (r == CIMD_NOT_CHECKPOINTED && t_now_ms() - t0 < 10000) {
				if (cimd_open(nb.sign_sock, &c) == CIMD_OK)
					r = cimd_receipt(c, info.jti, &rcpt);
				cimd_close(&c);
				if (r == CIMD_NOT_CHECKPOINTED)
					usleep(200000);
			}
		}
		t_ok(r == CIMD_OK && rcpt != NULL && strstr(rcpt, "\"proof\""),
		     "node b hands the receipt of an assertion node a issued (%d)", r);
		free(rcpt);
		free(jwt);
		cimd_close(&c);
	}
}

/* Admin requests on both nodes at once. */
static void test_concurrent_admin(void)
{
	static const char doc[] = "{\"client_name\":\"Agent\",\"grant_types\":"
				  "[\"client_credentials\"],\"response_types\":[]}\n";
	char out[4096], path[600];
	int rc;

	snprintf(path, sizeof(path), "%s/doc.json", t_tmpdir());
	t_write_file(path, doc, strlen(doc));
	rc = t_sh("(for i in 1 2 3 4 5 6; do %s -s %s client add ca-$i --owner o --metadata %s "
		  ">/dev/null || exit 1; done) & a=$!; "
		  "(for i in 1 2 3 4 5 6; do %s -s %s client add cb-$i --owner o --metadata %s "
		  ">/dev/null || exit 1; done) & b=$!; wait $a && wait $b",
		  na.ctl, na.dm.sock, path, nb.ctl, nb.dm.sock, path);
	t_ok(rc == 0 && sql_long("SELECT count(*) FROM clients WHERE name LIKE '%s'", "c_-_") == 12,
	     "12 clients added on two nodes at once: none lost");
	t_ok(wait_for(24, 30000,
		      "SELECT count(DISTINCT client || node) FROM keys WHERE client LIKE '%s'",
		      "c_-_") == 24,
	     "each has a key on each node");
	rc = t_cimdd_ctl(&na, out, sizeof(out), "journal verify");
	t_ok(rc == 0, "the cluster's one journal verifies (%s)", strtok(out, "\n"));
}

static void test_kill_node(void)
{
	pthread_t ta[2], tb[2];
	double t_kill, gap;
	long before;

	if ((la.jti = calloc(JTI_MAX, sizeof(*la.jti))) == NULL ||
	    (lb.jti = calloc(JTI_MAX, sizeof(*lb.jti))) == NULL)
		return;
	load_start(&la, &na, ta, 2);
	load_start(&lb, &nb, tb, 2);
	usleep(1500000);
	pthread_mutex_lock(&lb.mu);
	before = lb.ok;
	pthread_mutex_unlock(&lb.mu);
	t_kill = t_now_ms();
	t_daemon_stop(&na.dm, SIGKILL);
	usleep(1500000);
	load_stop(&la, ta, 2);
	load_stop(&lb, tb, 2);
	gap = lb.last_ok_ms - t_kill;
	t_ok(lb.ok > before && gap > 0,
	     "node b kept issuing after node a was killed (%ld before, "
	     "%ld after; last %.0f ms after the kill)",
	     before, lb.ok - before, gap);
	t_ok(la.ok > 0 && lb.ok > 0 && missing_jtis(&la) == 0 && missing_jtis(&lb) == 0,
	     "every assertion a client received from either node is in the journal (%zu from a, "
	     "%zu from b)",
	     la.n_jti, lb.n_jti);
	/* Node a comes back on its own state, and its own token. */
	t_ok(restart_a() == 0, "node a starts again");
}

/* Whether a session named app holds the writer's lock. */
static int writer_lock_of(const char *app)
{
	return sql_long("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = "
			"l.pid WHERE l.locktype = 'advisory' AND l.objid = 1667853668 AND "
			"l.granted AND s.application_name = '%s'",
			app) > 0;
}

/* Node a frozen (SIGSTOP: a host that hangs without closing its connections)
 * under load, perhaps in the middle of a journal transaction that holds the
 * cluster's writer lock: node b goes on signing once PostgreSQL has ended the
 * frozen session (idle_in_transaction_session_timeout, 10 s; store_pg.c), and
 * node a, thawed, signs again. */
static void test_freeze_node(void)
{
	pthread_t ta[2], tb[2];
	long at_stop, at_12, at_14, a_thawed;
	int i, held = 0;

	la.n_jti = lb.n_jti = 0;
	la.ok = lb.ok = la.failed = lb.failed = 0;
	load_start(&la, &na, ta, 2);
	load_start(&lb, &nb, tb, 2);
	usleep(1000000);
	/* Frozen while one of its sessions holds the writer's lock (the
	 * advisory lock 1667853668: store_pg.c), the worst moment. */
	for (i = 0; i < 200 && !held; i++) {
		if (!writer_lock_of("cimdd:a"))
			continue;
		kill(na.dm.pid, SIGSTOP);
		if (!(held = writer_lock_of("cimdd:a")))
			kill(na.dm.pid, SIGCONT);
	}
	t_ok(held, "node a frozen while it holds the cluster's writer lock (try %d)", i);
	pthread_mutex_lock(&lb.mu);
	at_stop = lb.ok;
	pthread_mutex_unlock(&lb.mu);
	usleep(12000000);
	pthread_mutex_lock(&lb.mu);
	at_12 = lb.ok;
	pthread_mutex_unlock(&lb.mu);
	usleep(2000000);
	pthread_mutex_lock(&lb.mu);
	at_14 = lb.ok;
	pthread_mutex_unlock(&lb.mu);
	t_ok(at_14 > at_12,
	     "node a frozen: node b signs again within 12 s (%ld in the 2 s after; %ld in the 12 s "
	     "before)",
	     at_14 - at_12, at_12 - at_stop);
	kill(na.dm.pid, SIGCONT);
	pthread_mutex_lock(&la.mu);
	a_thawed = la.ok;
	pthread_mutex_unlock(&la.mu);
	usleep(3000000);
	load_stop(&la, ta, 2);
	load_stop(&lb, tb, 2);
	t_ok(la.ok > a_thawed, "node a, thawed, signs again (%ld in 3 s; %s)", la.ok - a_thawed,
	     la.err);
	t_ok(missing_jtis(&la) == 0 && missing_jtis(&lb) == 0,
	     "every assertion a client received is in the journal (%zu, %zu)", la.n_jti, lb.n_jti);
}

static void test_pg_restart(void)
{
	pthread_t ta[2], tb[2];
	long ok_a, ok_b;

	la.n_jti = lb.n_jti = 0;
	la.ok = lb.ok = la.failed = lb.failed = 0;
	load_start(&la, &na, ta, 2);
	load_start(&lb, &nb, tb, 2);
	usleep(1000000);
	t_pg_kill(&pg);
	usleep(1000000);
	pthread_mutex_lock(&la.mu);
	pthread_mutex_lock(&lb.mu);
	ok_a = la.ok;
	ok_b = lb.ok;
	la.failed = lb.failed = 0;
	pthread_mutex_unlock(&lb.mu);
	pthread_mutex_unlock(&la.mu);
	usleep(1000000);
	t_ok(la.ok == ok_a && lb.ok == ok_b && la.failed > 0 && lb.failed > 0,
	     "while PostgreSQL is down both nodes refuse (%s)", lb.err);
	t_ok(t_pg_restart(&pg) == 0, "PostgreSQL comes back");
	usleep(3000000);
	load_stop(&la, ta, 2);
	load_stop(&lb, tb, 2);
	t_ok(la.ok > ok_a && lb.ok > ok_b,
	     "both nodes resume with no operator (%ld, %ld after; last refusals: %s; %s)",
	     la.ok - ok_a, lb.ok - ok_b, la.err, lb.err);
	t_ok(missing_jtis(&la) == 0 && missing_jtis(&lb) == 0,
	     "no assertion a client received is missing from the journal (%zu, %zu)", la.n_jti,
	     lb.n_jti);
}

static void test_node_revoke(void)
{
	char out[4096], jwks[16384];
	long keys_a = sql_long("SELECT count(*) FROM keys WHERE node = '%s' AND state IN ('next', "
			       "'active', 'retiring', 'retired')",
			       "a");
	int rc;

	rc = t_cimdd_ctl(&nb, out, sizeof(out), "node revoke b --reason test");
	t_ok(rc != 0 && strstr(out, "revoke it from another node"),
	     "a node does not revoke itself (%s)", strtok(out, "\n"));
	rc = t_cimdd_ctl(&nb, out, sizeof(out), "node revoke a --reason 'host stolen'");
	t_ok(rc == 0 && keys_a > 0 &&
		 sql_long("SELECT count(*) FROM keys WHERE node = '%s' AND state = 'revoked'",
			  "a") >= keys_a,
	     "node revoke a: its %ld keys revoked in one step (%s)", keys_a, strtok(out, "\n"));
	t_ok(sql_long("SELECT count(*) FROM journal WHERE kind = '%s'", "node.revoke") == 1,
	     "one node.revoke record");
	t_ok(
	    wait_for(keys_a, 30000,
		     "SELECT count(DISTINCT r.kid) FROM revocations r JOIN keys k ON k.kid = r.kid "
		     "WHERE k.node = '%s'",
		     "a") == keys_a,
	    "node b signs a revocation record for each of node a's %ld keys (in its TPM, which "
	    "holds no key of node a's hardware)",
	    keys_a);
	/* Gone from the union that node b serves. */
	converge("/clients/agent-a/jwks.json", 1);
	usleep(1500000);
	t_cimdd_get(&nb, "/clients/agent-a/jwks.json", jwks, sizeof(jwks));
	t_ok(strstr(jwks, "\"kid\"") != NULL &&
		 strstr(strstr(jwks, "\"kid\"") + 1, "\"kid\"") == NULL,
	     "the union node b serves holds node b's key alone");
	rc = wait_exit(&na.dm, 15000); /* it stops by itself */
	t_ok(rc == 1 && t_log_count(&na.dm, "was revoked") >= 1,
	     "node a, still running, stops at its next heartbeat (status %d)", rc);
	rc = restart_a();
	t_ok(rc != 0 && t_log_count(&na.dm, "start this host under a new node name") >= 1,
	     "node a is refused at its next start, and says why");
	rc = t_cimdd_ctl(&nb, out, sizeof(out), "node list");
	t_ok(rc == 0 && strstr(out, "revoked: host stolen"), "node list shows it revoked:\n%s",
	     out);
	rc = t_cimdd_ctl(&nb, out, sizeof(out), "journal verify");
	t_ok(rc == 0, "the journal verifies (%s)", strtok(out, "\n"));
}

/* Node b (a TPM) has been the leader since node a died: its checkpoints carry
 * its TPM's counter and name it; its rollback check at a start reads those
 * (not node a's, which carry none), and the audit checks counters per node,
 * with the attestation keys an auditor pinned before node a was revoked. */
static void test_tpm_leader(void)
{
	char out[16384];
	int rc;

	t_ok(sql_long("SELECT count(*) FROM journal WHERE kind = 'checkpoint' AND "
		      "convert_from(record, 'UTF8') LIKE '%s'",
		      "%\"node\":\"b\"%") > 0,
	     "node b, the leader after node a, signed checkpoints carrying its TPM's counter");
	t_daemon_stop(&nb.dm, SIGTERM);
	rc = t_daemon_start(&nb.dm);
	t_ok(rc == 0 && t_log_count(&nb.dm, "rollback") == 0,
	     "node b starts again: its TPM's counter agrees with the checkpoints it signed");
	rc = t_cimdd_audit(&nb, "bundle-end", out, sizeof(out));
	t_ok(rc == 0 && strstr(out, "checkpoints"), "audit verify of the whole run:\n%s", out);
}

int main(void)
{
	/* A token's SOFTHSM2_CONF is the environment a daemon starts with: each
	 * node is started right after its own token is made. */
	if (!t_ok(t_pg_start(&pg) == 0, "a PostgreSQL cluster") ||
	    !t_ok(t_softhsm_init(&ha, "node-a", "246810") == 0, "node a's SoftHSM2 token") ||
	    !t_ok(start_node(&na, "a", ha.conf, extra_a, sizeof(extra_a), NULL) == 0, "node a") ||
	    !t_ok(t_swtpm_start(&tpm_b) == 0, "node b's TPM (swtpm)") ||
	    !t_ok(start_node(&nb, "b", tpm_b.conf, extra_b, sizeof(extra_b), na.base) == 0,
		  "node b, under node a's base_url"))
		return t_done();
	if (geteuid() != 0) {
		printf("# not root: the second operator's uid needs setpriv; skipped\n");
		return t_done();
	}
	if (setup_client() < 0)
		return t_done();
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", na.base);
	test_union();
	test_own_keys();
	test_audit();
	test_concurrent_admin();
	test_kill_node();
	test_freeze_node();
	test_pg_restart();
	test_node_revoke();
	test_tpm_leader();
	t_daemon_stop(&nb.dm, SIGTERM);
	t_daemon_stop(&na.dm, SIGTERM);
	t_swtpm_kill(&tpm_b);
	t_ok(t_pg_stop(&pg) == 0, "the cluster shuts down cleanly");
	return t_done();
}
