/*
 * tpm2_verify.c — TPM2_Certify evidence, checked offline.
 *
 * A TPM2_Certify (TPM 2.0 Part 3 §18.2) answer is a TPMS_ATTEST (Part 2
 * §10.12.8) whose attested member is a TPMS_CERTIFY_INFO (Part 2 §10.12.3):
 * the Name of the certified object, signed by an attestation key.  The Name of
 * an object is nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1 §16), so a verifier
 * that holds the object's marshalled TPMT_PUBLIC (Part 2 §12.2.4) can check
 * that the TPM vouched for exactly that public area, and read the attributes
 * the TPM enforces from it.  Nothing here talks to a TPM: only tss2-mu for the
 * wire formats and OpenSSL for the signature.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_tpm2_types.h>

#include "fmt.h"

/* The attributes a key must have for its evidence to mean "made in this TPM
 * and never leaves it" (Part 2 §8.3 TPMA_OBJECT: fixedTPM and fixedParent, it
 * cannot be duplicated; sensitiveDataOrigin, the TPM generated the secret). */
#define CERTIFY_REQUIRED_ATTRS                                                                     \
	(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN)

static int fail(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *errbuf, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (errbuf != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(errbuf, errlen, fmt, ap);
		va_end(ap);
	}
	return -CIMD_EVERIFY;
}

/* Exactly one TPMT_PUBLIC, nothing after it. */
static int parse_public(const uint8_t *pub, size_t pub_len, TPMT_PUBLIC *ret)
{
	TPMT_PUBLIC p;
	size_t off = 0;

	if (pub == NULL || pub_len == 0 || pub_len > sizeof(TPM2B_PUBLIC))
		return -CIMD_EFORMAT;
	memset(&p, 0, sizeof(p));
	if (Tss2_MU_TPMT_PUBLIC_Unmarshal(pub, pub_len, &off, &p) != TSS2_RC_SUCCESS ||
	    off != pub_len)
		return -CIMD_EFORMAT;
	*ret = p;
	return 0;
}

/* An ECC coordinate (TPM2B_ECC_PARAMETER) left-padded to the field size. */
static int ecc_coord(const TPM2B_ECC_PARAMETER *c, size_t size, uint8_t *out)
{
	if (c->size == 0 || c->size > size)
		return -CIMD_EFORMAT;
	memset(out, 0, size - c->size);
	memcpy(out + size - c->size, c->buffer, c->size);
	return 0;
}

static int public_to_jwk(const TPMT_PUBLIC *p, json_t **ret_jwk)
{
	uint8_t x[48], y[48], e[4];
	enum cimd_alg alg;
	uint32_t exp;
	size_t size;
	int r;

	switch (p->type) {
	case TPM2_ALG_ECC:
		/* Part 2 §12.2.3.6 TPMS_ECC_PARMS.curveID; §11.2.5.2 TPMS_ECC_POINT. */
		if (p->parameters.eccDetail.curveID == TPM2_ECC_NIST_P256)
			alg = CIMD_ALG_ES256;
		else if (p->parameters.eccDetail.curveID == TPM2_ECC_NIST_P384)
			alg = CIMD_ALG_ES384;
		else
			return -CIMD_EALG;
		size = cimd_alg_ec_size(alg);
		if ((r = ecc_coord(&p->unique.ecc.x, size, x)) < 0 ||
		    (r = ecc_coord(&p->unique.ecc.y, size, y)) < 0)
			return r;
		return jwk_new_ec(alg, x, y, ret_jwk);
	case TPM2_ALG_RSA:
		/* Part 2 §12.2.3.5 TPMS_RSA_PARMS: an exponent of zero means the
		 * default, 2^16 + 1. */
		exp = p->parameters.rsaDetail.exponent;
		if (exp == 0)
			exp = 65537;
		e[0] = (uint8_t)(exp >> 24);
		e[1] = (uint8_t)(exp >> 16);
		e[2] = (uint8_t)(exp >> 8);
		e[3] = (uint8_t)exp;
		/* §11.2.4.5 TPM2B_PUBLIC_KEY_RSA: the modulus, keyBits long. */
		if (p->unique.rsa.size == 0 ||
		    (size_t)p->unique.rsa.size * 8 != p->parameters.rsaDetail.keyBits)
			return -CIMD_EFORMAT;
		return jwk_new_rsa(p->unique.rsa.buffer, p->unique.rsa.size, e, sizeof(e), ret_jwk);
	default:
		return -CIMD_EALG;
	}
}

int tpm2_public_jwk(const uint8_t *pub, size_t pub_len, json_t **ret_jwk, int *ret_restricted)
{
	TPMT_PUBLIC p;
	json_t *jwk = NULL;
	int r;

	if (ret_jwk == NULL)
		return -EINVAL;
	if ((r = parse_public(pub, pub_len, &p)) < 0)
		return r;
	if ((r = public_to_jwk(&p, &jwk)) < 0)
		return r;
	*ret_jwk = jwk;
	if (ret_restricted != NULL)
		*ret_restricted = (p.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0;
	return 0;
}

/*
 * The evidence itself (TPM 2.0 Part 2 §10.12.8, checked in the order of its
 * fields): a whole TPMS_ATTEST made by the TPM, the answer of TPM2_Certify,
 * signed by the AK, over the qualifying data the verifier asked for.  The
 * parsed structure into *ret_attest.
 */
static int certify_evidence(const uint8_t *attest, size_t attest_len, const uint8_t *sig,
			    size_t sig_len, const json_t *ak_jwk, const uint8_t *expected_extra,
			    size_t extra_len, TPMS_ATTEST **ret_attest, char *errbuf, size_t errlen)
{
	TPMS_ATTEST *a = NULL;
	size_t off = 0;
	int r;

	/* Part 2 §10.12.9: a TPM2B_ATTEST holds at most sizeof(TPMS_ATTEST). */
	if (attest_len == 0 || attest_len > sizeof(TPMS_ATTEST)) {
		r = fail(errbuf, errlen, "attest: %zu bytes is not a TPMS_ATTEST", attest_len);
		goto out;
	}
	if ((a = calloc(1, sizeof(*a))) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	/* Part 2 §10.12.8 TPMS_ATTEST, all of it and nothing after it. */
	if (Tss2_MU_TPMS_ATTEST_Unmarshal(attest, attest_len, &off, a) != TSS2_RC_SUCCESS ||
	    off != attest_len) {
		r = fail(errbuf, errlen, "attest: does not parse as a TPMS_ATTEST");
		goto out;
	}
	/* §10.12.8 and §6.2: magic is TPM_GENERATED_VALUE in every structure the
	 * TPM builds itself; a restricted key refuses to sign an external message
	 * that begins with it, so it marks TPM-made evidence. */
	if (a->magic != TPM2_GENERATED_VALUE) {
		r = fail(errbuf, errlen, "magic: 0x%08x is not TPM_GENERATED_VALUE",
			 (unsigned)a->magic);
		goto out;
	}
	/* §6.9 TPM_ST_ATTEST_CERTIFY: the answer of TPM2_Certify. */
	if (a->type != TPM2_ST_ATTEST_CERTIFY) {
		r = fail(errbuf, errlen, "type: 0x%04x is not TPM_ST_ATTEST_CERTIFY",
			 (unsigned)a->type);
		goto out;
	}
	/* The AK signs H(attest) with ECDSA-SHA256 (Part 1 §25.2.3: its scheme
	 * is fixed); the signature comes as raw r||s, 32 octets each. */
	if (sig_len != 64) {
		r = fail(errbuf, errlen, "signature: %zu bytes, not a P-256 r||s", sig_len);
		goto out;
	}
	r = jws_verify_signature(ak_jwk, CIMD_ALG_ES256, attest, attest_len, sig, sig_len);
	if (r == -ENOMEM)
		goto out;
	if (r < 0) {
		r = fail(errbuf, errlen, "signature: does not verify with the AK (%s)",
			 cimd_strerror(r));
		goto out;
	}
	/* §10.12.8 extraData: the qualifyingData the verifier asked for, which
	 * makes the evidence fresh. */
	if (a->extraData.size != extra_len ||
	    (extra_len > 0 && CRYPTO_memcmp(a->extraData.buffer, expected_extra, extra_len) != 0)) {
		r = fail(errbuf, errlen, "extraData: not the expected qualifying data");
		goto out;
	}
	*ret_attest = a;
	a = NULL;
	r = 0;
out:
	free(a);
	return r;
}

/*
 * The key it certifies: pub is the public area whose Name was certified
 * (Part 1 §16), of a key the TPM made and keeps (Part 2 §8.3), and the very
 * key of key_jwk (RFC 7638 thumbprints compared).
 */
static int certified_key(const TPMS_ATTEST *a, const uint8_t *pub, size_t pub_len,
			 const json_t *key_jwk, char *errbuf, size_t errlen)
{
	TPMT_PUBLIC p;
	const TPM2B_NAME *name;
	uint8_t want[2 + SHA256_DIGEST_LENGTH];
	char tp_have[CIMD_KID_LEN + 1], tp_want[CIMD_KID_LEN + 1];
	json_t *have = NULL;
	int r;

	if (parse_public(pub, pub_len, &p) < 0) {
		r = fail(errbuf, errlen, "public: does not parse as a TPMT_PUBLIC");
		goto out;
	}
	/* Part 1 §16: Name = nameAlg (big-endian UINT16) || H_nameAlg(TPMT_PUBLIC),
	 * compared with the certified name (Part 2 §10.12.3 TPMS_CERTIFY_INFO.name). */
	if (p.nameAlg != TPM2_ALG_SHA256) {
		r = fail(errbuf, errlen, "name: nameAlg 0x%04x is not SHA-256",
			 (unsigned)p.nameAlg);
		goto out;
	}
	want[0] = (uint8_t)(p.nameAlg >> 8);
	want[1] = (uint8_t)p.nameAlg;
	SHA256(pub, pub_len, want + 2);
	name = &a->attested.certify.name;
	if (name->size != sizeof(want) || CRYPTO_memcmp(name->name, want, sizeof(want)) != 0) {
		r = fail(errbuf, errlen, "name: the certified name is not that of the public area");
		goto out;
	}
	/* Part 2 §8.3: attributes the TPM enforces for the object's lifetime. */
	if ((p.objectAttributes & CERTIFY_REQUIRED_ATTRS) != CERTIFY_REQUIRED_ATTRS) {
		r = fail(errbuf, errlen,
			 "attributes: 0x%08x lack fixedTPM, fixedParent or sensitiveDataOrigin",
			 (unsigned)p.objectAttributes);
		goto out;
	}
	/* §8.3 restricted: a key that signs only TPM-made digests is an AK, not a
	 * key for clients. */
	if (p.objectAttributes & TPMA_OBJECT_RESTRICTED) {
		r = fail(errbuf, errlen, "attributes: the certified key is restricted");
		goto out;
	}
	if ((r = public_to_jwk(&p, &have)) < 0) {
		if (r == -ENOMEM)
			goto out;
		r = fail(errbuf, errlen, "public key: not an ECC P-256/P-384 or RSA key (%s)",
			 cimd_strerror(r));
		goto out;
	}
	/* RFC 7638 thumbprints cover exactly the members that make the key. */
	if (jwk_thumbprint(have, tp_have) < 0 || jwk_thumbprint(key_jwk, tp_want) < 0) {
		r = fail(errbuf, errlen, "public key: key JWK is not a public JWK");
		goto out;
	}
	if (strcmp(tp_have, tp_want) != 0) {
		r = fail(errbuf, errlen, "public key: the certified key is %s, not %s", tp_have,
			 tp_want);
		goto out;
	}
	r = 0;
out:
	json_decref(have);
	return r;
}

int tpm2_verify_certify(const uint8_t *attest, size_t attest_len, const uint8_t *sig,
			size_t sig_len, const json_t *ak_jwk, const uint8_t *pub, size_t pub_len,
			const json_t *key_jwk, const uint8_t *expected_extra, size_t extra_len,
			char *errbuf, size_t errlen)
{
	TPMS_ATTEST *a = NULL;
	int r;

	if (errbuf != NULL && errlen > 0)
		errbuf[0] = '\0';
	if (attest == NULL || sig == NULL || ak_jwk == NULL || pub == NULL || key_jwk == NULL ||
	    (expected_extra == NULL && extra_len > 0))
		return -EINVAL;
	if ((r = certify_evidence(attest, attest_len, sig, sig_len, ak_jwk, expected_extra,
				  extra_len, &a, errbuf, errlen)) < 0 ||
	    (r = certified_key(a, pub, pub_len, key_jwk, errbuf, errlen)) < 0)
		goto out;
	r = 0;
out:
	free(a);
	return r;
}
