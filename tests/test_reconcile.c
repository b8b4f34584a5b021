/*
 * test_reconcile.c — start-up reconciliation at a few hundred keys (issue 13):
 * one listing per backend matched by hash lookup, no hardware search per key
 * (service/keys.c, docs/custody.md "Reconciliation").  A real cimdd is given
 * CIMD_RECONCILE_KEYS keys (default 300: two thirds active keys of as many
 * clients, one third next keys), stopped, and the hardware and the database
 * are put out of step behind its back; after a restart:
 *
 *   SoftHSM2: a key missing from the token marks its client degraded and is
 *   journaled, and no other key of the hundreds is reported missing; a retired
 *   key gone is recorded destroyed, one still there stays retired; a revoked
 *   key still on the token is destroyed; a key carrying a live intent's tag is
 *   destroyed, a key unknown to the database is reported and left; a degraded
 *   client whose keys are all there is restored; the intents are dropped.
 *
 *   swtpm: the two sample loads pass and no key is reported; a malformed blob
 *   is missing (and a retired one recorded destroyed) without the TPM; after
 *   the TPM is cleared the samples are refused and every key is loaded and
 *   reported, one by one.
 *
 * The time reconciliation took (the daemon logs it) and the time to the first
 * JWKS served are printed, never checked: tests never fail on speed.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;
static struct t_swtpm tpm;
static int n_keys = 300;

/* ---- the admin socket, one JSON line per request (docs/protocol.md) ---- */

static int admin_fd = -1;

static int admin_connect(void)
{
	if (admin_fd >= 0)
		return 0;
	return t_line_connect(cd.dm.sock, &admin_fd);
}

static void admin_close(void)
{
	if (admin_fd >= 0)
		close(admin_fd);
	admin_fd = -1;
}

/* Sends req (taken) and reads the answer line; 0 when it says ok. */
static int admin(json_t *req, char *out, size_t len)
{
	out[0] = '\0';
	if (admin_connect() < 0) {
		json_decref(req);
		return -EIO;
	}
	if (t_line_call(admin_fd, req, out, len, 60000) < 0) {
		admin_close();
		return -EIO;
	}
	return strstr(out, "\"ok\":true") != NULL ? 0 : -EREMOTEIO;
}

/* n_keys keys: two thirds clients (an active key each), one third rotations
 * of the first clients (a next key each). */
static int make_keys(const char *prefix)
{
	json_t *doc = json_pack("{sss[s]s[]}", "client_name", "Agent", "grant_types",
				"client_credentials", "response_types");
	char name[32], first[32], out[8192];
	int clients = n_keys * 2 / 3, i, r = 0;
	double t0 = t_now_ms();

	for (i = 0; i < clients && r == 0; i++) {
		snprintf(name, sizeof(name), "%s%04d", prefix, i);
		r = admin(json_pack("{sssssssO}", "op", "client.add", "name", name, "owner", "team",
				    "metadata", doc),
			  out, sizeof(out));
	}
	/* The first client's document approved: its JWKS is served. */
	snprintf(first, sizeof(first), "%s0000", prefix);
	if (r == 0)
		r = admin(json_pack("{sssssI}", "op", "doc.approve", "name", first, "version",
				    (json_int_t)1),
			  out, sizeof(out));
	for (i = 0; i < n_keys - clients && r == 0; i++) {
		snprintf(name, sizeof(name), "%s%04d", prefix, i);
		r = admin(json_pack("{ssss}", "op", "key.rotate", "name", name), out, sizeof(out));
	}
	json_decref(doc);
	admin_close();
	if (r < 0)
		printf("# %s: %s", name, out);
	printf("# %d keys made in %.1f s\n", n_keys, (t_now_ms() - t0) / 1000);
	return r;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* How long a rotation takes at this size (key.rotate: a key generated, two
 * transactions), printed, never checked: the last 20 clients have no next key. */
static void time_rotations(const char *prefix)
{
	char name[32], out[8192];
	double ms[20], t0;
	int clients = n_keys * 2 / 3, i, n = 0;

	for (i = clients - 20; i < clients; i++) {
		snprintf(name, sizeof(name), "%s%04d", prefix, i);
		t0 = t_now_ms();
		if (admin(json_pack("{ssss}", "op", "key.rotate", "name", name), out,
			  sizeof(out)) == 0)
			ms[n++] = t_now_ms() - t0;
		else
			printf("# key.rotate %s: %s\n", name, out);
	}
	admin_close();
	if (n == 0)
		return;
	qsort(ms, (size_t)n, sizeof(ms[0]), cmp_double);
	printf("# key.rotate at %d keys: median %.1f ms, max %.1f ms (%d rotations)\n", n_keys,
	       ms[n / 2], ms[n - 1], n);
}

/* ---- the database, read and changed while the daemon is stopped ---- */

#define db_exec(...) t_cimdd_sql(&cd, __VA_ARGS__)

/* The first column of the first row of a query as text into out (empty when
 * no row), or as a number (-1 when no row). */
static long long db_get(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static long long db_get(char *out, size_t len, const char *fmt, ...)
{
	char sql[1024], v[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(sql, sizeof(sql), fmt, ap);
	va_end(ap);
	if (out != NULL)
		out[0] = '\0';
	if (t_db_sql(cd.db, v, sizeof(v), "%s", sql) < 0 || v[0] == '\0')
		return -1;
	if (out != NULL)
		snprintf(out, len, "%s", v);
	return atoll(v);
}

/* The reference of kid, into ref (CIMD_KEYREF_MAX bytes). */
static size_t db_ref(const char *kid, uint8_t *ref)
{
	size_t n = 0;

	if (t_db_blob(cd.db, ref, CIMD_KEYREF_MAX, &n, "SELECT ref FROM keys WHERE kid = '%s'",
		      kid) < 0)
		return 0;
	return n;
}

/* ---- the daemon's log ---- */

/* Lines of the log that contain needle, past the first skip bytes. */
static int log_count_from(long skip, const char *needle)
{
	char line[4096];
	FILE *f = fopen(cd.dm.log, "r");
	int n = 0;

	if (f == NULL)
		return 0;
	if (fseek(f, skip, SEEK_SET) == 0)
		while (fgets(line, sizeof(line), f) != NULL)
			if (strstr(line, needle) != NULL)
				n++;
	fclose(f);
	return n;
}

static long log_size(void)
{
	FILE *f = fopen(cd.dm.log, "r");
	long n = 0;

	if (f != NULL && fseek(f, 0, SEEK_END) == 0)
		n = ftell(f);
	if (f != NULL)
		fclose(f);
	return n;
}

/* Prints the daemon's reconciliation line past skip. */
static void print_timing(long skip, const char *what)
{
	char line[4096];
	FILE *f = fopen(cd.dm.log, "r");

	if (f == NULL)
		return;
	if (fseek(f, skip, SEEK_SET) == 0)
		while (fgets(line, sizeof(line), f) != NULL)
			if (strstr(line, "live keys on") != NULL)
				printf("# %s: %s", what, strstr(line, "reconcile:"));
	fclose(f);
}

/* Starts the daemon; prints how long until its admin socket answered and
 * until a JWKS is served. */
static int restart(const char *what, const char *client)
{
	char path[128], out[65536];
	double t0 = t_now_ms(), up;
	int rc;

	/* The crash states above are made by editing the tables, which cimdd
	 * refuses unless the operator accepts them (docs/audit.md, "The tables
	 * and the journal"). */
	cd.dm.arg = "--accept-tables";
	rc = t_daemon_start(&cd.dm);
	cd.dm.arg = NULL;
	if (rc < 0)
		return rc;
	up = t_now_ms() - t0;
	snprintf(path, sizeof(path), "/clients/%s/jwks.json", client);
	while (t_now_ms() - t0 < 20000 &&
	       (t_cimdd_get(&cd, path, out, sizeof(out)) != 0 || strstr(out, "\"kid\"") == NULL))
		usleep(20000);
	printf("# %s: admin socket after %.0f ms, first JWKS after %.0f ms\n", what, up,
	       t_now_ms() - t0);
	return 0;
}

/* ---- SoftHSM2 ---- */

static void test_pkcs11(void)
{
	char missing[64], ret_gone[64], ret_kept[64], revoked[64], out[256], err[256];
	uint8_t ref[CIMD_KEYREF_MAX], ret_kept_ref[CIMD_KEYREF_MAX], revoked_ref[CIMD_KEYREF_MAX];
	uint8_t intent_ref[16], unknown_ref[16];
	size_t len, ret_kept_len = 0, revoked_len = 0;
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	struct ks_ref *refs = NULL;
	long long live, n;
	const uint8_t *p;
	size_t nrefs = 0, i;
	long skip;
	int ok, found[4] = {0};

	t_set_prefix("pkcs11: ");
	if (!t_ok(t_softhsm_init(&hsm, "reconcile", "123456") == 0, "SoftHSM2 token") ||
	    !t_ok(t_cimdd_start(&cd, "pkcs11", hsm.conf, "destroy_delay = 86400\n") == 0,
		  "cimdd starts"))
		return;
	if (!t_ok(make_keys("r") == 0, "%d keys through the admin socket", n_keys))
		return;
	t_daemon_stop(&cd.dm, SIGTERM);
	live = db_get(NULL, 0, "SELECT count(*) FROM keys WHERE state IN ('next', 'active')");
	t_ok(live == n_keys, "%lld keys in the database", live);

	/* Out of step, behind the daemon's back. */
	db_get(missing, sizeof(missing),
	       "SELECT kid FROM keys WHERE client = 'r0001' AND state = 'active'");
	db_get(ret_gone, sizeof(ret_gone),
	       "SELECT kid FROM keys WHERE client = 'r0003' AND state = 'next'");
	db_get(ret_kept, sizeof(ret_kept),
	       "SELECT kid FROM keys WHERE client = 'r0005' AND state = 'next'");
	db_get(revoked, sizeof(revoked),
	       "SELECT kid FROM keys WHERE client = 'r0007' AND state = 'next'");
	ok = missing[0] && ret_gone[0] && ret_kept[0] && revoked[0] &&
	     db_exec("UPDATE keys SET state = 'retired', retired = %lld WHERE kid IN ('%s', '%s')",
		     (long long)time(NULL), ret_gone, ret_kept) == 0 &&
	     db_exec("UPDATE keys SET state = 'revoked', revoked = %lld, revoke_reason = 'test' "
		     "WHERE kid = '%s'",
		     (long long)time(NULL), revoked) == 0 &&
	     db_exec("UPDATE clients SET degraded = 1 WHERE name IN ('r0009', 'r0001')") == 0 &&
	     db_exec("INSERT INTO key_intents (tag, backend, client, created) VALUES "
		     "('feedfacefeedface', 'pkcs11', 'r0011', 0)") == 0;
	t_ok(ok,
	     "retired: %s (to go) and %s (to stay); revoked: %s; r0009 marked degraded; "
	     "an intent",
	     ret_gone, ret_kept, revoked);
	ret_kept_len = db_ref(ret_kept, ret_kept_ref);
	revoked_len = db_ref(revoked, revoked_ref);
	if (!t_ok(key_store_open(hsm.conf, &ks, err, sizeof(err)) == 0, "a key store of our own"))
		return;
	len = db_ref(missing, ref);
	t_ok(key_store_destroy_ref(ks, ref, len) == 0, "the active key of r0001 destroyed");
	len = db_ref(ret_gone, ref);
	t_ok(key_store_destroy_ref(ks, ref, len) == 0, "the retired key %s destroyed", ret_gone);
	if (key_store_generate(ks, CIMD_ALG_ES256, "feedfacefeedface", &key) == 0) {
		ks_key_ref(key, &p, &len);
		memcpy(intent_ref, p, sizeof(intent_ref));
		ks_key_free(&key);
	}
	if (key_store_generate(ks, CIMD_ALG_ES256, "deadbeef00000000", &key) == 0) {
		ks_key_ref(key, &p, &len);
		memcpy(unknown_ref, p, sizeof(unknown_ref));
		ks_key_free(&key);
	}
	key_store_free(&ks);

	skip = log_size();
	if (!t_ok(restart("pkcs11 restart", "r0000") == 0, "cimdd restarts"))
		return;
	print_timing(skip, "pkcs11");
	t_ok(log_count_from(skip, "NO hardware key") == 1 && log_count_from(skip, missing) >= 1,
	     "one key reported missing of %d (%s), none falsely", n_keys, missing);
	snprintf(out, sizeof(out), "live keys on 1 backends");
	n = log_count_from(skip, out);
	t_ok(n == 1, "reconciliation read the live keys once");
	t_ok(db_get(NULL, 0, "SELECT degraded FROM clients WHERE name = 'r0001'") == 1,
	     "r0001 is degraded");
	t_ok(t_db_journal_match(cd.db, "reconcile", "{ss}", "kid", missing) == 1,
	     "and that is journaled");
	snprintf(out, sizeof(out), "retired key %s of r0003 is gone from the hardware: recorded",
		 ret_gone);
	t_ok(log_count_from(skip, out) == 1 &&
		 db_get(out, sizeof(out), "SELECT state FROM keys WHERE kid = '%s'", ret_gone) >=
		     0 &&
		 strcmp(out, "destroyed") == 0,
	     "the retired key gone from the token is recorded destroyed");
	t_ok(db_get(out, sizeof(out), "SELECT state FROM keys WHERE kid = '%s'", ret_kept) >= 0 &&
		 strcmp(out, "retired") == 0,
	     "the retired key still there stays retired");
	snprintf(out, sizeof(out), "revoked key %s of r0007 was still in the hardware: destroyed",
		 revoked);
	t_ok(log_count_from(skip, out) == 1 &&
		 db_get(NULL, 0,
			"SELECT count(*) FROM keys WHERE kid = '%s' AND destroyed IS NOT NULL",
			revoked) == 1,
	     "the revoked key still on the token is destroyed, and recorded so");
	t_ok(log_count_from(skip, "(intent feedfacefeedface) was in the hardware: destroyed") == 1,
	     "the key of a live intent without a row is destroyed");
	t_ok(log_count_from(skip, "labelled cimdd:deadbeef00000000 is not known to this "
				  "database: left in place") == 1,
	     "the unknown key is reported and left");
	t_ok(log_count_from(skip, "client r0009 is no longer degraded") == 1 &&
		 db_get(NULL, 0, "SELECT degraded FROM clients WHERE name = 'r0009'") == 0,
	     "a degraded client whose keys are all there is restored");
	t_ok(db_get(NULL, 0, "SELECT count(*) FROM key_intents WHERE backend = 'pkcs11'") == 0,
	     "the intents are dropped");
	t_daemon_stop(&cd.dm, SIGTERM);

	/* What is on the token now. */
	if (key_store_open(hsm.conf, &ks, err, sizeof(err)) == 0 &&
	    key_store_list(ks, 1000000, &refs, &nrefs) == 0) {
		for (i = 0; i < nrefs; i++) {
			if (refs[i].len == 16 && memcmp(refs[i].ref, intent_ref, 16) == 0)
				found[0] = 1;
			if (refs[i].len == 16 && memcmp(refs[i].ref, unknown_ref, 16) == 0)
				found[1] = 1;
			if (refs[i].len == revoked_len &&
			    memcmp(refs[i].ref, revoked_ref, revoked_len) == 0)
				found[2] = 1;
			if (refs[i].len == ret_kept_len &&
			    memcmp(refs[i].ref, ret_kept_ref, ret_kept_len) == 0)
				found[3] = 1;
		}
	}
	t_ok(!found[0] && found[1] && !found[2] && found[3],
	     "on the token: the intent's key and the revoked key gone, the unknown key and the "
	     "retired key kept (%d %d %d %d)",
	     found[0], found[1], found[2], found[3]);
	ks_refs_free(&refs, nrefs);
	key_store_free(&ks);

	/* Restarted with nothing out of step: no key reported, nothing journaled. */
	skip = log_size();
	n = db_get(NULL, 0, "SELECT count(*) FROM journal WHERE kind = 'reconcile'");
	if (t_ok(restart("pkcs11 restart, in step", "r0000") == 0, "cimdd restarts again")) {
		print_timing(skip, "pkcs11, in step");
		t_ok(log_count_from(skip, "NO hardware key") == 1 &&
			 log_count_from(skip, "was still in the hardware") == 0 &&
			 log_count_from(skip, "never recorded") == 0,
		     "again: only the key still missing is reported");
		t_ok(db_get(NULL, 0, "SELECT count(*) FROM journal WHERE kind = 'reconcile'") ==
			 n + 2,
		     "and journaled, with the unknown key: two records");
		time_rotations("r");
		t_daemon_stop(&cd.dm, SIGTERM);
	}
}

/* ---- swtpm ---- */

static void test_tpm2(void)
{
	char bad[64], ret_bad[64], cmd[700];
	long long live;
	long skip;

	t_set_prefix("tpm2: ");
	n_keys = n_keys > 60 ? 60 : n_keys; /* a TPM makes keys slowly */
	if (!t_ok(t_swtpm_start(&tpm) == 0, "swtpm") ||
	    !t_ok(t_cimdd_start(&cd, "tpm2", tpm.conf, NULL) == 0, "cimdd starts"))
		return;
	if (!t_ok(make_keys("t") == 0, "%d keys through the admin socket", n_keys))
		return;
	t_daemon_stop(&cd.dm, SIGTERM);

	skip = log_size();
	if (!t_ok(restart("tpm2 restart", "t0000") == 0, "cimdd restarts"))
		return;
	print_timing(skip, "tpm2");
	t_ok(log_count_from(skip, "NO hardware key") == 0 &&
		 log_count_from(skip, "does not load") == 0,
	     "the two sample keys load: no key reported, none loaded one by one");
	t_daemon_stop(&cd.dm, SIGTERM);

	/* A blob cut short in the database: missing without asking the TPM. */
	db_get(bad, sizeof(bad),
	       "SELECT kid FROM keys WHERE client = 't0001' AND state = 'active'");
	db_get(ret_bad, sizeof(ret_bad),
	       "SELECT kid FROM keys WHERE client = 't0003' AND state = 'next'");
	t_ok(bad[0] && ret_bad[0] &&
		 db_exec("UPDATE keys SET ref = substr(ref, 1, 20) WHERE kid IN ('%s', '%s')", bad,
			 ret_bad) == 0 &&
		 db_exec("UPDATE keys SET state = 'retired', retired = %lld WHERE kid = '%s'",
			 (long long)time(NULL), ret_bad) == 0,
	     "two blobs cut short, one of them retired");
	skip = log_size();
	if (!t_ok(restart("tpm2 restart", "t0000") == 0, "cimdd restarts"))
		return;
	t_ok(log_count_from(skip, "NO hardware key (malformed reference)") == 1 &&
		 log_count_from(skip, bad) >= 1 && log_count_from(skip, "does not load") == 0,
	     "the cut blob is missing (malformed), found without a load");
	t_ok(db_get(NULL, 0, "SELECT degraded FROM clients WHERE name = 't0001'") == 1,
	     "its client is degraded");
	snprintf(cmd, sizeof(cmd), "retired key %s of t0003 is gone from the hardware", ret_bad);
	t_ok(log_count_from(skip, cmd) == 1, "the cut retired blob is recorded destroyed");
	t_daemon_stop(&cd.dm, SIGTERM);

	/* A cleared TPM: the samples are refused, every key is loaded and each
	 * one reported. */
	live = db_get(NULL, 0,
		      "SELECT count(*) FROM keys WHERE state IN ('next', 'active', 'retiring') "
		      "AND backend = 'tpm2'");
	t_swtpm_kill(&tpm);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'/*", tpm.dir);
	if (!t_ok(system(cmd) == 0 && t_swtpm_restart(&tpm) == 0, "the TPM is cleared"))
		return;
	skip = log_size();
	if (!t_ok(restart("tpm2 restart, TPM cleared", "t0000") == 0, "cimdd restarts"))
		return;
	print_timing(skip, "tpm2, cleared");
	t_ok(log_count_from(skip, "does not load") == 1 &&
		 log_count_from(skip, "every key of the backend is loaded") == 1,
	     "the oldest key does not load: every key is loaded");
	t_ok(log_count_from(skip, "NO hardware key") == live,
	     "every published key is reported missing (%d of %lld)",
	     log_count_from(skip, "NO hardware key"), live);
	t_ok(db_get(NULL, 0, "SELECT count(*) FROM clients WHERE degraded = 0") == 0,
	     "and every client is degraded");
	t_daemon_stop(&cd.dm, SIGTERM);
	t_swtpm_kill(&tpm);
}

int main(void)
{
	const char *e = getenv("CIMD_RECONCILE_KEYS");

	signal(SIGPIPE, SIG_IGN);
	if (e != NULL && atoi(e) >= 30)
		n_keys = atoi(e);
	test_pkcs11();
	test_tpm2();
	return t_done();
}
