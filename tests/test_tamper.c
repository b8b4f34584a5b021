/*
 * test_tamper.c — state tables edited behind cimdd's back (issue 15, item 6;
 * docs/audit.md, "The tables and the journal"), end to end on SoftHSM2.
 *
 * A lifecycle of every kind of change first (policy, callers and audiences
 * added and removed, a second document approved, keys rotated, activated and
 * revoked): the restart after it is clean, so the check raises nothing the
 * daemon did itself.  Then, each on a copy of the stopped database: a
 * document's bytes and digest replaced by one carrying an attacker's
 * redirect_uris; a caller uid and an audience added; a next and an active key
 * swapped.  Each makes cimdd refuse to start, naming the table and the row.
 * --accept-tables starts it, journals each difference as tables.accepted, and
 * later starts need no override; `audit verify` then says what was accepted
 * instead of "every check held".  While it runs, an audience added in the
 * database is used for an assertion, and an approved document rewritten is
 * published: `audit verify` names the assertion.issue record and the
 * publication.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "cimd.h"
#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;

#define ctl(out, len, ...) t_cimdd_ctl(&cd, out, len, __VA_ARGS__)

#define sql(q) t_cimdd_sql(&cd, "%s", q)

/* The first column of the first row as text into out ("" when none). */
static const char *sql_text(char *out, size_t len, const char *q)
{
	t_db_sql(cd.db, out, len, "%s", q);
	return out;
}

static long long sql_int(const char *q)
{
	char v[64];

	sql_text(v, sizeof(v), q);
	return v[0] ? atoll(v) : -1;
}

/* The approved document of client rewritten with an attacker's redirect URI,
 * its sha256 column recomputed to match: what a careful attacker does. */
static int doc_edit(const char *client)
{
	static const char evil[] = "\"redirect_uris\":[\"https://evil.example/cb\"],";
	struct store *st = NULL;
	struct store_rows *s = NULL;
	uint8_t md[SHA256_DIGEST_LENGTH];
	char err[256], *nb = NULL;
	size_t n;
	int r = -1;

	if (t_db_open(cd.db, &st, err, sizeof(err)) < 0) {
		printf("# %s\n", err);
		return -1;
	}
	if (store_query(st, &s,
			"SELECT bytes FROM documents WHERE client = ? AND state = 'approved'", "s",
			client) < 0 ||
	    store_next(s) <= 0 || (n = store_len(s, 0)) < 2 ||
	    (nb = malloc(n + sizeof(evil))) == NULL)
		goto out;
	/* {"redirect_uris":[...],<the rest>} */
	nb[0] = '{';
	memcpy(nb + 1, evil, sizeof(evil) - 1);
	memcpy(nb + sizeof(evil), (const char *)store_blob(s, 0) + 1, n - 1);
	n += sizeof(evil) - 1;
	SHA256((const uint8_t *)nb, n, md);
	store_done(st, s);
	s = NULL;
	r = store_exec(st,
		       "UPDATE documents SET bytes = ?, sha256 = ? WHERE client = ? AND "
		       "state = 'approved'",
		       "bbs", nb, n, md, sizeof(md), client) == 1
		? 0
		: -1;
out:
	store_done(st, s);
	store_free(&st);
	free(nb);
	return r;
}

/* The stopped daemon's database, copied; and put back. */
static int db_save(void)
{
	return t_db_save(cd.db, "saved");
}

static int db_restore(void)
{
	return t_db_restore(cd.db, "saved");
}

/* cimdd started on the edited database: refused, with needle in its log. */
static void refused(const char *what, const char *needle)
{
	int before = t_log_count(&cd.dm, needle), r;
	char line[1024];

	r = t_daemon_start(&cd.dm);
	t_ok(r == -ECHILD, "%s: cimdd refuses to start (%s)", what, cimd_strerror(r));
	if (r == 0)
		t_daemon_stop(&cd.dm, SIGTERM);
	t_ok(t_log_count(&cd.dm, needle) > before, "%s: the log names it: %s", what, needle);
	t_sh_out(line, sizeof(line), "grep 'tables:' %s | tail -1", cd.dm.log);
	t_ok(strstr(line, "--accept-tables") != NULL, "and says how to accept it: %s", line);
	t_ok(db_restore() == 0, "%s: the database put back", what);
}

static int assertion(const char *aud)
{
	char client_id[256], *jwt = NULL;
	struct cimd *c = NULL;
	struct cimd_info info;
	double t0 = t_now_ms();
	int r;

	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", cd.base);
	do {
		if ((r = cimd_open(cd.sign_sock, &c)) == CIMD_OK)
			r = cimd_assert(c, client_id, aud, 0, &jwt, &info);
		free(jwt);
		jwt = NULL;
		cimd_close(&c);
	} while (r != CIMD_OK && t_now_ms() - t0 < 5000 && usleep(100 * 1000) == 0);
	return r;
}

/* Every kind of change the tables follow, through the admin socket. */
static void lifecycle(void)
{
	char out[4096], kid[64], path[700];
	static const char doc2[] = "{\"client_name\":\"Agent A, second\",\"grant_types\":"
				   "[\"client_credentials\"],\"response_types\":[]}\n";
	int ok;

	ok = t_cimdd_client(&cd, "agent-a", "https://as.example.com") == 0 &&
	     t_cimdd_client(&cd, "agent-b", "https://as.example.com") == 0;
	t_ok(ok, "clients agent-a and agent-b added, approved, allowed");
	snprintf(path, sizeof(path), "%s/doc2.json", cd.dir);
	t_write_file(path, doc2, strlen(doc2));
	ok = ctl(out, sizeof(out), "client policy agent-a --ttl 120 --rate 50") == 0 &&
	     ctl(out, sizeof(out), "client policy agent-a --ttl 0") == 0 &&
	     ctl(out, sizeof(out), "client allow agent-a --gid 4000") == 0 &&
	     ctl(out, sizeof(out), "client allow agent-a --gid 4001") == 0 &&
	     ctl(out, sizeof(out), "client allow agent-a --gid 4000 --remove") == 0 &&
	     ctl(out, sizeof(out), "client audience agent-a --add https://as2.example.com") == 0 &&
	     ctl(out, sizeof(out), "client audience agent-a --remove https://as2.example.com") ==
		 0 &&
	     ctl(out, sizeof(out), "doc submit agent-a --metadata %s", path) == 0 &&
	     ctl(out, sizeof(out), "doc approve agent-a 2") == 0 &&
	     ctl(out, sizeof(out), "doc submit agent-b --metadata %s", path) == 0;
	t_ok(ok, "policy, callers, audiences and documents changed: %s", out);
	ok = ctl(out, sizeof(out), "key rotate agent-a") == 0 &&
	     ctl(out, sizeof(out), "key activate agent-a --force") == 0 &&
	     ctl(out, sizeof(out), "key rotate agent-a") == 0 &&
	     sql_text(kid, sizeof(kid),
		      "SELECT kid FROM keys WHERE client = 'agent-a' AND state = 'next'")[0] &&
	     ctl(out, sizeof(out), "key revoke agent-a %s --reason test", kid) == 0 &&
	     ctl(out, sizeof(out), "key rotate agent-b") == 0;
	t_ok(ok, "keys rotated, activated, revoked; agent-b has a next key: %s", out);
	t_ok(assertion("https://as.example.com") == CIMD_OK, "agent-a signs");
}

static void test_edits(void)
{
	char next[64], active[64], q[512];
	int r;

	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stopped");
	r = t_daemon_start(&cd.dm);
	t_ok(r == 0 && t_log_count(&cd.dm, "tables: 2 clients and") >= 1,
	     "restarted after every kind of change: the tables are the journal's");
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stopped");
	t_ok(db_save() == 0, "the database saved");

	/* 1. A document's bytes and digest. */
	t_ok(doc_edit("agent-a") == 0, "agent-a's approved document rewritten with "
				       "redirect_uris https://evil.example/cb, sha256 recomputed");
	refused("document", "tables: documents: agent-a version 2: its bytes have SHA-256");

	/* 2. A caller and an audience. */
	t_ok(sql("INSERT INTO client_callers (client, kind, id) VALUES ('agent-a', 'uid', 4242);"
		 "INSERT INTO client_audiences (client, aud) VALUES ('agent-a', "
		 "'https://evil.example')") == 0,
	     "uid 4242 and audience https://evil.example added to agent-a");
	refused("caller", "tables: client_callers: uid 4242 for agent-a is not in the journal");
	sql("INSERT INTO client_audiences (client, aud) VALUES ('agent-a', "
	    "'https://evil.example')");
	refused("audience",
		"tables: client_audiences: https://evil.example for agent-a is not in the journal");

	/* 3. The next and the active key swapped. */
	sql_text(next, sizeof(next),
		 "SELECT kid FROM keys WHERE client = 'agent-b' AND state = 'next'");
	sql_text(active, sizeof(active),
		 "SELECT kid FROM keys WHERE client = 'agent-b' AND state = 'active'");
	snprintf(q, sizeof(q),
		 "UPDATE keys SET state = 'retiring' WHERE kid = '%s';"
		 "UPDATE keys SET state = 'active' WHERE kid = '%s';"
		 "UPDATE keys SET state = 'next' WHERE kid = '%s'",
		 active, next, active);
	t_ok(next[0] && active[0] && sql(q) == 0, "agent-b's next key %s and active key %s swapped",
	     next, active);
	snprintf(q, sizeof(q), "tables: keys: %s: state is active, the journal says next", next);
	refused("keys", q);

	/* 4. A policy. */
	t_ok(sql("UPDATE clients SET assertion_ttl = 300 WHERE name = 'agent-b'") == 0,
	     "agent-b's ttl policy set in the table");
	refused("policy", "tables: clients: agent-b: ttl is 300, the journal says none");
}

static void test_accept(void)
{
	char out[16384];
	int r;

	t_ok(sql("INSERT INTO client_callers (client, kind, id) VALUES ('agent-a', 'uid', 4242);"
		 "INSERT INTO client_audiences (client, aud) VALUES ('agent-a', "
		 "'https://evil.example')") == 0,
	     "uid 4242 and audience https://evil.example added again");
	cd.dm.arg = "--accept-tables";
	r = t_daemon_start(&cd.dm);
	cd.dm.arg = NULL;
	t_ok(r == 0, "with --accept-tables cimdd starts");
	t_ok(sql_int("SELECT count(*) FROM journal WHERE kind = 'tables.accepted'") == 2 &&
		 t_db_journal_match(cd.db, "tables.accepted", "{ssss}", "row",
				    "client_callers: uid 4242 for agent-a is not in the journal",
				    "table", "client_callers") == 1,
	     "each difference journaled as tables.accepted, naming its table and row");
	t_ok(t_log_count(&cd.dm, "--accept-tables: client_callers: uid 4242") >= 1, "and logged");
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stopped");
	r = t_daemon_start(&cd.dm);
	t_ok(r == 0, "it starts again without the override: the accepted tables stand");

	r = t_cimdd_audit(&cd, "accepted", out, sizeof(out));
	t_ok(r == 0 && strstr(out, "every check held") == NULL &&
		 strstr(out, "2 table differences the operator accepted") != NULL &&
		 strstr(out, "client_callers: uid 4242 for agent-a") != NULL,
	     "audit verify does not say every check held: it names what was accepted");
	if (r != 0 || strstr(out, "every check held") != NULL)
		printf("# %s\n", out);
}

/* Edits while it runs: what they make the appliance do is in the bundle. */
static void test_live(void)
{
	char out[16384];
	long long seq;
	int r;

	t_ok(t_cimdd_fetch(&cd, "/.well-known/cimdd/attestation-keys.json", "ak.json") == 200,
	     "the attestation keys pinned");
	r = t_cimdd_audit(&cd, "clean", out, sizeof(out));
	t_ok(r == 0, "a bundle verifies before the live edits");
	if (r != 0)
		printf("# %s\n", out);
	t_ok(sql("INSERT INTO client_audiences (client, aud) VALUES ('agent-a', "
		 "'https://evil2.example')") == 0,
	     "audience https://evil2.example added to agent-a while cimdd runs");
	t_ok(assertion("https://evil2.example") == CIMD_OK, "an assertion for it is issued");
	seq = sql_int("SELECT max(seq) FROM journal WHERE kind = 'assertion.issue'");
	r = t_cimdd_audit(&cd, "live-aud", out, sizeof(out));
	t_ok(r == 1 && strstr(out, "FAIL assertions") &&
		 strstr(out, "audience https://evil2.example is not one of agent-a's"),
	     "audit verify names the assertion.issue record (%lld) and why", seq);
	if (r != 1)
		printf("# %s\n", out);

	t_ok(doc_edit("agent-b") == 0, "agent-b's approved document rewritten while cimdd runs");
	usleep(1500 * 1000);
	r = t_cimdd_audit(&cd, "live-doc", out, sizeof(out));
	t_ok(r == 1 && strstr(out, "FAIL publications") && strstr(out, "(/clients/agent-b") &&
		 strstr(out, "not the document the journal"),
	     "audit verify names the publication of the rewritten document");
	if (r != 1)
		printf("# %s\n", out);
}

int main(void)
{
	int rc;

	if (!t_ok(t_softhsm_init(&hsm, "tamper", "123456") == 0, "SoftHSM2 token"))
		return t_done();
	rc = t_cimdd_start(&cd, "pkcs11", hsm.conf,
			   "checkpoint_interval = 1\njwks_max_age = 1\ncimd_max_age = 1\n");
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc)))
		return t_done();
	t_ok(t_cimdd_fetch(&cd, "/.well-known/cimdd/attestation-keys.json", "ak.json") == 200,
	     "the attestation keys pinned");
	lifecycle();
	test_edits();
	test_accept();
	test_live();
	t_daemon_stop(&cd.dm, SIGTERM);
	return t_done();
}
