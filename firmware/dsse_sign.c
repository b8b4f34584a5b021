/*
 * dsse_sign.c — DSSE v1 envelopes (github.com/secure-systems-lab/dsse,
 * protocol.md and envelope.md) signed with a key store key.  dsse.c has the
 * PAE this signs and the verifier that checks it.
 *
 * Signatures are ECDSA in DER (SEC 1 §C.5), as the DSSE reference
 * implementations produce them; the hash is the curve's (P-256: SHA-256,
 * P-384: SHA-384, RFC 7518 §3.4).
 */
#include <errno.h>
#include <stdlib.h>

#include "ks.h"

int dsse_sign(struct key_store *ks, struct ks_key *key, const char *type, const uint8_t *body,
	      size_t len, json_t **ret_envelope)
{
	enum cimd_alg alg = ks_key_alg(key);
	size_t size = cimd_alg_ec_size(alg), pae_len, sig_len, der_len;
	uint8_t *pae = NULL, *der = NULL, sig[CIMD_SIG_MAX];
	char *b64_body = NULL, *b64_sig = NULL;
	json_t *env = NULL, *jtype = NULL;
	int r;

	/* DSSE signatures here are ECDSA in DER; RSASSA-PSS keys stay with JWS. */
	if (alg != CIMD_ALG_ES256 && alg != CIMD_ALG_ES384)
		return -CIMD_EALG;
	if ((r = dsse_pae(type, body, len, &pae, &pae_len)) < 0)
		goto out;
	/* payloadType is a JSON string: UTF-8 (RFC 8259 §8.1). */
	if ((jtype = json_string(type)) == NULL) {
		r = -EINVAL;
		goto out;
	}
	/* The key store hashes with the key's hash (ES256: SHA-256) and gives
	 * r||s (RFC 7518 §3.4); DSSE carries the DER form. */
	if ((r = key_store_sign(ks, key, pae, pae_len, sig, &sig_len)) < 0)
		goto out;
	if (sig_len != 2 * size) {
		r = -CIMD_EBACKEND;
		goto out;
	}
	if ((r = ecdsa_raw_to_der(sig, size, &der, &der_len)) < 0 ||
	    (r = b64_encode_alloc(body, len, &b64_body)) < 0 ||
	    (r = b64_encode_alloc(der, der_len, &b64_sig)) < 0)
		goto out;
	/* envelope.md: payload, payloadType, signatures [{keyid, sig}]. */
	env = json_pack("{s:s, s:O, s:[{s:s, s:s}]}", "payload", b64_body, "payloadType", jtype,
			"signatures", "keyid", ks_key_kid(key), "sig", b64_sig);
	if (env == NULL) {
		r = -ENOMEM;
		goto out;
	}
	*ret_envelope = env;
	env = NULL;
	r = 0;
out:
	free(pae);
	free(der);
	free(b64_body);
	free(b64_sig);
	json_decref(env);
	json_decref(jtype);
	return r;
}
