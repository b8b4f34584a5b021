/*
 * jwk.c — public JSON Web Keys (RFC 7517, RFC 7518 §6) and their RFC 7638
 * thumbprints, plus the algorithm table.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/sha.h>

#include "fmt.h"

static const struct {
	enum cimd_alg alg;
	const char *name;
	const char *crv; /* RFC 7518 §6.2.1.1 */
	size_t ec_size;
} algs[] = {
    {CIMD_ALG_ES256, "ES256", "P-256", 32},
    {CIMD_ALG_ES384, "ES384", "P-384", 48},
    {CIMD_ALG_PS256, "PS256", NULL, 0},
};

enum cimd_alg cimd_alg_from_name(const char *name)
{
	size_t i;

	for (i = 0; name != NULL && i < sizeof(algs) / sizeof(algs[0]); i++)
		if (strcmp(name, algs[i].name) == 0)
			return algs[i].alg;
	return CIMD_ALG_NONE;
}

const char *cimd_alg_name(enum cimd_alg alg)
{
	size_t i;

	for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++)
		if (algs[i].alg == alg)
			return algs[i].name;
	return NULL;
}

static const char *alg_crv(enum cimd_alg alg)
{
	size_t i;

	for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++)
		if (algs[i].alg == alg)
			return algs[i].crv;
	return NULL;
}

size_t cimd_alg_ec_size(enum cimd_alg alg)
{
	size_t i;

	for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++)
		if (algs[i].alg == alg)
			return algs[i].ec_size;
	return 0;
}

static int set_b64(json_t *o, const char *name, const uint8_t *v, size_t n)
{
	char *s;
	int r;

	if ((r = b64url_encode_alloc(v, n, &s)) < 0)
		return r;
	r = json_object_set_new(o, name, json_string(s)) == 0 ? 0 : -ENOMEM;
	free(s);
	return r;
}

int jwk_new_ec(enum cimd_alg alg, const uint8_t *x, const uint8_t *y, json_t **ret_jwk)
{
	size_t size = cimd_alg_ec_size(alg);
	json_t *jwk;
	int r;

	if (size == 0)
		return -CIMD_EALG;
	if ((jwk = json_object()) == NULL)
		return -ENOMEM;
	if (json_object_set_new(jwk, "kty", json_string("EC")) < 0 ||
	    json_object_set_new(jwk, "crv", json_string(alg_crv(alg))) < 0) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = set_b64(jwk, "x", x, size)) < 0 || (r = set_b64(jwk, "y", y, size)) < 0)
		goto out;
	*ret_jwk = jwk;
	jwk = NULL;
	r = 0;
out:
	json_decref(jwk);
	return r;
}

int jwk_new_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len, json_t **ret_jwk)
{
	json_t *jwk;
	int r;

	/* RFC 7518 §6.3.1.1/§6.3.1.2: minimal octets, so strip leading zeros. */
	while (n_len > 0 && n[0] == 0)
		n++, n_len--;
	while (e_len > 0 && e[0] == 0)
		e++, e_len--;
	if (n_len == 0 || e_len == 0)
		return -CIMD_EFORMAT;
	if ((jwk = json_object()) == NULL)
		return -ENOMEM;
	if (json_object_set_new(jwk, "kty", json_string("RSA")) < 0) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = set_b64(jwk, "n", n, n_len)) < 0 || (r = set_b64(jwk, "e", e, e_len)) < 0)
		goto out;
	*ret_jwk = jwk;
	jwk = NULL;
	r = 0;
out:
	json_decref(jwk);
	return r;
}

/* A member that goes into the thumbprint input: a string of base64url or
 * registered-name characters, so it needs no JSON escaping. */
static const char *tp_member(const json_t *jwk, const char *name)
{
	const char *s = json_string_value(json_object_get(jwk, name));
	const char *p;

	if (s == NULL || *s == '\0' || strlen(s) > 2048)
		return NULL;
	for (p = s; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
			return NULL;
	return s;
}

int jwk_thumbprint(const json_t *jwk, char *ret_tp)
{
	const char *kty = json_string_value(json_object_get(jwk, "kty"));
	const char *a, *b, *c;
	char buf[4400];
	uint8_t md[SHA256_DIGEST_LENGTH];
	int n;

	/* RFC 7638 §3.2: the required members only, in lexicographic order, no
	 * whitespace.  §3.3 lists them for EC and RSA; RFC 8037 §2 for OKP. */
	if (kty == NULL)
		return -CIMD_EFORMAT;
	if (strcmp(kty, "EC") == 0) {
		if (!(a = tp_member(jwk, "crv")) || !(b = tp_member(jwk, "x")) ||
		    !(c = tp_member(jwk, "y")))
			return -CIMD_EFORMAT;
		n = snprintf(buf, sizeof(buf),
			     "{\"crv\":\"%s\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", a, b, c);
	} else if (strcmp(kty, "RSA") == 0) {
		if (!(a = tp_member(jwk, "e")) || !(b = tp_member(jwk, "n")))
			return -CIMD_EFORMAT;
		n = snprintf(buf, sizeof(buf), "{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}", a, b);
	} else if (strcmp(kty, "OKP") == 0) {
		if (!(a = tp_member(jwk, "crv")) || !(b = tp_member(jwk, "x")))
			return -CIMD_EFORMAT;
		n = snprintf(buf, sizeof(buf), "{\"crv\":\"%s\",\"kty\":\"OKP\",\"x\":\"%s\"}", a,
			     b);
	} else {
		return -CIMD_EFORMAT;
	}
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -CIMD_EFORMAT;
	SHA256((const unsigned char *)buf, (size_t)n, md);
	b64url_encode(md, sizeof(md), ret_tp);
	return 0;
}

static int get_b64(const json_t *jwk, const char *name, uint8_t **ret, size_t *ret_n)
{
	const char *s = json_string_value(json_object_get(jwk, name));

	if (s == NULL)
		return -CIMD_EFORMAT;
	return b64url_decode(s, strlen(s), ret, ret_n);
}

int jwk_to_evp(const json_t *jwk, EVP_PKEY **ret_pkey)
{
	const char *kty = json_string_value(json_object_get(jwk, "kty"));
	const char *crv = json_string_value(json_object_get(jwk, "crv"));
	const char *group = NULL;
	uint8_t *a = NULL, *b = NULL, *pt = NULL;
	size_t an = 0, bn = 0, size = 0;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *n = NULL, *e = NULL;
	int r = -CIMD_EFORMAT;

	if (kty == NULL || (bld = OSSL_PARAM_BLD_new()) == NULL)
		goto out;
	if (strcmp(kty, "EC") == 0) {
		if (crv != NULL && strcmp(crv, "P-256") == 0)
			group = "P-256", size = 32;
		else if (crv != NULL && strcmp(crv, "P-384") == 0)
			group = "P-384", size = 48;
		else
			goto out;
		if (get_b64(jwk, "x", &a, &an) < 0 || get_b64(jwk, "y", &b, &bn) < 0 ||
		    an != size || bn != size || (pt = malloc(1 + 2 * size)) == NULL)
			goto out;
		/* SEC 1 §2.3.3 uncompressed point: 0x04 || x || y. */
		pt[0] = 0x04;
		memcpy(pt + 1, a, size);
		memcpy(pt + 1 + size, b, size);
		if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
		    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt,
						      1 + 2 * size))
			goto out;
		ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	} else if (strcmp(kty, "RSA") == 0) {
		if (get_b64(jwk, "n", &a, &an) < 0 || get_b64(jwk, "e", &b, &bn) < 0 || an == 0 ||
		    bn == 0 || an > 1024 || bn > 16)
			goto out;
		/* RFC 7518 §3.3/§3.5: RSA keys of 2048 bits or more. */
		for (size = 0; size < an && a[size] == 0; size++)
			;
		if (an - size < 256) {
			r = -CIMD_EALG;
			goto out;
		}
		if ((n = BN_bin2bn(a, (int)an, NULL)) == NULL ||
		    (e = BN_bin2bn(b, (int)bn, NULL)) == NULL ||
		    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
		    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
			goto out;
		ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	} else {
		goto out;
	}
	if ((params = OSSL_PARAM_BLD_to_param(bld)) == NULL || ctx == NULL ||
	    EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
		goto out;
	*ret_pkey = pkey;
	r = 0;
out:
	free(a);
	free(b);
	free(pt);
	BN_free(n);
	BN_free(e);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	EVP_PKEY_CTX_free(ctx);
	return r;
}
