/*
 * test_attest.c — the offline halves of attestation: standard base64 (RFC 4648
 * §10 vectors), DSSE v1 (the spec's PAE vector and its signed example; envelopes
 * signed by SoftHSM2 keys, cross-checked with the openssl CLI, and every
 * tampering refused), and TPM2_Certify evidence made by a real swtpm driven by
 * tpm2-tools (tpm2_certify, and a raw TPM2_Certify with our own qualifying data
 * sent with tpm2_send), cross-checked with the openssl CLI and refused when any
 * part of it is changed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "harness.h"

/* ---- helpers ---- */

static int read_all(const char *path, uint8_t **ret, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL, *nb;
	size_t n = 0, cap = 0, k;

	if (f == NULL)
		return -errno;
	for (;;) {
		if (n == cap) {
			cap = cap ? 2 * cap : 4096;
			if ((nb = realloc(buf, cap)) == NULL) {
				free(buf);
				fclose(f);
				return -ENOMEM;
			}
			buf = nb;
		}
		if ((k = fread(buf + n, 1, cap - n, f)) == 0)
			break;
		n += k;
	}
	fclose(f);
	*ret = buf;
	*ret_len = n;
	return 0;
}

static int write_pem(const char *path, const json_t *jwk)
{
	EVP_PKEY *pk = NULL;
	FILE *f;
	int r = -1;

	if (jwk_to_evp(jwk, &pk) < 0 || (f = fopen(path, "w")) == NULL)
		goto out;
	r = PEM_write_PUBKEY(f, pk) == 1 ? 0 : -1;
	fclose(f);
out:
	EVP_PKEY_free(pk);
	return r;
}

/* A public JWK from a PEM that a tool other than ours wrote (tpm2_readpublic). */
static json_t *pem_to_jwk(const char *path)
{
	uint8_t pt[1 + 2 * 48], nb[1024], eb[16];
	char group[64];
	EVP_PKEY *pk = NULL;
	BIGNUM *n = NULL, *e = NULL;
	json_t *jwk = NULL;
	size_t len;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL)
		return NULL;
	pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (pk == NULL)
		return NULL;
	if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC) {
		enum cimd_alg alg;
		if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group,
						    sizeof(group), NULL) ||
		    !EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt),
						     &len))
			goto out;
		alg = strcmp(group, "prime256v1") == 0	? CIMD_ALG_ES256
		      : strcmp(group, "secp384r1") == 0 ? CIMD_ALG_ES384
							: CIMD_ALG_NONE;
		if (alg == CIMD_ALG_NONE || len != 1 + 2 * cimd_alg_ec_size(alg) || pt[0] != 4)
			goto out;
		jwk_new_ec(alg, pt + 1, pt + 1 + cimd_alg_ec_size(alg), &jwk);
	} else if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA) {
		int nl, el;
		if (!EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) ||
		    !EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e) ||
		    BN_num_bytes(n) > (int)sizeof(nb) || BN_num_bytes(e) > (int)sizeof(eb))
			goto out;
		nl = BN_bn2bin(n, nb);
		el = BN_bn2bin(e, eb);
		jwk_new_rsa(nb, (size_t)nl, eb, (size_t)el, &jwk);
	}
out:
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(pk);
	return jwk;
}

static int same_key(const json_t *a, const json_t *b)
{
	char ta[CIMD_KID_LEN + 1], tb[CIMD_KID_LEN + 1];

	return a != NULL && b != NULL && jwk_thumbprint(a, ta) == 0 && jwk_thumbprint(b, tb) == 0 &&
	       strcmp(ta, tb) == 0;
}

/* ---- base64, RFC 4648 §4 and §10 ---- */

static void test_b64(void)
{
	/* RFC 4648 §10. */
	static const struct {
		const char *in, *out;
	} v[] = {
	    {"", ""},
	    {"f", "Zg=="},
	    {"fo", "Zm8="},
	    {"foo", "Zm9v"},
	    {"foob", "Zm9vYg=="},
	    {"fooba", "Zm9vYmE="},
	    {"foobar", "Zm9vYmFy"},
	};
	static const char *const bad[] = {
	    "Zg=",	/* not a whole quantum */
	    "Zg",	/* padding missing */
	    "Zm9vYg",	/* padding missing */
	    "Zg===",	/* too much padding */
	    "Z===",	/* three pad characters */
	    "====",	/* padding only */
	    "Zg=a",	/* padding inside */
	    "=Zg=",	/* padding first */
	    "Zm9v\n",	/* whitespace */
	    " Zm9v",	/* whitespace */
	    "Zm 9v",	/* whitespace */
	    "Zh==",	/* non-canonical: trailing bits not zero */
	    "Zm9=",	/* non-canonical: trailing bits not zero */
	    "Zm9v*A==", /* outside both alphabets */
	    "+/-_",	/* both alphabets at once */
	};
	static const uint8_t hi[] = {0xfb, 0xff, 0xbf};
	uint8_t *buf = NULL;
	size_t i, n;
	char *s = NULL;
	int ok, r;

	t_set_prefix("base64: ");
	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		ok = b64_encode_alloc((const uint8_t *)v[i].in, strlen(v[i].in), &s) == 0 &&
		     strcmp(s, v[i].out) == 0;
		t_ok(ok, "encode \"%s\" = \"%s\" (RFC 4648 §10)", v[i].in, s ? s : "(null)");
		free(s);
		s = NULL;
		ok = b64_decode(v[i].out, strlen(v[i].out), &buf, &n) == 0 &&
		     n == strlen(v[i].in) && memcmp(buf, v[i].in, n) == 0;
		t_ok(ok, "decode \"%s\" (RFC 4648 §10)", v[i].out);
		free(buf);
		buf = NULL;
	}
	ok = b64_encode_alloc(hi, sizeof(hi), &s) == 0 && strcmp(s, "+/+/") == 0;
	t_ok(ok, "encode uses the standard alphabet: %s", s ? s : "(null)");
	free(s);
	s = NULL;
	ok = b64_decode("+/+/", 4, &buf, &n) == 0 && n == 3 && memcmp(buf, hi, 3) == 0;
	free(buf);
	buf = NULL;
	t_ok(ok, "decode standard alphabet \"+/+/\"");
	ok = b64_decode("-_-_", 4, &buf, &n) == 0 && n == 3 && memcmp(buf, hi, 3) == 0;
	free(buf);
	buf = NULL;
	t_ok(ok, "decode URL-safe alphabet \"-_-_\" (DSSE: verifiers accept either)");
	ok = b64_decode("-_8=", 4, &buf, &n) == 0 && n == 2 && buf[0] == 0xfb && buf[1] == 0xff;
	free(buf);
	buf = NULL;
	t_ok(ok, "decode URL-safe alphabet with padding \"-_8=\"");
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = b64_decode(bad[i], strlen(bad[i]), &buf, &n);
		t_ok(r == -CIMD_EFORMAT, "rejects \"%s\" (%s)",
		     bad[i][strlen(bad[i]) - 1] == '\n' ? "Zm9v\\n" : bad[i], cimd_strerror(r));
		if (r == 0)
			free(buf);
		buf = NULL;
	}
	t_set_prefix(NULL);
}

/* ---- DSSE PAE and the spec's example ---- */

static void test_pae(void)
{
	/* DSSE protocol.md, "Test Vectors": ECDSA P-256 SHA-256, raw r||s. */
	static const char X[] =
	    "46950820868899156662930047687818585632848591499744589407958293238635476079160";
	static const char Y[] =
	    "5640078356564379163099075877009565129882514886557779369047442380624545832820";
	static const char sig_b64[] = "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfU"
				      "iHqJPcIAriEGAHTVeCUjW2JIZA==";
	static const char want[] = "DSSEv1 29 http://example.com/HelloWorld 11 hello world";
	uint8_t *pae = NULL, *sig = NULL, x[32], y[32];
	size_t len = 0, slen = 0;
	BIGNUM *bx = NULL, *by = NULL;
	json_t *jwk = NULL;
	int r;

	t_set_prefix("dsse: ");
	r = dsse_pae("http://example.com/HelloWorld", (const uint8_t *)"hello world", 11, &pae,
		     &len);
	t_ok(r == 0 && len == strlen(want) && memcmp(pae, want, len) == 0,
	     "PAE of the spec's example is \"%s\"", want);
	/* The spec's signature over that PAE, with its key: our PAE is the
	 * bytes the reference implementation signed. */
	if (BN_dec2bn(&bx, X) > 0 && BN_dec2bn(&by, Y) > 0 && BN_bn2binpad(bx, x, 32) == 32 &&
	    BN_bn2binpad(by, y, 32) == 32 && jwk_new_ec(CIMD_ALG_ES256, x, y, &jwk) == 0 &&
	    b64_decode(sig_b64, strlen(sig_b64), &sig, &slen) == 0 && r == 0) {
		r = jws_verify_signature(jwk, CIMD_ALG_ES256, pae, len, sig, slen);
		t_ok(r == 0, "the spec's example signature verifies over our PAE (%s)",
		     cimd_strerror(r));
		pae[7] = '3'; /* "DSSEv1 39 ..." */
		r = jws_verify_signature(jwk, CIMD_ALG_ES256, pae, len, sig, slen);
		t_ok(r == -CIMD_EVERIFY, "... and not over a changed PAE (%s)", cimd_strerror(r));
	} else {
		t_ok(0, "the spec's example key and signature decode");
	}
	free(pae);
	pae = NULL;
	r = dsse_pae("", (const uint8_t *)"", 0, &pae, &len);
	t_ok(r == 0 && len == 12 && memcmp(pae, "DSSEv1 0  0 ", 12) == 0,
	     "PAE of empty type and body is \"DSSEv1 0  0 \"");
	free(pae);
	free(sig);
	BN_free(bx);
	BN_free(by);
	json_decref(jwk);
	t_set_prefix(NULL);
}

/* ---- DSSE envelopes signed by SoftHSM2 keys ---- */

static json_t *jwks_of(const json_t *jwk)
{
	return json_pack("{s:[O]}", "keys", jwk);
}

static int verify_env(const json_t *env, const json_t *trust, char *err, size_t errlen)
{
	const char *type, *kid;
	uint8_t *payload = NULL;
	size_t len;
	int r;

	r = dsse_verify(env, trust, &type, &payload, &len, &kid, err, errlen);
	free(payload);
	return r;
}

/* Re-encodes a base64 member after changing one byte of what it holds. */
static int flip_b64_member(json_t *obj, const char *name, size_t at)
{
	const char *s = json_string_value(json_object_get(obj, name));
	uint8_t *buf = NULL;
	char *enc = NULL;
	size_t n;
	int r = -1;

	if (s == NULL || b64_decode(s, strlen(s), &buf, &n) < 0 || n == 0)
		goto out;
	buf[at < n ? at : n - 1] ^= 0x01;
	if (b64_encode_alloc(buf, n, &enc) < 0)
		goto out;
	r = json_object_set_new(obj, name, json_string(enc));
out:
	free(buf);
	free(enc);
	return r;
}

/* The same value in the URL-safe alphabet. */
static int to_urlsafe(json_t *obj, const char *name)
{
	char *s = strdup(json_string_value(json_object_get(obj, name))), *p;
	int r;

	for (p = s; *p; p++)
		*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
	r = json_object_set_new(obj, name, json_string(s));
	free(s);
	return r;
}

static void dsse_one(const char *dir, struct key_store *ks, enum cimd_alg alg)
{
	static const char type[] = "application/vnd.cimdd.attestation+json";
	static const char body[] = "{\"issuer\":\"https://keys.example.com\",\"keys\":[\"k1\"]}";
	const char *name = cimd_alg_name(alg), *otype, *okid;
	struct ks_key *key = NULL, *other = NULL;
	json_t *env = NULL, *t = NULL, *jwk = NULL, *ojwk = NULL, *trust = NULL, *otrust = NULL;
	uint8_t *payload = NULL, *pae = NULL, *der = NULL;
	size_t plen, pae_len, der_len = 0;
	char err[256], path[700], pem[700], sigp[700], *s;
	const char *sig_b64, *payload_b64;
	int r;

	if (!t_ok(key_store_generate(ks, alg, NULL, &key) == 0 &&
		      key_store_generate(ks, alg, NULL, &other) == 0,
		  "%s: two keys on a fresh SoftHSM2 token", name))
		goto out;
	jwk = ks_key_jwk(key);
	ojwk = ks_key_jwk(other);
	trust = jwks_of(jwk);
	otrust = jwks_of(ojwk);
	r = dsse_sign(ks, key, type, (const uint8_t *)body, strlen(body), &env);
	if (!t_ok(r == 0, "%s: dsse_sign (%s)", name, cimd_strerror(r)))
		goto out;
	payload_b64 = json_string_value(json_object_get(env, "payload"));
	sig_b64 = json_string_value(
	    json_object_get(json_array_get(json_object_get(env, "signatures"), 0), "sig"));
	s = NULL;
	b64_encode_alloc((const uint8_t *)body, strlen(body), &s);
	t_ok(payload_b64 != NULL && s != NULL && strcmp(s, payload_b64) == 0,
	     "%s: payload is the body in standard base64", name);
	free(s);
	t_ok(strcmp(json_string_value(json_object_get(env, "payloadType")), type) == 0 &&
		 strcmp(json_string_value(json_object_get(
			    json_array_get(json_object_get(env, "signatures"), 0), "keyid")),
			ks_key_kid(key)) == 0,
	     "%s: payloadType and keyid (the key's kid)", name);
	r = dsse_verify(env, trust, &otype, &payload, &plen, &okid, err, sizeof(err));
	t_ok(r == 0 && plen == strlen(body) && memcmp(payload, body, plen) == 0 &&
		 strcmp(otype, type) == 0 && strcmp(okid, ks_key_kid(key)) == 0 &&
		 okid == json_string_value(json_object_get(
			     json_array_get(json_object_get(trust, "keys"), 0), "kid")),
	     "%s: dsse_verify with the key's JWKS (%s)", name, r < 0 ? err : "ok");
	free(payload);
	payload = NULL;

	/* The openssl CLI: the PAE, the DER signature from the envelope, the key. */
	snprintf(path, sizeof(path), "%s/pae-%s.bin", dir, name);
	snprintf(pem, sizeof(pem), "%s/pub-%s.pem", dir, name);
	snprintf(sigp, sizeof(sigp), "%s/sig-%s.der", dir, name);
	if (dsse_pae(type, (const uint8_t *)body, strlen(body), &pae, &pae_len) == 0 &&
	    b64_decode(sig_b64, strlen(sig_b64), &der, &der_len) == 0 &&
	    t_write_file(path, pae, pae_len) == 0 && t_write_file(sigp, der, der_len) == 0 &&
	    write_pem(pem, jwk) == 0) {
		char out[256];
		t_ok(der_len > 2 && der[0] == 0x30 && der[1] == der_len - 2,
		     "%s: sig is a DER SEQUENCE (%zu bytes)", name, der_len);
		r = t_sh_out(out, sizeof(out), "openssl dgst -%s -verify %s -signature %s %s",
			     alg == CIMD_ALG_ES384 ? "sha384" : "sha256", pem, sigp, path);
		t_ok(r == 0 && strstr(out, "Verified OK") != NULL,
		     "%s: openssl dgst -verify over the PAE: %s", name, out);
	} else {
		t_ok(0, "%s: files for the openssl CLI", name);
	}

	/* The URL-safe alphabet is accepted (DSSE protocol: verifiers MUST). */
	t = json_deep_copy(env);
	to_urlsafe(t, "payload");
	to_urlsafe(json_array_get(json_object_get(t, "signatures"), 0), "sig");
	r = verify_env(t, trust, err, sizeof(err));
	t_ok(r == 0, "%s: URL-safe base64 payload and sig verify (%s)", name, r ? err : "ok");
	json_decref(t);

	/* Each change is refused by the signature check itself. */
	t = json_deep_copy(env);
	flip_b64_member(t, "payload", 5);
	r = verify_env(t, trust, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "does not verify"), "%s: changed payload: %s", name,
	     err);
	json_decref(t);
	t = json_deep_copy(env);
	flip_b64_member(json_array_get(json_object_get(t, "signatures"), 0), "sig", der_len - 1);
	r = verify_env(t, trust, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "does not verify"), "%s: changed signature: %s",
	     name, err);
	json_decref(t);
	t = json_deep_copy(env);
	json_object_set_new(t, "payloadType",
			    json_string("application/vnd.cimdd.attestation+jsoN"));
	r = verify_env(t, trust, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "does not verify"), "%s: changed payloadType: %s",
	     name, err);
	json_decref(t);
	t = json_deep_copy(env);
	json_object_set_new(json_array_get(json_object_get(t, "signatures"), 0), "keyid",
			    json_string(ks_key_kid(other)));
	r = verify_env(t, trust, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "no signature by a trusted key"),
	     "%s: changed keyid: %s", name, err);
	json_decref(t);
	r = verify_env(env, otrust, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "no signature by a trusted key"),
	     "%s: another key's JWKS: %s", name, err);
	/* Another key that claims the signer's kid: keyid only selects. */
	t = json_deep_copy(ojwk);
	json_object_set_new(t, "kid", json_string(ks_key_kid(key)));
	json_decref(otrust);
	otrust = jwks_of(t);
	json_decref(t);
	r = verify_env(env, otrust, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "does not verify"),
	     "%s: another key under the signer's kid: %s", name, err);

	/* A second, untrusted signature does not get in the way. */
	t = json_deep_copy(env);
	json_array_insert_new(json_object_get(t, "signatures"), 0,
			      json_pack("{s:s,s:s}", "keyid", "someone-else", "sig", "AAAA"));
	r = verify_env(t, trust, err, sizeof(err));
	t_ok(r == 0, "%s: an untrusted signature beside ours is skipped (%s)", name,
	     r ? err : "ok");
	json_decref(t);
	t = NULL;
out:
	free(payload);
	free(pae);
	free(der);
	json_decref(env);
	json_decref(jwk);
	json_decref(ojwk);
	json_decref(trust);
	json_decref(otrust);
	if (key != NULL)
		key_store_destroy(ks, &key);
	if (other != NULL)
		key_store_destroy(ks, &other);
}

static void dsse_malformed(struct key_store *ks)
{
	static const struct {
		const char *json, *why;
		int r;
	} bad[] = {
	    {"[]", "envelope is not a JSON object", -CIMD_EFORMAT},
	    {"{\"payloadType\":\"t\",\"signatures\":[{\"keyid\":\"k\",\"sig\":\"AAAA\"}]}",
	     "payload is not a string", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"signatures\":[{\"keyid\":\"k\",\"sig\":\"AAAA\"}]}",
	     "payloadType is not a string", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":7,\"signatures\":[{\"keyid\":\"k\",\"sig\":"
	     "\"AAAA\"}]}",
	     "payloadType is not a string", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"a\\u0000b\",\"signatures\":[{\"keyid\":\"k\","
	     "\"sig\":\"AAAA\"}]}",
	     "payloadType has a NUL", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[]}",
	     "signatures is not a non-empty array", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":{}}",
	     "signatures is not a non-empty array", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[\"AAAA\"]}",
	     "signatures[0] is not an object", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[{\"keyid\":1,\"sig\":"
	     "\"AAAA\"}]}",
	     "signatures[0].keyid is not a string", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[{\"keyid\":\"k\"}]}",
	     "signatures[0].sig is not a string", -CIMD_EFORMAT},
	    {"{\"payload\":\"aGVsbG8\",\"payloadType\":\"t\",\"signatures\":[{\"keyid\":\"k\","
	     "\"sig\":\"AAAA\"}]}",
	     "payload is not base64", -CIMD_EFORMAT},
	    {"{\"payload\":\"aGVs bG8=\",\"payloadType\":\"t\",\"signatures\":[{\"keyid\":\"k\","
	     "\"sig\":\"AAAA\"}]}",
	     "payload is not base64", -CIMD_EFORMAT},
	    {"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[{\"sig\":\"AAAA\"}]}",
	     "no signature by a trusted key", -CIMD_EVERIFY},
	};
	struct ks_key *key = NULL;
	json_t *env, *trust = NULL, *jwk = NULL, *e2 = NULL;
	const char *type, *kid;
	uint8_t *payload = NULL;
	size_t i, len;
	char err[256];
	int r;

	if (key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) < 0)
		return;
	jwk = ks_key_jwk(key);
	trust = jwks_of(jwk);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		env = json_loads(bad[i].json, JSON_ALLOW_NUL, NULL);
		r = dsse_verify(env, trust, &type, &payload, &len, &kid, err, sizeof(err));
		t_ok(env != NULL && r == bad[i].r && strstr(err, bad[i].why) != NULL,
		     "malformed: %s (%s)", err, cimd_strerror(r));
		json_decref(env);
	}
	/* A sig that is not base64, by a trusted key. */
	e2 = json_pack("{s:s,s:s,s:[{s:s,s:s}]}", "payload", "", "payloadType", "t", "signatures",
		       "keyid", ks_key_kid(key), "sig", "MEQCI");
	r = dsse_verify(e2, trust, &type, &payload, &len, &kid, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "is not base64"), "malformed: %s (%s)", err,
	     cimd_strerror(r));
	json_decref(e2);
	/* Raw r||s (as the spec's example uses) is not our DER. */
	e2 = json_pack("{s:s,s:s,s:[{s:s,s:s}]}", "payload", "", "payloadType", "t", "signatures",
		       "keyid", ks_key_kid(key), "sig",
		       "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGA"
		       "HTVeCUjW2JIZA==");
	r = dsse_verify(e2, trust, &type, &payload, &len, &kid, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "not a DER ECDSA signature"), "malformed: %s (%s)",
	     err, cimd_strerror(r));
	json_decref(e2);
	r = dsse_verify(trust, jwk, &type, &payload, &len, &kid, err, sizeof(err));
	t_ok(r == -EINVAL && strstr(err, "keys"), "a trust JWKS without keys: %s", err);
	json_decref(trust);
	json_decref(jwk);
	key_store_destroy(ks, &key);
}

static void test_dsse(void)
{
	struct t_softhsm h;
	struct key_store *ks = NULL;
	struct ks_key *rsa = NULL;
	json_t *env = NULL;
	char err[256], dir[600];
	int r;

	t_set_prefix("dsse: ");
	snprintf(dir, sizeof(dir), "%s/dsse", t_tmpdir());
	mkdir(dir, 0700);
	if (!t_ok(t_softhsm_init(&h, "attest", "1234") == 0, "SoftHSM2 token"))
		goto out;
	r = key_store_open(h.conf, &ks, err, sizeof(err));
	if (!t_ok(r == 0, "open the key store (%s)", r < 0 ? err : "ok"))
		goto out;
	dsse_one(dir, ks, CIMD_ALG_ES256);
	dsse_one(dir, ks, CIMD_ALG_ES384);
	dsse_malformed(ks);
	if (key_store_generate(ks, CIMD_ALG_PS256, NULL, &rsa) == 0) {
		r = dsse_sign(ks, rsa, "t", (const uint8_t *)"x", 1, &env);
		t_ok(r == -CIMD_EALG && env == NULL, "a PS256 key is refused (%s)",
		     cimd_strerror(r));
		key_store_destroy(ks, &rsa);
	} else {
		t_ok(0, "a PS256 key to refuse");
	}
out:
	json_decref(env);
	key_store_free(&ks);
	t_set_prefix(NULL);
}

/* ---- TPM2_Certify evidence from swtpm and tpm2-tools ---- */

/* tpm2-tools 5.x's tpm2_certify has no option for qualifying data and always
 * sends these four bytes (tools/tpm2_certify.c). */
static const uint8_t tools_extra[] = {0x00, 0xff, 0x55, 0xaa};

#define AK_HANDLE 0x81000010u
#define KEY_HANDLE 0x81000011u

/* tpm2-tools against swtpm without a resource manager: every tool leaves its
 * transient objects loaded, so each step is followed by flushing them. */
static const char tpm_script[] =
    "set -e; cd %s; F='tpm2_flushcontext -t'\n"
    "tpm2_createprimary -Q -C o -g sha256 -G ecc256 -c prim.ctx; $F\n"
    /* The AK: restricted signing key, ECDSA-SHA256 (Part 1 §25.2.3). */
    "tpm2_create -Q -C prim.ctx -G ecc256:ecdsa-sha256:null "
    "-a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda' "
    "-u ak.pub -r ak.priv; $F\n"
    /* Client keys: unrestricted signing keys, P-256 twice and RSA-2048. */
    "for k in key key2; do tpm2_create -Q -C prim.ctx -G ecc256:null:null "
    "-a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign|noda' "
    "-u $k.pub -r $k.priv; $F; done\n"
    "tpm2_create -Q -C prim.ctx -G rsa2048:null:null "
    "-a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign|noda' "
    "-u rsa.pub -r rsa.priv; $F\n"
    "for k in ak key key2 rsa; do tpm2_load -Q -C prim.ctx -u $k.pub -r $k.priv -c $k.ctx; $F\n"
    "  tpm2_readpublic -Q -c $k.ctx -f tpmt -o $k.tpmt; $F\n"
    "  tpm2_readpublic -Q -c $k.ctx -f pem -o $k.pem; $F; done\n"
    "tpm2_certify -Q -c key.ctx -C ak.ctx -g sha256 -o key.attest -s key.sig -f plain; $F\n"
    "tpm2_certify -Q -c rsa.ctx -C ak.ctx -g sha256 -o rsa.attest -s rsa.sig -f plain; $F\n"
    "tpm2_certify -Q -c ak.ctx -C ak.ctx -g sha256 -o ak.attest -s ak.sig -f plain; $F\n"
    /* A TPMS_ATTEST of another type, signed by the same AK. */
    "tpm2_quote -Q -c ak.ctx -l sha256:0 -q 00ff55aa -g sha256 -m quote.attest -s quote.sig "
    "-f plain; $F\n"
    "tpm2_evictcontrol -Q -C o -c ak.ctx 0x%08x; $F\n"
    "tpm2_evictcontrol -Q -C o -c key.ctx 0x%08x; $F\n";

struct evidence {
	uint8_t *attest, *pub;
	size_t attest_len, pub_len;
	uint8_t sig[64];
};

static void evidence_clear(struct evidence *e)
{
	free(e->attest);
	free(e->pub);
	memset(e, 0, sizeof(*e));
}

/* Files from tpm2_certify -f plain: the signature is DER (SEC 1 §C.5), which
 * we turn into r||s as the key store gives it. */
static int load_evidence(const char *dir, const char *name, struct evidence *e)
{
	char path[700];
	uint8_t *der = NULL;
	size_t der_len;
	int r;

	memset(e, 0, sizeof(*e));
	snprintf(path, sizeof(path), "%s/%s.attest", dir, name);
	if ((r = read_all(path, &e->attest, &e->attest_len)) < 0)
		goto out;
	snprintf(path, sizeof(path), "%s/%s.tpmt", dir, name);
	if ((r = read_all(path, &e->pub, &e->pub_len)) < 0)
		goto out;
	snprintf(path, sizeof(path), "%s/%s.sig", dir, name);
	if ((r = read_all(path, &der, &der_len)) < 0)
		goto out;
	r = ecdsa_der_to_raw(der, der_len, 32, e->sig);
out:
	free(der);
	if (r < 0)
		evidence_clear(e);
	return r;
}

static int check(const struct evidence *e, const json_t *ak, const json_t *key,
		 const uint8_t *extra, size_t extra_len, char *err, size_t errlen)
{
	err[0] = '\0';
	return tpm2_verify_certify(e->attest, e->attest_len, e->sig, sizeof(e->sig), ak, e->pub,
				   e->pub_len, key, extra, extra_len, err, errlen);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static unsigned get16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

/*
 * TPM2_Certify (Part 3 §18.2) with our own qualifyingData, sent as raw bytes
 * with tpm2_send to the persistent AK and key, both authorised by the empty
 * password (TPM_RS_PW, Part 2 §7.4).  The answer is parsed by hand here
 * (only firmware/ reads TPM structures with tss2): TPM2B_ATTEST, then
 * TPMT_SIGNATURE {sigAlg ECDSA, hash, TPM2B r, TPM2B s} (Part 2 §11.3.4).
 */
static int raw_certify(const char *dir, const uint8_t *q, size_t qlen, struct evidence *e)
{
	uint8_t cmd[128], *resp = NULL, *p, *end;
	char cpath[700], rpath[700];
	size_t off = 0, rlen, n;
	int r = -EPROTO;

	put16(cmd, 0x8002); /* TPM_ST_SESSIONS */
	off = 10;
	put32(cmd + 6, 0x00000148); /* TPM_CC_Certify */
	put32(cmd + off, KEY_HANDLE), off += 4;
	put32(cmd + off, AK_HANDLE), off += 4;
	put32(cmd + off, 18), off += 4; /* two password sessions */
	for (n = 0; n < 2; n++) {
		put32(cmd + off, 0x40000009), off += 4; /* TPM_RS_PW */
		put16(cmd + off, 0), off += 2;		/* nonce */
		cmd[off++] = 0;				/* sessionAttributes */
		put16(cmd + off, 0), off += 2;		/* hmac: empty password */
	}
	put16(cmd + off, (uint16_t)qlen), off += 2;
	memcpy(cmd + off, q, qlen), off += qlen;
	put16(cmd + off, 0x0010), off += 2; /* inScheme TPM_ALG_NULL: the AK's own */
	put32(cmd + 2, (uint32_t)off);
	snprintf(cpath, sizeof(cpath), "%s/certify.cmd", dir);
	snprintf(rpath, sizeof(rpath), "%s/certify.resp", dir);
	if (t_write_file(cpath, cmd, off) < 0 ||
	    t_sh("tpm2_send -o %s < %s && tpm2_flushcontext -t", rpath, cpath) != 0 ||
	    read_all(rpath, &resp, &rlen) < 0)
		goto out;
	end = resp + rlen;
	/* header (10), responseCode 0, parameterSize (4) */
	if (rlen < 16 || (resp[6] | resp[7] | resp[8] | resp[9]) != 0)
		goto out;
	p = resp + 14;
	n = get16(p), p += 2;
	if (p + n + 6 > end || (e->attest = malloc(n)) == NULL)
		goto out;
	memcpy(e->attest, p, n), e->attest_len = n, p += n;
	if (get16(p) != 0x0018 || get16(p + 2) != 0x000b) /* TPM_ALG_ECDSA, SHA256 */
		goto out;
	p += 4;
	for (off = 0; off < 2; off++) {
		if (p + 2 > end || (n = get16(p)) > 32 || p + 2 + n > end)
			goto out;
		memset(e->sig + 32 * off, 0, 32 - n);
		memcpy(e->sig + 32 * off + 32 - n, p + 2, n);
		p += 2 + n;
	}
	r = 0;
out:
	free(resp);
	return r;
}

static void tpm_tamper(const struct evidence *good, const json_t *ak, const json_t *key,
		       const uint8_t *extra, size_t extra_len, size_t at, int in_pub,
		       const char *what, const char *want)
{
	struct evidence e = *good;
	uint8_t *copy = malloc(in_pub ? good->pub_len : good->attest_len);
	char err[256];
	int r;

	if (copy == NULL)
		return;
	memcpy(copy, in_pub ? good->pub : good->attest, in_pub ? good->pub_len : good->attest_len);
	copy[at] ^= 0x01;
	if (in_pub)
		e.pub = copy;
	else
		e.attest = copy;
	r = check(&e, ak, key, extra, extra_len, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, want, strlen(want)) == 0, "%s: %s", what, err);
	free(copy);
}

static void test_tpm(void)
{
	struct t_swtpm s = {0};
	struct evidence ke = {0}, re = {0}, ae = {0}, xe = {0}, e;
	json_t *ak = NULL, *ak_pem = NULL, *key = NULL, *key2 = NULL, *rsa = NULL, *rsa_pem = NULL,
	       *key_tpm = NULL;
	uint8_t q[32], *pub2 = NULL;
	size_t pub2_len, qs, xs, name_at;
	char dir[600], err[256], tcti[128], path[700], path2[700], out[512];
	int r, restricted = -1;

	t_set_prefix("tpm2: ");
	snprintf(dir, sizeof(dir), "%s/tpm", t_tmpdir());
	mkdir(dir, 0700);
	r = t_swtpm_start(&s);
	if (!t_ok(r == 0, "swtpm on port %d", s.port))
		goto out;
	snprintf(tcti, sizeof(tcti), "swtpm:host=127.0.0.1,port=%d", s.port);
	setenv("TPM2TOOLS_TCTI", tcti, 1);
	r = t_sh(tpm_script, dir, AK_HANDLE, KEY_HANDLE);
	if (!t_ok(r == 0, "tpm2-tools made an AK, keys, their TPMT_PUBLIC and certifications (%d)",
		  r))
		goto out;

	/* The AK's JWK from its TPMT_PUBLIC, against tpm2_readpublic's PEM. */
	snprintf(path, sizeof(path), "%s/ak.tpmt", dir);
	if (read_all(path, &pub2, &pub2_len) < 0)
		goto out;
	r = tpm2_public_jwk(pub2, pub2_len, &ak, &restricted);
	snprintf(path, sizeof(path), "%s/ak.pem", dir);
	ak_pem = pem_to_jwk(path);
	t_ok(r == 0 && restricted == 1 && same_key(ak, ak_pem),
	     "tpm2_public_jwk of the AK: restricted, the key of tpm2_readpublic's PEM (%s)",
	     cimd_strerror(r));
	t_ok(r == 0 && strcmp(json_string_value(json_object_get(ak, "crv")), "P-256") == 0 &&
		 json_object_size(ak) == 4,
	     "the AK's JWK is {kty,crv,x,y} on P-256");
	free(pub2);
	pub2 = NULL;
	snprintf(path, sizeof(path), "%s/key.pem", dir);
	key = pem_to_jwk(path);
	snprintf(path, sizeof(path), "%s/key2.pem", dir);
	key2 = pem_to_jwk(path);
	snprintf(path, sizeof(path), "%s/rsa.pem", dir);
	rsa_pem = pem_to_jwk(path);
	if (!t_ok(ak != NULL && key != NULL && key2 != NULL && rsa_pem != NULL,
		  "public keys from tpm2_readpublic -f pem"))
		goto out;
	if (!t_ok(load_evidence(dir, "key", &ke) == 0 && load_evidence(dir, "rsa", &re) == 0 &&
		      load_evidence(dir, "ak", &ae) == 0,
		  "tpm2_certify output: attest, plain (DER) signature, TPMT_PUBLIC"))
		goto out;
	r = tpm2_public_jwk(ke.pub, ke.pub_len, &key_tpm, &restricted);
	t_ok(r == 0 && restricted == 0 && same_key(key_tpm, key),
	     "tpm2_public_jwk of a client key: unrestricted, the PEM's key");
	r = tpm2_public_jwk(re.pub, re.pub_len, &rsa, &restricted);
	t_ok(r == 0 && restricted == 0 && same_key(rsa, rsa_pem) &&
		 strcmp(json_string_value(json_object_get(rsa, "e")), "AQAB") == 0,
	     "tpm2_public_jwk of an RSA key: exponent 0 is 65537, the PEM's key");

	/* The openssl CLI agrees that the AK signed the attest bytes. */
	r = t_sh_out(out, sizeof(out),
		     "cd %s && openssl dgst -sha256 -verify ak.pem "
		     "-signature key.sig key.attest",
		     dir);
	t_ok(r == 0 && strstr(out, "Verified OK"), "openssl verifies tpm2_certify's signature: %s",
	     out);

	r = check(&ke, ak, key, tools_extra, sizeof(tools_extra), err, sizeof(err));
	t_ok(r == 0, "tpm2_certify of a P-256 key verifies (%s)", r ? err : "ok");
	r = check(&re, ak, rsa_pem, tools_extra, sizeof(tools_extra), err, sizeof(err));
	t_ok(r == 0, "tpm2_certify of an RSA-2048 key verifies (%s)", r ? err : "ok");

	/* TPMS_ATTEST (Part 2 §10.12.8): magic(4) type(2) qualifiedSigner(2+n)
	 * extraData(2+n) clockInfo(17) firmwareVersion(8), then
	 * TPMS_CERTIFY_INFO {name, qualifiedName}. */
	qs = get16(ke.attest + 6);
	xs = get16(ke.attest + 8 + qs);
	name_at = 8 + qs + 2 + xs + 17 + 8 + 2;
	t_ok(xs == sizeof(tools_extra) && memcmp(ke.attest + 10 + qs, tools_extra, xs) == 0 &&
		 name_at + 34 <= ke.attest_len,
	     "extraData is tpm2-tools' fixed qualifying data 00ff55aa");
	tpm_tamper(&ke, ak, key, tools_extra, 4, 0, 0, "changed magic", "magic");
	/* The type selects the union member: changed, the rest no longer parses. */
	tpm_tamper(&ke, ak, key, tools_extra, 4, 5, 0, "changed type byte", "attest");
	/* A real TPMS_ATTEST of another type (TPM2_Quote, TPM_ST_ATTEST_QUOTE). */
	e = ke;
	e.attest = NULL;
	snprintf(path, sizeof(path), "%s/quote.attest", dir);
	snprintf(path2, sizeof(path2), "%s/quote.sig", dir);
	if (read_all(path, &e.attest, &e.attest_len) == 0 &&
	    read_all(path2, &pub2, &pub2_len) == 0 &&
	    ecdsa_der_to_raw(pub2, pub2_len, 32, e.sig) == 0) {
		r = check(&e, ak, key, tools_extra, 4, err, sizeof(err));
		t_ok(r == -CIMD_EVERIFY && strncmp(err, "type", 4) == 0,
		     "a TPM2_Quote by the same AK: %s", err);
	} else {
		t_ok(0, "tpm2_quote output");
	}
	free(e.attest);
	free(pub2);
	pub2 = NULL;
	tpm_tamper(&ke, ak, key, tools_extra, 4, 10 + qs + 1, 0, "changed extraData", "signature");
	tpm_tamper(&ke, ak, key, tools_extra, 4, name_at + 5, 0, "changed certified name",
		   "signature");
	tpm_tamper(&ke, ak, key, tools_extra, 4, ke.pub_len - 1, 1,
		   "changed key in the TPMT_PUBLIC", "name");
	e = ke;
	e.sig[40] ^= 0x01;
	r = check(&e, ak, key, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "signature", 9) == 0, "changed signature: %s", err);
	r = check(&ke, key2, key, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "signature", 9) == 0, "another AK: %s", err);
	r = check(&ke, ak, key, (const uint8_t *)"\x00\xff\x55\xab", 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "extraData", 9) == 0,
	     "other expected qualifying data: %s", err);
	r = check(&ke, ak, key, NULL, 0, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "extraData", 9) == 0,
	     "no expected qualifying data: %s", err);
	r = check(&ke, ak, key2, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "public key", 10) == 0, "another key's JWK: %s",
	     err);
	r = check(&re, ak, key, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "public key", 10) == 0,
	     "the RSA certification with a P-256 key's JWK: %s", err);
	r = check(&ae, ak, ak, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strstr(err, "restricted"), "the AK certified by itself: %s",
	     err);
	e = ke;
	e.attest_len--;
	r = check(&e, ak, key, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "attest", 6) == 0, "truncated attest: %s", err);
	e = ke;
	e.pub = pub2 = malloc(ke.pub_len + 1);
	memcpy(pub2, ke.pub, ke.pub_len);
	pub2[ke.pub_len] = 0;
	e.pub_len = ke.pub_len + 1;
	r = check(&e, ak, key, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "public", 6) == 0,
	     "TPMT_PUBLIC with a byte after it: %s", err);
	e = ke;
	e.pub = re.pub, e.pub_len = re.pub_len;
	r = check(&e, ak, key, tools_extra, 4, err, sizeof(err));
	t_ok(r == -CIMD_EVERIFY && strncmp(err, "name", 4) == 0, "another key's TPMT_PUBLIC: %s",
	     err);
	r = tpm2_public_jwk(ke.pub, ke.pub_len - 1, &key_tpm, &restricted);
	t_ok(r == -CIMD_EFORMAT, "tpm2_public_jwk of a truncated TPMT_PUBLIC (%s)",
	     cimd_strerror(r));

	/* Our own qualifying data, through a raw TPM2_Certify. */
	RAND_bytes(q, sizeof(q));
	if (t_ok(raw_certify(dir, q, sizeof(q), &xe) == 0,
		 "raw TPM2_Certify with 32 bytes of qualifying data, sent with tpm2_send")) {
		xe.pub = malloc(ke.pub_len);
		memcpy(xe.pub, ke.pub, ke.pub_len);
		xe.pub_len = ke.pub_len;
		r = check(&xe, ak, key, q, sizeof(q), err, sizeof(err));
		t_ok(r == 0, "it verifies with that qualifying data (%s)", r ? err : "ok");
		r = check(&xe, ak, key, tools_extra, 4, err, sizeof(err));
		t_ok(r == -CIMD_EVERIFY && strncmp(err, "extraData", 9) == 0,
		     "and not with other qualifying data: %s", err);
		q[31] ^= 1;
		r = check(&xe, ak, key, q, sizeof(q), err, sizeof(err));
		t_ok(r == -CIMD_EVERIFY && strncmp(err, "extraData", 9) == 0,
		     "nor with one bit changed: %s", err);
	}
out:
	free(pub2);
	evidence_clear(&ke);
	evidence_clear(&re);
	evidence_clear(&ae);
	evidence_clear(&xe);
	json_decref(ak);
	json_decref(ak_pem);
	json_decref(key);
	json_decref(key2);
	json_decref(key_tpm);
	json_decref(rsa);
	json_decref(rsa_pem);
	t_swtpm_kill(&s);
	t_set_prefix(NULL);
}

int main(void)
{
	test_b64();
	test_pae();
	test_dsse();
	test_tpm();
	return t_done();
}
