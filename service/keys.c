/*
 * keys.c — the key lifecycle (ARCHITECTURE.md, "Key lifecycle"):
 *
 *   next --activate--> active --(next activated)--> retiring --(grace)--> retired
 *   any state --revoke(reason)--> revoked
 *
 * Timing rules, every duration from the configuration:
 *   - a next key may be activated once it has been published for jwks_max_age,
 *     so that every verifier honouring the JWKS cache already holds it
 *     (--force overrides, and the journal says so);
 *   - a retiring key is retired after assertion_max_ttl + jwks_max_age +
 *     clock_skew: the last assertion it signed has expired and no cached JWKS
 *     still needs it;
 *   - a retired key is destroyed in hardware after destroy_delay;
 *   - a revoked key leaves publication at once and is destroyed in hardware at
 *     once: it must never sign again.
 *   - with rotate_every, the scheduler creates the next key jwks_max_age before
 *     the active key is due, and activates it when due.
 * The hardware key is created before its row and destroyed after its row says
 * so; reconciliation at start-up settles a crash in between.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "service.h"

/* The states in which a key is in its client's JWKS. */
#define PUBLISHED_STATES "state IN ('next', 'active', 'retiring')"

struct client_info {
	char name[CIMD_NAME_MAX + 1];
	char backend[16];
	char alg[16];
	int64_t rotate_every;
};

/*
 * When the scheduler next has something to do, so that a tick with nothing due
 * runs no query at all: a tick costs what is due, not what exists (issue 13).
 * Per kind of transition, the earliest time one can fall due; 0 when that is
 * not known (the next tick looks), INT64_MAX when nothing is pending.  A look is
 * one query that returns the due rows and, after them, the time the next one
 * falls due.  Keys and the degraded mark change only through this file
 * (keys_insert, transition, reconciliation, keys_recheck_degraded), and every
 * change that can make something due sooner brings that time forward
 * (sched_soon); the durations come from the configuration, and a reload that
 * changes one makes every time unknown.  One daemon per process: one schedule.
 *
 * The looks for retiring, retired and revoked keys read what is due first by
 * a partial index on the time in that state (schema 7; INDEXED BY, since
 * without statistics SQLite would prefer the index on state alone).  The look
 * for rotations computes each client's due time from its own period, so it
 * reads every active key: only when a step is due, never because a key was
 * made active (sched_rotation knows when that key's first step can be).
 */
enum { SCHED_RETIRE, SCHED_DESTROY, SCHED_REVOKED, SCHED_ROTATE, SCHED_FIRST, SCHED_KINDS };
static struct {
	int64_t at[SCHED_KINDS];
	long grace, destroy_delay, rotate_every, jwks_max_age; /* what the times assume */
} sched;

static void sched_soon(int kind, int64_t t)
{
	if (t < sched.at[kind])
		sched.at[kind] = t;
}

/* A key of client became active at t.  The client's next rotation step falls
 * due no sooner than t + its period - jwks_max_age (the next key's creation;
 * its activation comes later), so a new active key costs one indexed read, not
 * a look over every active key at the next tick. */
static void sched_rotation(struct svc *d, const char *client, int64_t t)
{
	struct store_rows *s = NULL;
	int64_t every = -1;

	if (store_query(d->st, &s, "SELECT coalesce(rotate_every, ?) FROM clients WHERE name = ?",
			"is", (int64_t)d->cfg->rotate_every, client) == 0 &&
	    store_next(s) > 0)
		every = store_int(s, 0);
	store_done(d->st, s);
	if (every < 0)
		sched_soon(SCHED_ROTATE, 0); /* not known: look at the next tick */
	else if (every > 0)
		sched_soon(SCHED_ROTATE, t + every - (int64_t)d->cfg->jwks_max_age);
}

/* One second more than the sum: times are kept in whole seconds, so a key that
 * turned retiring at T.9 is recorded at T, and its last assertion (signed just
 * before) must stay verifiable for its whole lifetime. */
static int64_t retire_grace(const struct cimd_config *c)
{
	return (int64_t)c->assertion_max_ttl + c->jwks_max_age + c->clock_skew + 1;
}

static int client_info(struct store *st, const char *name, struct client_info *ret)
{
	struct store_rows *s = NULL;
	int r = -ENOENT;

	if (store_query(st, &s, "SELECT backend, alg, rotate_every FROM clients WHERE name = ?",
			"s", name) < 0)
		return -EIO;
	if (store_next(s) > 0) {
		snprintf(ret->name, sizeof(ret->name), "%s", name);
		snprintf(ret->backend, sizeof(ret->backend), "%s", store_text(s, 0));
		snprintf(ret->alg, sizeof(ret->alg), "%s", store_text(s, 1));
		ret->rotate_every = store_int(s, 2);
		r = 0;
	}
	store_done(st, s);
	return r;
}

/* The client an operation names (NULL: none), known. */
static int client_of(struct store *st, const char *name, struct client_info *ci, char *err,
		     size_t errlen)
{
	int r;

	if (name == NULL || !cimd_valid_name(name))
		return cimd_fail(err, errlen, -EINVAL,
				 "a client name [a-z0-9][a-z0-9-]{0,62} is required");
	if ((r = client_info(st, name, ci)) == -ENOENT)
		return cimd_fail(err, errlen, -CIMD_ENOCLIENT, "no client named %s", name);
	return r < 0 ? cimd_fail(err, errlen, -EIO, "database error") : 0;
}

/* The client's keys matching where: this node's (node), or every node's
 * (NULL). */
static int64_t count_keys(struct store *st, const char *client, const char *node, const char *where)
{
	char sql[256];
	struct store_rows *s = NULL;
	int64_t n = -1;

	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM keys WHERE client = ?1 AND (CAST(?2 AS TEXT) IS NULL OR "
		 "node = ?2) AND %s",
		 where);
	if (store_query(st, &s, sql, "ss", client, node) == 0 && store_next(s) > 0)
		n = store_int(s, 0);
	store_done(st, s);
	return n;
}

/* The kid of this node's key of the client in state, into kid (empty when
 * none), and since when: an active key's activation, a next key's first
 * publication in a JWKS (in a cluster, the union; its creation where nothing
 * is published). */
static int key_in_state(struct svc *d, const char *client, const char *state, char *kid,
			int64_t *ret_since)
{
	struct store *st = d->st;
	struct store_rows *s = NULL;
	int r = -ENOENT;

	kid[0] = '\0';
	if (store_query(
		st, &s,
		"SELECT kid, CASE state WHEN 'next' THEN coalesce(published, created) ELSE "
		"activated END FROM keys WHERE client = ? AND node = ? AND state = ? ORDER BY "
		"created LIMIT 1",
		"sss", client, d->cfg->node, state) < 0)
		return -EIO;
	if (store_next(s) > 0) {
		snprintf(kid, CIMD_KID_LEN + 1, "%s", store_text(s, 0));
		if (ret_since != NULL)
			*ret_since = store_int(s, 1);
		r = 0;
	}
	store_done(st, s);
	return r;
}

/*
 * Generation with intent.  Before a key is made, an intent row with a random
 * tag is committed; the key carries the tag in the hardware (PKCS#11 label
 * "cimdd:TAG").  The transaction that records the key deletes the intent.  So a
 * hardware key with a tag of a live intent is one a crash left unrecorded, and
 * reconciliation may destroy it; a key whose tag this database does not know
 * (a restored or wrong database) is reported and left alone.
 */
/* A fresh random tag, committed as an intent before the hardware makes the key
 * (so that a crash in between leaves a key reconciliation can recognise). */
static int intent_begin(struct svc *d, const char *client, const char *backend,
			char ret_tag[CIMD_TAG_MAX + 1])
{
	static const char digits[] = "0123456789abcdef";
	uint8_t rnd[8];
	char tag[CIMD_TAG_MAX + 1];
	size_t i;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return -CIMD_ECRYPTO;
	for (i = 0; i < sizeof(rnd); i++) {
		tag[2 * i] = digits[rnd[i] >> 4];
		tag[2 * i + 1] = digits[rnd[i] & 15];
	}
	tag[2 * sizeof(rnd)] = '\0';
	if (store_begin(d->st) < 0 ||
	    store_exec(d->st,
		       "INSERT INTO key_intents (tag, backend, client, created, node) VALUES (?, "
		       "?, ?, ?, ?)",
		       "sssis", tag, backend, client, (int64_t)time(NULL), d->cfg->node) != 1 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		return -EIO;
	}
	memcpy(ret_tag, tag, sizeof(tag));
	return 0;
}

int keys_generate(struct svc *d, const char *client, const char *backend, const char *alg,
		  char ret_tag[CIMD_TAG_MAX + 1], struct ks_key **ret_key)
{
	struct key_store *ks = custody_store(d->custody, backend);
	char tag[CIMD_TAG_MAX + 1];
	int r;

	if (ks == NULL)
		return -CIMD_EUNAVAILABLE;
	if ((r = intent_begin(d, client, backend, tag)) < 0)
		return r;
	if ((r = key_store_generate(ks, cimd_alg_from_name(alg), tag, ret_key)) < 0) {
		keys_intent_drop(d, tag);
		return r;
	}
	memcpy(ret_tag, tag, sizeof(tag));
	return 0;
}

int keys_generate_attest(struct svc *d, const char *backend, char ret_tag[CIMD_TAG_MAX + 1],
			 struct ks_key **ret_key)
{
	struct key_store *ks = custody_store(d->custody, backend);
	char tag[CIMD_TAG_MAX + 1];
	int r;

	if (ks == NULL)
		return -CIMD_EUNAVAILABLE;
	if ((r = intent_begin(d, "(attestation)", backend, tag)) < 0)
		return r;
	if ((r = key_store_generate_attest(ks, tag, ret_key)) < 0) {
		keys_intent_drop(d, tag);
		return r;
	}
	memcpy(ret_tag, tag, sizeof(tag));
	return 0;
}

void keys_intent_drop(struct svc *d, const char *tag)
{
	if (store_begin(d->st) == 0 &&
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) >= 0 &&
	    store_commit(d->st) == 0)
		return;
	store_rollback(d->st);
}

int keys_insert(struct svc *d, const char *client, const char *alg, const char *backend,
		struct ks_key *key, const char *state)
{
	const uint8_t *ref;
	size_t ref_len;
	json_t *jwk = ks_key_jwk(key);
	char *pub = json_dumps(jwk, JSON_COMPACT);
	time_t now = time(NULL);
	int r;

	json_decref(jwk);
	if (pub == NULL)
		return -ENOMEM;
	ks_key_ref(key, &ref, &ref_len);
	/* The public JWK is kept for publication: public data, never key material. */
	r = store_exec(d->st,
		       "INSERT INTO keys (kid, client, alg, backend, ref, jwk, state, created, "
		       "activated, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		       "ssssbssiis", ks_key_kid(key), client, alg, backend, ref, ref_len, pub,
		       state, (int64_t)now, (int64_t)(strcmp(state, "active") == 0 ? now : 0),
		       d->cfg->node);
	free(pub);
	if (r == 1 && strcmp(state, "active") == 0)
		sched_rotation(d, client, (int64_t)now);
	return r;
}

const char *keys_node_backend(const struct svc *d, const char *client_backend)
{
	return config_backend(d->cfg, client_backend) != NULL ? client_backend
							      : d->cfg->default_backend;
}

/* The state of a node's first key of a client, inside the transaction that
 * records it: active at once while no JWKS of the client was ever published
 * (as client.add makes the first key), else next, for the scheduler to
 * activate once the union naming it has been published for jwks_max_age
 * (tick_first).  NULL on a database error. */
static const char *first_state(struct svc *d, const char *client)
{
	struct store_rows *s = NULL;
	char path[CIMD_NAME_MAX + 32];
	const char *state = NULL;

	snprintf(path, sizeof(path), "/clients/%s/jwks.json", client);
	if (store_query(d->st, &s, "SELECT 1 FROM publications WHERE path = ? LIMIT 1", "s",
			path) == 0) {
		int rc = store_next(s);

		state = rc > 0 ? "next" : rc == 0 ? "active" : NULL;
	}
	store_done(d->st, s);
	return state;
}

/* Creates a key for the client in hardware and records it in state `state`
 * (next or active; NULL: a node's first, first_state) in a transaction of
 * its own. */
static int create_key(struct svc *d, const struct client_info *ci, const char *state,
		      const char *actor, char *ret_kid)
{
	const char *backend = keys_node_backend(d, ci->backend);
	struct key_store *ks = custody_store(d->custody, backend);
	struct ks_key *key = NULL;
	char tag[CIMD_TAG_MAX + 1];
	json_t *f = NULL;
	int first = state == NULL, r;

	/* The bounds hold on every path that makes keys: rotation, the
	 * scheduler, a revocation's replacement, a node's first key. */
	if (count_keys(d->st, ci->name, d->cfg->node, PUBLISHED_STATES) >=
		CIMD_KEYS_PER_CLIENT_MAX ||
	    count_keys(d->st, ci->name, NULL, PUBLISHED_STATES) >= CIMD_KEYS_PER_CLIENT_ALL)
		return -EMLINK;
	if ((r = keys_generate(d, ci->name, backend, ci->alg, tag, &key)) < 0)
		return r;
	if (store_begin(d->st) < 0 || (first && (state = first_state(d, ci->name)) == NULL) ||
	    (f = json_pack("{ssssssssss}", "client", ci->name, "kid", ks_key_kid(key), "state",
			   state, "backend", backend, "node", d->cfg->node)) == NULL ||
	    keys_insert(d, ci->name, ci->alg, backend, key, state) != 1 ||
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) != 1 ||
	    journal_append(d->st, "key.create", actor, f, NULL) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		key_store_destroy(ks, &key);
		keys_intent_drop(d, tag);
		r = -EIO;
	} else {
		snprintf(ret_kid, CIMD_KID_LEN + 1, "%s", ks_key_kid(key));
		r = 0;
		if (first && strcmp(state, "next") == 0)
			sched_soon(SCHED_FIRST, 0);
	}
	json_decref(f);
	ks_key_free(&key);
	return r;
}

/* A key that could not be made or changed: the hardware away and the bound
 * on keys are the operator's to hear of; anything else is ours (-EIO). */
static int key_fail(int r, const char *what, char *err, size_t errlen)
{
	if (r == -CIMD_EUNAVAILABLE)
		return cimd_fail(err, errlen, r, "%s: the key's hardware is unavailable", what);
	if (r == -EMLINK)
		return cimd_fail(err, errlen, r,
				 "%s: the client holds its maximum of published keys (%d on a "
				 "node, %d on all nodes)",
				 what, CIMD_KEYS_PER_CLIENT_MAX, CIMD_KEYS_PER_CLIENT_ALL);
	return cimd_fail(err, errlen, -EIO, "%s: %s", what, cimd_strerror(r));
}

/* Moves kid to a new state inside an open transaction, with its journal record. */
static int transition(struct svc *d, const char *client, const char *kid, const char *from,
		      const char *to, const char *actor, json_t *extra)
{
	char sql[160];
	json_t *f = json_pack("{ssssssss}", "client", client, "kid", kid, "from", from, "to", to);
	int r;

	if (f == NULL || (extra != NULL && json_object_update(f, extra) < 0)) {
		json_decref(f);
		return -ENOMEM;
	}
	/* Column names come from this file, never from a request. */
	snprintf(sql, sizeof(sql), "UPDATE keys SET state = ?, %s = ? WHERE kid = ? AND state = ?",
		 strcmp(to, "active") == 0 ? "activated" : to);
	r = store_exec(d->st, sql, "siss", to, (int64_t)time(NULL), kid, from);
	if (r == 1)
		r = journal_append(d->st, "key.state", actor, f, NULL);
	else if (r >= 0)
		r = -ESTALE;
	json_decref(f);
	/* Whether or not the transaction commits: a look too many costs one query. */
	if (strcmp(to, "retiring") == 0)
		sched_soon(SCHED_RETIRE, (int64_t)time(NULL) + retire_grace(d->cfg));
	else if (strcmp(to, "retired") == 0)
		sched_soon(SCHED_DESTROY, (int64_t)time(NULL) + d->cfg->destroy_delay);
	else if (strcmp(to, "revoked") == 0)
		sched_soon(SCHED_REVOKED, 0);
	else if (strcmp(to, "active") == 0)
		sched_rotation(d, client, (int64_t)time(NULL));
	return r;
}

int keys_list(struct svc *d, const char *name, json_t **ret_keys, char *err, size_t errlen)
{
	struct client_info ci;
	struct store_rows *s = NULL;
	json_t *arr;
	int r;

	if ((r = client_of(d->st, name, &ci, err, errlen)) < 0)
		return r;
	if ((arr = json_array()) == NULL ||
	    store_query(
		d->st, &s,
		"SELECT kid, alg, backend, state, created, activated, retiring, retired, "
		"destroyed, revoked, revoke_reason, node FROM keys WHERE client = ? ORDER BY "
		"created, kid",
		"s", ci.name) < 0) {
		json_decref(arr);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	while (store_next(s) > 0) {
		json_t *k = json_pack("{ssssssssss}", "kid", store_text(s, 0), "alg",
				      store_text(s, 1), "backend", store_text(s, 2), "state",
				      store_text(s, 3), "node", store_text(s, 11));
		static const char *const times[] = {"created", "activated", "retiring",
						    "retired", "destroyed", "revoked"};
		size_t i;
		for (i = 0; k != NULL && i < sizeof(times) / sizeof(times[0]); i++)
			if (!store_null(s, 4 + (int)i) && store_int(s, 4 + (int)i) != 0)
				json_object_set_new(k, times[i],
						    json_integer(store_int(s, 4 + (int)i)));
		if (k != NULL && !store_null(s, 10))
			json_object_set_new(k, "revoke_reason", json_string(store_text(s, 10)));
		json_array_append_new(arr, k);
	}
	store_done(d->st, s);
	*ret_keys = arr;
	return 0;
}

int keys_rotate(struct svc *d, const char *actor, const char *name, char ret_kid[CIMD_KID_LEN + 1],
		int64_t *ret_activate_after, char *err, size_t errlen)
{
	struct client_info ci;
	char kid[CIMD_KID_LEN + 1];
	int r;

	if ((r = client_of(d->st, name, &ci, err, errlen)) < 0)
		return r;
	if (d->node_revoked)
		return cimd_fail(err, errlen, -EPERM, "node %s was revoked: it makes no keys",
				 d->cfg->node);
	if (count_keys(d->st, ci.name, d->cfg->node, "state = 'next'") != 0)
		return cimd_fail(err, errlen, -EEXIST,
				 "%s already has a next key on node %s: activate it first", ci.name,
				 d->cfg->node);
	if ((r = create_key(d, &ci, "next", actor, kid)) < 0)
		return key_fail(r, "creating the next key", err, errlen);
	memcpy(ret_kid, kid, sizeof(kid));
	*ret_activate_after = (int64_t)time(NULL) + d->cfg->jwks_max_age;
	return 0;
}

/* Activates next key kid (active key, if any, becomes retiring), in an open
 * transaction. */
static int activate(struct svc *d, const char *client, const char *kid, const char *actor,
		    int forced)
{
	char old[CIMD_KID_LEN + 1];
	json_t *x = forced ? json_pack("{sb}", "forced", 1) : NULL;
	int r = 0;

	if (key_in_state(d, client, "active", old, NULL) == 0)
		r = transition(d, client, old, "active", "retiring", actor, NULL);
	if (r == 0)
		r = transition(d, client, kid, "next", "active", actor, x);
	json_decref(x);
	return r;
}

int keys_activate(struct svc *d, const char *actor, const char *name, const char *want, int force,
		  char ret_kid[CIMD_KID_LEN + 1], int *ret_forced, char *err, size_t errlen)
{
	struct client_info ci;
	char kid[CIMD_KID_LEN + 1];
	int64_t since = 0, age;
	int r, forced;

	if ((r = client_of(d->st, name, &ci, err, errlen)) < 0)
		return r;
	if (key_in_state(d, ci.name, "next", kid, &since) < 0)
		return cimd_fail(err, errlen, -ENOENT,
				 "%s has no next key on node %s: rotate first", ci.name,
				 d->cfg->node);
	if (want != NULL && strcmp(want, kid) != 0)
		return cimd_fail(err, errlen, -ENOENT, "%.64s is not the next key of %s (%s is)",
				 want, ci.name, kid);
	age = (int64_t)time(NULL) - since;
	if (age < d->cfg->jwks_max_age && !force)
		return cimd_fail(err, errlen, -EBUSY,
				 "the next key has been published for %llds; jwks_max_age is %lds: "
				 "activate after %llds more, or use --force",
				 (long long)age, d->cfg->jwks_max_age,
				 (long long)(d->cfg->jwks_max_age - age));
	forced = force && age < d->cfg->jwks_max_age;
	if (store_begin(d->st) < 0 || activate(d, ci.name, kid, actor, forced) < 0 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "database error: nothing was changed");
	}
	memcpy(ret_kid, kid, sizeof(kid));
	*ret_forced = forced;
	return 0;
}

/* Destroys the hardware key of kid; its row must already say revoked or
 * retired.  By its reference, without loading it first: a load is a lookup of
 * its own (two on PKCS#11), and a key of which half is gone must go too.
 * -EXDEV: the key is another node's, in that node's hardware. */
static int destroy_hw(struct svc *d, const char *kid)
{
	struct key_store *ks;
	struct store_rows *s = NULL;
	int r = -ENOENT;

	if (store_query(d->st, &s, "SELECT backend, ref, node FROM keys WHERE kid = ?", "s", kid) <
	    0)
		return -EIO;
	if (store_next(s) <= 0) {
		r = -ENOENT;
	} else if (strcmp(store_text(s, 2), d->cfg->node) != 0) {
		r = -EXDEV;
	} else {
		ks = custody_store(d->custody, store_text(s, 0));
		r = ks == NULL ? -CIMD_EUNAVAILABLE
			       : key_store_destroy_ref(ks, store_blob(s, 1), store_len(s, 1));
		if (r == -CIMD_ENOKEY)
			r = 0; /* gone already */
	}
	store_done(d->st, s);
	return r;
}

/* Destroys a revoked key's hardware key and records when. */
static int destroy_revoked(struct svc *d, const char *client, const char *kid, const char *actor)
{
	json_t *f;
	int r;

	if ((r = destroy_hw(d, kid)) == -EXDEV)
		return 0; /* its own node destroys it (keys_tick) */
	if (r < 0)
		return r;
	f = json_pack("{ssss}", "client", client, "kid", kid);
	if (store_begin(d->st) < 0 ||
	    store_exec(d->st, "UPDATE keys SET destroyed = ? WHERE kid = ?", "is",
		       (int64_t)time(NULL), kid) != 1 ||
	    journal_append(d->st, "key.destroy", actor, f, NULL) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		r = -EIO;
	}
	json_decref(f);
	return r;
}

int keys_revoke(struct svc *d, const char *actor, const char *name, const char *kid,
		const char *reason, int replace, struct keys_revoked *ret, char *err, size_t errlen)
{
	struct client_info ci;
	char state[16] = "", newkid[CIMD_KID_LEN + 1] = "", node[CIMD_NAME_MAX + 1] = "";
	struct store_rows *s = NULL;
	json_t *x;
	int r;

	if ((r = client_of(d->st, name, &ci, err, errlen)) < 0)
		return r;
	if (kid == NULL)
		return cimd_fail(err, errlen, -EINVAL, "the kid to revoke is required");
	if (reason == NULL || *reason == '\0' || strlen(reason) > 512)
		return cimd_fail(err, errlen, -EINVAL,
				 "a reason (1 to 512 characters) is required");
	if (store_query(d->st, &s, "SELECT state, node FROM keys WHERE client = ? AND kid = ?",
			"ss", ci.name, kid) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (store_next(s) > 0) {
		snprintf(state, sizeof(state), "%s", store_text(s, 0));
		snprintf(node, sizeof(node), "%s", store_text(s, 1));
	}
	store_done(d->st, s);
	if (state[0] == '\0')
		return cimd_fail(err, errlen, -ENOENT, "%s has no key %.64s", ci.name, kid);
	if (strcmp(state, "revoked") == 0 || strcmp(state, "destroyed") == 0)
		return cimd_fail(err, errlen, -EALREADY, "key %s is %s already", kid, state);
	if (replace && strcmp(state, "active") != 0)
		return cimd_fail(err, errlen, -EINVAL,
				 "--replace applies to the active key; %s is %s", kid, state);
	/* Any node revokes any key; a replacement is made in the hardware of the
	 * node that makes it, so it replaces only that node's key. */
	if (replace && strcmp(node, d->cfg->node) != 0)
		return cimd_fail(err, errlen, -EINVAL,
				 "key %s is node %s's: revoke it without --replace, or on node %s",
				 kid, node, node);
	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	x = json_pack("{ss}", "reason", reason);
	r = transition(d, ci.name, kid, state, "revoked", actor, x);
	json_decref(x);
	if (r == 0)
		r = store_exec(d->st,
			       "UPDATE keys SET revoke_reason = ?, revoked_by = ? WHERE kid = ?",
			       "sss", reason, actor, kid) == 1
			? 0
			: -EIO;
	/* The revocation stands on its own: it is committed before anything that
	 * could fail on the hardware, so a failed replacement never keeps a
	 * compromised key alive. */
	if (r < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		return key_fail(r < 0 ? r : -EIO, "revoking", err, errlen);
	}
	/* Destroying the hardware key comes after the commit: the row already says
	 * revoked, so a failure here leaves a key that can never be used again and
	 * that the scheduler destroys when the hardware answers. */
	if ((r = destroy_revoked(d, ci.name, kid, actor)) < 0)
		snprintf(err, errlen,
			 "revoked; destroying the hardware key failed (%s), "
			 "it will be retried",
			 cimd_strerror(r));
	/* The replacement is active at once: there is no time to pre-publish it,
	 * and the journal records it as forced. */
	if (replace) {
		if ((r = create_key(d, &ci, "next", actor, newkid)) == 0 &&
		    store_begin(d->st) == 0) {
			if ((r = activate(d, ci.name, newkid, actor, 1)) < 0 ||
			    store_commit(d->st) < 0) {
				store_rollback(d->st);
				r = r < 0 ? r : -EIO;
			}
		}
		if (r < 0)
			snprintf(err, errlen,
				 "revoked; the replacement key could not be made (%s): rotate and "
				 "activate one",
				 cimd_strerror(r));
	}
	/* Revoking the key that went missing is how a degraded client recovers. */
	keys_recheck_degraded(d, ci.name, actor);
	memcpy(ret->replacement, newkid, sizeof(newkid));
	ret->client_has_active_key = count_keys(d->st, ci.name, NULL, "state = 'active'") > 0;
	return 0;
}

/* Every key node holds that could still sign or be published (next,
 * active, retiring, retired) revoked, inside an open transaction, each with
 * its key.state record (node revoke, nodes.c).  Its hardware is that node's:
 * nothing is destroyed here. */
int keys_revoke_node(struct svc *d, const char *actor, const char *node, const char *reason,
		     int64_t *ret_n)
{
	struct store_rows *s = NULL;
	struct {
		char client[CIMD_NAME_MAX + 1], kid[CIMD_KID_LEN + 1], state[16];
	} *v = NULL, *nv;
	size_t n = 0, cap = 0, i;
	json_t *x = json_pack("{ssss}", "reason", reason, "node_revoked", node);
	int r = 0;

	if (x == NULL || store_query(d->st, &s,
				     "SELECT client, kid, state FROM keys WHERE node = ? AND state "
				     "IN ('next', 'active', 'retiring', 'retired') ORDER BY kid",
				     "s", node) < 0) {
		json_decref(x);
		return -EIO;
	}
	while (r == 0 && store_next(s) > 0) {
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
				r = -ENOMEM;
				break;
			}
			v = nv;
		}
		snprintf(v[n].client, sizeof(v[n].client), "%s", store_text(s, 0));
		snprintf(v[n].kid, sizeof(v[n].kid), "%s", store_text(s, 1));
		snprintf(v[n].state, sizeof(v[n].state), "%s", store_text(s, 2));
		n++;
	}
	store_done(d->st, s);
	for (i = 0; r == 0 && i < n; i++)
		if ((r = transition(d, v[i].client, v[i].kid, v[i].state, "revoked", actor, x)) ==
			0 &&
		    store_exec(d->st,
			       "UPDATE keys SET revoke_reason = ?, revoked_by = ? WHERE kid = ?",
			       "sss", reason, actor, v[i].kid) != 1)
			r = -EIO;
	free(v);
	json_decref(x);
	*ret_n = (int64_t)n;
	return r;
}

/* ---- the scheduler ---- */

struct due {
	char client[CIMD_NAME_MAX + 1];
	char kid[CIMD_KID_LEN + 1];
	int64_t t;     /* when it falls due */
	int64_t every; /* rotation: the client's period */
};

#define DUE_MAX 64     /* transitions of one kind per tick; the rest wait a second */
#define TICK_HW_MS 250 /* no hardware step starts after a tick has run this long */

/*
 * One look: the first DUE_MAX + 1 rows of sql (client, kid, time due[, the
 * client's period]) in the order they fall due, with a and b bound to ?1 and
 * ?2 and the limit to ?3.  Those due by now go to out; *ret_next is when the
 * first one that is not falls due (INT64_MAX: none is pending; now: more are
 * due than one tick takes, or the query failed).  Returns how many are due.
 */
static int look(struct store *st, const char *sql, int64_t a, int64_t b, const char *node,
		int64_t now, struct due *out, int64_t *ret_next)
{
	struct store_rows *s = NULL;
	int64_t t;
	int n = 0, rows = 0;

	*ret_next = now;
	if (store_query(st, &s, sql, "iiis", a, b, (int64_t)DUE_MAX + 1, node) < 0)
		return 0;
	*ret_next = INT64_MAX;
	while (rows++ <= DUE_MAX && store_next(s) > 0) {
		if ((t = store_int(s, 2)) > now) {
			*ret_next = t;
			break;
		}
		if (n == DUE_MAX) {
			*ret_next = now;
			break;
		}
		snprintf(out[n].client, sizeof(out[n].client), "%s", store_text(s, 0));
		snprintf(out[n].kid, sizeof(out[n].kid), "%s", store_text(s, 1));
		out[n].t = t;
		out[n].every = store_columns(s) > 3 ? store_int(s, 3) : 0;
		n++;
	}
	store_done(st, s);
	return n;
}

static int step(struct svc *d, const struct due *x, const char *from, const char *to)
{
	if (store_begin(d->st) < 0)
		return -EIO;
	if (transition(d, x->client, x->kid, from, to, "scheduler", NULL) < 0 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		return -EIO;
	}
	return 1;
}

/* Scheduled rotation of one client: create the next key jwks_max_age before the
 * active key is due, activate it when due (and published long enough). */
static int rotate_due(struct svc *d, const struct client_info *ci, int64_t every, int64_t now)
{
	char active[CIMD_KID_LEN + 1], next[CIMD_KID_LEN + 1];
	int64_t activated = 0, created = 0;
	int r;

	if (key_in_state(d, ci->name, "active", active, &activated) < 0)
		return 0;
	if (key_in_state(d, ci->name, "next", next, &created) < 0) {
		if (now < activated + every - d->cfg->jwks_max_age)
			return 0;
		if ((r = create_key(d, ci, "next", "scheduler", next)) < 0)
			return r;
		return 1;
	}
	if (now < activated + every || now - created < d->cfg->jwks_max_age)
		return 0;
	if (store_begin(d->st) < 0)
		return -EIO;
	if (activate(d, ci->name, next, "scheduler", 0) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		return -EIO;
	}
	return 1;
}

static double tick_ms(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* A reload that changed the durations makes every time in sched stale. */
static void sched_refresh(const struct cimd_config *c, int64_t grace)
{
	if (sched.grace != grace || sched.destroy_delay != c->destroy_delay ||
	    sched.rotate_every != c->rotate_every || sched.jwks_max_age != c->jwks_max_age) {
		memset(&sched, 0, sizeof(sched));
		sched.grace = grace;
		sched.destroy_delay = c->destroy_delay;
		sched.rotate_every = c->rotate_every;
		sched.jwks_max_age = c->jwks_max_age;
	}
}

/* What a sweep does to one key that fell due: 1 done, 0 not (again later). */
typedef int sweep_fn(struct svc *d, const struct due *x);

/* Retiring keys past their grace become retired: no hardware involved. */
static int retire_one(struct svc *d, const struct due *x)
{
	return step(d, x, "retiring", "retired") > 0;
}

/* Retired keys past destroy_delay are destroyed in the hardware, then marked
 * so. */
static int destroy_one(struct svc *d, const struct due *x)
{
	return destroy_hw(d, x->kid) == 0 && step(d, x, "retired", "destroyed") > 0;
}

/* Revoked keys not yet destroyed in the hardware. */
static int revoked_one(struct svc *d, const struct due *x)
{
	return destroy_revoked(d, x->client, x->kid, "scheduler") == 0;
}

/*
 * One kind of lifecycle step: the keys sql finds due (its ?1 is arg), each
 * given to fn; the slot's time is when the next falls due, or now when one
 * could not be done (the hardware is away: again next tick).  With t0, the
 * steps touch hardware and stop after TICK_HW_MS, the rest at the next tick.
 */
static int sweep(struct svc *d, int slot, const char *sql, int64_t arg, sweep_fn *fn, int64_t now,
		 const struct timespec *t0)
{
	struct due due[DUE_MAX];
	int64_t next;
	int i, n, done = 0;

	n = look(d->st, sql, arg, now + 1, d->cfg->node, now, due, &next);
	sched.at[slot] = next;
	for (i = 0; i < n; i++) {
		if (t0 != NULL && i > 0 && tick_ms(t0) > TICK_HW_MS) {
			sched.at[slot] = now;
			break;
		}
		if (fn(d, &due[i]))
			done++;
		else
			sched.at[slot] = now;
	}
	return done;
}

/* Scheduled rotation, within TICK_HW_MS: the steps taken. */
static int tick_rotate(struct svc *d, int64_t now, const struct timespec *t0)
{
	const struct cimd_config *c = d->cfg;
	struct due due[DUE_MAX];
	struct client_info ci;
	int64_t next;
	int i, n, done = 0, r;

	/* Clients with a rotation period (their own, or the appliance's), by
	 * when their next step falls due: the next key's creation jwks_max_age
	 * before the active key's period ends, its activation when the period
	 * has ended and it has been published for jwks_max_age.  Most overdue
	 * first: a tick's cap then delays the rest by a second, never starves
	 * them. */
	n = look(d->st,
		 "SELECT c.name, '', CASE WHEN n.created IS NULL "
		 "THEN k.activated + coalesce(c.rotate_every, ?1) - ?2 "
		 "WHEN k.activated + coalesce(c.rotate_every, ?1) > n.created + ?2 "
		 "THEN k.activated + coalesce(c.rotate_every, ?1) ELSE n.created + ?2 "
		 "END AS due, coalesce(c.rotate_every, ?1) "
		 "FROM keys k JOIN clients c ON c.name = k.client "
		 "LEFT JOIN keys n ON n.client = k.client AND n.node = k.node AND "
		 "n.state = 'next' "
		 "WHERE k.state = 'active' AND k.node = ?4 AND k.activated IS NOT NULL AND "
		 "c.degraded = 0 AND coalesce(c.rotate_every, ?1) > 0 "
		 "ORDER BY due LIMIT ?3",
		 (int64_t)c->rotate_every, (int64_t)c->jwks_max_age, c->node, now, due, &next);
	/* A client that took a step has a next one (its next key's activation):
	 * known after another look. */
	sched.at[SCHED_ROTATE] = n > 0 ? now : next;
	for (i = 0; i < n; i++) {
		if (i > 0 && tick_ms(t0) > TICK_HW_MS) {
			sched.at[SCHED_ROTATE] = now;
			break;
		}
		if (client_info(d->st, due[i].client, &ci) < 0)
			continue;
		if ((r = rotate_due(d, &ci, due[i].every, now)) > 0) {
			done += r;
		} else if (r == -CIMD_EUNAVAILABLE || r == -EIO) {
			sched.at[SCHED_ROTATE] = now; /* again at the next tick */
			if (r == -CIMD_EUNAVAILABLE)
				custody_failed(d->custody);
		}
	}
	return done;
}

/*
 * A node's first key of each client (docs/scaling.md, "A cluster"): every
 * node keeps its own keys for every client, so a client made on another
 * node, or before this node joined, gets a key here too.  Which clients lack
 * one is known without looking at them all: a changed client is checked by
 * one indexed query (keys_adopt_check, for each change the main loop takes),
 * and every client only at start or when more are waiting than the queue
 * holds.  The keys are made by the scheduler, within its tick's time.
 */
#define ADOPT_MAX 256

static struct {
	char names[ADOPT_MAX][CIMD_NAME_MAX + 1];
	size_t n;
	int scan; /* look for every client without a key here */
} adopt = {.scan = 1};

static int lacks_key(struct svc *d, const char *client)
{
	struct store_rows *s = NULL;
	int r = 0;

	if (store_query(d->st, &s,
			"SELECT NOT EXISTS (SELECT 1 FROM keys WHERE client = ?1 AND node = ?2) "
			"AND EXISTS (SELECT 1 FROM clients WHERE name = ?1)",
			"ss", client, d->cfg->node) == 0 &&
	    store_next(s) > 0)
		r = store_int(s, 0) != 0;
	store_done(d->st, s);
	return r;
}

static void adopt_add(const char *client)
{
	size_t i;

	for (i = 0; i < adopt.n; i++)
		if (strcmp(adopt.names[i], client) == 0)
			return;
	if (adopt.n == ADOPT_MAX)
		adopt.scan = 1;
	else
		snprintf(adopt.names[adopt.n++], sizeof(adopt.names[0]), "%s", client);
}

void keys_adopt_check(struct svc *d, const char *client)
{
	if (!d->node_revoked && client[0] != '\0' && lacks_key(d, client))
		adopt_add(client);
}

/* The queue filled from one look at every client, a page at a time. */
static void adopt_scan(struct svc *d)
{
	struct store_rows *s = NULL;
	int rows = 0;

	if (store_query(d->st, &s,
			"SELECT c.name FROM clients c WHERE NOT EXISTS (SELECT 1 FROM keys k "
			"WHERE k.client = c.name AND k.node = ?) ORDER BY c.name LIMIT ?",
			"si", d->cfg->node, (int64_t)(ADOPT_MAX - adopt.n)) < 0)
		return;
	while (store_next(s) > 0) {
		adopt_add(store_text(s, 0));
		rows++;
	}
	store_done(d->st, s);
	adopt.scan = adopt.n == ADOPT_MAX && rows > 0;
}

/* Clients waiting for this node's first key, within TICK_HW_MS. */
static int tick_adopt(struct svc *d, const struct timespec *t0)
{
	struct client_info ci;
	char kid[CIMD_KID_LEN + 1];
	size_t i, done = 0;
	int r;

	if (d->node_revoked)
		return 0;
	if (adopt.scan && adopt.n < ADOPT_MAX)
		adopt_scan(d);
	for (i = 0; i < adopt.n; i++) {
		if (i > 0 && tick_ms(t0) > TICK_HW_MS)
			break;
		if (!lacks_key(d, adopt.names[i]) || client_info(d->st, adopt.names[i], &ci) < 0)
			continue; /* made meanwhile, or gone */
		if ((r = create_key(d, &ci, NULL, "cimdd", kid)) == -CIMD_EUNAVAILABLE ||
		    r == -EIO) {
			if (r == -CIMD_EUNAVAILABLE)
				custody_failed(d->custody);
			break; /* kept, with the rest: again at the next tick */
		}
		if (r < 0) { /* the client's bound on keys: not again by itself */
			log_warn("node %s: no key of %s: %s", d->cfg->node, ci.name,
				 cimd_strerror(r));
			continue;
		}
		log_info("node %s: first key %s of %s", d->cfg->node, kid, ci.name);
	}
	done = i;
	memmove(adopt.names, adopt.names + done, (adopt.n - done) * sizeof(adopt.names[0]));
	adopt.n -= done;
	return (int)done;
}

/* A node's first key of a client, made next (first_state): activated by the
 * scheduler once published for jwks_max_age, as a rotation's is.  Only a
 * first key: the node holds no key of the client but next ones. */
static int first_one(struct svc *d, const struct due *x)
{
	int r;

	if (store_begin(d->st) < 0)
		return 0;
	if ((r = activate(d, x->client, x->kid, "scheduler", 0)) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		return 0;
	}
	return 1;
}

/* Each kind of transition is looked at only when its time has come (sched).
 * Each query is bounded (LIMIT) and reads one state's keys through the
 * keys_state index; the rotation query reads the active keys through it, with
 * the client and the next key by their indexes (keys_client). */
int keys_tick(struct svc *d, time_t tnow)
{
	int64_t now = (int64_t)tnow, grace = retire_grace(d->cfg);
	struct timespec t0;
	int done = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	sched_refresh(d->cfg, grace);
	if (sched.at[SCHED_RETIRE] <= now)
		done +=
		    sweep(d, SCHED_RETIRE,
			  "SELECT client, kid, retiring + ?1 FROM keys INDEXED BY keys_retiring "
			  "WHERE state = 'retiring' AND retiring IS NOT NULL AND node = ?4 "
			  "ORDER BY retiring LIMIT ?3",
			  grace, retire_one, now, NULL);
	if (sched.at[SCHED_DESTROY] <= now)
		done += sweep(d, SCHED_DESTROY,
			      "SELECT client, kid, retired + ?1 FROM keys INDEXED BY keys_retired "
			      "WHERE state = 'retired' AND retired IS NOT NULL AND node = ?4 "
			      "ORDER BY retired LIMIT ?3",
			      (int64_t)d->cfg->destroy_delay, destroy_one, now, &t0);
	if (sched.at[SCHED_REVOKED] <= now)
		done +=
		    sweep(d, SCHED_REVOKED,
			  "SELECT client, kid, revoked + ?1 FROM keys INDEXED BY keys_revoked "
			  "WHERE state = 'revoked' AND destroyed IS NULL AND revoked IS NOT NULL "
			  "AND node = ?4 ORDER BY revoked LIMIT ?3",
			  0, revoked_one, now, &t0);
	if (sched.at[SCHED_ROTATE] <= now)
		done += tick_rotate(d, now, &t0);
	if (adopt.n > 0 || adopt.scan)
		done += tick_adopt(d, &t0);
	/* Unpublished yet: looked at again in a second. */
	if (sched.at[SCHED_FIRST] <= now)
		done +=
		    sweep(d, SCHED_FIRST,
			  "SELECT client, kid, coalesce(published + ?1, ?2) AS due FROM keys k "
			  "WHERE state = 'next' AND node = ?4 AND NOT EXISTS (SELECT 1 FROM keys "
			  "o WHERE o.client = k.client AND o.node = k.node AND o.state <> 'next') "
			  "ORDER BY due LIMIT ?3",
			  (int64_t)d->cfg->jwks_max_age, first_one, now, NULL);
	return done;
}

/* ---- attestation keys: which one is active ---- */

int keys_attest_active(struct svc *d, const char *backend, char ret_kid[CIMD_KID_LEN + 1],
		       struct ks_key **ret_key)
{
	struct key_store *ks = custody_store(d->custody, backend);
	struct store_rows *s = NULL;
	int r = -ENOENT;

	if (ks == NULL)
		return -CIMD_EUNAVAILABLE;
	if (store_query(d->st, &s,
			"SELECT kid, ref FROM attest_keys WHERE node = ? AND backend = ? AND "
			"state = 'active'",
			"ss", d->cfg->node, backend) < 0)
		return -EIO;
	if (store_next(s) > 0) {
		snprintf(ret_kid, CIMD_KID_LEN + 1, "%s", store_text(s, 0));
		r = key_store_load(ks, CIMD_ALG_ES256, store_blob(s, 1), store_len(s, 1), ret_key);
	}
	store_done(d->st, s);
	return r;
}

int keys_probe_key(void *arg, size_t i, struct key_store *ks, struct ks_key **ret_key)
{
	struct svc *d = arg;
	char kid[CIMD_KID_LEN + 1];
	int r;

	(void)ks;
	r = keys_attest_active(d, custody_name(d->custody, i), kid, ret_key);
	/* Which key to probe with is the database's to say: while it is out of
	 * reach, the hardware is not judged. */
	return r < 0 && r != -ENOENT && store_lost(d->st) ? -EAGAIN : r;
}

/* ---- start-up reconciliation ---- */

/*
 * One listing per backend, matched by hash lookup, no hardware search per key
 * (issue 13).  Each backend's keys are listed once (key_store_list) into a
 * set; the database's live keys (next, active, retiring, retired) are read
 * once and each is looked up in the set; what the hardware holds that no live
 * key matched is looked up by its reference, one indexed query each (normally
 * the attestation keys alone).  What is found is what the per-key loads of
 * before found: a missing key marks its client degraded and is journaled; a
 * retired key gone is recorded destroyed; a revoked or destroyed key still
 * there, or a key of a live generation intent without a row, is destroyed; an
 * unknown key is reported and left; a degraded client whose published keys
 * are all there again is restored.
 *
 * A TPM holds no keys of ours (key_store_holds_keys is 0): a key is a blob
 * wrapped under the parent, and the TPM loads it as long as that parent is the
 * one that wrapped it (TPM 2.0 Part 1 §23.7: the blob's integrity key derives
 * from the parent's seed).  What makes blobs unloadable is a change of parent
 * -- the TPM cleared or replaced (a new owner seed: a new SRK), a persistent
 * parent evicted or replaced, the `parent` setting changed -- and such a change
 * makes every blob made before it unloadable at once.  So rather than load
 * every key, each blob is checked without the hardware (key_store_ref_check:
 * it parses, its public area is what cimdd creates), and two are loaded: the
 * oldest and the newest live key of the backend.  Both load: the parent is the
 * one that wrapped the oldest, and no change since has made the newest
 * unloadable.  One is refused: the backend's keys are loaded one by one, as
 * before, so that each missing key is reported.  What this does not find at
 * start is one blob damaged in the database while the others are intact (or
 * a parent changed and changed back between the two): its first use does (the
 * signer answers the error).  docs/custody.md, "Reconciliation".
 */

/* A set of byte strings (references, client names) owned by the caller:
 * open addressing, linear probing, FNV-1a. */
struct bkey {
	const uint8_t *p;
	size_t len;
	int hit;   /* a live row matched it */
	int whole; /* a listed key: all of it is there */
};

struct bset {
	struct bkey **slot;
	size_t cap; /* a power of two, at least twice the keys */
};

static size_t bhash(const uint8_t *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return (size_t)(h ^ (h >> 32));
}

static int bset_init(struct bset *s, size_t n)
{
	s->cap = 16;
	while (s->cap < 2 * n)
		s->cap *= 2;
	return (s->slot = calloc(s->cap, sizeof(*s->slot))) == NULL ? -ENOMEM : 0;
}

static struct bkey **bset_find(const struct bset *s, const uint8_t *p, size_t len)
{
	size_t i = bhash(p, len) & (s->cap - 1);

	while (s->slot[i] != NULL && (s->slot[i]->len != len || memcmp(s->slot[i]->p, p, len) != 0))
		i = (i + 1) & (s->cap - 1);
	return &s->slot[i];
}

/* A key already there stays (a reference listed twice is one key). */
static void bset_add(struct bset *s, struct bkey *k)
{
	struct bkey **slot = bset_find(s, k->p, k->len);

	if (*slot == NULL)
		*slot = k;
}

static struct bkey *bset_get(const struct bset *s, const uint8_t *p, size_t len)
{
	return s->cap == 0 ? NULL : *bset_find(s, p, len);
}

static void bset_free(struct bset *s)
{
	free(s->slot);
	s->slot = NULL;
	s->cap = 0;
}

/* What a backend's keys can be checked against. */
enum recon_mode {
	RC_DONE,    /* reconciled already by this process: not again */
	RC_CLOSED,  /* no key store: nothing checked */
	RC_UNKNOWN, /* the hardware did not answer: nothing concluded */
	RC_LISTED,  /* it holds its keys: a key is there when it is listed */
	RC_BLOBS,   /* keys are blobs: each checked without the hardware, two loaded */
	RC_LOADS,   /* a sample blob was refused: every key is loaded */
};

struct recon_backend {
	const char *name;
	struct key_store *ks;
	enum recon_mode mode;
	struct ks_ref *refs; /* the listing */
	size_t n;
	int listed; /* all of it: strays looked at, intents dropped */
	struct bkey *keys;
	struct bset set;
	size_t rows, unchecked;
};

/* A live key whose hardware key is not there. */
struct recon_miss {
	char client[CIMD_NAME_MAX + 1];
	char kid[CIMD_KID_LEN + 1];
	char state[16];
	char why[160];
};

struct recon {
	struct recon_backend b[CIMD_BACKENDS_MAX];
	size_t nb;
	struct recon_miss *miss;
	size_t nmiss, capmiss;
	/* Clients with a published key missing or not checked: not restored. */
	char (*bad)[CIMD_NAME_MAX + 1];
	size_t nbad, capbad;
	struct bkey *badkeys;
	struct bset badset;
};

#define LIVE_STATES "('next', 'active', 'retiring', 'retired')"

/* An array of size-byte items with room for item n: p itself, a larger copy,
 * or NULL (p is left as it was). */
static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
	size_t c = *cap ? 2 * *cap : 64;

	if (n < *cap)
		return p;
	if ((p = realloc(p, c * size)) != NULL)
		*cap = c;
	return p;
}

static int recon_bad(struct recon *rc, const char *client)
{
	void *p;

	if (rc->nbad > 0 && strcmp(rc->bad[rc->nbad - 1], client) == 0)
		return 0; /* a client's keys are often next to each other */
	if ((p = grow(rc->bad, &rc->capbad, rc->nbad, sizeof(*rc->bad))) == NULL)
		return -ENOMEM;
	rc->bad = p;
	snprintf(rc->bad[rc->nbad++], sizeof(rc->bad[0]), "%s", client);
	return 0;
}

static int recon_miss(struct recon *rc, const char *client, const char *kid, const char *state,
		      const char *why)
{
	struct recon_miss *m;
	void *p;

	if ((p = grow(rc->miss, &rc->capmiss, rc->nmiss, sizeof(*rc->miss))) == NULL)
		return -ENOMEM;
	rc->miss = p;
	m = &rc->miss[rc->nmiss++];
	snprintf(m->client, sizeof(m->client), "%s", client);
	snprintf(m->kid, sizeof(m->kid), "%s", kid);
	snprintf(m->state, sizeof(m->state), "%s", state);
	snprintf(m->why, sizeof(m->why), "%s", why);
	return strcmp(state, "retired") == 0 ? 0 : recon_bad(rc, client);
}

static void recon_free(struct recon *rc)
{
	size_t i;

	for (i = 0; i < rc->nb; i++) {
		ks_refs_free(&rc->b[i].refs, rc->b[i].n);
		free(rc->b[i].keys);
		bset_free(&rc->b[i].set);
	}
	free(rc->miss);
	free(rc->bad);
	free(rc->badkeys);
	bset_free(&rc->badset);
}

/* One live key of a backend whose blob is well formed. */
struct recon_sample {
	int64_t rowid; /* 0: none */
	char kid[CIMD_KID_LEN + 1];
	enum cimd_alg alg;
	uint8_t ref[CIMD_KEYREF_MAX];
	size_t len;
};

/* The first (or, newest, last) key the backend recorded, by rowid, of those in
 * a live state with a well-formed blob: per state one query through the
 * keys_state index, which holds each state's keys in rowid order, so that each
 * stops at its first well-formed row. */
static void recon_pick(struct svc *d, struct recon_backend *rb, int newest,
		       struct recon_sample *ret)
{
	static const char *const states[] = {"next", "active", "retiring", "retired"};
	struct store_rows *s = NULL;
	enum cimd_alg alg;
	const uint8_t *ref;
	int64_t rowid;
	size_t i, len;

	ret->rowid = 0;
	for (i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		/* +backend: the backend is a filter here, not the index to use. */
		if (store_query(d->st, &s,
				newest
				    ? "SELECT rowid, alg, ref, kid FROM keys WHERE state = ? AND "
				      "+backend = ? AND +node = ? ORDER BY rowid DESC"
				    : "SELECT rowid, alg, ref, kid FROM keys WHERE state = ? AND "
				      "+backend = ? AND +node = ? ORDER BY rowid",
				"sss", states[i], rb->name, d->cfg->node) < 0)
			continue;
		while (store_next(s) > 0) {
			rowid = store_int(s, 0);
			if (ret->rowid != 0 && (newest ? rowid < ret->rowid : rowid > ret->rowid))
				break; /* no better than the one we have */
			alg = cimd_alg_from_name(store_text(s, 1));
			ref = store_blob(s, 2);
			len = store_len(s, 2);
			if (key_store_ref_check(rb->ks, alg, ref, len) < 0)
				continue;
			ret->rowid = rowid;
			snprintf(ret->kid, sizeof(ret->kid), "%s", store_text(s, 3));
			ret->alg = alg;
			memcpy(ret->ref, ref, len);
			ret->len = len;
			break;
		}
		store_done(d->st, s);
		s = NULL;
	}
}

/*
 * A TPM backend's two samples, the first and the last live key it recorded,
 * loaded.  RC_BLOBS when both load (or there is none), RC_LOADS when one is
 * refused (-CIMD_ENOKEY), RC_UNKNOWN when the TPM did not answer.
 */
static enum recon_mode recon_samples(struct svc *d, struct recon_backend *rb)
{
	struct recon_sample sample;
	struct ks_key *key = NULL;
	int64_t first = 0;
	int i, r;

	for (i = 0; i < 2; i++) {
		recon_pick(d, rb, i, &sample);
		if (sample.rowid == 0 || sample.rowid == first)
			continue; /* none, or one key: loaded already */
		first = sample.rowid;
		r = key_store_load(rb->ks, sample.alg, sample.ref, sample.len, &key);
		ks_key_free(&key);
		if (r == -CIMD_ENOKEY) {
			log_warn("reconcile: the %s key %s of backend %s does not load (%s): "
				 "every key of the backend is loaded",
				 i == 0 ? "oldest" : "newest", sample.kid, rb->name,
				 key_store_errmsg(rb->ks));
			return RC_LOADS;
		}
		if (r < 0) {
			log_warn("reconcile: backend %s does not answer (%s)", rb->name,
				 key_store_errmsg(rb->ks));
			return RC_UNKNOWN;
		}
	}
	return RC_BLOBS;
}

/* The key stores reconciled so far.  A key store lives as long as the daemon
 * (cimdd.c opens each once, late or not, and never closes one while running),
 * so one that opens late is reconciled alone: the others were at their own
 * opening, and have changed since only through this daemon. */
static const struct key_store *reconciled[CIMD_BACKENDS_MAX];

/* Each backend: its key store, its listing in a set, or its samples. */
static void recon_prepare(struct svc *d, struct recon *rc)
{
	const size_t max = (size_t)CIMD_CLIENTS_MAX * CIMD_KEYS_PER_CLIENT_MAX;
	struct recon_backend *rb;
	size_t i;
	int r;

	for (rc->nb = 0; rc->nb < d->cfg->n_backends && rc->nb < CIMD_BACKENDS_MAX; rc->nb++) {
		rb = &rc->b[rc->nb];
		rb->name = d->cfg->backends[rc->nb].name;
		if ((rb->ks = custody_at(d->custody, rc->nb)) == NULL) {
			rb->mode = RC_CLOSED;
			continue;
		}
		if (reconciled[rc->nb] == rb->ks) {
			rb->mode = RC_DONE;
			rb->ks = NULL;
			continue;
		}
		rb->mode = RC_UNKNOWN;
		if ((r = key_store_list(rb->ks, max, &rb->refs, &rb->n)) < 0) {
			log_warn("reconcile: cannot list the keys of backend %s: %s", rb->name,
				 key_store_errmsg(rb->ks));
			continue;
		}
		if (rb->n == max) {
			log_warn("reconcile: backend %s lists %zu keys or more: not all checked",
				 rb->name, max);
		} else {
			rb->listed = 1;
		}
		if ((rb->keys = calloc(rb->n ? rb->n : 1, sizeof(*rb->keys))) == NULL ||
		    bset_init(&rb->set, rb->n) < 0) {
			log_warn("reconcile: backend %s: out of memory: its keys are not checked",
				 rb->name);
			free(rb->keys);
			rb->keys = NULL;
			rb->listed = 0;
			continue;
		}
		for (i = 0; i < rb->n; i++) {
			rb->keys[i].p = rb->refs[i].ref;
			rb->keys[i].len = rb->refs[i].len;
			rb->keys[i].whole = rb->refs[i].whole;
			bset_add(&rb->set, &rb->keys[i]);
		}
		if (!key_store_holds_keys(rb->ks))
			rb->mode = recon_samples(d, rb);
		else if (rb->listed)
			rb->mode = RC_LISTED;
	}
}

/* One live row against its backend. */
static int recon_row(struct recon *rc, struct recon_backend *rb, const char *client,
		     const char *kid, const char *alg, const char *state, const uint8_t *ref,
		     size_t len)
{
	int published = strcmp(state, "retired") != 0;
	struct ks_key *key = NULL;
	struct bkey *k;
	int r;

	if (rb != NULL && rb->mode == RC_DONE)
		return published ? recon_bad(rc, client) : 0; /* restored then, or not */
	if (rb != NULL)
		rb->rows++;
	if (rb == NULL || rb->mode == RC_CLOSED || rb->mode == RC_UNKNOWN) {
		if (rb != NULL)
			rb->unchecked++;
		return published ? recon_bad(rc, client) : 0;
	}
	/* Load's own checks first: a malformed reference is missing anywhere. */
	r = key_store_ref_check(rb->ks, cimd_alg_from_name(alg), ref, len);
	if (r == -CIMD_ENOKEY)
		return recon_miss(rc, client, kid, state, "malformed reference");
	if (r < 0) /* a key of another algorithm: not missing, not usable */
		return published ? recon_bad(rc, client) : 0;
	switch (rb->mode) {
	case RC_LISTED:
		if ((k = bset_get(&rb->set, ref, len)) == NULL)
			return recon_miss(rc, client, kid, state, "not held by the token");
		k->hit = 1;
		/* Half a pair (a destruction cut short) does not load either. */
		return k->whole
			   ? 0
			   : recon_miss(rc, client, kid, state, "the token holds only part of it");
	case RC_LOADS:
		r = key_store_load(rb->ks, cimd_alg_from_name(alg), ref, len, &key);
		ks_key_free(&key);
		if (r == -CIMD_ENOKEY)
			return recon_miss(rc, client, kid, state, key_store_errmsg(rb->ks));
		return r < 0 && published ? recon_bad(rc, client) : 0;
	default: /* RC_BLOBS: the samples loaded */
		return 0;
	}
}

/* The live rows, read once. */
static int recon_walk(struct svc *d, struct recon *rc)
{
	struct recon_backend *rb;
	struct store_rows *s = NULL;
	const char *backend;
	size_t i;
	int r = 0;

	if (store_query(d->st, &s,
			"SELECT client, kid, backend, alg, state, ref FROM keys WHERE state "
			"IN " LIVE_STATES " AND node = ?",
			"s", d->cfg->node) < 0)
		return -EIO;
	while (r == 0 && store_next(s) > 0) {
		backend = store_text(s, 2);
		for (i = 0, rb = NULL; i < rc->nb && rb == NULL; i++)
			if (strcmp(rc->b[i].name, backend) == 0)
				rb = &rc->b[i];
		r = recon_row(rc, rb, store_text(s, 0), store_text(s, 1), store_text(s, 3),
			      store_text(s, 4), store_blob(s, 5), store_len(s, 5));
	}
	store_done(d->st, s);
	return r;
}

/* The missing keys recorded, in one transaction: never silently dropped. */
static int recon_apply(struct svc *d, struct recon *rc)
{
	struct recon_miss *m;
	json_t *f;
	size_t i;
	int r = 0;

	if (rc->nmiss == 0)
		return 0;
	if (store_begin(d->st) < 0)
		return -EIO;
	for (i = 0; i < rc->nmiss && r == 0; i++) {
		m = &rc->miss[i];
		if (strcmp(m->state, "retired") == 0) {
			/* Destroyed in hardware, and the crash came before the row said so. */
			log_info("reconcile: retired key %s of %s is gone from the hardware: "
				 "recorded as destroyed",
				 m->kid, m->client);
			if ((r = transition(d, m->client, m->kid, "retired", "destroyed", "cimdd",
					    NULL)) == -ESTALE)
				r = 0;
			continue;
		}
		/* The record stays, the client is marked. */
		log_err("reconcile: key %s (%s) of client %s has NO hardware key (%s); client %s "
			"is marked degraded",
			m->kid, m->state, m->client, m->why, m->client);
		f = json_pack("{ssssssss}", "client", m->client, "kid", m->kid, "problem",
			      "hardware key missing", "action", "client marked degraded");
		if (f == NULL ||
		    store_exec(d->st, "UPDATE clients SET degraded = 1 WHERE name = ?", "s",
			       m->client) < 0 ||
		    journal_append(d->st, "reconcile", "cimdd", f, NULL) < 0)
			r = -EIO;
		json_decref(f);
	}
	if (r < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		log_err("reconcile: recording %zu missing keys failed: nothing was recorded",
			rc->nmiss);
		return -EIO;
	}
	sched_soon(SCHED_ROTATE, 0); /* degraded clients do not rotate */
	return 0;
}

/* A client marked degraded whose published keys are all there again is no
 * longer degraded: cleared and journaled.  1 cleared, 0 it was not degraded. */
static int restore_client(struct svc *d, const char *client, const char *actor)
{
	json_t *f;
	int rc;

	if ((f = json_pack("{ssss}", "client", client, "reason",
			   "every published key is in the hardware")) == NULL)
		return -ENOMEM;
	if (store_begin(d->st) < 0 ||
	    (rc = store_exec(d->st,
			     "UPDATE clients SET degraded = 0 WHERE name = ? AND degraded = 1", "s",
			     client)) < 0 ||
	    (rc == 1 && journal_append(d->st, "client.restored", actor, f, NULL) < 0) ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		json_decref(f);
		return -EIO;
	}
	json_decref(f);
	if (rc == 1) {
		log_info("client %s is no longer degraded: every published key is in the hardware",
			 client);
		sched_soon(SCHED_ROTATE, 0);
	}
	return rc == 1;
}

/* Degraded clients none of whose published keys is missing or unchecked. */
static void recon_restore(struct svc *d, struct recon *rc)
{
	char(*names)[CIMD_NAME_MAX + 1] = NULL;
	size_t i, m = 0, cap = 0;
	struct store_rows *s = NULL;
	void *p;

	if ((rc->badkeys = calloc(rc->nbad ? rc->nbad : 1, sizeof(*rc->badkeys))) == NULL ||
	    bset_init(&rc->badset, rc->nbad) < 0)
		return; /* nobody restored this time */
	for (i = 0; i < rc->nbad; i++) {
		rc->badkeys[i].p = (const uint8_t *)rc->bad[i];
		rc->badkeys[i].len = strlen(rc->bad[i]);
		bset_add(&rc->badset, &rc->badkeys[i]);
	}
	/* No index on degraded: one read of the clients, at start only. */
	if (store_query(d->st, &s, "SELECT name FROM clients WHERE degraded = 1", "") < 0)
		return;
	while (store_next(s) > 0) {
		const char *name = store_text(s, 0);
		if (bset_get(&rc->badset, (const uint8_t *)name, strlen(name)) != NULL ||
		    (p = grow(names, &cap, m, sizeof(*names))) == NULL)
			continue;
		names = p;
		snprintf(names[m++], sizeof(names[0]), "%s", name);
	}
	store_done(d->st, s);
	for (i = 0; i < m; i++)
		restore_client(d, names[i], "cimdd");
	free(names);
}

/* What reconciliation did about a hardware key, journaled with the others. */
struct recon_rec {
	char client[CIMD_NAME_MAX + 1];
	char kid[CIMD_KID_LEN + 1];
	const char *problem, *action;
	int revoked; /* a revoked key destroyed: its row says when */
};

static int recon_rec(struct recon_rec **recs, size_t *n, size_t *cap, const char *client,
		     const char *kid, const char *problem, const char *action, int revoked)
{
	struct recon_rec *x;

	if ((x = grow(*recs, cap, *n, sizeof(**recs))) == NULL)
		return -ENOMEM;
	*recs = x;
	x = &x[(*n)++];
	snprintf(x->client, sizeof(x->client), "%s", client);
	snprintf(x->kid, sizeof(x->kid), "%s", kid);
	x->problem = problem;
	x->action = action;
	x->revoked = revoked;
	return 0;
}

/*
 * A key the hardware lists that no live row matched: one indexed query for its
 * row (keys_ref), and for an attestation key's (attest_keys_ref), and for its
 * intent (key_intents' key).  What was done goes to recs, journaled after the
 * hardware calls (no write lock is held across them).  1 when it was destroyed.
 */
static int recon_stray(struct svc *d, struct recon_backend *rb, const struct ks_ref *ref,
		       struct recon_rec **recs, size_t *n, size_t *cap)
{
	char state[16] = "", kid[CIMD_KID_LEN + 1] = "", client[CIMD_NAME_MAX + 1] = "";
	struct store_rows *s = NULL;
	int known = 0, intent = 0, r;

	if (store_query(d->st, &s,
			"SELECT state, kid, client FROM keys WHERE backend = ? AND ref = ?", "sb",
			rb->name, ref->ref, ref->len) == 0) {
		if (store_next(s) > 0) {
			snprintf(state, sizeof(state), "%s", store_text(s, 0));
			snprintf(kid, sizeof(kid), "%s", store_text(s, 1));
			snprintf(client, sizeof(client), "%s", store_text(s, 2));
		}
		store_done(d->st, s);
		s = NULL;
	}
	/* The appliance's attestation keys are known too (attest.c). */
	if (state[0] == '\0' &&
	    store_query(d->st, &s, "SELECT 1 FROM attest_keys WHERE backend = ? AND ref = ?", "sb",
			rb->name, ref->ref, ref->len) == 0) {
		known = store_next(s) > 0;
		store_done(d->st, s);
		s = NULL;
	}
	if (known ||
	    (state[0] != '\0' && strcmp(state, "destroyed") != 0 && strcmp(state, "revoked") != 0))
		return 0;
	if (state[0] != '\0') {
		/* A record that says it must be gone. */
		r = key_store_destroy_ref(rb->ks, ref->ref, ref->len);
		log_warn("reconcile: %s key %s of %s was still in the hardware: %s", state, kid,
			 client, r == 0 ? "destroyed" : key_store_errmsg(rb->ks));
		recon_rec(recs, n, cap, client, kid, "hardware key of a gone key",
			  r == 0 ? "destroyed" : "destroy failed",
			  r == 0 && strcmp(state, "revoked") == 0);
		return r == 0;
	}
	/* No record.  Ours from a crash between generating and recording (its tag
	 * is a live intent): destroy it.  Not ours by this database (a restored or
	 * wrong database, or another appliance's token): report it and leave it. */
	if (ref->tag[0] != '\0' &&
	    store_query(d->st, &s, "SELECT 1 FROM key_intents WHERE tag = ? AND backend = ?", "ss",
			ref->tag, rb->name) == 0) {
		intent = store_next(s) > 0;
		store_done(d->st, s);
	}
	if (!intent) {
		log_err(
		    "reconcile: a %s key labelled cimdd%s%s is not known to this database: left "
		    "in place (a restored or wrong database?)",
		    rb->name, ref->tag[0] ? ":" : "", ref->tag);
		recon_rec(recs, n, cap, "-", "-", "unknown hardware key", "left in place", 0);
		return 0;
	}
	r = key_store_destroy_ref(rb->ks, ref->ref, ref->len);
	log_warn("reconcile: a %s key whose generation was never recorded (intent %s) was in the "
		 "hardware: %s",
		 rb->name, ref->tag, r == 0 ? "destroyed" : key_store_errmsg(rb->ks));
	recon_rec(recs, n, cap, "-", "-", "hardware key without a record",
		  r == 0 ? "destroyed" : "destroy failed", 0);
	return r == 0;
}

/* Keys the hardware holds: each must have a row that wants it kept.  What was
 * done is journaled in one transaction, with the intents dropped. */
static int recon_hardware(struct svc *d, struct recon *rc)
{
	struct recon_backend *rb;
	struct recon_rec *recs = NULL;
	size_t b, i, n = 0, cap = 0;
	json_t *f;
	int removed = 0, r = 0;

	for (b = 0; b < rc->nb; b++) {
		rb = &rc->b[b];
		if (rb->ks == NULL || rb->keys == NULL)
			continue;
		for (i = 0; i < rb->n; i++)
			if (!rb->keys[i].hit &&
			    bset_get(&rb->set, rb->keys[i].p, rb->keys[i].len)->hit == 0)
				removed += recon_stray(d, rb, &rb->refs[i], &recs, &n, &cap);
	}
	if (store_begin(d->st) < 0) {
		free(recs);
		return removed;
	}
	for (i = 0; i < n && r == 0; i++) {
		if (recs[i].revoked &&
		    store_exec(d->st,
			       "UPDATE keys SET destroyed = coalesce(destroyed, ?) WHERE kid = ?",
			       "is", (int64_t)time(NULL), recs[i].kid) < 0)
			r = -EIO;
		f = json_pack("{ssssssss}", "client", recs[i].client, "kid", recs[i].kid, "problem",
			      recs[i].problem, "action", recs[i].action);
		if (f == NULL || journal_append(d->st, "reconcile", "cimdd", f, NULL) < 0)
			r = -EIO;
		json_decref(f);
	}
	/* What intents remain had no key made, or their key was just destroyed:
	 * none is in progress while we reconcile.  Only after a whole listing: an
	 * intent whose key was not listed must stay. */
	for (b = 0; b < rc->nb && r == 0; b++)
		if (rc->b[b].ks != NULL && rc->b[b].listed &&
		    store_exec(d->st, "DELETE FROM key_intents WHERE backend = ? AND node = ?",
			       "ss", rc->b[b].name, d->cfg->node) < 0)
			r = -EIO;
	if (r < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		log_err("reconcile: journaling what was done with %zu hardware keys failed", n);
	}
	free(recs);
	return removed;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

int keys_reconcile(struct svc *d)
{
	struct recon rc;
	struct timespec t0;
	double hw_ms;
	size_t b, rows = 0, missing = 0, checked = 0;
	int removed, applied;

	memset(&rc, 0, sizeof(rc));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	recon_prepare(d, &rc);
	hw_ms = ms_since(&t0);
	if (recon_walk(d, &rc) < 0) {
		log_err("reconcile: cannot read the keys: nothing was reconciled");
		recon_free(&rc);
		return 0;
	}
	for (b = 0; b < rc.nb; b++) {
		rows += rc.b[b].rows;
		if (rc.b[b].unchecked > 0)
			log_warn("reconcile: backend %s is %s: %zu of its keys not checked",
				 rc.b[b].name,
				 rc.b[b].mode == RC_CLOSED ? "not open" : "not answering",
				 rc.b[b].unchecked);
	}
	for (b = 0; b < rc.nmiss; b++)
		if (strcmp(rc.miss[b].state, "retired") != 0)
			missing++;
	applied = recon_apply(d, &rc) == 0;
	recon_restore(d, &rc);
	removed = recon_hardware(d, &rc);
	for (b = 0; b < rc.nb; b++)
		if (rc.b[b].mode == RC_LISTED || rc.b[b].mode == RC_BLOBS ||
		    rc.b[b].mode == RC_LOADS) {
			checked++;
			if (applied) /* else again when the next backend opens */
				reconciled[b] = custody_at(d->custody, b);
		}
	if (missing > 0 || removed > 0)
		log_warn("reconcile: %zu keys missing from the hardware, %d stray hardware keys "
			 "destroyed",
			 missing, removed);
	log_info("reconcile: %zu live keys on %zu backends checked in %.0f ms (hardware %.0f ms)",
		 rows, checked, ms_since(&t0), hw_ms);
	recon_free(&rc);
	return (int)missing;
}

/* A degraded client whose published keys (next, active, retiring) are all in
 * the hardware again -- the missing ones revoked and replaced, or the token
 * back -- is no longer degraded.  One client's keys, each loaded (a revocation
 * calls this).  1 cleared, 0 still degraded, < 0 error. */
int keys_recheck_degraded(struct svc *d, const char *client, const char *actor)
{
	struct ks_key *key = NULL;
	struct key_store *ks;
	struct store_rows *s = NULL;
	int rc, r = 1;

	if (store_query(d->st, &s,
			"SELECT k.backend, k.alg, k.ref FROM keys k JOIN clients c ON c.name = "
			"k.client WHERE c.name = ? AND c.degraded = 1 AND k.node = ? AND "
			"k.state IN ('next', 'active', 'retiring')",
			"ss", client, d->cfg->node) < 0)
		return -EIO;
	while ((rc = store_next(s)) > 0 && r == 1) {
		if ((ks = custody_store(d->custody, store_text(s, 0))) == NULL ||
		    key_store_load(ks, cimd_alg_from_name(store_text(s, 1)), store_blob(s, 2),
				   store_len(s, 2), &key) < 0)
			r = 0;
		ks_key_free(&key);
	}
	store_done(d->st, s);
	if (r == 0)
		return 0;
	return restore_client(d, client, actor);
}
