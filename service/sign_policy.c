/*
 * sign_policy.c — client policies as the signing socket's io thread reads and
 * caches them (signer_int.h): callers, audiences, lifetime, rate and the
 * active key, read from the database on a miss and dropped whenever the
 * custody state changes (signer_invalidate, signer_invalidate_client).
 *
 * Everything here runs on the io thread but for the two entry points of the
 * main thread, which only leave word for it (an atomic generation, a list of
 * names under a mutex).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "signer_int.h"

void sign_policy_unref(struct policy *p)
{
	size_t i;

	if (p == NULL || __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	for (i = 0; i < p->n_auds; i++)
		free(p->auds[i]);
	free(p->ref);
	free(p->header);
	ks_key_free(&p->key);
	free(p);
}

uint64_t sign_hash_name(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ULL;
	return h;
}

int sign_policy_init(struct signer *s)
{
	if ((s->pol.cache = calloc(CACHE_CAP, sizeof(*s->pol.cache))) == NULL)
		return -ENOMEM;
	return 0;
}

void sign_policy_free(struct signer *s)
{
	if (s->pol.cache != NULL)
		sign_policy_flush(s);
	free(s->pol.cache);
	s->pol.cache = NULL;
}

void sign_policy_flush(struct signer *s)
{
	size_t i;

	for (i = 0; i < CACHE_CAP && s->pol.n_cached > 0; i++)
		if (s->pol.cache[i] != NULL) {
			sign_policy_unref(s->pol.cache[i]);
			s->pol.cache[i] = NULL;
			s->pol.n_cached--;
		}
}

/* The clients row: backend, lifetime, rate, and whether a document of it was
 * approved.  -ENOENT: no such client. */
static int load_client(struct store *st, const struct cimd_config *cfg, struct policy *p)
{
	struct store_rows *q = NULL;
	const char *backend;
	size_t i;
	int rc, r = -EIO;

	if (store_query(
		st, &q,
		"SELECT backend, assertion_ttl, rate_limit, EXISTS (SELECT 1 FROM documents "
		"WHERE client = clients.name AND state = 'approved') FROM clients WHERE "
		"name = ?",
		"s", p->name) < 0)
		goto out;
	if ((rc = store_next(q)) == 0) {
		r = -ENOENT;
		goto out;
	}
	if (rc <= 0)
		goto out;
	backend = store_text(q, 0);
	for (i = 0; i < cfg->n_backends; i++)
		if (backend != NULL && strcmp(cfg->backends[i].name, backend) == 0)
			break;
	p->backend = i; /* n_backends: a backend no longer configured */
	p->ttl = store_null(q, 1) ? 0 : store_int(q, 1);
	p->rate = store_null(q, 2) ? -1 : store_int(q, 2);
	p->approved = (int)store_int(q, 3) != 0;
	r = 0;
out:
	store_done(st, q);
	return r;
}

/* The uids and gids that may sign for the client. */
static int load_callers(struct store *st, struct policy *p)
{
	struct store_rows *q = NULL;
	int rc, r = -EIO;

	if (store_query(st, &q, "SELECT kind, id FROM client_callers WHERE client = ?", "s",
			p->name) < 0)
		goto out;
	while ((rc = store_next(q)) > 0) {
		const char *kind = store_text(q, 0);
		int64_t id = store_int(q, 1);

		if (kind != NULL && strcmp(kind, "uid") == 0 && p->n_uids < CIMD_CALLERS_MAX)
			p->uids[p->n_uids++] = (uid_t)id;
		else if (kind != NULL && strcmp(kind, "gid") == 0 && p->n_gids < CIMD_CALLERS_MAX)
			p->gids[p->n_gids++] = (gid_t)id;
	}
	if (rc != 0)
		goto out;
	r = 0;
out:
	store_done(st, q);
	return r;
}

/* The audiences assertions of the client may name. */
static int load_audiences(struct store *st, struct policy *p)
{
	struct store_rows *q = NULL;
	int rc, r = -EIO;

	if (store_query(st, &q, "SELECT aud FROM client_audiences WHERE client = ?", "s", p->name) <
	    0)
		goto out;
	while ((rc = store_next(q)) > 0 && p->n_auds < CIMD_AUDIENCES_MAX) {
		if ((p->auds[p->n_auds] = strdup(store_text(q, 0))) == NULL) {
			r = -ENOMEM;
			goto out;
		}
		p->n_auds++;
	}
	if (rc < 0)
		goto out;
	r = 0;
out:
	store_done(st, q);
	return r;
}

/* This node's active key, if there is one, and the protected header it signs
 * under: a node signs only with keys in its own hardware. */
static int load_key(struct store *st, const struct cimd_config *cfg, struct policy *p)
{
	struct store_rows *q = NULL;
	json_t *hdr = NULL;
	char *hj = NULL;
	int rc, r = -EIO;

	if (store_query(st, &q,
			"SELECT kid, alg, ref, published, backend FROM keys WHERE client = ? AND "
			"node = ? AND state = 'active'",
			"ss", p->name, cfg->node) < 0)
		goto out;
	if ((rc = store_next(q)) > 0) {
		const char *kid = store_text(q, 0);
		size_t n = store_len(q, 2);

		p->alg = cimd_alg_from_name(store_text(q, 1));
		if (kid == NULL || strlen(kid) != CIMD_KID_LEN || p->alg == CIMD_ALG_NONE ||
		    n == 0 || (p->ref = malloc(n)) == NULL)
			goto out;
		memcpy(p->kid, kid, CIMD_KID_LEN + 1);
		memcpy(p->ref, store_blob(q, 2), n);
		p->ref_len = n;
		p->published = !store_null(q, 3);
		/* The key's own backend: in a cluster a node may keep a client's
		 * keys in other hardware than the client's (keys_node_backend). */
		for (p->backend = 0; p->backend < cfg->n_backends; p->backend++)
			if (strcmp(cfg->backends[p->backend].name, store_text(q, 4)) == 0)
				break;
		/* RFC 7523 §3 and draft-ietf-oauth-rfc7523bis: typ names the use. */
		hdr = json_pack("{ssssss}", "alg", cimd_alg_name(p->alg), "kid", p->kid, "typ",
				"client-authentication+jwt");
		if (hdr == NULL || (hj = json_dumps(hdr, JSON_COMPACT)) == NULL ||
		    b64url_encode_alloc((const uint8_t *)hj, strlen(hj), &p->header) < 0) {
			r = -ENOMEM;
			goto out;
		}
		p->has_key = 1;
	} else if (rc != 0) {
		goto out;
	}
	r = 0;
out:
	store_done(st, q);
	json_decref(hdr);
	free(hj);
	return r;
}

/* Reads one client's policy from the database.  -ENOENT: no such client. */
static int policy_load(struct signer *s, const char *name, struct policy **ret)
{
	struct policy *p;
	int r;

	if ((p = calloc(1, sizeof(*p))) == NULL)
		return -ENOMEM;
	p->refs = 1;
	snprintf(p->name, sizeof(p->name), "%s", name);
	if ((r = load_client(s->io.reader, s->d->cfg, p)) < 0 ||
	    (r = load_callers(s->io.reader, p)) < 0 || (r = load_audiences(s->io.reader, p)) < 0 ||
	    (r = load_key(s->io.reader, s->d->cfg, p)) < 0)
		goto out;
	*ret = p;
	p = NULL;
out:
	sign_policy_unref(p);
	return r;
}
void signer_publish_nothing(struct signer *s)
{
	if (s != NULL)
		__atomic_store_n(&s->all_published, 1, __ATOMIC_RELEASE);
}

void signer_invalidate_client(struct signer *s, const char *name)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->inval.mu);
	if (s->inval.n < INVAL_MAX)
		snprintf(s->inval.names[s->inval.n], sizeof(s->inval.names[0]), "%s", name);
	s->inval.n++;
	__atomic_store_n(&s->inval.pending, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->inval.mu);
}

static void cache_drop(struct signer *s, const char *name)
{
	size_t i = (size_t)sign_hash_name(name) & (CACHE_CAP - 1), j, k, n;

	for (n = 0; n < CACHE_CAP && s->pol.cache[i] != NULL; n++, i = (i + 1) & (CACHE_CAP - 1))
		if (strcmp(s->pol.cache[i]->name, name) == 0)
			break;
	if (n == CACHE_CAP || s->pol.cache[i] == NULL)
		return;
	sign_policy_unref(s->pol.cache[i]);
	s->pol.cache[i] = NULL;
	s->pol.n_cached--;
	for (j = (i + 1) & (CACHE_CAP - 1); s->pol.cache[j] != NULL;
	     j = (j + 1) & (CACHE_CAP - 1)) {
		k = (size_t)sign_hash_name(s->pol.cache[j]->name) & (CACHE_CAP - 1);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		s->pol.cache[i] = s->pol.cache[j];
		s->pol.cache[j] = NULL;
		i = j;
	}
}

/* The io thread takes the names invalidated since it last looked. */
static void cache_follow(struct signer *s)
{
	size_t i, n;

	if (!__atomic_load_n(&s->inval.pending, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&s->inval.mu);
	n = s->inval.n;
	if (n > INVAL_MAX)
		sign_policy_flush(s);
	else
		for (i = 0; i < n; i++)
			cache_drop(s, s->inval.names[i]);
	s->inval.n = 0;
	__atomic_store_n(&s->inval.pending, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->inval.mu);
}

int sign_policy_get(struct signer *s, const char *name, struct policy **ret)
{
	unsigned long g = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
	size_t i, k;
	struct policy *p;
	int r;

	if (g != s->pol.cached_generation) {
		sign_policy_flush(s);
		s->pol.cached_generation = g;
	}
	cache_follow(s);
	i = (size_t)sign_hash_name(name) & (CACHE_CAP - 1);
	for (k = 0; k < CACHE_CAP && s->pol.cache[i] != NULL; k++, i = (i + 1) & (CACHE_CAP - 1))
		if (strcmp(s->pol.cache[i]->name, name) == 0) {
			__atomic_add_fetch(&s->pol.cache[i]->refs, 1, __ATOMIC_RELAXED);
			*ret = s->pol.cache[i];
			return 0;
		}
	if ((r = policy_load(s, name, &p)) < 0)
		return r;
	if (s->pol.n_cached < CIMD_CLIENTS_MAX && s->pol.cache[i] == NULL) {
		__atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
		s->pol.cache[i] = p;
		s->pol.n_cached++;
	}
	*ret = p;
	return 0;
}

const char *sign_client_name(const struct signer *s, const char *client_id)
{
	const char *name;

	if (strncmp(client_id, s->prefix, s->prefix_len) != 0)
		return NULL;
	name = client_id + s->prefix_len;
	return cimd_valid_name(name) ? name : NULL;
}
