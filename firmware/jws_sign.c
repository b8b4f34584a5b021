/*
 * jws_sign.c — JWS compact serialisation (RFC 7515 §7.1), signed through the
 * key store:
 *   BASE64URL(UTF8(header)) "." BASE64URL(payload) "." BASE64URL(signature)
 * What it builds, jws.c's verifier accepts (one cap, CIMD_JWS_MAX, for both).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ks.h"

int jws_sign(struct key_store *ks, struct ks_key *key, const json_t *extra_header,
	     const uint8_t *payload, size_t payload_len, char **ret_jws)
{
	json_t *hdr = NULL;
	char *hjson = NULL, *out = NULL;
	uint8_t sig[CIMD_SIG_MAX];
	size_t hlen, plen, slen, siglen, off;
	int r;

	if (payload_len > CIMD_JWS_MAX)
		return -E2BIG;
	if (extra_header != NULL &&
	    (json_object_get(extra_header, "alg") || json_object_get(extra_header, "kid")))
		return -EINVAL;
	if ((hdr = json_object()) == NULL ||
	    json_object_set_new(hdr, "alg", json_string(cimd_alg_name(ks_key_alg(key)))) < 0 ||
	    json_object_set_new(hdr, "kid", json_string(ks_key_kid(key))) < 0 ||
	    (extra_header != NULL && json_object_update(hdr, (json_t *)extra_header) < 0) ||
	    (hjson = json_dumps(hdr, JSON_COMPACT)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	hlen = b64url_encoded_len(strlen(hjson));
	plen = b64url_encoded_len(payload_len);
	slen = b64url_encoded_len(CIMD_SIG_MAX);
	/* What we build, our own verifier must accept: one cap for both. */
	if (hlen + plen + slen + 2 > CIMD_JWS_MAX) {
		r = -E2BIG;
		goto out;
	}
	if ((out = malloc(hlen + plen + slen + 3)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	b64url_encode((const uint8_t *)hjson, strlen(hjson), out);
	out[hlen] = '.';
	b64url_encode(payload, payload_len, out + hlen + 1);
	off = hlen + 1 + plen;
	/* RFC 7515 §5.1 step 5: the signing input is ASCII(header "." payload). */
	if ((r = key_store_sign(ks, key, (const uint8_t *)out, off, sig, &siglen)) < 0)
		goto out;
	out[off] = '.';
	b64url_encode(sig, siglen, out + off + 1);
	*ret_jws = out;
	out = NULL;
	r = 0;
out:
	free(out);
	free(hjson);
	json_decref(hdr);
	return r;
}
