/*
 * common.c — the fuzz targets' fixed signing key (common.h).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common.h"
#include "fw.h"

/* Made with `openssl ecparam -name prime256v1 -genkey`; for fuzzing only. */
static const char key_pem[] = "-----BEGIN PRIVATE KEY-----\n"
			      "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjB8alrs/b/qKj62f\n"
			      "W0KexoyJiflnAoEe1nQNdCqcP66hRANCAARlg/U/b2g58kBtEKDSzY8ZOs3FNmn7\n"
			      "DGDNVV1OOunHIEm/WWZzcMyK5blU4ZX+d1cs2sqfRMVxFEc/p3dXsNOH\n"
			      "-----END PRIVATE KEY-----\n";

static EVP_PKEY *pkey;
static json_t *jwk;

static int load(void)
{
	uint8_t pub[65];
	size_t n = 0;
	char kid[CIMD_KID_LEN + 1];
	BIO *b;

	if (pkey != NULL)
		return 0;
	if ((b = BIO_new_mem_buf(key_pem, -1)) == NULL)
		return -1;
	pkey = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	/* The uncompressed point 0x04 || x || y (SEC 1 §2.3.3). */
	if (pkey == NULL ||
	    EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub), &n) !=
		1 ||
	    n != sizeof(pub) || jwk_new_ec(CIMD_ALG_ES256, pub + 1, pub + 33, &jwk) < 0 ||
	    jwk_thumbprint(jwk, kid) < 0 || json_object_set_new(jwk, "kid", json_string(kid)) < 0)
		return -1;
	return 0;
}

const json_t *fz_jwk(void)
{
	return load() == 0 ? jwk : NULL;
}

int fz_sign_der(const uint8_t *in, size_t len, uint8_t **ret_der, size_t *ret_len)
{
	EVP_MD_CTX *c = NULL;
	uint8_t *der = NULL;
	size_t n = 0;
	int r = -1;

	if (load() < 0 || (c = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestSignInit(c, NULL, EVP_sha256(), NULL, pkey) != 1 ||
	    EVP_DigestSign(c, NULL, &n, in, len) != 1 || (der = malloc(n)) == NULL ||
	    EVP_DigestSign(c, der, &n, in, len) != 1)
		goto out;
	*ret_der = der;
	*ret_len = n;
	der = NULL;
	r = 0;
out:
	free(der);
	EVP_MD_CTX_free(c);
	return r;
}

int fz_sign_raw(const uint8_t *in, size_t len, uint8_t ret_sig[64])
{
	uint8_t *der = NULL;
	size_t n = 0;
	int r;

	if ((r = fz_sign_der(in, len, &der, &n)) == 0)
		r = ecdsa_der_to_raw(der, n, 32, ret_sig) < 0 ? -1 : 0;
	free(der);
	return r;
}
