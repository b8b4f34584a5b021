/*
 * test_tlog.c — the journal as a transparency log, end to end on SoftHSM2 and
 * on swtpm: signed checkpoints served over TLS and checked by cimdctl and by
 * an independent verifier in node (tests/interop/checkpoint-verify.mjs,
 * written from the C2SP and RFC 9162 texts); checkpoint_interval; inclusion
 * and consistency proofs; the signing socket's receipts (and another uid's
 * refused); the audit bundle exported and verified, then each tampering the
 * issue names detected and named: a record changed, a record changed with the
 * chain rewritten after it, a record deleted, a checkpoint replaced by an
 * older one, published bytes changed, and every member of every file of the
 * bundle changed or added (issue 15, item 7); and on the TPM, the NV counter in every
 * checkpoint and a restored old database refused at start.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "cimd.h"
#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;
static struct t_swtpm tpm;
static int on_tpm;
static char client_id[200];

#define ctl(out, len, ...) t_cimdd_ctl(&cd, out, len, __VA_ARGS__)

static char *read_all(const char *file, size_t *ret_len)
{
	char p[700], *buf;
	size_t n;
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", cd.dir, file);
	if ((f = fopen(p, "rb")) == NULL)
		return NULL;
	buf = calloc(1, 1 << 22);
	n = buf ? fread(buf, 1, (1 << 22) - 1, f) : 0;
	fclose(f);
	if (ret_len != NULL)
		*ret_len = n;
	return buf;
}

#define sql(q) t_cimdd_sql(&cd, "%s", q)

static int64_t sql_int(const char *q)
{
	char v[64];

	return t_db_sql(cd.db, v, sizeof(v), "%s", q) == 0 && v[0] ? atoll(v) : -1;
}

/* Waits until the checkpoints table has more than n rows; the count. */
static int64_t wait_checkpoints(int64_t n, double ms)
{
	double t0 = t_now_ms();
	int64_t c;

	while ((c = sql_int("SELECT count(*) FROM checkpoints")) <= n && t_now_ms() - t0 < ms)
		usleep(100 * 1000);
	return c;
}

static int assertion(char *ret_jti)
{
	struct cimd *c = NULL;
	struct cimd_info info;
	char *jwt = NULL;
	int r;

	if ((r = cimd_open(cd.sign_sock, &c)) == CIMD_OK &&
	    (r = cimd_assert(c, client_id, "https://as.example.com", 0, &jwt, &info)) == CIMD_OK)
		snprintf(ret_jti, 64, "%s", info.jti);
	free(jwt);
	cimd_close(&c);
	return r;
}

/* An assertion right after a start: the signer signs only once the publisher
 * serves the key (slow under ASan), so it is asked again for a few seconds. */
static int assertion_soon(char *ret_jti)
{
	double t0 = t_now_ms();
	int r;

	while ((r = assertion(ret_jti)) != CIMD_OK && t_now_ms() - t0 < 5000)
		usleep(100 * 1000);
	return r;
}

static json_t *trust_keys(void)
{
	char p[700];

	snprintf(p, sizeof(p), "%s/ak.json", cd.dir);
	return json_load_file(p, 0, NULL);
}

static void test_checkpoint_served(void)
{
	char out[8192], ctype[128], *note;
	struct checkpoint c;
	json_t *trust;
	size_t len = 0;
	uint64_t counter = 0;
	int r;

	t_ok(wait_checkpoints(0, 5000) >= 1, "a checkpoint is issued at start");
	t_ok(t_cimdd_fetch(&cd, "/.well-known/cimdd/checkpoint", "cp0") == 200,
	     "GET /.well-known/cimdd/checkpoint: 200");
	t_sh_out(ctype, sizeof(ctype),
		 "curl -s --cacert %s -o /dev/null -w '%%{content_type}' "
		 "%s/.well-known/cimdd/checkpoint",
		 cd.ca, cd.base);
	t_ok(strncmp(ctype, "text/plain", 10) == 0, "served as %s", ctype);
	t_ok(t_cimdd_fetch(&cd, "/.well-known/cimdd/attestation-keys.json", "ak.json") == 200,
	     "attestation keys fetched");
	note = read_all("cp0", &len);
	trust = trust_keys();
	r = note != NULL && trust != NULL
		? checkpoint_verify(note, len, trust, &c, NULL, out, sizeof(out))
		: -EIO;
	t_ok(r == 0 && strcmp(c.origin, cd.base + 8) == 0 && c.size >= 1,
	     "it is a C2SP checkpoint of origin %s, signed by the attestation key (%s)",
	     r == 0 ? c.origin : "?", r == 0 ? "ok" : out);
	r = note != NULL ? checkpoint_extension(note, len, &c, "nv-counter", &counter) : -EIO;
	if (on_tpm)
		t_ok(r == 0 && counter > 0, "it carries the TPM counter: nv-counter %llu",
		     (unsigned long long)counter);
	else
		t_ok(r == -ENOENT, "no counter line without a TPM");
	r = t_sh_out(out, sizeof(out), "node tests/interop/checkpoint-verify.mjs %s/cp0 %s/ak.json",
		     cd.dir, cd.dir);
	t_ok(r == 0 && strstr(out, "ok signature") != NULL,
	     "an independent verifier (node crypto, from the C2SP texts) agrees: %s", out);
	free(note);
	json_decref(trust);
}

static void test_interval(void)
{
	char jti[64];
	int64_t n0, n1, s0, s1;

	/* Activity: a checkpoint covering it within checkpoint_interval (1 s). */
	n0 = sql_int("SELECT count(*) FROM checkpoints");
	s0 = sql_int("SELECT max(size) FROM checkpoints");
	t_ok(assertion(jti) == CIMD_OK, "an assertion is issued (jti %s)", jti);
	n1 = wait_checkpoints(n0, 3000);
	s1 = sql_int("SELECT max(size) FROM checkpoints");
	t_ok(n1 > n0 && s1 > s0 &&
		 sql_int("SELECT max(size) FROM checkpoints") >=
		     sql_int("SELECT seq FROM journal WHERE kind = "
			     "'assertion.issue' ORDER BY seq DESC LIMIT 1"),
	     "after it, a checkpoint covering it within the interval (size %lld -> %lld)",
	     (long long)s0, (long long)s1);
	/* Idle (HTTP reads journal nothing): no checkpoint for checkpoints' sake. */
	sleep(1);
	n0 = sql_int("SELECT count(*) FROM checkpoints");
	sleep(3);
	n1 = sql_int("SELECT count(*) FROM checkpoints");
	t_ok(n1 == n0, "no new checkpoint while the journal does not grow (%lld, %lld)",
	     (long long)n0, (long long)n1);
	t_ok(sql_int("SELECT count(*) FROM checkpoints c JOIN journal j ON j.seq = c.seq AND "
		     "j.kind = 'checkpoint'") == n1,
	     "each checkpoint is itself a journal record");
	{
		char m[65536], want[96];
		size_t len = 0;
		char *body;

		t_cimdd_fetch(&cd, "/metrics", "metrics");
		body = read_all("metrics", &len);
		snprintf(want, sizeof(want), "\ncimdd_checkpoint_size %lld\n",
			 (long long)sql_int("SELECT max(size) FROM checkpoints"));
		snprintf(m, sizeof(m), "%s", body ? body : "");
		long long ts = 0;
		const char *at = strstr(m, "\ncimdd_checkpoint_timestamp_seconds ");

		if (at != NULL)
			sscanf(at + strlen("\ncimdd_checkpoint_timestamp_seconds "), "%lld", &ts);
		t_ok(strstr(m, want) != NULL && ts > (long long)time(NULL) - 60 &&
			 ts <= (long long)time(NULL),
		     "/metrics: the latest checkpoint's size and time (alerting on a stalled log)");
		free(body);
	}
}

/* Beyond the proof tree's base (256 leaves): proofs read old leaves back. */
static void test_beyond_base(void)
{
	char jti[64], out[16384];
	int64_t n;
	int i, ok = 0, r;

	double t0;

	for (i = 0; i < 600; i++)
		ok += assertion(jti) == CIMD_OK;
	for (t0 = t_now_ms();
	     (n = sql_int("SELECT max(size) FROM checkpoints")) <= 600 && t_now_ms() - t0 < 4000;)
		usleep(100 * 1000);
	t_ok(ok == 600 && n > 600,
	     "600 assertions (%d issued), then a checkpoint over %lld records", ok, (long long)n);
	for (i = 0; i < 3; i++) {
		int64_t seq = i == 0   ? 3
			      : i == 1 ? 300
				       : sql_int("SELECT max(size) FROM checkpoints");

		r = ctl(out, sizeof(out), "journal prove %lld --trust %s/ak.json", (long long)seq,
			cd.dir);
		t_ok(r == 0 && strstr(out, "verified: record") != NULL,
		     "journal prove %lld (of a tree over 512 records) verifies", (long long)seq);
	}
	r = ctl(out, sizeof(out), "journal consistency %s/cp0 --trust %s/ak.json", cd.dir, cd.dir);
	t_ok(r == 0 && strstr(out, "is a prefix of the latest") != NULL,
	     "consistency from the first checkpoint to one over 600 records");
}

static void test_proofs(void)
{
	char out[16384], p[700];
	int r;

	r = ctl(out, sizeof(out), "journal prove 2 --trust %s/ak.json", cd.dir);
	t_ok(r == 0 && strstr(out, "verified: record 2 is in") != NULL &&
		 strstr(out, "trusted attestation key signed") != NULL,
	     "cimdctl journal prove 2: proof printed and checked");
	r = ctl(out, sizeof(out), "journal prove 999999");
	t_ok(r == 1 && strstr(out, "no journal record 999999") != NULL, "an unknown record: %s",
	     out);
	r = ctl(out, sizeof(out), "journal prove two");
	t_ok(r == 2, "a SEQ that is not a number is a usage error");
	/* Consistency from the checkpoint fetched at start to the latest. */
	r = ctl(out, sizeof(out), "journal consistency %s/cp0 --trust %s/ak.json", cd.dir, cd.dir);
	t_ok(r == 0 && strstr(out, "is a prefix of the latest") != NULL,
	     "cimdctl journal consistency from the first served checkpoint");
	/* A forged old checkpoint (another root, same size) is not a prefix. */
	snprintf(p, sizeof(p), "%s/cp0", cd.dir);
	t_sh("awk 'NR==3{c=substr($0,1,1); $0=(c==\"A\"?\"B\":\"A\") substr($0,2)} 1' %s > "
	     "%s/cp-forged",
	     p, cd.dir);
	r = ctl(out, sizeof(out), "journal consistency %s/cp-forged", cd.dir);
	t_ok(r == 1 && strstr(out, "NOT verified") != NULL,
	     "a checkpoint with another root is refused: %s", strstr(out, "NOT") ?: out);
	r = ctl(out, sizeof(out), "journal consistency %s/cp-forged --trust %s/ak.json", cd.dir,
		cd.dir);
	t_ok(r == 1 && strstr(out, "does not verify") != NULL,
	     "and, with --trust, named as a bad signature");
}

static void test_receipts(void)
{
	char jti[64], out[16384], err[512], p[700], *rc_json = NULL;
	struct cimd *c = NULL;
	json_t *rec = NULL, *trust = trust_keys();
	double t0;
	int r = -1, early;

	if (!t_ok(assertion(jti) == CIMD_OK, "an assertion to ask a receipt for"))
		return;
	cimd_open(cd.sign_sock, &c);
	r = cimd_receipt(c, jti, &rc_json);
	early = r;
	for (t0 = t_now_ms(); r == CIMD_NOT_CHECKPOINTED && t_now_ms() - t0 < 4000;
	     usleep(200 * 1000))
		r = cimd_receipt(c, jti, &rc_json);
	t_ok(early == CIMD_OK || early == CIMD_NOT_CHECKPOINTED,
	     "a receipt asked at once: ok or not_checkpointed (%s)", cimd_status_name(early));
	t_ok(r == CIMD_OK, "a receipt once a checkpoint covers it (%s)", cimd_message(c));
	rec = rc_json ? json_loads(rc_json, 0, NULL) : NULL;
	t_ok(rec != NULL && strstr(json_string_value(json_object_get(rec, "record")) ?: "", jti) &&
		 strstr(json_string_value(json_object_get(rec, "record")) ?: "",
			"\"kind\":\"assertion.issue\""),
	     "it holds the assertion's issue record");
	r = rec ? audit_check_inclusion(rec, trust, err, sizeof(err)) : -1;
	t_ok(r == 0, "its inclusion proof and checkpoint verify (%s)", r == 0 ? "ok" : err);
	if (rec != NULL) {
		snprintf(p, sizeof(p), "%s/receipt.json", cd.dir);
		json_dump_file(rec, p, JSON_COMPACT);
		snprintf(p, sizeof(p), "%s/receipt-cp", cd.dir);
		t_write_file(p, json_string_value(json_object_get(rec, "checkpoint")),
			     strlen(json_string_value(json_object_get(rec, "checkpoint"))));
		r = t_sh_out(out, sizeof(out),
			     "node tests/interop/checkpoint-verify.mjs %s/receipt-cp %s/ak.json "
			     "%s/receipt.json",
			     cd.dir, cd.dir, cd.dir);
		t_ok(r == 0 && strstr(out, "ok inclusion") != NULL,
		     "the independent verifier checks the receipt's proof too: %s", out);
		/* One changed byte of the record: the proof no longer leads to the root. */
		{
			char *s = strdup(json_string_value(json_object_get(rec, "record")));
			char *at = strstr(s, jti);

			at[0] = at[0] == 'A' ? 'B' : 'A';
			json_object_set_new(rec, "record", json_string(s));
			free(s);
		}
		r = audit_check_inclusion(rec, trust, err, sizeof(err));
		t_ok(r == -CIMD_EVERIFY && strstr(err, "not in the checkpoint's tree"),
		     "a receipt with its record changed is refused: %s", err);
		snprintf(p, sizeof(p), "%s/receipt.json", cd.dir);
		json_dump_file(rec, p, JSON_COMPACT);
		r = t_sh_out(out, sizeof(out),
			     "node tests/interop/checkpoint-verify.mjs %s/receipt-cp %s/ak.json "
			     "%s/receipt.json",
			     cd.dir, cd.dir, cd.dir);
		t_ok(r == 1 && strstr(out, "FAIL") != NULL, "and by the independent verifier: %s",
		     out);
	}
	/* Another uid: not_found, as for an unknown jti. */
	r = t_sh_out(out, sizeof(out),
		     "setpriv --reuid=1001 --regid=1001 --clear-groups %s -s %s --receipt %s",
		     t_bin("cimd-assert", p, sizeof(p)), cd.sign_sock, jti);
	t_ok(r == 1 && strstr(out, "not_found") != NULL, "another uid's receipt request: %s", out);
	r = t_sh_out(out, sizeof(out), "%s -s %s --receipt nosuchjti", p, cd.sign_sock);
	t_ok(r == 1 && strstr(out, "not_found") != NULL, "an unknown jti: %s", out);
	r = t_sh_out(out, sizeof(out), "%s -s %s --receipt %s", p, cd.sign_sock, jti);
	t_ok(r == 0 && strstr(out, "\"proof\"") != NULL, "cimd-assert --receipt prints it");
	json_decref(rec);
	json_decref(trust);
	free(rc_json);
	cimd_close(&c);
}

/*
 * Every member of every file of the bundle is checked against signed or
 * journaled content, or absent (issue 15, item 7): each changed or added in a
 * copy of a clean bundle is named.  The first line of the file, by sed.
 */
static void test_bundle_fields(void)
{
	static const struct {
		const char *file, *sed, *step, *says, *what;
	} t[] = {
	    {"attestations.jsonl", "1s/\"client\":\"agent-a\"/\"client\":\"agent-y\"/",
	     "FAIL attestations", "is not what journal record", "an attestation's client"},
	    {"attestations.jsonl", "1s/^{/{\"created\":1,/", "FAIL attestations",
	     "\"created\" is checked against nothing", "a member added to an attestation"},
	    {"checkpoints.jsonl", "1s/\"size\":\\([0-9]*\\)/\"size\":1\\1/", "FAIL checkpoints",
	     "its size member is not its note's", "a checkpoint's size"},
	    {"checkpoints.jsonl", "1s/\"counter\":[0-9a-z]*/\"counter\":7777/", "FAIL checkpoints",
	     "its counter member is not its note's", "a checkpoint's counter"},
	    {"checkpoints.jsonl", "1s/^{/{\"id\":1,/", "FAIL checkpoints",
	     "\"id\" is checked against nothing", "a member added to a checkpoint"},
	    {"publications.jsonl", "1s/\"client\":\"agent-a\"/\"client\":\"agent-y\"/",
	     "FAIL publications", "its bytes are not what journal record",
	     "a publication's client"},
	    {"publications.jsonl", "1s/^{/{\"created\":1,/", "FAIL publications",
	     "\"created\" is checked against nothing", "a member added to a publication"},
	    {"attestation-keys.json", "s/\"backend\":\"[a-z0-9]*\"/\"backend\":\"other\"/",
	     "FAIL keys", "no attest.key record made it", "an attestation key's backend"},
	    {"attestation-keys.json", "s/\"kid\":/\"state\":\"active\",\"kid\":/", "FAIL keys",
	     "\"state\" is checked against nothing", "a member added to an attestation key"},
	};
	char out[16384];
	size_t i;
	int r;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (!t_ok(t_sh("cd %s && rm -rf bf && cp -r b6 bf && sed -i '%s' bf/%s && ! cmp "
			       "-s b6/%s bf/%s",
			       cd.dir, t[i].sed, t[i].file, t[i].file, t[i].file) == 0,
			  "%s: changed in a copy of the bundle", t[i].what))
			continue;
		r = ctl(out, sizeof(out), "audit verify %s/bf --trust %s/ak.json", cd.dir, cd.dir);
		t_ok(r == 1 && strstr(out, t[i].step) && strstr(out, t[i].says), "%s: named (%s)",
		     t[i].what, strstr(out, "FAIL") ? strstr(out, "FAIL") : out);
	}
}

static void test_audit(void)
{
	char out[16384], q[512];
	int64_t seq, cps;
	int r;

	r = t_cimdd_audit(&cd, "bundle", out, sizeof(out));
	t_ok(r == 0 && strstr(out, "verified: every check held") != NULL,
	     "audit export + audit verify: every check held");
	t_ok(strstr(out, "ok   publications") != NULL && strstr(out, "ok   attestations") != NULL,
	     "publications and attestations among the checks");
	if (r != 0)
		t_sh("echo '%s'", out);

	/* 1. A record changed in the database. */
	seq = sql_int("SELECT seq FROM journal WHERE kind = 'client.add' LIMIT 1");
	snprintf(q, sizeof(q), "CREATE TABLE saved AS SELECT * FROM journal WHERE seq = %lld",
		 (long long)seq);
	t_ok(sql(q) == 0 && t_db_replace(cd.db, "journal", "record",
					 "seq IN (SELECT seq FROM saved)", "team-a", "team-x") == 0,
	     "record %lld (client.add) changed in the database", (long long)seq);
	r = t_cimdd_audit(&cd, "b1", out, sizeof(out));
	snprintf(q, sizeof(q), "journal record %lld:", (long long)seq + 1);
	t_ok(r == 1 && strstr(out, "FAIL journal") && strstr(out, q),
	     "audit verify names it: the chain breaks at record %lld", (long long)seq + 1);
	r = ctl(out, sizeof(out), "journal verify");
	t_ok(r == 1 && strstr(out, "BROKEN"), "cimdctl journal verify too: %s", out);

	/* 2. The same change with the chain recomputed after it (in the exported
	 * bundle): only the signed checkpoints can tell. */
	r = t_sh("node -e \"const fs=require('fs'),c=require('crypto');"
		 "const f='%s/b1/journal.jsonl';let L=fs.readFileSync(f,'utf8').split('\\n');"
		 "if(L[L.length-1]==='')L.pop();let p='0'.repeat(64);"
		 "L=L.map(l=>{const o=JSON.parse(l);const "
		 "s=l.replace(/\\\"prev\\\":\\\"[0-9a-f]{64}\\\"/,"
		 "'\\\"prev\\\":\\\"'+p+'\\\"');p=c.createHash('sha256').update(s).digest('hex');"
		 "return s;});"
		 "fs.writeFileSync(f,L.join('\\n')+'\\n');\"",
		 cd.dir);
	t_ok(r == 0, "the bundle's chain recomputed after the changed record");
	r = ctl(out, sizeof(out), "audit verify %s/b1 --trust %s/ak.json", cd.dir, cd.dir);
	t_ok(r == 1 && strstr(out, "ok   journal") && strstr(out, "FAIL checkpoints") &&
		 strstr(out, "a record among them was changed"),
	     "audit verify: the chain holds, the first checkpoint over it does not");
	t_ok(sql("DELETE FROM journal WHERE seq IN (SELECT seq FROM saved);"
		 "INSERT INTO journal SELECT * FROM saved; DROP TABLE saved") == 0,
	     "record restored");

	/* 3. A record deleted. */
	seq = sql_int("SELECT seq FROM journal WHERE kind = 'key.create' LIMIT 1");
	snprintf(q, sizeof(q),
		 "CREATE TABLE saved AS SELECT * FROM journal WHERE seq = %lld;"
		 "DELETE FROM journal WHERE seq = %lld",
		 (long long)seq, (long long)seq);
	t_ok(sql(q) == 0, "record %lld (key.create) deleted", (long long)seq);
	r = t_cimdd_audit(&cd, "b3", out, sizeof(out));
	snprintf(q, sizeof(q), "journal record %lld:", (long long)seq);
	t_ok(r == 1 && strstr(out, "FAIL journal") && strstr(out, q),
	     "audit verify names where the journal has a hole (record %lld)", (long long)seq);
	t_ok(sql("INSERT INTO journal SELECT * FROM saved; DROP TABLE saved") == 0,
	     "record restored");

	/* 4. A checkpoint replaced by an older one. */
	cps = sql_int("SELECT max(id) FROM checkpoints");
	snprintf(
	    q, sizeof(q),
	    "CREATE TABLE saved AS SELECT * FROM checkpoints WHERE id = %lld;"
	    "UPDATE checkpoints SET note = (SELECT note FROM checkpoints WHERE id = 1), size = "
	    "(SELECT size FROM checkpoints WHERE id = 1) WHERE id = %lld",
	    (long long)cps, (long long)cps);
	t_ok(cps > 1 && sql(q) == 0, "checkpoint %lld replaced by checkpoint 1", (long long)cps);
	r = t_cimdd_audit(&cd, "b4", out, sizeof(out));
	t_ok(r == 1 && strstr(out, "FAIL checkpoints") &&
		 strstr(out, "an older checkpoint in a newer one's place"),
	     "audit verify names it");
	t_ok(sql("DELETE FROM checkpoints WHERE id IN (SELECT id FROM saved);"
		 "INSERT INTO checkpoints SELECT * FROM saved; DROP TABLE saved") == 0,
	     "checkpoint restored");

	/* 5. Published bytes changed after the fact. */
	t_ok(sql("CREATE TABLE saved AS SELECT * FROM publications WHERE id = (SELECT min(id) "
		 "FROM publications WHERE path LIKE '%/jwks.json')") == 0 &&
		 t_db_replace(cd.db, "publications", "bytes", "id = (SELECT id FROM saved)",
			      "\"sig\"", "\"enc\"") == 0,
	     "a published JWKS rewritten in the database");
	r = t_cimdd_audit(&cd, "b5", out, sizeof(out));
	t_ok(r == 1 && strstr(out, "FAIL publications") &&
		 strstr(out, "its bytes are not what journal record"),
	     "audit verify names it");
	t_ok(sql("DELETE FROM publications WHERE id IN (SELECT id FROM saved);"
		 "INSERT INTO publications SELECT * FROM saved; DROP TABLE saved") == 0,
	     "publication restored");

	r = t_cimdd_audit(&cd, "b6", out, sizeof(out));
	t_ok(r == 0, "restored: every check holds again");

	/* The bundle's own keys prove nothing: only the keys the auditor pinned. */
	r = ctl(out, sizeof(out), "audit verify %s/b6", cd.dir);
	t_ok(r == 2 && strstr(out, "--trust is required"), "audit verify without --trust: usage");
	t_sh("openssl ecparam -name prime256v1 -genkey -noout -out %s/other.pem 2>/dev/null && "
	     "node -e \"const c=require('crypto');const k=c.createPublicKey(require('fs')."
	     "readFileSync('%s/other.pem')).export({format:'jwk'});console.log(JSON.stringify("
	     "{keys:[k]}))\" > %s/other.json",
	     cd.dir, cd.dir, cd.dir);
	r = ctl(out, sizeof(out), "audit verify %s/b6 --trust %s/other.json", cd.dir, cd.dir);
	t_ok(r == 1 && strstr(out, "FAIL checkpoints") &&
		 strstr(out, "no signature by a trusted key"),
	     "with another key pinned, the first checkpoint is refused");
	/* A checkpoint the auditor saved: the bundle must extend it. */
	r = ctl(out, sizeof(out), "audit verify %s/b6 --trust %s/ak.json --checkpoint %s/cp0",
		cd.dir, cd.dir, cd.dir);
	t_ok(r == 0 && strstr(out, "ok   saved"), "a checkpoint saved at start is a prefix of it");
	{
		char jti[64];
		int64_t n = sql_int("SELECT count(*) FROM checkpoints");

		char before[4096] = "", later[4096] = "";
		double t0;

		t_cimdd_get(&cd, "/.well-known/cimdd/checkpoint", before, sizeof(before));
		assertion(jti);
		wait_checkpoints(n, 4000);
		/* Committed is not yet served: the publisher gets it at the main
		 * loop's next turn. */
		for (t0 = t_now_ms(); t_now_ms() - t0 < 5000; usleep(50000))
			if (t_cimdd_get(&cd, "/.well-known/cimdd/checkpoint", later,
					sizeof(later)) == 0 &&
			    later[0] != '\0' && strcmp(later, before) != 0)
				break;
		t_cimdd_fetch(&cd, "/.well-known/cimdd/checkpoint", "cp-later");
	}
	r = ctl(out, sizeof(out), "audit verify %s/b6 --trust %s/ak.json --checkpoint %s/cp-later",
		cd.dir, cd.dir, cd.dir);
	t_ok(r == 1 && strstr(out, "FAIL saved") && strstr(out, "older than what you saw"),
	     "an older bundle against a later saved checkpoint is refused: %s",
	     strstr(out, "FAIL") ?: out);
	/* A publication hidden behind a copy of another; an attestation dropped. */
	t_sh("cd %s && cp -r b6 b7 && head -1 b7/publications.jsonl > b7/p && "
	     "tail -n +2 b7/publications.jsonl | sed '1d' > b7/rest && "
	     "(head -1 b7/publications.jsonl; head -1 b7/publications.jsonl; cat b7/rest) > "
	     "b7/publications.jsonl.new && mv b7/publications.jsonl.new b7/publications.jsonl",
	     cd.dir);
	r = ctl(out, sizeof(out), "audit verify %s/b7 --trust %s/ak.json", cd.dir, cd.dir);
	t_ok(r == 1 && strstr(out, "FAIL publications") && strstr(out, "repeated or out of order"),
	     "a publication replaced by a copy of another is named");
	t_sh("cd %s && cp -r b6 b8 && sed -i '$d' b8/attestations.jsonl", cd.dir);
	r = ctl(out, sizeof(out), "audit verify %s/b8 --trust %s/ak.json", cd.dir, cd.dir);
	t_ok(r == 1 && strstr(out, "FAIL attestations") && strstr(out, "attest.issue records"),
	     "an attestation left out is named");
	r = ctl(out, sizeof(out), "audit export %s/b6", cd.dir);
	t_ok(r == 1 && strstr(out, "does not exist yet"), "export refuses an existing directory");
	test_bundle_fields();
}

/* A key rotation shows in the JWKS publications the verifier replays. */
static void test_rotation_replayed(void)
{
	char out[16384];
	int r;

	r = ctl(out, sizeof(out), "key rotate agent-a");
	t_ok(r == 0, "key rotated");
	usleep(1500 * 1000);
	r = t_cimdd_audit(&cd, "rot", out, sizeof(out));
	t_ok(r == 0 &&
		 sql_int("SELECT count(*) FROM publications WHERE path LIKE '%/jwks.json'") >= 2,
	     "a second JWKS version, matched against the key states replayed to it");
}

/* A rollback.accepted record with the TPM's counter ahead of the database's:
 * counted into *arg. */
static int counters_ahead(void *arg, json_t *rec)
{
	json_t *t = json_object_get(rec, "tpm_counter"),
	       *d = json_object_get(rec, "database_counter");

	if (json_is_integer(t) && json_is_integer(d) &&
	    json_integer_value(t) > json_integer_value(d))
		(*(int64_t *)arg)++;
	return 0;
}

/* TPM: a database restored from an older copy is refused at start. */
static void test_rollback(void)
{
	char out[4096], jti[64];
	int64_t n, ahead = 0;
	int r;

	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stopped");
	t_ok(t_db_save(cd.db, "old") == 0, "the database copied (a backup)");
	r = t_daemon_start(&cd.dm);
	t_ok(r == 0, "cimdd started again on it");
	n = sql_int("SELECT count(*) FROM checkpoints");
	t_ok(assertion_soon(jti) == CIMD_OK, "an assertion after the start");
	t_ok(wait_checkpoints(n, 4000) > n, "a newer checkpoint, with the counter advanced");
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stopped");
	t_ok(t_db_restore(cd.db, "old") == 0, "the copy restored");
	r = t_daemon_start(&cd.dm);
	t_ok(r == -ECHILD, "on the restored old database cimdd refuses to start (%s)",
	     cimd_strerror(r));
	t_ok(t_log_count(&cd.dm, "rollback: the state database's latest checkpoint") >= 1,
	     "and says why: a rollback, with both counters");
	t_sh_out(out, sizeof(out), "grep rollback %s | tail -1", cd.dm.log);
	t_ok(strstr(out, "restored from a backup") != NULL, "%s", out);
	/* The checkpoints table is an unsigned copy: editing it changes nothing. */
	t_ok(sql("UPDATE checkpoints SET counter = 999999; DELETE FROM checkpoints WHERE id > 1") ==
		 0,
	     "the old database's checkpoints table edited (counter raised, rows deleted)");
	r = t_daemon_start(&cd.dm);
	t_ok(r == -ECHILD && t_log_count(&cd.dm, "rollback: the state database") >= 2,
	     "still refused: the counter is read from the signed note of the journal's "
	     "latest checkpoint record");
	/* The operator's explicit override: run on it, and say so in the journal. */
	cd.dm.arg = "--accept-rollback";
	r = t_daemon_start(&cd.dm);
	cd.dm.arg = NULL;
	t_ok(r == 0, "with --accept-rollback it starts on the old database");
	t_ok(t_db_journal_each(cd.db, "rollback.accepted", counters_ahead, &ahead) == 1 &&
		 ahead == 1,
	     "the acceptance is journaled with both counters");
	n = sql_int("SELECT count(*) FROM checkpoints");
	t_ok(assertion_soon(jti) == CIMD_OK, "an assertion after the start");
	t_ok(wait_checkpoints(n, 4000) > n, "checkpoints go on from the TPM's counter");
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stopped");
	r = t_daemon_start(&cd.dm);
	t_ok(r == 0, "and it starts again without the override: the database caught up");
}

static void suite(int tpm_mode)
{
	int rc;

	on_tpm = tpm_mode;
	t_set_prefix(on_tpm ? "tpm2: " : "pkcs11: ");
	if (on_tpm && !t_ok(t_swtpm_start(&tpm) == 0, "swtpm started"))
		return;
	rc = t_cimdd_start(&cd, on_tpm ? "tpm2" : "pkcs11", on_tpm ? tpm.conf : hsm.conf,
			   "checkpoint_interval = 1\njwks_max_age = 1\ncimd_max_age = 1\n");
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc))) {
		t_sh("cat %s", cd.dm.log);
		return;
	}
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", cd.base);
	if (!t_ok(t_cimdd_client(&cd, "agent-a", "https://as.example.com") == 0,
		  "client agent-a added and approved"))
		return;
	test_checkpoint_served();
	test_interval();
	test_proofs();
	test_receipts();
	test_beyond_base();
	test_rotation_replayed();
	test_audit();
	if (on_tpm)
		test_rollback();
	rc = t_daemon_stop(&cd.dm, SIGTERM);
	t_ok(rc == 0, "cimdd stops cleanly");
	if (rc != 0 || getenv("CIMD_TEST_VERBOSE"))
		t_sh("cat %s", cd.dm.log);
	if (on_tpm)
		t_swtpm_kill(&tpm);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (!t_ok(t_softhsm_init(&hsm, "tlog", "654321") == 0, "SoftHSM2 token"))
		return t_done();
	suite(0);
	suite(1);
	return t_done();
}
