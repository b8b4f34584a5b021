/*
 * fuzz_attest_statement — what attest_verify checks behind a good DSSE
 * signature (firmware/attest_fmt.c): the in-toto statement, custody and
 * revocation predicates, the given JWKS against the attested keys, TPM and
 * PKCS#11 evidence.
 *
 * Input: STATEMENT [ '\0' JWKS [ '\0' KEYS ] ].  The target signs STATEMENT
 * into a DSSE envelope with its own key (common.c) and trusts that key plus
 * the JWKs of the array KEYS (an attestation key with its tpm2_public, so that
 * TPM evidence can be followed); JWKS, when present and not empty, is the JWKS
 * given to check.  The seeds are the statements of real envelopes with the
 * appliance.attestation_key set to this target's kid.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void report(void *arg, int ok, const char *check, const char *detail)
{
	size_t *n = arg;

	if (check == NULL || detail == NULL || (ok != 0 && ok != 1))
		abort();
	/* FUZZ_DEBUG=1 ./fuzz_... SEED: what each check said, to see how far a seed gets. */
	if (getenv("FUZZ_DEBUG") != NULL)
		fprintf(stderr, "%s %s: %s\n", ok ? "ok  " : "FAIL", check, detail);
	(*n)++;
}

/* The DSSE envelope of payload signed by the target's key (DSSE protocol:
 * the signature is over PAE(type, body)). */
static char *envelope(const uint8_t *body, size_t len, size_t *ret_len)
{
	const char *type = "application/vnd.in-toto+json";
	uint8_t *pae = NULL, *der = NULL;
	char *b64 = NULL, *sig = NULL, *out = NULL;
	size_t pae_len, der_len;
	json_t *env = NULL;

	if (dsse_pae(type, body, len, &pae, &pae_len) < 0 ||
	    fz_sign_der(pae, pae_len, &der, &der_len) < 0 ||
	    b64_encode_alloc(body, len, &b64) < 0 || b64_encode_alloc(der, der_len, &sig) < 0)
		goto out;
	env = json_pack("{s:s, s:s, s:[{s:s, s:s}]}", "payload", b64, "payloadType", type,
			"signatures", "keyid", json_string_value(json_object_get(fz_jwk(), "kid")),
			"sig", sig);
	if (env != NULL && (out = json_dumps(env, JSON_COMPACT)) != NULL)
		*ret_len = strlen(out);
out:
	free(pae);
	free(der);
	free(b64);
	free(sig);
	json_decref(env);
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *jwks = NULL, *keys = NULL, *z;
	size_t st_len = size, jwks_len = 0, keys_len = 0, env_len = 0, n = 0;
	json_t *trust, *extra;
	char *env;
	int r;

	if (fz_jwk() == NULL)
		abort();
	if ((z = memchr(data, 0, size)) != NULL) {
		st_len = (size_t)(z - data);
		jwks = z + 1;
		jwks_len = size - st_len - 1;
		if ((z = memchr(jwks, 0, jwks_len)) != NULL) {
			keys = z + 1;
			keys_len = jwks_len - (size_t)(z - jwks) - 1;
			jwks_len = (size_t)(z - jwks);
		}
	}
	if (jwks_len == 0)
		jwks = NULL; /* an empty part: no JWKS given, as without --jwks */
	trust = json_pack("{s:[O]}", "keys", fz_jwk());
	if (keys != NULL && (extra = json_loadb((const char *)keys, keys_len,
						JSON_REJECT_DUPLICATES, NULL)) != NULL) {
		if (json_is_array(extra))
			json_array_extend(json_object_get(trust, "keys"), extra);
		json_decref(extra);
	}
	if ((env = envelope(data, st_len, &env_len)) == NULL)
		abort();
	r = attest_verify(env, env_len, trust, NULL, 0, jwks, jwks_len, report, &n);
	if (n == 0 || (r != 0 && r != -CIMD_EVERIFY))
		abort();
	free(env);
	json_decref(trust);
	return 0;
}
