/*
 * jws.c — JWS compact serialisation (RFC 7515 §7.1), verified:
 *   BASE64URL(UTF8(header)) "." BASE64URL(payload) "." BASE64URL(signature)
 * Verification uses OpenSSL on a public JWK, so tools can verify offline;
 * signing, which goes through the key store, is jws_sign.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "fmt.h"

static int verify_sig(EVP_PKEY *pkey, enum cimd_alg alg, const uint8_t *in, size_t in_len,
		      const uint8_t *sig, size_t sig_len);

int jws_verify_signature(const json_t *jwk, enum cimd_alg alg, const uint8_t *in, size_t in_len,
			 const uint8_t *sig, size_t sig_len)
{
	EVP_PKEY *pkey = NULL;
	int r;

	if ((r = jwk_to_evp(jwk, &pkey)) < 0)
		return r;
	r = verify_sig(pkey, alg, in, in_len, sig, sig_len);
	EVP_PKEY_free(pkey);
	return r;
}

static int verify_sig(EVP_PKEY *pkey, enum cimd_alg alg, const uint8_t *in, size_t in_len,
		      const uint8_t *sig, size_t sig_len)
{
	EVP_MD_CTX *md = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t *der = NULL;
	size_t der_len, size = cimd_alg_ec_size(alg);
	const EVP_MD *h = alg == CIMD_ALG_ES384 ? EVP_sha384() : EVP_sha256();
	int r = -CIMD_ECRYPTO;

	if (size != 0) {
		/* RFC 7518 §3.4: exactly 2 * field size octets. */
		if (sig_len != 2 * size)
			return -CIMD_EVERIFY;
		if ((r = ecdsa_raw_to_der(sig, size, &der, &der_len)) < 0)
			return r;
		sig = der;
		sig_len = der_len;
		if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
		    (size_t)EVP_PKEY_get_bits(pkey) != size * 8) {
			r = -CIMD_EALG;
			goto out;
		}
	} else if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
		r = -CIMD_EALG;
		goto out;
	}
	if ((md = EVP_MD_CTX_new()) == NULL || EVP_DigestVerifyInit(md, &pctx, h, NULL, pkey) != 1)
		goto out;
	/* RFC 7518 §3.5: RSASSA-PSS, MGF1 with the same hash, salt = hash length. */
	if (alg == CIMD_ALG_PS256 &&
	    (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
	     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
	     EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, h) != 1))
		goto out;
	r = EVP_DigestVerify(md, sig, sig_len, in, in_len) == 1 ? 0 : -CIMD_EVERIFY;
out:
	free(der);
	EVP_MD_CTX_free(md);
	return r;
}

int jws_verify(const char *jws, const json_t *jwk, json_t **ret_header, uint8_t **ret_payload,
	       size_t *ret_payload_len)
{
	const char *d1, *d2, *halg;
	size_t len;
	uint8_t *hb = NULL, *pb = NULL, *sb = NULL;
	size_t hn, pn, sn;
	json_t *hdr = NULL;
	EVP_PKEY *pkey = NULL;
	enum cimd_alg alg;
	int r = -CIMD_EFORMAT;

	if ((len = strnlen(jws, CIMD_JWS_MAX + 1)) > CIMD_JWS_MAX)
		return -E2BIG;
	if ((d1 = strchr(jws, '.')) == NULL || (d2 = strchr(d1 + 1, '.')) == NULL ||
	    strchr(d2 + 1, '.') != NULL)
		return -CIMD_EFORMAT;
	if (b64url_decode(jws, (size_t)(d1 - jws), &hb, &hn) < 0 ||
	    b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pb, &pn) < 0 ||
	    b64url_decode(d2 + 1, len - (size_t)(d2 + 1 - jws), &sb, &sn) < 0)
		goto out;
	if ((hdr = json_loadb((const char *)hb, hn, JSON_REJECT_DUPLICATES, NULL)) == NULL ||
	    !json_is_object(hdr))
		goto out;
	/* The key's alg decides; a header naming another is refused (RFC 8725 §3.1). */
	/* RFC 7515 §4.1.11: extensions listed in crit must be understood; we
	 * understand none (not even b64, RFC 7797), so any crit is refused. */
	if (json_object_get(hdr, "crit") != NULL) {
		r = -CIMD_EFORMAT;
		goto out;
	}
	halg = json_string_value(json_object_get(hdr, "alg"));
	alg = cimd_alg_from_name(json_string_value(json_object_get(jwk, "alg")));
	if (alg == CIMD_ALG_NONE || halg == NULL || strcmp(halg, cimd_alg_name(alg)) != 0) {
		r = -CIMD_EALG;
		goto out;
	}
	if ((r = jwk_to_evp(jwk, &pkey)) < 0)
		goto out;
	if ((r = verify_sig(pkey, alg, (const uint8_t *)jws, (size_t)(d2 - jws), sb, sn)) < 0)
		goto out;
	if (ret_header != NULL) {
		*ret_header = hdr;
		hdr = NULL;
	}
	*ret_payload = pb;
	*ret_payload_len = pn;
	pb = NULL;
	r = 0;
out:
	free(hb);
	free(pb);
	free(sb);
	json_decref(hdr);
	EVP_PKEY_free(pkey);
	return r;
}
