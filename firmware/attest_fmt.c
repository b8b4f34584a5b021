/*
 * attest_fmt.c — the parts of the attestation format (docs/attestation.md)
 * that the issuer (service/attest.c) and the verifier (cimdctl attest verify)
 * must compute identically.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "fmt.h"

#define BINDING_LABEL "cimdd certify binding v1"

/*
 * qualifyingData of the TPM2_Certify of a client key: SHA-256 over
 *   "cimdd certify binding v1" 0x00 client_id 0x00 cimd_sha256_hex 0x00 kid
 * so that the TPM's signed TPMS_ATTEST names this client, this exact document
 * and this key, and cannot be replayed into another attestation.
 */
int attest_binding(const char *client_id, const char *cimd_hex, const char *kid, uint8_t ret[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int ok;

	ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(c, BINDING_LABEL, sizeof(BINDING_LABEL)) == 1 && /* with NUL */
	     EVP_DigestUpdate(c, client_id, strlen(client_id) + 1) == 1 &&
	     EVP_DigestUpdate(c, cimd_hex, strlen(cimd_hex) + 1) == 1 &&
	     EVP_DigestUpdate(c, kid, strlen(kid)) == 1 && EVP_DigestFinal_ex(c, ret, NULL) == 1;
	EVP_MD_CTX_free(c);
	return ok ? 0 : -CIMD_ECRYPTO;
}

/* ---- verification (cimdctl attest verify) ---- */

struct vctx {
	attest_report_fn report;
	void *arg;
	int failed;
	json_t *attested; /* kid -> the node whose statement attests it (a set) */
};

static int check(struct vctx *v, int ok, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int check(struct vctx *v, int ok, const char *what, const char *fmt, ...)
{
	char detail[640];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	v->report(v->arg, ok, what, detail);
	if (!ok)
		v->failed = 1;
	return ok;
}

static void sha256_hex(const uint8_t *p, size_t n, char out[65])
{
	uint8_t md[32];
	unsigned int l = 0;

	if (EVP_Digest(p, n, md, &l, EVP_sha256(), NULL) != 1 || l != 32)
		memset(md, 0, sizeof(md));
	hex_encode(md, sizeof(md), out);
}

static const char *str(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s != NULL ? s : "";
}

static const json_t *jwks_find(const json_t *jwks, const char *kid)
{
	const json_t *k;
	size_t i;

	json_array_foreach(json_object_get(jwks, "keys"), i,
			   k) if (strcmp(str(k, "kid"), kid) == 0) return k;
	return NULL;
}

static int b64u(const json_t *o, const char *k, uint8_t **ret, size_t *ret_len)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s != NULL ? b64url_decode(s, strlen(s), ret, ret_len) : -EINVAL;
}

/* The TPM evidence of one key: the AK that certified it is a restricted TPM key
 * of the trust JWKS; TPM2_Certify holds (tpm2_verify_certify); the certified
 * public key's RFC 7638 thumbprint is the kid. */
static void verify_tpm2(struct vctx *v, const json_t *ev, const json_t *trust,
			const char *client_id, const char *cimd_hex, const char *kid)
{
	uint8_t *att = NULL, *sig = NULL, *pub = NULL, *akpub = NULL, bind[32];
	size_t att_len, sig_len, pub_len, akpub_len;
	const json_t *ak = jwks_find(trust, str(ev, "signer"));
	json_t *key_jwk = NULL, *ak_from_tpm = NULL;
	char tp[CIMD_KID_LEN + 1], aktp[CIMD_KID_LEN + 1], err[256], what[96];
	int restricted = 0;

	snprintf(what, sizeof(what), "tpm2");
	if (!check(v, ak != NULL, what, "key %s: certified by %s, a trusted attestation key", kid,
		   str(ev, "signer")))
		return;
	if (!check(v,
		   b64u(ak, "tpm2_public", &akpub, &akpub_len) == 0 &&
		       tpm2_public_jwk(akpub, akpub_len, &ak_from_tpm, &restricted) == 0 &&
		       jwk_thumbprint(ak_from_tpm, aktp) == 0 &&
		       strcmp(aktp, str(ak, "kid")) == 0 && restricted,
		   what, "key %s: the attestation key %s is a restricted TPM key (its TPMT_PUBLIC)",
		   kid, str(ak, "kid")))
		goto out;
	if (!check(v,
		   b64u(ev, "attest", &att, &att_len) == 0 &&
		       b64u(ev, "signature", &sig, &sig_len) == 0 &&
		       b64u(ev, "public", &pub, &pub_len) == 0,
		   what, "key %s: attest, signature and public are base64url", kid))
		goto out;
	if (!check(v,
		   tpm2_public_jwk(pub, pub_len, &key_jwk, &restricted) == 0 &&
		       jwk_thumbprint(key_jwk, tp) == 0 && strcmp(tp, kid) == 0,
		   what, "key %s: the certified TPMT_PUBLIC is this key (its thumbprint)", kid))
		goto out;
	if (attest_binding(client_id, cimd_hex, kid, bind) < 0)
		goto out;
	err[0] = '\0';
	check(v,
	      tpm2_verify_certify(att, att_len, sig, sig_len, ak, pub, pub_len, key_jwk, bind,
				  sizeof(bind), err, sizeof(err)) == 0,
	      what, "key %s: %s", kid,
	      err[0] ? err
		     : "TPM2_Certify signed by the AK, of this TPMT_PUBLIC's name, fixedTPM, "
		       "fixedParent, sensitiveDataOrigin, not restricted, extraData = the binding "
		       "of client, document and kid");
out:
	json_decref(key_jwk);
	json_decref(ak_from_tpm);
	free(att);
	free(sig);
	free(pub);
	free(akpub);
}

/* PKCS#11: the token's own account, checked for what a hardware key must be. */
static void verify_pkcs11(struct vctx *v, const json_t *ev, const char *kid)
{
	static const struct {
		const char *attr;
		int want;
	} want[] = {
	    {"CKA_SENSITIVE", 1},   {"CKA_ALWAYS_SENSITIVE", 1},
	    {"CKA_EXTRACTABLE", 0}, {"CKA_NEVER_EXTRACTABLE", 1},
	    {"CKA_LOCAL", 1},
	};
	const json_t *a = json_object_get(ev, "attributes"), *t = json_object_get(ev, "token");
	char what[96];
	size_t i;

	snprintf(what, sizeof(what), "pkcs11");
	check(v, json_is_true(json_object_get(ev, "self_reported")), what,
	      "key %s: marked self-reported (the token's word, not a proof)", kid);
	check(v, json_is_object(t) && *str(t, "manufacturer") && *str(t, "serial"), what,
	      "key %s: token %s %s serial %s label %s", kid, str(t, "manufacturer"),
	      str(t, "model"), str(t, "serial"), str(t, "label"));
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		json_t *x = json_object_get(a, want[i].attr);

		check(v, json_is_boolean(x) && json_is_true(x) == want[i].want, what,
		      "key %s: %s is %s", kid, want[i].attr, want[i].want ? "true" : "false");
	}
}

static void verify_custody(struct vctx *v, const json_t *st, const json_t *trust,
			   const uint8_t *doc, size_t doc_len, const uint8_t *jwks, size_t jwks_len)
{
	const json_t *sub = json_object_get(st, "subject"), *p = json_object_get(st, "predicate");
	const json_t *s0 = json_array_get(sub, 0), *s1 = json_array_get(sub, 1), *keys, *k;
	const char *cimd_hex = str(json_object_get(s0, "digest"), "sha256");
	const char *jwks_hex = str(json_object_get(s1, "digest"), "sha256");
	const char *client_id = str(p, "client_id");
	char hex[65], tp[CIMD_KID_LEN + 1];
	json_t *given = NULL;
	size_t i;

	if (!check(v,
		   json_array_size(sub) == 2 && strcmp(str(s0, "name"), client_id) == 0 &&
		       strlen(cimd_hex) == 64 && strlen(jwks_hex) == 64 &&
		       strlen(str(s1, "name")) > 0,
		   "statement", "two subjects: the client_id %s and its jwks_uri, with SHA-256",
		   client_id))
		return;
	if (doc != NULL) {
		sha256_hex(doc, doc_len, hex);
		check(v, strcmp(hex, cimd_hex) == 0, "document",
		      "SHA-256 of the given document is the attested %s", cimd_hex);
	}
	keys = json_object_get(p, "keys");
	if (jwks != NULL) {
		sha256_hex(jwks, jwks_len, hex);
		check(v, strcmp(hex, jwks_hex) == 0, "jwks",
		      "SHA-256 of the given JWKS is the attested %s", jwks_hex);
		given = json_loadb((const char *)jwks, jwks_len, 0, NULL);
	}
	/* A node of a cluster attests the keys in its own hardware: its
	 * statement is one of a set (attest_verify_set), each key in the JWKS. */
	if (jwks != NULL && strcmp(str(p, "scope"), "node") == 0) {
		json_array_foreach(keys, i, k)
		{
			const json_t *g = NULL, *x;
			size_t j;

			json_array_foreach(json_object_get(given, "keys"), j,
					   x) if (strcmp(str(x, "kid"), str(k, "kid")) == 0) g = x;
			check(v,
			      g != NULL && jwk_thumbprint(g, tp) == 0 &&
				  strcmp(tp, str(k, "kid")) == 0 &&
				  strcmp(str(g, "alg"), str(k, "alg")) == 0,
			      "jwks",
			      "key %s of node %s is in the JWKS, with its thumbprint and alg",
			      str(k, "kid"), str(json_object_get(p, "appliance"), "node"));
			if (v->attested != NULL)
				json_object_set_new(
				    v->attested, str(k, "kid"),
				    json_string(str(json_object_get(p, "appliance"), "node")));
		}
	} else if (jwks != NULL) {
		check(v, json_array_size(json_object_get(given, "keys")) == json_array_size(keys),
		      "jwks", "the JWKS has the %zu attested keys", json_array_size(keys));
		json_array_foreach(json_object_get(given, "keys"), i, k)
		{
			const json_t *a = NULL, *x;
			size_t j;

			json_array_foreach(keys, j,
					   x) if (strcmp(str(x, "kid"), str(k, "kid")) == 0) a = x;
			check(v,
			      a != NULL && jwk_thumbprint(k, tp) == 0 &&
				  strcmp(tp, str(k, "kid")) == 0 &&
				  strcmp(str(a, "alg"), str(k, "alg")) == 0,
			      "jwks", "key %s is attested, with its RFC 7638 thumbprint and alg",
			      str(k, "kid"));
			if (a != NULL && v->attested != NULL)
				json_object_set_new(v->attested, str(k, "kid"), json_string(""));
		}
	}
	json_decref(given);
	json_array_foreach(keys, i, k)
	{
		const json_t *ev = json_object_get(k, "evidence");
		const char *type = str(ev, "type");

		if (!check(v, strcmp(str(k, "kid"), str(k, "thumbprint")) == 0, "keys",
			   "key %s: kid is its thumbprint, state %s, backend %s", str(k, "kid"),
			   str(k, "state"), str(k, "backend")))
			continue;
		if (strcmp(type, "tpm2-certify") == 0)
			verify_tpm2(v, ev, trust, client_id, cimd_hex, str(k, "kid"));
		else if (strcmp(type, "pkcs11-attributes") == 0)
			verify_pkcs11(v, ev, str(k, "kid"));
		else
			check(v, 0, "keys", "key %s: unknown evidence type '%s'", str(k, "kid"),
			      type);
	}
}

static void verify_revocation(struct vctx *v, const json_t *st)
{
	const json_t *s0 = json_array_get(json_object_get(st, "subject"), 0);
	const json_t *p = json_object_get(st, "predicate");
	const char *kid = str(p, "kid");
	uint8_t *tp = NULL;
	size_t tp_len = 0;
	char hex[65] = "";

	if (b64url_decode(kid, strlen(kid), &tp, &tp_len) == 0 && tp_len == 32)
		hex_encode(tp, tp_len, hex);
	free(tp);
	check(v,
	      hex[0] != '\0' && strcmp(str(json_object_get(s0, "digest"), "sha256"), hex) == 0 &&
		  strcmp(str(p, "thumbprint"), kid) == 0,
	      "revocation", "key %s of %s revoked by %s: %s", kid, str(p, "client_id"),
	      str(p, "operator"), str(p, "reason"));
}

/* One envelope (env, owned by the caller) into v. */
static void verify_one(struct vctx *v, const json_t *env, const json_t *trust, const uint8_t *doc,
		       size_t doc_len, const uint8_t *jwks, size_t jwks_len)
{
	json_t *st = NULL;
	const char *type = NULL, *kid = NULL, *pt;
	uint8_t *payload = NULL;
	size_t plen = 0;
	char err[256] = "";

	if (!check(v, json_is_object(env), "envelope", "a JSON object"))
		goto out;
	if (!check(v, dsse_verify(env, trust, &type, &payload, &plen, &kid, err, sizeof(err)) == 0,
		   "signature", "%s", err[0] ? err : "DSSE signature by a trusted key"))
		goto out;
	check(v, 1, "signature", "DSSE signature over the PAE by %s", kid);
	if (!check(v, strcmp(type, "application/vnd.in-toto+json") == 0, "envelope",
		   "payloadType %s", type))
		goto out;
	st = json_loadb((const char *)payload, plen, JSON_REJECT_DUPLICATES, NULL);
	pt = str(st, "predicateType");
	if (!check(v,
		   json_is_object(st) &&
		       strcmp(str(st, "_type"), "https://in-toto.io/Statement/v1") == 0 &&
		       json_is_object(json_object_get(st, "predicate")),
		   "statement", "an in-toto Statement v1, predicateType %s", pt))
		goto out;
	if (strcmp(pt, "https://cimdd.dev/attestation/custody/v1") == 0) {
		if (check(v,
			  strcmp(str(json_object_get(json_object_get(st, "predicate"), "appliance"),
				     "attestation_key"),
				 kid) == 0,
			  "statement", "names its signer %s as the attestation key", kid))
			verify_custody(v, st, trust, doc, doc_len, jwks, jwks_len);
	} else if (strcmp(pt, "https://cimdd.dev/attestation/revocation/v1") == 0) {
		verify_revocation(v, st);
	} else {
		check(v, 0, "statement", "unknown predicateType %s", pt);
	}
out:
	json_decref(st);
	free(payload);
}

/*
 * A cluster's attestation of one client (docs/attestation.md, "A cluster"):
 * {"attestations": [envelope, ...]}, one statement per node whose keys are
 * in the JWKS, each attesting its own node's keys ("scope": "node").  Each
 * is verified as one envelope; then every key of the JWKS must be attested
 * by one of them.
 */
static void verify_set(struct vctx *v, const json_t *set, const json_t *trust, const uint8_t *doc,
		       size_t doc_len, const uint8_t *jwks, size_t jwks_len)
{
	const json_t *e, *k;
	json_t *given;
	size_t i;

	if (!check(v, json_array_size(set) > 0, "envelope", "a set of %zu statements, one per node",
		   json_array_size(set)))
		return;
	v->attested = json_object();
	json_array_foreach(set, i, e) verify_one(v, e, trust, doc, doc_len, jwks, jwks_len);
	if (jwks != NULL && (given = json_loadb((const char *)jwks, jwks_len, 0, NULL)) != NULL) {
		json_array_foreach(json_object_get(given, "keys"), i, k)
		{
			const json_t *by = json_object_get(v->attested, str(k, "kid"));

			check(v, by != NULL, "jwks", "key %s is attested by node %s", str(k, "kid"),
			      by != NULL ? json_string_value(by) : "(none)");
		}
		json_decref(given);
	}
	json_decref(v->attested);
	v->attested = NULL;
}

int attest_verify(const char *envelope, size_t len, const json_t *trust, const uint8_t *doc,
		  size_t doc_len, const uint8_t *jwks, size_t jwks_len, attest_report_fn report,
		  void *arg)
{
	struct vctx v = {report, arg, 0, NULL};
	json_t *env = json_loadb(envelope, len, JSON_REJECT_DUPLICATES, NULL);
	const json_t *set = json_object_get(env, "attestations");

	if (json_is_array(set))
		verify_set(&v, set, trust, doc, doc_len, jwks, jwks_len);
	else
		verify_one(&v, env, trust, doc, doc_len, jwks, jwks_len);
	json_decref(env);
	return v.failed ? -CIMD_EVERIFY : 0;
}
