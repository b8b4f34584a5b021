/*
 * dsse.c — DSSE v1 envelopes (github.com/secure-systems-lab/dsse, protocol.md
 * and envelope.md): the pre-authentication encoding, and verification offline
 * against a JWKS.  Signing with a key store key is dsse_sign.c; the standard
 * base64 with padding (RFC 4648 §4) that envelopes use is b64.c's BASE64_STD.
 *
 * The signature covers the pre-authentication encoding (PAE) of payloadType and
 * payload, never the JSON, so the envelope's serialisation does not matter.
 * Signatures are ECDSA in DER (SEC 1 §C.5), as the DSSE reference
 * implementations produce them; the hash is the curve's (P-256: SHA-256,
 * P-384: SHA-384, RFC 7518 §3.4).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt.h"

/* Caps for what a verifier accepts: an envelope's payload (decoded) and its
 * signatures.  What dsse_sign builds stays within them: it builds on dsse_pae,
 * which holds payload and type to these caps. */
#define DSSE_PAYLOAD_MAX (1024 * 1024)
#define DSSE_TYPE_MAX 256
#define DSSE_SIGS_MAX 16
#define DSSE_SIG_B64_MAX 256 /* base64 of a DER ECDSA P-384 signature is 140 */

/* ---- DSSE ---- */

int dsse_pae(const char *type, const uint8_t *body, size_t len, uint8_t **ret, size_t *ret_len)
{
	char head[64 + DSSE_TYPE_MAX];
	size_t tlen;
	uint8_t *out;
	int n;

	if (type == NULL || (body == NULL && len > 0))
		return -EINVAL;
	if ((tlen = strnlen(type, DSSE_TYPE_MAX + 1)) > DSSE_TYPE_MAX || len > DSSE_PAYLOAD_MAX)
		return -E2BIG;
	/* DSSE protocol, "Signature Definition": PAE(type, body) = "DSSEv1" SP
	 * LEN(type) SP type SP LEN(body) SP body, LEN(s) the ASCII decimal
	 * encoding of the byte length of s, with no leading zeros. */
	n = snprintf(head, sizeof(head), "DSSEv1 %zu %s %zu ", tlen, type, len);
	if (n < 0 || (size_t)n >= sizeof(head))
		return -E2BIG;
	if ((out = malloc((size_t)n + len + 1)) == NULL)
		return -ENOMEM;
	memcpy(out, head, (size_t)n);
	if (len > 0)
		memcpy(out + n, body, len);
	*ret = out;
	*ret_len = (size_t)n + len;
	return 0;
}

/* The ECDSA algorithm of a trusted JWK: its crv decides the hash (P-256:
 * SHA-256, P-384: SHA-384); an alg member, if any, must agree. */
static enum cimd_alg jwk_ecdsa_alg(const json_t *jwk)
{
	const char *kty = json_string_value(json_object_get(jwk, "kty"));
	const char *crv = json_string_value(json_object_get(jwk, "crv"));
	const json_t *a = json_object_get(jwk, "alg");
	enum cimd_alg alg;

	if (kty == NULL || strcmp(kty, "EC") != 0 || crv == NULL)
		return CIMD_ALG_NONE;
	if (strcmp(crv, "P-256") == 0)
		alg = CIMD_ALG_ES256;
	else if (strcmp(crv, "P-384") == 0)
		alg = CIMD_ALG_ES384;
	else
		return CIMD_ALG_NONE;
	if (a != NULL && cimd_alg_from_name(json_string_value(a)) != alg)
		return CIMD_ALG_NONE;
	return alg;
}

/* One signature (base64 of DER) by one trusted key over the PAE: 0, or a
 * negative code with the reason in errbuf. */
static int verify_one(const json_t *jwk, const char *kid, const char *sig_b64, const uint8_t *pae,
		      size_t pae_len, char *errbuf, size_t errlen)
{
	enum cimd_alg alg = jwk_ecdsa_alg(jwk);
	size_t size = cimd_alg_ec_size(alg), der_len;
	uint8_t *der = NULL, raw[2 * 66];
	int r;

	if (alg == CIMD_ALG_NONE)
		return cimd_fail(errbuf, errlen, -CIMD_EVERIFY,
				 "trusted key %s is not an ECDSA P-256 or P-384 key", kid);
	if ((r = b64_decode(sig_b64, strlen(sig_b64), &der, &der_len)) < 0) {
		r = cimd_fail(errbuf, errlen, r == -ENOMEM ? r : -CIMD_EVERIFY,
			      "signature by %s is not base64", kid);
		goto out;
	}
	/* SEC 1 §C.5, strict DER with r and s within the field size. */
	if (ecdsa_der_to_raw(der, der_len, size, raw) < 0) {
		r = cimd_fail(errbuf, errlen, -CIMD_EVERIFY,
			      "signature by %s is not a DER ECDSA signature for %s", kid,
			      cimd_alg_name(alg));
		goto out;
	}
	r = jws_verify_signature(jwk, alg, pae, pae_len, raw, 2 * size);
	if (r == -CIMD_EVERIFY)
		r = cimd_fail(errbuf, errlen, r, "signature by %s does not verify", kid);
	else if (r == -ENOMEM)
		goto out;
	else if (r < 0)
		r = cimd_fail(errbuf, errlen, -CIMD_EVERIFY, "trusted key %s is unusable (%s)", kid,
			      cimd_strerror(r));
out:
	free(der);
	return r;
}

/* envelope.md: {"payload": string, "payloadType": string,
 * "signatures": [{"keyid": string, "sig": string}, ...]}; other members are
 * ignored ("Consumers MUST ignore unrecognized fields").  Every member is
 * checked, and capped, before anything is decoded. */
static int envelope_check(const json_t *envelope, const json_t **ret_payload, const char **ret_type,
			  const json_t **ret_sigs, char *errbuf, size_t errlen)
{
	const json_t *jpayload, *jtype, *sigs, *s;
	const char *type;
	size_t i, n;

	if (!json_is_object(envelope))
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT, "envelope is not a JSON object");
	jpayload = json_object_get(envelope, "payload");
	jtype = json_object_get(envelope, "payloadType");
	sigs = json_object_get(envelope, "signatures");
	if (!json_is_string(jpayload))
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT, "payload is not a string");
	if (!json_is_string(jtype))
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT, "payloadType is not a string");
	type = json_string_value(jtype);
	/* The PAE takes type as bytes; a NUL inside would cut it short here. */
	if (json_string_length(jtype) != strlen(type) || strlen(type) > DSSE_TYPE_MAX)
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				 "payloadType has a NUL or is longer than %d bytes", DSSE_TYPE_MAX);
	if (!json_is_array(sigs) || (n = json_array_size(sigs)) == 0)
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				 "signatures is not a non-empty array");
	if (n > DSSE_SIGS_MAX)
		return cimd_fail(errbuf, errlen, -E2BIG, "more than %d signatures", DSSE_SIGS_MAX);
	json_array_foreach(sigs, i, s)
	{
		if (!json_is_object(s))
			return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
					 "signatures[%zu] is not an object", i);
		/* envelope.md "Parsing rules": keyid may be unset, meaning "". */
		if (json_object_get(s, "keyid") != NULL &&
		    !json_is_string(json_object_get(s, "keyid")))
			return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
					 "signatures[%zu].keyid is not a string", i);
		if (!json_is_string(json_object_get(s, "sig")) ||
		    json_string_length(json_object_get(s, "sig")) > DSSE_SIG_B64_MAX)
			return cimd_fail(
			    errbuf, errlen, -CIMD_EFORMAT,
			    "signatures[%zu].sig is not a string of at most %d characters", i,
			    DSSE_SIG_B64_MAX);
	}
	if (json_string_length(jpayload) > (DSSE_PAYLOAD_MAX + 2) / 3 * 4)
		return cimd_fail(errbuf, errlen, -E2BIG, "payload is larger than %d bytes",
				 DSSE_PAYLOAD_MAX);
	*ret_payload = jpayload;
	*ret_type = type;
	*ret_sigs = sigs;
	return 0;
}

/* DSSE protocol, "Multi-signature Verification" with t = 1: keyid only
 * narrows the choice of trusted keys (it is unauthenticated); one signature
 * that verifies with a trusted key accepts the envelope, and signatures by
 * keys we do not trust are skipped.  The kid of the key that verified into
 * *ret_kid; otherwise the first reason a trusted key gave. */
static int find_signature(const json_t *sigs, const json_t *keys, const uint8_t *pae,
			  size_t pae_len, const char **ret_kid, char *errbuf, size_t errlen)
{
	const json_t *s, *k;
	const char *keyid, *sig_b64, *kid, *ok_kid = NULL;
	size_t i, j, trusted = 0;
	char first[256] = "";
	int r;

	json_array_foreach(sigs, i, s)
	{
		if ((keyid = json_string_value(json_object_get(s, "keyid"))) == NULL)
			keyid = "";
		sig_b64 = json_string_value(json_object_get(s, "sig"));
		json_array_foreach(keys, j, k)
		{
			kid = json_string_value(json_object_get(k, "kid"));
			if (kid == NULL || strcmp(kid, keyid) != 0)
				continue;
			trusted++;
			r = verify_one(k, kid, sig_b64, pae, pae_len,
				       first[0] == '\0' ? first : NULL, sizeof(first));
			if (r == -ENOMEM)
				goto out;
			if (r == 0) {
				ok_kid = kid;
				break;
			}
		}
		if (ok_kid != NULL)
			break;
	}
	if (ok_kid == NULL) {
		if (trusted == 0)
			r = cimd_fail(errbuf, errlen, -CIMD_EVERIFY,
				      "no signature by a trusted key");
		else
			r = cimd_fail(errbuf, errlen, -CIMD_EVERIFY, "%s", first);
		goto out;
	}
	*ret_kid = ok_kid;
	r = 0;
out:
	return r;
}

int dsse_verify(const json_t *envelope, const json_t *trust_jwks, const char **ret_type,
		uint8_t **ret_payload, size_t *ret_len, const char **ret_kid, char *errbuf,
		size_t errlen)
{
	const json_t *jpayload = NULL, *sigs = NULL, *keys;
	const char *type = NULL, *ok_kid = NULL;
	uint8_t *payload = NULL, *pae = NULL;
	size_t payload_len = 0, pae_len;
	int r;

	if (errbuf != NULL && errlen > 0)
		errbuf[0] = '\0';
	if (ret_type == NULL || ret_payload == NULL || ret_len == NULL || ret_kid == NULL)
		return -EINVAL;
	keys = json_object_get(trust_jwks, "keys");
	if (!json_is_array(keys))
		return cimd_fail(errbuf, errlen, -EINVAL, "trust JWKS has no \"keys\" array");
	if ((r = envelope_check(envelope, &jpayload, &type, &sigs, errbuf, errlen)) < 0)
		return r;
	if ((r = b64_decode(json_string_value(jpayload), json_string_length(jpayload), &payload,
			    &payload_len)) < 0) {
		r = cimd_fail(errbuf, errlen, r, "payload is not base64");
		goto out;
	}
	/* DSSE protocol, "To verify": the signature is over
	 * PAE(UTF8(PAYLOAD_TYPE), SERIALIZED_BODY), rebuilt from what was received. */
	if ((r = dsse_pae(type, payload, payload_len, &pae, &pae_len)) < 0 ||
	    (r = find_signature(sigs, keys, pae, pae_len, &ok_kid, errbuf, errlen)) < 0)
		goto out;
	*ret_type = type;
	*ret_payload = payload;
	*ret_len = payload_len;
	*ret_kid = ok_kid;
	payload = NULL;
	r = 0;
out:
	free(payload);
	free(pae);
	return r;
}
