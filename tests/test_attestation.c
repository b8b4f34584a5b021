/*
 * test_attestation.c — attestations end to end, on SoftHSM2 and on swtpm: a real
 * cimdd and its publisher over TLS; the served attestation checked by cimdctl
 * attest verify, by an independent DSSE verifier in node (tests/interop/
 * dsse-verify.mjs) and by the openssl CLI over the rebuilt PAE; tampering with
 * each part named by the check that catches it; rotation, revocation records and
 * attestation key rotation.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;
static struct t_swtpm tpm;
static char dir[400], base[64], ca[600], ctl_bin[700];
static int on_tpm;

#define ctl(out, len, ...) t_cimdd_ctl(&cd, out, len, __VA_ARGS__)

/* Waits until path is served and contains needle (or, needle NULL, differs
 * from the bytes in dir/prev); 1 when it happened within ms. */
static int wait_served(const char *path, const char *file, const char *needle, double ms)
{
	char p[700], *buf;
	double t0 = t_now_ms();
	FILE *f;
	long n;
	int found;

	snprintf(p, sizeof(p), "%s/%s", dir, file);
	while (t_now_ms() - t0 < ms) {
		if (t_cimdd_fetch(&cd, path, file) == 200 && (f = fopen(p, "r")) != NULL) {
			buf = calloc(1, 1 << 20);
			n = buf ? (long)fread(buf, 1, (1 << 20) - 1, f) : 0;
			fclose(f);
			found = n > 0 && (needle == NULL || strstr(buf, needle) != NULL);
			free(buf);
			if (found)
				return 1;
		}
		usleep(100 * 1000);
	}
	return 0;
}

/* cimdctl attest verify on dir files; its exit status and output. */
static int verify(char *out, size_t len, const char *env, const char *trust, const char *doc,
		  const char *jwks)
{
	char extra[1600] = "";

	if (doc != NULL)
		snprintf(extra, sizeof(extra), " --document %s/%s", dir, doc);
	if (jwks != NULL)
		snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), " --jwks %s/%s", dir,
			 jwks);
	return t_sh_out(out, len, "%s attest verify %s/%s --trust %s/%s%s", ctl_bin, dir, env, dir,
			trust, extra);
}

static json_t *load(const char *file)
{
	char p[700];

	snprintf(p, sizeof(p), "%s/%s", dir, file);
	return json_load_file(p, 0, NULL);
}

static void save(const char *file, const json_t *j)
{
	char p[700];

	snprintf(p, sizeof(p), "%s/%s", dir, file);
	json_dump_file(j, p, JSON_COMPACT);
}

/* Flips one byte of a file (at offset from the middle). */
static void flip_file(const char *from, const char *to)
{
	char a[700], b[700], *buf = NULL;
	size_t n = 0;
	FILE *f;

	snprintf(a, sizeof(a), "%s/%s", dir, from);
	snprintf(b, sizeof(b), "%s/%s", dir, to);
	if ((f = fopen(a, "rb")) != NULL) {
		buf = malloc(1 << 20);
		n = buf ? fread(buf, 1, 1 << 20, f) : 0;
		fclose(f);
	}
	if (n > 0) {
		buf[n / 2] = buf[n / 2] == 'A' ? 'B' : 'A';
		t_write_file(b, buf, n);
	}
	free(buf);
}

/* The statement inside an envelope. */
static json_t *statement_of(const json_t *env)
{
	const char *p = json_string_value(json_object_get(env, "payload"));
	uint8_t *body = NULL;
	size_t n = 0;
	json_t *st = NULL;

	if (p != NULL && b64_decode(p, strlen(p), &body, &n) == 0)
		st = json_loadb((const char *)body, n, 0, NULL);
	free(body);
	return st;
}

/* The openssl CLI checks the DSSE signature over a PAE built here from the
 * protocol text, with the attestation key's public key from the JWKS. */
static int openssl_check(const char *env_file, const char *trust_file)
{
	json_t *env = load(env_file), *trust = load(trust_file), *sig0, *k;
	const char *type, *payload, *sig, *kid;
	uint8_t *body = NULL, *der = NULL;
	size_t n = 0, dn = 0, i;
	char p[700], hdr[256];
	EVP_PKEY *pk = NULL;
	FILE *f;
	int rc = -1;

	type = json_string_value(json_object_get(env, "payloadType"));
	payload = json_string_value(json_object_get(env, "payload"));
	sig0 = json_array_get(json_object_get(env, "signatures"), 0);
	sig = json_string_value(json_object_get(sig0, "sig"));
	kid = json_string_value(json_object_get(sig0, "keyid"));
	if (!type || !payload || !sig || !kid || b64_decode(payload, strlen(payload), &body, &n) ||
	    b64_decode(sig, strlen(sig), &der, &dn))
		goto out;
	snprintf(p, sizeof(p), "%s/pae.bin", dir);
	if ((f = fopen(p, "wb")) == NULL)
		goto out;
	snprintf(hdr, sizeof(hdr), "DSSEv1 %zu %s %zu ", strlen(type), type, n);
	fwrite(hdr, 1, strlen(hdr), f);
	fwrite(body, 1, n, f);
	fclose(f);
	snprintf(p, sizeof(p), "%s/sig.der", dir);
	t_write_file(p, der, dn);
	json_array_foreach(json_object_get(trust, "keys"), i,
			   k) if (strcmp(json_string_value(json_object_get(k, "kid")), kid) == 0 &&
				  jwk_to_evp(k, &pk) == 0) break;
	snprintf(p, sizeof(p), "%s/ak.pem", dir);
	if (pk == NULL || (f = fopen(p, "w")) == NULL)
		goto out;
	PEM_write_PUBKEY(f, pk);
	fclose(f);
	rc = t_sh("openssl dgst -sha256 -verify %s/ak.pem -signature %s/sig.der %s/pae.bin | grep "
		  "-q 'Verified OK'",
		  dir, dir, dir);
out:
	EVP_PKEY_free(pk);
	free(body);
	free(der);
	json_decref(env);
	json_decref(trust);
	return rc;
}

/* Re-signs a (tampered) statement with a test key that the verifier is told to
 * trust besides the appliance's keys: the DSSE signature then holds, and what
 * must catch the tampering is the check of the part that was changed. */
static struct key_store *tks;
static struct ks_key *tkey;

static void resign(json_t *st, const char *env_file, const char *trust_file)
{
	json_t *env = NULL, *trust = load("ak.json"), *jwk;
	char *body, err[256];

	/* The test's own key, on the SoftHSM2 token (another process may use a
	 * token the daemon uses), made after the daemon's start-up reconciliation. */
	if (tks == NULL && (key_store_open(hsm.conf, &tks, err, sizeof(err)) < 0 ||
			    key_store_generate(tks, CIMD_ALG_ES256, NULL, &tkey) < 0)) {
		printf("# test key: %s\n", err);
		json_decref(trust);
		return;
	}
	jwk = ks_key_jwk(tkey);

	json_object_set_new(json_object_get(json_object_get(st, "predicate"), "appliance"),
			    "attestation_key", json_string(ks_key_kid(tkey)));
	body = json_dumps(st, JSON_COMPACT);
	if (body != NULL && dsse_sign(tks, tkey, "application/vnd.in-toto+json",
				      (const uint8_t *)body, strlen(body), &env) == 0)
		save(env_file, env);
	json_array_append(json_object_get(trust, "keys"), jwk);
	save(trust_file, trust);
	free(body);
	json_decref(env);
	json_decref(trust);
	json_decref(jwk);
}

/* Changes one byte of a base64url member of the first key's evidence. */
static void tamper_evidence(json_t *st, const char *member, size_t at)
{
	json_t *ev = json_object_get(
	    json_array_get(json_object_get(json_object_get(st, "predicate"), "keys"), 0),
	    "evidence");
	const char *v = json_string_value(json_object_get(ev, member));
	uint8_t *raw = NULL;
	size_t n = 0;
	char *enc = NULL;

	if (v == NULL || b64url_decode(v, strlen(v), &raw, &n) < 0 || n == 0)
		return;
	raw[at < n ? at : n - 1] ^= 0x01;
	if (b64url_encode_alloc(raw, n, &enc) == 0)
		json_object_set_new(ev, member, json_string(enc));
	free(raw);
	free(enc);
}

static void test_served(void)
{
	char out[16384], path[700];
	json_t *env, *st, *t;
	int rc;

	t_ok(wait_served("/clients/agent-a/attestation.json", "att.json", NULL, 8000),
	     "the attestation is served once the document is approved");
	t_ok(t_cimdd_fetch(&cd, "/.well-known/cimdd/attestation-keys.json", "ak.json") == 200 &&
		 t_cimdd_fetch(&cd, "/clients/agent-a", "doc.json") == 200 &&
		 t_cimdd_fetch(&cd, "/clients/agent-a/jwks.json", "jwks.json") == 200,
	     "attestation-keys.json, the document and the JWKS are served beside it");
	t = load("ak.json");
	t_ok(json_array_size(json_object_get(t, "keys")) == 1 &&
		 (json_object_get(json_array_get(json_object_get(t, "keys"), 0), "tpm2_public") !=
		  NULL) == on_tpm,
	     "one attestation key%s", on_tpm ? ", with its TPMT_PUBLIC" : "");
	json_decref(t);
	rc = verify(out, sizeof(out), "att.json", "ak.json", "doc.json", "jwks.json");
	t_ok(rc == 0 && strstr(out, "verified: every check held") && !strstr(out, "FAIL"),
	     "cimdctl attest verify: every check holds");
	t_ok(strstr(out, on_tpm ? "TPM2_Certify signed by the AK"
				: "CKA_NEVER_EXTRACTABLE is true") != NULL,
	     "with the %s evidence checked", on_tpm ? "TPM2_Certify" : "PKCS#11 attribute");
	if (rc != 0)
		printf("# %s\n", out);
	rc = t_sh_out(out, sizeof(out),
		      "node tests/interop/dsse-verify.mjs %s/att.json %s/ak.json %s/doc.json "
		      "%s/jwks.json",
		      dir, dir, dir, dir);
	t_ok(rc == 0 && strstr(out, "ok https://cimdd.dev/attestation/custody/v1"),
	     "an independent DSSE verifier (node crypto, from the protocol text) agrees, subjects "
	     "included: %s",
	     out);
	t_ok(openssl_check("att.json", "ak.json") == 0,
	     "the openssl CLI verifies the DER signature over the rebuilt PAE");
	env = load("att.json");
	st = statement_of(env);
	t_ok(
	    st != NULL &&
		strcmp(json_string_value(json_object_get(
			   json_object_get(json_object_get(st, "predicate"), "document"), "owner")),
		       "team-a") == 0 &&
		json_integer_value(json_object_get(
		    json_object_get(json_object_get(st, "predicate"), "journal"), "seq")) > 0,
	    "the statement names the owner and the journal head it was issued at");
	json_decref(st);
	json_decref(env);
	ctl(out, sizeof(out), "attest show agent-a");
	t_ok(strstr(out, "attestation of agent-a") && strstr(out, "\"predicateType\""),
	     "cimdctl attest show prints the statement");
	ctl(out, sizeof(out), "journal show");
	t_ok(strstr(out, "attest.issue") && strstr(out, "attest.key"),
	     "issuing and the attestation key are journaled");
	(void)path;
}

static void test_tampering(void)
{
	char out[16384];
	json_t *env, *st;
	int rc;

	flip_file("doc.json", "doc-x.json");
	rc = verify(out, sizeof(out), "att.json", "ak.json", "doc-x.json", "jwks.json");
	t_ok(rc == 1 && strstr(out, "FAIL document"), "a byte of the document: FAIL document");
	flip_file("jwks.json", "jwks-x.json");
	rc = verify(out, sizeof(out), "att.json", "ak.json", "doc.json", "jwks-x.json");
	t_ok(rc == 1 && strstr(out, "FAIL jwks"), "a byte of the JWKS: FAIL jwks");
	/* The payload: one character of its base64. */
	env = load("att.json");
	{
		char *p = strdup(json_string_value(json_object_get(env, "payload")));
		size_t n = strlen(p);

		p[n / 2] = p[n / 2] == 'A' ? 'B' : 'A';
		json_object_set_new(env, "payload", json_string(p));
		free(p);
		save("att-x.json", env);
	}
	json_decref(env);
	rc = verify(out, sizeof(out), "att-x.json", "ak.json", NULL, NULL);
	t_ok(rc == 1 && strstr(out, "FAIL signature"), "a byte of the payload: FAIL signature");
	env = load("att.json");
	{
		json_t *s0 = json_array_get(json_object_get(env, "signatures"), 0);
		char *p = strdup(json_string_value(json_object_get(s0, "sig")));

		p[10] = p[10] == 'A' ? 'B' : 'A';
		json_object_set_new(s0, "sig", json_string(p));
		free(p);
		save("att-x.json", env);
	}
	json_decref(env);
	rc = verify(out, sizeof(out), "att-x.json", "ak.json", NULL, NULL);
	t_ok(rc == 1 && strstr(out, "FAIL signature"), "a byte of the signature: FAIL signature");
	rc = verify(out, sizeof(out), "att.json", "jwks.json", NULL, NULL);
	t_ok(rc == 1 && strstr(out, "FAIL signature"),
	     "a trust JWKS without the attestation key: FAIL signature");

	/* The evidence, under a signature that holds (see resign). */
	env = load("att.json");
	st = statement_of(env);
	resign(st, "att-r.json", "ak-r.json");
	rc = verify(out, sizeof(out), "att-r.json", "ak-r.json", "doc.json", "jwks.json");
	t_ok(rc == 0, "re-signed untouched by a trusted test key: verifies (the control)");
	json_decref(st);
	if (on_tpm) {
		st = statement_of(env);
		tamper_evidence(st, "attest", 40);
		resign(st, "att-r.json", "ak-r.json");
		rc = verify(out, sizeof(out), "att-r.json", "ak-r.json", NULL, NULL);
		t_ok(rc == 1 && strstr(out, "FAIL tpm2"), "a byte of the TPMS_ATTEST: FAIL tpm2");
		json_decref(st);
		st = statement_of(env);
		tamper_evidence(st, "public", 30);
		resign(st, "att-r.json", "ak-r.json");
		rc = verify(out, sizeof(out), "att-r.json", "ak-r.json", NULL, NULL);
		t_ok(rc == 1 && strstr(out, "FAIL tpm2"), "a byte of the TPMT_PUBLIC: FAIL tpm2");
		json_decref(st);
		/* extraData: the TPM bound the key to this client and document; the
		 * same evidence under another client_id does not hold. */
		st = statement_of(env);
		json_object_set_new(json_object_get(st, "predicate"), "client_id",
				    json_string("https://evil.example/clients/agent-a"));
		json_object_set_new(json_array_get(json_object_get(st, "subject"), 0), "name",
				    json_string("https://evil.example/clients/agent-a"));
		resign(st, "att-r.json", "ak-r.json");
		rc = verify(out, sizeof(out), "att-r.json", "ak-r.json", NULL, NULL);
		t_ok(rc == 1 && strstr(out, "FAIL tpm2") && strstr(out, "xtra"),
		     "the evidence replayed for another client: FAIL tpm2, extraData");
		if (!(rc == 1 && strstr(out, "xtra")))
			printf("# %s\n", out);
		json_decref(st);
	} else {
		st = statement_of(env);
		json_object_set_new(
		    json_object_get(
			json_object_get(
			    json_array_get(
				json_object_get(json_object_get(st, "predicate"), "keys"), 0),
			    "evidence"),
			"attributes"),
		    "CKA_EXTRACTABLE", json_true());
		resign(st, "att-r.json", "ak-r.json");
		rc = verify(out, sizeof(out), "att-r.json", "ak-r.json", NULL, NULL);
		t_ok(rc == 1 && strstr(out, "FAIL pkcs11") && strstr(out, "CKA_EXTRACTABLE"),
		     "an extractable key: FAIL pkcs11 CKA_EXTRACTABLE");
		json_decref(st);
	}
	json_decref(env);
}

static void test_lifecycle(void)
{
	char out[16384], kid[64] = "", *p;
	json_t *t, *r, *env;
	int rc, i;

	/* Rotation: the next key joins the JWKS, and the attestation names it. */
	ctl(out, sizeof(out), "key rotate agent-a");
	if ((p = strstr(out, "key ")) != NULL)
		sscanf(p + 4, "%63s", kid);
	t_ok(kid[0] && wait_served("/clients/agent-a/attestation.json", "att2.json", NULL, 100) &&
		 wait_served("/clients/agent-a/jwks.json", "jwks.json", kid, 5000),
	     "after a rotation the JWKS has the next key %s", kid);
	for (i = 0, rc = 1; i < 50 && rc != 0; i++) {
		t_cimdd_fetch(&cd, "/clients/agent-a/attestation.json", "att2.json");
		t_cimdd_fetch(&cd, "/clients/agent-a/jwks.json", "jwks.json");
		t_cimdd_fetch(&cd, "/clients/agent-a", "doc.json");
		rc = verify(out, sizeof(out), "att2.json", "ak.json", "doc.json", "jwks.json");
		if (rc != 0)
			usleep(100 * 1000);
	}
	t_ok(rc == 0 && strstr(out, kid) != NULL,
	     "and the served attestation names it and verifies against the served bytes");

	/* Revocation with a replacement: a signed record, served. */
	ctl(out, sizeof(out), "key list agent-a");
	rc = ctl(out, sizeof(out), "key revoke agent-a %s --reason 'test: suspected leak'", kid);
	t_ok(rc == 0 && wait_served("/clients/agent-a/revocations.json", "rev.json",
				    "{\"revocations\":[{", 5000),
	     "a revocation is served in revocations.json");
	r = load("rev.json");
	env = json_array_get(json_object_get(r, "revocations"), 0);
	save("rev0.json", env);
	json_decref(r);
	rc = verify(out, sizeof(out), "rev0.json", "ak.json", NULL, NULL);
	t_ok(rc == 0 && strstr(out, "revoked by alice: test: suspected leak") && strstr(out, kid),
	     "the revocation record verifies and names the key, operator and reason");
	rc = t_sh_out(out, sizeof(out),
		      "node tests/interop/dsse-verify.mjs %s/rev0.json %s/ak.json", dir, dir);
	t_ok(rc == 0 && strstr(out, "revocation/v1"), "and the independent verifier agrees");
	for (i = 0, rc = 1; i < 50 && rc != 0; i++) {
		t_cimdd_fetch(&cd, "/clients/agent-a/attestation.json", "att3.json");
		t_cimdd_fetch(&cd, "/clients/agent-a/jwks.json", "jwks.json");
		rc = verify(out, sizeof(out), "att3.json", "ak.json", "doc.json", "jwks.json");
		if (rc != 0 || strstr(out, kid) != NULL)
			rc = 1, usleep(100 * 1000);
	}
	t_ok(rc == 0, "the attestation after the revocation no longer names the revoked key");

	/* A new attestation key: everything is issued again with it; the old key
	 * stays published until then, and leaves after. */
	t = load("ak.json");
	snprintf(kid, sizeof(kid), "%s",
		 json_string_value(
		     json_object_get(json_array_get(json_object_get(t, "keys"), 0), "kid")));
	json_decref(t);
	rc = ctl(out, sizeof(out), "attest-key rotate");
	t_ok(rc == 0 && strstr(out, "is now active"), "cimdctl attest-key rotate");
	for (i = 0, rc = 1; i < 80 && rc != 0; i++) {
		usleep(100 * 1000);
		t_cimdd_fetch(&cd, "/.well-known/cimdd/attestation-keys.json", "ak2.json");
		t_cimdd_fetch(&cd, "/clients/agent-a/attestation.json", "att4.json");
		t_cimdd_fetch(&cd, "/clients/agent-a/revocations.json", "rev2.json");
		r = load("rev2.json");
		save("rev1.json", json_array_get(json_object_get(r, "revocations"), 0));
		json_decref(r);
		t = load("ak2.json");
		rc = json_array_size(json_object_get(t, "keys")) == 1 &&
			     strcmp(json_string_value(json_object_get(
					json_array_get(json_object_get(t, "keys"), 0), "kid")),
				    kid) != 0 &&
			     verify(out, sizeof(out), "att4.json", "ak2.json", NULL, NULL) == 0 &&
			     verify(out, sizeof(out), "rev1.json", "ak2.json", NULL, NULL) == 0
			 ? 0
			 : 1;
		json_decref(t);
	}
	t_ok(rc == 0,
	     "the attestation and the revocation record are issued again with the new key, and "
	     "the old key leaves attestation-keys.json");
	rc = verify(out, sizeof(out), "att4.json", "ak.json", NULL, NULL);
	t_ok(rc == 1 && strstr(out, "FAIL signature"),
	     "the new attestation does not verify against the old trust JWKS alone");
	t_ok(ctl(out, sizeof(out), "journal verify") == 0, "the journal verifies");
}

static void suite(int tpm_mode)
{
	int rc;

	on_tpm = tpm_mode;
	t_set_prefix(on_tpm ? "tpm2: " : "pkcs11: ");
	if (on_tpm && !t_ok(t_swtpm_start(&tpm) == 0, "swtpm started"))
		return;
	rc = t_cimdd_start(&cd, on_tpm ? "tpm2" : "pkcs11", on_tpm ? tpm.conf : hsm.conf,
			   "jwks_max_age = 1\ncimd_max_age = 1\nassertion_max_ttl = 1\n"
			   "assertion_default_ttl = 1\nclock_skew = 0\ndestroy_delay = 1\n");
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc))) {
		t_sh("cat %s", cd.dm.log);
		return;
	}
	snprintf(dir, sizeof(dir), "%s", cd.dir);
	snprintf(base, sizeof(base), "%s", cd.base);
	snprintf(ca, sizeof(ca), "%s", cd.ca);
	snprintf(ctl_bin, sizeof(ctl_bin), "%s", cd.ctl);
	if (!t_ok(t_cimdd_client(&cd, "agent-a", "https://as.example.com") == 0,
		  "client agent-a added and approved"))
		return;
	test_served();
	test_tampering();
	test_lifecycle();
	rc = t_daemon_stop(&cd.dm, SIGTERM);
	t_ok(rc == 0, "cimdd stops cleanly");
	if (rc != 0 || getenv("CIMD_TEST_VERBOSE"))
		t_sh("cat %s", cd.dm.log);
	if (on_tpm)
		t_swtpm_kill(&tpm);
}

int main(void)
{
	char src[700];

	signal(SIGPIPE, SIG_IGN);
	snprintf(ctl_bin, sizeof(ctl_bin), "%s", t_bin("cimdctl", src, sizeof(src)));
	if (!t_ok(t_softhsm_init(&hsm, "attest", "654321") == 0, "SoftHSM2 token"))
		return t_done();
	suite(0);
	suite(1);
	key_store_destroy(tks, &tkey);
	key_store_free(&tks);
	return t_done();
}
