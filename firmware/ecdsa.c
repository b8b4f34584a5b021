/*
 * ecdsa.c — ECDSA signature encodings.
 *
 * JWS carries ECDSA signatures as the raw concatenation r||s, each integer
 * left-padded to the curve's field size (RFC 7518 §3.4).  PKCS#11 tokens driven
 * through OpenSSL, and DSSE (which uses DER), need the ASN.1 form
 * ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (SEC 1 §C.5).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>

#include "fmt.h"

int ecdsa_der_to_raw(const uint8_t *der, size_t der_len, size_t size, uint8_t *ret_raw)
{
	const unsigned char *p = der;
	const BIGNUM *r, *s;
	ECDSA_SIG *sig;
	unsigned char *check = NULL;
	int rc = -CIMD_EFORMAT, n;

	if (size == 0 || size > 66 || der_len > 2 * 66 + 16)
		return -CIMD_EFORMAT;
	if ((sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) == NULL)
		goto out;
	/* Exact length, and DER not BER: re-encoding must give the same bytes. */
	if ((size_t)(p - der) != der_len)
		goto out;
	if ((n = i2d_ECDSA_SIG(sig, &check)) < 0 || (size_t)n != der_len ||
	    memcmp(check, der, der_len) != 0)
		goto out;
	ECDSA_SIG_get0(sig, &r, &s);
	if (BN_is_negative(r) || BN_is_negative(s) || BN_num_bytes(r) > (int)size ||
	    BN_num_bytes(s) > (int)size)
		goto out;
	if (BN_bn2binpad(r, ret_raw, (int)size) < 0 ||
	    BN_bn2binpad(s, ret_raw + size, (int)size) < 0)
		goto out;
	rc = 0;
out:
	OPENSSL_free(check);
	ECDSA_SIG_free(sig);
	return rc;
}

int ecdsa_raw_to_der(const uint8_t *raw, size_t size, uint8_t **ret_der, size_t *ret_len)
{
	BIGNUM *r = NULL, *s = NULL;
	ECDSA_SIG *sig = NULL;
	unsigned char *der = NULL;
	uint8_t *copy;
	int rc = -CIMD_ECRYPTO, n;

	if (size == 0 || size > 66)
		return -CIMD_EFORMAT;
	if ((sig = ECDSA_SIG_new()) == NULL || (r = BN_bin2bn(raw, (int)size, NULL)) == NULL ||
	    (s = BN_bin2bn(raw + size, (int)size, NULL)) == NULL)
		goto out;
	if (ECDSA_SIG_set0(sig, r, s) != 1)
		goto out;
	r = s = NULL; /* owned by sig now */
	if ((n = i2d_ECDSA_SIG(sig, &der)) <= 0)
		goto out;
	if ((copy = malloc((size_t)n)) == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(copy, der, (size_t)n);
	*ret_der = copy;
	*ret_len = (size_t)n;
	rc = 0;
out:
	OPENSSL_free(der);
	BN_free(r);
	BN_free(s);
	ECDSA_SIG_free(sig);
	return rc;
}
