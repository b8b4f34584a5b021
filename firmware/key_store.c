/*
 * key_store.c — the backend-neutral key store.
 *
 * Parses the configuration string, dispatches to a backend (ks_pkcs11.c,
 * ks_tpm2.c), keeps the last error's details, and builds each key's public JWK
 * and kid once, when the key is generated or loaded.
 *
 * Thread safety: neither libp11 0.4.12 nor an ESAPI context may be used by two
 * threads at once, so every call that reaches a backend holds ks->lock.  One key
 * store is one serial device; a process that wants parallel signing on a
 * PKCS#11 token opens one key store per thread (each has its own session).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "fw.h"

#define KS_MAX_PARAMS 8
#define KS_CONF_MAX 1024
#define PIN_MAX 256

struct key_store {
	pthread_mutex_t lock;
	const struct ks_backend *be_ops;
	void *be;
	char errmsg[256];
};

struct ks_key {
	enum cimd_alg alg;
	uint8_t *ref;
	size_t ref_len;
	json_t *jwk;
	char kid[CIMD_KID_LEN + 1];
};

static const struct ks_backend *const backends[] = {
	&ks_pkcs11_backend,
	&ks_tpm2_backend,
};

int ks_fail(struct key_store *ks, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ks->errmsg, sizeof(ks->errmsg), fmt, ap);
	va_end(ap);
	return r;
}

const char *key_store_errmsg(const struct key_store *ks)
{
	return ks->errmsg[0] ? ks->errmsg : "no error";
}

const char *key_store_backend(const struct key_store *ks)
{
	return ks->be_ops->name;
}

/* "name:k=v;k=v": splits buf in place into the backend name and parameters. */
static int parse_conf(char *buf, char **ret_name, struct ks_param *params, size_t *ret_n)
{
	char *colon = strchr(buf, ':'), *p, *next, *eq;
	size_t n = 0;

	if (colon == NULL)
		return -CIMD_ECONFIG;
	*colon = '\0';
	for (p = colon + 1; p != NULL && *p != '\0'; p = next) {
		if ((next = strchr(p, ';')) != NULL)
			*next++ = '\0';
		if ((eq = strchr(p, '=')) == NULL || eq == p || n == KS_MAX_PARAMS)
			return -CIMD_ECONFIG;
		*eq = '\0';
		params[n].name = p;
		params[n].value = eq + 1;
		n++;
	}
	*ret_name = buf;
	*ret_n = n;
	return 0;
}

int key_store_open(const char *conf, struct key_store **ret_ks, char *errbuf, size_t errlen)
{
	struct key_store *ks;
	struct ks_param params[KS_MAX_PARAMS];
	char *buf = NULL, *name;
	size_t i, n;
	int r;

	if (errbuf != NULL && errlen > 0)
		errbuf[0] = '\0';
	if (conf == NULL || strnlen(conf, KS_CONF_MAX + 1) > KS_CONF_MAX) {
		if (errbuf != NULL)
			snprintf(errbuf, errlen, "configuration string missing or too long");
		return -CIMD_ECONFIG;
	}
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return -ENOMEM;
	pthread_mutex_init(&ks->lock, NULL);
	if ((buf = strdup(conf)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = parse_conf(buf, &name, params, &n)) < 0) {
		ks_fail(ks, r, "expected BACKEND:key=value;key=value");
		goto out;
	}
	for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(name, backends[i]->name) == 0)
			ks->be_ops = backends[i];
	if (ks->be_ops == NULL) {
		r = ks_fail(ks, -CIMD_ECONFIG, "unknown backend '%s' (pkcs11 or tpm2)", name);
		goto out;
	}
	if ((r = ks->be_ops->open(ks, params, n, &ks->be)) < 0)
		goto out;
	*ret_ks = ks;
	ks = NULL;
	r = 0;
out:
	if (buf != NULL)
		OPENSSL_cleanse(buf, strlen(conf));
	free(buf);
	if (ks != NULL) {
		if (errbuf != NULL)
			snprintf(errbuf, errlen, "%s", key_store_errmsg(ks));
		key_store_free(&ks);
	}
	return r;
}

void key_store_free(struct key_store **pks)
{
	struct key_store *ks = *pks;

	if (ks == NULL)
		return;
	if (ks->be_ops != NULL && ks->be != NULL)
		ks->be_ops->close(ks->be);
	pthread_mutex_destroy(&ks->lock);
	free(ks);
	*pks = NULL;
}

/* Builds the handle: the public JWK gets kid = RFC 7638 thumbprint, alg, use. */
static int key_new(enum cimd_alg alg, uint8_t *ref, size_t ref_len, json_t *jwk,
		   struct ks_key **ret_key)
{
	struct ks_key *k;
	int r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return -ENOMEM;
	if ((r = jwk_thumbprint(jwk, k->kid)) < 0) {
		free(k);
		return r;
	}
	if (json_object_set_new(jwk, "kid", json_string(k->kid)) < 0 ||
	    json_object_set_new(jwk, "alg", json_string(cimd_alg_name(alg))) < 0 ||
	    json_object_set_new(jwk, "use", json_string("sig")) < 0) {
		free(k);
		return -ENOMEM;
	}
	k->alg = alg;
	k->ref = ref;
	k->ref_len = ref_len;
	k->jwk = jwk;
	*ret_key = k;
	return 0;
}

int key_store_generate(struct key_store *ks, enum cimd_alg alg, struct ks_key **ret_key)
{
	uint8_t *ref = NULL;
	size_t ref_len = 0;
	json_t *jwk = NULL;
	int r;

	if (cimd_alg_name(alg) == NULL)
		return ks_fail(ks, -CIMD_EALG, "unknown algorithm %d", (int)alg);
	pthread_mutex_lock(&ks->lock);
	ks->errmsg[0] = '\0';
	r = ks->be_ops->generate(ks, ks->be, alg, &ref, &ref_len, &jwk);
	pthread_mutex_unlock(&ks->lock);
	if (r < 0)
		return r;
	if ((r = key_new(alg, ref, ref_len, jwk, ret_key)) < 0) {
		free(ref);
		json_decref(jwk);
	}
	return r;
}

int key_store_load(struct key_store *ks, enum cimd_alg alg, const uint8_t *ref, size_t ref_len,
		   struct ks_key **ret_key)
{
	uint8_t *copy;
	json_t *jwk = NULL;
	int r;

	if (cimd_alg_name(alg) == NULL)
		return ks_fail(ks, -CIMD_EALG, "unknown algorithm %d", (int)alg);
	if (ref_len == 0 || ref_len > CIMD_KEYREF_MAX)
		return ks_fail(ks, -CIMD_ENOKEY, "key reference of %zu bytes", ref_len);
	if ((copy = malloc(ref_len)) == NULL)
		return -ENOMEM;
	memcpy(copy, ref, ref_len);
	pthread_mutex_lock(&ks->lock);
	ks->errmsg[0] = '\0';
	r = ks->be_ops->load(ks, ks->be, alg, copy, ref_len, &jwk);
	pthread_mutex_unlock(&ks->lock);
	if (r >= 0)
		r = key_new(alg, copy, ref_len, jwk, ret_key);
	if (r < 0) {
		free(copy);
		json_decref(jwk);
	}
	return r;
}

int key_store_sign(struct key_store *ks, struct ks_key *key, const uint8_t *msg, size_t len,
		   uint8_t *ret_sig, size_t *ret_len)
{
	int r;

	if (key == NULL || key->ref == NULL)
		return ks_fail(ks, -CIMD_ENOKEY, "key was destroyed");
	pthread_mutex_lock(&ks->lock);
	ks->errmsg[0] = '\0';
	r = ks->be_ops->sign(ks, ks->be, key->alg, key->ref, key->ref_len, msg, len, ret_sig,
			     ret_len);
	pthread_mutex_unlock(&ks->lock);
	return r;
}

int key_store_destroy(struct key_store *ks, struct ks_key **pkey)
{
	struct ks_key *key = *pkey;
	int r;

	if (key == NULL)
		return 0;
	pthread_mutex_lock(&ks->lock);
	ks->errmsg[0] = '\0';
	r = ks->be_ops->destroy(ks, ks->be, key->ref, key->ref_len);
	pthread_mutex_unlock(&ks->lock);
	if (r < 0)
		return r;
	ks_key_free(pkey);
	return 0;
}

void ks_key_free(struct ks_key **pkey)
{
	struct ks_key *key = *pkey;

	if (key == NULL)
		return;
	free(key->ref);
	json_decref(key->jwk);
	free(key);
	*pkey = NULL;
}

void ks_key_ref(const struct ks_key *key, const uint8_t **ret_ref, size_t *ret_len)
{
	*ret_ref = key->ref;
	*ret_len = key->ref_len;
}

enum cimd_alg ks_key_alg(const struct ks_key *key)
{
	return key->alg;
}

const char *ks_key_kid(const struct ks_key *key)
{
	return key->kid;
}

json_t *ks_key_jwk(const struct ks_key *key)
{
	return json_incref(key->jwk);
}

int secret_read_file(const char *path, char **ret_secret)
{
	struct stat st;
	char *buf = NULL;
	ssize_t n;
	int fd, r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out;
	}
	/* A PIN that others can read is no secret: refuse rather than assume. */
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
		r = -EPERM;
		goto out;
	}
	if ((buf = calloc(1, PIN_MAX + 1)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((n = read(fd, buf, PIN_MAX + 1)) < 0) {
		r = -errno;
		goto out;
	}
	if (n > PIN_MAX) {
		r = -E2BIG;
		goto out;
	}
	buf[n] = '\0';
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	if (n == 0 || strlen(buf) != (size_t)n) {
		r = -EINVAL;
		goto out;
	}
	*ret_secret = buf;
	buf = NULL;
	r = 0;
out:
	secret_free(&buf);
	close(fd);
	return r;
}

void secret_free(char **secret)
{
	if (*secret == NULL)
		return;
	OPENSSL_cleanse(*secret, PIN_MAX + 1);
	free(*secret);
	*secret = NULL;
}
