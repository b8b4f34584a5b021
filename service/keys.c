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
#include <sqlite3.h>

#include "service.h"

struct client_info {
	char name[CIMD_NAME_MAX + 1];
	char backend[16];
	char alg[16];
	int64_t rotate_every;
};

static int client_info(struct store *st, const char *name, struct client_info *ret)
{
	sqlite3_stmt *s = NULL;
	int r = -ENOENT;

	if (store_query(st, &s, "SELECT backend, alg, rotate_every FROM clients WHERE name = ?",
			"s", name) < 0)
		return -EIO;
	if (sqlite3_step(s) == SQLITE_ROW) {
		snprintf(ret->name, sizeof(ret->name), "%s", name);
		snprintf(ret->backend, sizeof(ret->backend), "%s", sqlite3_column_text(s, 0));
		snprintf(ret->alg, sizeof(ret->alg), "%s", sqlite3_column_text(s, 1));
		ret->rotate_every = sqlite3_column_int64(s, 2);
		r = 0;
	}
	sqlite3_finalize(s);
	return r;
}

static enum admin_err client_of(struct admin_req *q, struct client_info *ci)
{
	const char *name = json_string_value(json_object_get(q->args, "name"));
	int r;

	if (name == NULL || !cimd_valid_name(name))
		return admin_fail(q, AE_BAD_REQUEST,
				  "a client name [a-z0-9][a-z0-9-]{0,62} is required");
	if ((r = client_info(q->d->st, name, ci)) == -ENOENT)
		return admin_fail(q, AE_UNKNOWN_CLIENT, "no client named %s", name);
	return r < 0 ? admin_fail(q, AE_INTERNAL, "database error") : AE_OK;
}

static int64_t count_keys(struct store *st, const char *client, const char *where)
{
	char sql[256];
	sqlite3_stmt *s = NULL;
	int64_t n = -1;

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM keys WHERE client = ? AND %s", where);
	if (store_query(st, &s, sql, "s", client) == 0 && sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return n;
}

/* The kid of the client's key in state, into kid (empty when none). */
static int key_in_state(struct store *st, const char *client, const char *state, char *kid,
			int64_t *ret_since)
{
	sqlite3_stmt *s = NULL;
	int r = -ENOENT;

	kid[0] = '\0';
	if (store_query(
		st, &s,
		"SELECT kid, CASE state WHEN 'next' THEN created ELSE activated END FROM keys "
		"WHERE client = ? AND state = ? ORDER BY created LIMIT 1",
		"ss", client, state) < 0)
		return -EIO;
	if (sqlite3_step(s) == SQLITE_ROW) {
		snprintf(kid, CIMD_KID_LEN + 1, "%s", sqlite3_column_text(s, 0));
		if (ret_since != NULL)
			*ret_since = sqlite3_column_int64(s, 1);
		r = 0;
	}
	sqlite3_finalize(s);
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
static int intent_begin(struct cimdd *d, const char *client, const char *backend,
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
	    store_exec(
		d->st,
		"INSERT INTO key_intents (tag, backend, client, created) VALUES (?, ?, ?, ?)",
		"sssi", tag, backend, client, (int64_t)time(NULL)) != 1 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		return -EIO;
	}
	memcpy(ret_tag, tag, sizeof(tag));
	return 0;
}

int keys_generate(struct cimdd *d, const char *client, const char *backend, const char *alg,
		  char ret_tag[CIMD_TAG_MAX + 1], struct ks_key **ret_key)
{
	struct key_store *ks = cimdd_key_store(d, backend);
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

int keys_generate_attest(struct cimdd *d, const char *backend, char ret_tag[CIMD_TAG_MAX + 1],
			 struct ks_key **ret_key)
{
	struct key_store *ks = cimdd_key_store(d, backend);
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

void keys_intent_drop(struct cimdd *d, const char *tag)
{
	if (store_begin(d->st) == 0 &&
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) >= 0 &&
	    store_commit(d->st) == 0)
		return;
	store_rollback(d->st);
}

int keys_insert(struct cimdd *d, const char *client, const char *alg, const char *backend,
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
		       "activated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
		       "ssssbssii", ks_key_kid(key), client, alg, backend, ref, ref_len, pub, state,
		       (int64_t)now, (int64_t)(strcmp(state, "active") == 0 ? now : 0));
	free(pub);
	return r;
}

/* Creates a key for the client in hardware and records it in state `state`
 * (next or active) in a transaction of its own. */
static int create_key(struct cimdd *d, const struct client_info *ci, const char *state,
		      const char *actor, char *ret_kid)
{
	struct key_store *ks = cimdd_key_store(d, ci->backend);
	struct ks_key *key = NULL;
	char tag[CIMD_TAG_MAX + 1];
	json_t *f = NULL;
	int r;

	/* The bound holds on every path that makes keys: rotation, the scheduler,
	 * a revocation's replacement. */
	if (count_keys(d->st, ci->name, "state IN ('next', 'active', 'retiring')") >=
	    CIMD_KEYS_PER_CLIENT_MAX)
		return -EMLINK;
	if ((r = keys_generate(d, ci->name, ci->backend, ci->alg, tag, &key)) < 0)
		return r;
	f = json_pack("{ssssssss}", "client", ci->name, "kid", ks_key_kid(key), "state", state,
		      "backend", ci->backend);
	if (f == NULL || store_begin(d->st) < 0 ||
	    keys_insert(d, ci->name, ci->alg, ci->backend, key, state) != 1 ||
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) != 1 ||
	    journal_append(d->st, "key.create", actor, f, NULL) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		key_store_destroy(ks, &key);
		keys_intent_drop(d, tag);
		r = -EIO;
	} else {
		snprintf(ret_kid, CIMD_KID_LEN + 1, "%s", ks_key_kid(key));
		r = 0;
	}
	json_decref(f);
	ks_key_free(&key);
	return r;
}

static enum admin_err key_err(struct admin_req *q, int r, const char *what)
{
	if (r == -CIMD_EUNAVAILABLE)
		return admin_fail(q, AE_BACKEND_UNAVAILABLE,
				  "%s: the key's hardware is unavailable", what);
	if (r == -EMLINK)
		return admin_fail(q, AE_CONFLICT,
				  "%s: the client holds its maximum of %d published keys", what,
				  CIMD_KEYS_PER_CLIENT_MAX);
	return admin_fail(q, AE_INTERNAL, "%s: %s", what, cimd_strerror(r));
}

/* Moves kid to a new state inside an open transaction, with its journal record. */
static int transition(struct cimdd *d, const char *client, const char *kid, const char *from,
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
	return r;
}

enum admin_err keys_list(struct admin_req *q)
{
	struct client_info ci;
	sqlite3_stmt *s = NULL;
	json_t *arr;
	enum admin_err e;

	if ((e = client_of(q, &ci)) != AE_OK)
		return e;
	if ((arr = json_array()) == NULL ||
	    store_query(
		q->d->st, &s,
		"SELECT kid, alg, backend, state, created, activated, retiring, retired, "
		"destroyed, revoked, revoke_reason FROM keys WHERE client = ? ORDER BY created",
		"s", ci.name) < 0) {
		json_decref(arr);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	while (sqlite3_step(s) == SQLITE_ROW) {
		json_t *k =
		    json_pack("{ssssssss}", "kid", sqlite3_column_text(s, 0), "alg",
			      sqlite3_column_text(s, 1), "backend", sqlite3_column_text(s, 2),
			      "state", sqlite3_column_text(s, 3));
		static const char *const times[] = {"created", "activated", "retiring",
						    "retired", "destroyed", "revoked"};
		size_t i;
		for (i = 0; k != NULL && i < sizeof(times) / sizeof(times[0]); i++)
			if (sqlite3_column_type(s, 4 + (int)i) != SQLITE_NULL &&
			    sqlite3_column_int64(s, 4 + (int)i) != 0)
				json_object_set_new(
				    k, times[i], json_integer(sqlite3_column_int64(s, 4 + (int)i)));
		if (k != NULL && sqlite3_column_type(s, 10) != SQLITE_NULL)
			json_object_set_new(k, "revoke_reason",
					    json_string((const char *)sqlite3_column_text(s, 10)));
		json_array_append_new(arr, k);
	}
	sqlite3_finalize(s);
	q->result = json_pack("{so}", "keys", arr);
	return AE_OK;
}

enum admin_err keys_rotate(struct admin_req *q)
{
	struct client_info ci;
	char kid[CIMD_KID_LEN + 1];
	enum admin_err e;
	int r;

	if ((e = client_of(q, &ci)) != AE_OK)
		return e;
	if (count_keys(q->d->st, ci.name, "state = 'next'") != 0)
		return admin_fail(q, AE_CONFLICT, "%s already has a next key: activate it first",
				  ci.name);
	if (count_keys(q->d->st, ci.name, "state IN ('next', 'active', 'retiring')") >=
	    CIMD_KEYS_PER_CLIENT_MAX)
		return admin_fail(q, AE_CONFLICT, "%s holds its maximum of %d published keys",
				  ci.name, CIMD_KEYS_PER_CLIENT_MAX);
	if ((r = create_key(q->d, &ci, "next", q->op->name, kid)) < 0)
		return key_err(q, r, "creating the next key");
	q->result = json_pack("{sssssI}", "kid", kid, "state", "next", "activate_after",
			      (json_int_t)(time(NULL) + q->d->cfg->jwks_max_age));
	return AE_OK;
}

/* Activates next key kid (active key, if any, becomes retiring), in an open
 * transaction. */
static int activate(struct cimdd *d, const char *client, const char *kid, const char *actor,
		    int forced)
{
	char old[CIMD_KID_LEN + 1];
	json_t *x = forced ? json_pack("{sb}", "forced", 1) : NULL;
	int r = 0;

	if (key_in_state(d->st, client, "active", old, NULL) == 0)
		r = transition(d, client, old, "active", "retiring", actor, NULL);
	if (r == 0)
		r = transition(d, client, kid, "next", "active", actor, x);
	json_decref(x);
	return r;
}

enum admin_err keys_activate(struct admin_req *q)
{
	struct client_info ci;
	const char *want = json_string_value(json_object_get(q->args, "kid"));
	int force = json_is_true(json_object_get(q->args, "force"));
	char kid[CIMD_KID_LEN + 1];
	int64_t since = 0, age;
	enum admin_err e;

	if ((e = client_of(q, &ci)) != AE_OK)
		return e;
	if (key_in_state(q->d->st, ci.name, "next", kid, &since) < 0)
		return admin_fail(q, AE_NOT_FOUND, "%s has no next key: rotate first", ci.name);
	if (want != NULL && strcmp(want, kid) != 0)
		return admin_fail(q, AE_NOT_FOUND, "%.64s is not the next key of %s (%s is)", want,
				  ci.name, kid);
	age = (int64_t)time(NULL) - since;
	if (age < q->d->cfg->jwks_max_age && !force)
		return admin_fail(
		    q, AE_CONFLICT,
		    "the next key has been published for %llds; jwks_max_age is %lds: "
		    "activate after %llds more, or use --force",
		    (long long)age, q->d->cfg->jwks_max_age,
		    (long long)(q->d->cfg->jwks_max_age - age));
	if (store_begin(q->d->st) < 0 ||
	    activate(q->d, ci.name, kid, q->op->name, force && age < q->d->cfg->jwks_max_age) < 0 ||
	    store_commit(q->d->st) < 0) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_INTERNAL, "database error: nothing was changed");
	}
	q->result = json_pack("{sssssb}", "kid", kid, "state", "active", "forced",
			      force && age < q->d->cfg->jwks_max_age);
	return AE_OK;
}

/* Destroys the hardware key of kid; its row must already say revoked or retired. */
static int destroy_hw(struct cimdd *d, const char *kid)
{
	struct key_store *ks;
	struct ks_key *key = NULL;
	sqlite3_stmt *s = NULL;
	int r = -ENOENT;

	if (store_query(d->st, &s, "SELECT backend, alg, ref FROM keys WHERE kid = ?", "s", kid) <
	    0)
		return -EIO;
	if (sqlite3_step(s) == SQLITE_ROW) {
		ks = cimdd_key_store(d, (const char *)sqlite3_column_text(s, 0));
		r = ks == NULL
			? -CIMD_EUNAVAILABLE
			: key_store_load(
			      ks, cimd_alg_from_name((const char *)sqlite3_column_text(s, 1)),
			      sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2), &key);
		if (r == 0)
			r = key_store_destroy(ks, &key);
		else if (r == -CIMD_ENOKEY)
			r = 0; /* gone already */
	}
	sqlite3_finalize(s);
	ks_key_free(&key);
	return r;
}

/* Destroys a revoked key's hardware key and records when. */
static int destroy_revoked(struct cimdd *d, const char *client, const char *kid, const char *actor)
{
	json_t *f;
	int r;

	if ((r = destroy_hw(d, kid)) < 0)
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

enum admin_err keys_revoke(struct admin_req *q)
{
	struct client_info ci;
	const char *kid = json_string_value(json_object_get(q->args, "kid"));
	const char *reason = json_string_value(json_object_get(q->args, "reason"));
	int replace = json_is_true(json_object_get(q->args, "replace"));
	char state[16] = "", newkid[CIMD_KID_LEN + 1] = "";
	sqlite3_stmt *s = NULL;
	json_t *x;
	enum admin_err e;
	int r;

	if ((e = client_of(q, &ci)) != AE_OK)
		return e;
	if (kid == NULL)
		return admin_fail(q, AE_BAD_REQUEST, "the kid to revoke is required");
	if (reason == NULL || *reason == '\0' || strlen(reason) > 512)
		return admin_fail(q, AE_BAD_REQUEST, "a reason (1 to 512 characters) is required");
	if (store_query(q->d->st, &s, "SELECT state FROM keys WHERE client = ? AND kid = ?", "ss",
			ci.name, kid) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	if (sqlite3_step(s) == SQLITE_ROW)
		snprintf(state, sizeof(state), "%s", sqlite3_column_text(s, 0));
	sqlite3_finalize(s);
	if (state[0] == '\0')
		return admin_fail(q, AE_NOT_FOUND, "%s has no key %.64s", ci.name, kid);
	if (strcmp(state, "revoked") == 0 || strcmp(state, "destroyed") == 0)
		return admin_fail(q, AE_CONFLICT, "key %s is %s already", kid, state);
	if (replace && strcmp(state, "active") != 0)
		return admin_fail(q, AE_BAD_REQUEST,
				  "--replace applies to the active key; %s is %s", kid, state);
	if (store_begin(q->d->st) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	x = json_pack("{ss}", "reason", reason);
	r = transition(q->d, ci.name, kid, state, "revoked", q->op->name, x);
	json_decref(x);
	if (r == 0)
		r = store_exec(q->d->st,
			       "UPDATE keys SET revoke_reason = ?, revoked_by = ? WHERE kid = ?",
			       "sss", reason, q->op->name, kid) == 1
			? 0
			: -EIO;
	/* The revocation stands on its own: it is committed before anything that
	 * could fail on the hardware, so a failed replacement never keeps a
	 * compromised key alive. */
	if (r < 0 || store_commit(q->d->st) < 0) {
		store_rollback(q->d->st);
		return key_err(q, r < 0 ? r : -EIO, "revoking");
	}
	/* Destroying the hardware key comes after the commit: the row already says
	 * revoked, so a failure here leaves a key that can never be used again and
	 * that the scheduler destroys when the hardware answers. */
	if ((r = destroy_revoked(q->d, ci.name, kid, q->op->name)) < 0)
		snprintf(q->msg, sizeof(q->msg),
			 "revoked; destroying the hardware key failed (%s), "
			 "it will be retried",
			 cimd_strerror(r));
	/* The replacement is active at once: there is no time to pre-publish it,
	 * and the journal records it as forced. */
	if (replace) {
		if ((r = create_key(q->d, &ci, "next", q->op->name, newkid)) == 0 &&
		    store_begin(q->d->st) == 0) {
			if ((r = activate(q->d, ci.name, newkid, q->op->name, 1)) < 0 ||
			    store_commit(q->d->st) < 0) {
				store_rollback(q->d->st);
				r = r < 0 ? r : -EIO;
			}
		}
		if (r < 0)
			snprintf(q->msg, sizeof(q->msg),
				 "revoked; the replacement key could not be made (%s): rotate and "
				 "activate one",
				 cimd_strerror(r));
	}
	/* Revoking the key that went missing is how a degraded client recovers. */
	keys_recheck_degraded(q->d, ci.name, q->op->name);
	q->result = json_pack("{sssssssb}", "kid", kid, "state", "revoked", "replacement",
			      newkid[0] ? newkid : "", "client_has_active_key",
			      count_keys(q->d->st, ci.name, "state = 'active'") > 0);
	return AE_OK;
}

/* ---- the scheduler ---- */

struct due {
	char client[CIMD_NAME_MAX + 1];
	char kid[CIMD_KID_LEN + 1];
};

#define DUE_MAX 64 /* transitions of one kind per tick; the rest wait a second */

static size_t collect(struct store *st, const char *sql, int64_t t, struct due *out)
{
	sqlite3_stmt *s = NULL;
	size_t n = 0;

	if (store_query(st, &s, sql, "i", t) < 0)
		return 0;
	while (n < DUE_MAX && sqlite3_step(s) == SQLITE_ROW) {
		snprintf(out[n].client, sizeof(out[n].client), "%s", sqlite3_column_text(s, 0));
		snprintf(out[n].kid, sizeof(out[n].kid), "%s", sqlite3_column_text(s, 1));
		n++;
	}
	sqlite3_finalize(s);
	return n;
}

static int step(struct cimdd *d, const struct due *x, const char *from, const char *to)
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
static int rotate_due(struct cimdd *d, const struct client_info *ci, int64_t every, int64_t now)
{
	char active[CIMD_KID_LEN + 1], next[CIMD_KID_LEN + 1];
	int64_t activated = 0, created = 0;
	int r;

	if (key_in_state(d->st, ci->name, "active", active, &activated) < 0)
		return 0;
	if (key_in_state(d->st, ci->name, "next", next, &created) < 0) {
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

int keys_tick(struct cimdd *d, time_t tnow)
{
	const struct cimd_config *c = d->cfg;
	/* One second more than the sum: times are kept in whole seconds, so a key
	 * that turned retiring at T.9 is recorded at T, and its last assertion
	 * (signed just before) must stay verifiable for its whole lifetime. */
	int64_t now = (int64_t)tnow,
		grace = c->assertion_max_ttl + c->jwks_max_age + c->clock_skew + 1;
	struct due due[DUE_MAX];
	struct {
		char client[CIMD_NAME_MAX + 1];
		int64_t every;
	} rot[DUE_MAX];
	struct client_info ci;
	sqlite3_stmt *s = NULL;
	size_t i, n;
	int done = 0, r;

	n = collect(d->st,
		    "SELECT client, kid FROM keys WHERE state = 'retiring' AND retiring <= ?",
		    now - grace, due);
	for (i = 0; i < n; i++)
		if (step(d, &due[i], "retiring", "retired") > 0)
			done++;
	n = collect(d->st, "SELECT client, kid FROM keys WHERE state = 'retired' AND retired <= ?",
		    now - c->destroy_delay, due);
	for (i = 0; i < n; i++)
		if (destroy_hw(d, due[i].kid) == 0 && step(d, &due[i], "retired", "destroyed") > 0)
			done++;
	n = collect(d->st,
		    "SELECT client, kid FROM keys WHERE state = 'revoked' AND destroyed IS NULL "
		    "AND revoked <= ?",
		    now, due);
	for (i = 0; i < n; i++)
		if (destroy_revoked(d, due[i].client, due[i].kid, "scheduler") == 0)
			done++;
	/* Clients with a rotation period: their own, or the appliance's. */
	n = 0;
	/* Only the clients that are due (their next key to create or to activate),
	 * most overdue first: a tick's cap then delays the rest by a second, never
	 * starves them. */
	if (store_query(d->st, &s,
			"SELECT c.name, coalesce(c.rotate_every, ?1) AS every FROM clients c "
			"JOIN keys k ON k.client = c.name AND k.state = 'active' "
			"WHERE c.degraded = 0 AND coalesce(c.rotate_every, ?1) > 0 "
			"AND k.activated + coalesce(c.rotate_every, ?1) - ?2 <= ?3 "
			"ORDER BY k.activated + coalesce(c.rotate_every, ?1) LIMIT ?4",
			"iiii", (int64_t)c->rotate_every, (int64_t)c->jwks_max_age, now,
			(int64_t)DUE_MAX) == 0) {
		while (sqlite3_step(s) == SQLITE_ROW && n < DUE_MAX) {
			snprintf(rot[n].client, sizeof(rot[n].client), "%s",
				 sqlite3_column_text(s, 0));
			rot[n].every = sqlite3_column_int64(s, 1);
			n++;
		}
		sqlite3_finalize(s);
	}
	for (i = 0; i < n; i++)
		if (client_info(d->st, rot[i].client, &ci) == 0 &&
		    (r = rotate_due(d, &ci, rot[i].every, now)) != 0) {
			if (r > 0)
				done += r;
			else if (r == -CIMD_EUNAVAILABLE)
				d->backend_errors++;
		}
	return done;
}

/* ---- start-up reconciliation ---- */

/* Destroys the hardware key behind ref (loaded as alg or, not knowing it, as
 * each algorithm in turn). */
static int destroy_ref(struct key_store *ks, const char *alg, const uint8_t *ref, size_t len)
{
	static const enum cimd_alg all[] = {CIMD_ALG_ES256, CIMD_ALG_ES384, CIMD_ALG_PS256};
	struct ks_key *key = NULL;
	size_t i;
	int r = -CIMD_ENOKEY;

	for (i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (alg != NULL && all[i] != cimd_alg_from_name(alg))
			continue;
		if ((r = key_store_load(ks, all[i], ref, len, &key)) == 0)
			break;
	}
	if (r == 0)
		r = key_store_destroy(ks, &key);
	ks_key_free(&key);
	return r;
}

static void reconcile_record(struct cimdd *d, const char *client, const char *kid,
			     const char *problem, const char *action)
{
	json_t *f = json_pack("{ssssssss}", "client", client, "kid", kid, "problem", problem,
			      "action", action);

	if (f == NULL || store_begin(d->st) < 0 ||
	    journal_append(d->st, "reconcile", "cimdd", f, NULL) < 0 || store_commit(d->st) < 0)
		store_rollback(d->st);
	json_decref(f);
}

/* Keys the database holds: each must be in its hardware. */
/* A degraded client whose published keys (next, active, retiring) are all in
 * the hardware again — the missing ones revoked and replaced, or the token
 * back — is no longer degraded.  1 cleared, 0 still degraded, < 0 error. */
int keys_recheck_degraded(struct cimdd *d, const char *client, const char *actor)
{
	struct ks_key *key = NULL;
	struct key_store *ks;
	sqlite3_stmt *s = NULL;
	json_t *f;
	int rc, r = 1;

	if (store_query(d->st, &s,
			"SELECT k.backend, k.alg, k.ref FROM keys k JOIN clients c ON c.name = "
			"k.client WHERE c.name = ? AND c.degraded = 1 AND k.state IN ('next', "
			"'active', 'retiring')",
			"s", client) < 0)
		return -EIO;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW && r == 1) {
		if ((ks = cimdd_key_store(d, (const char *)sqlite3_column_text(s, 0))) == NULL ||
		    key_store_load(ks, cimd_alg_from_name((const char *)sqlite3_column_text(s, 1)),
				   sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2),
				   &key) < 0)
			r = 0;
		ks_key_free(&key);
	}
	sqlite3_finalize(s);
	if (r == 0)
		return 0;
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
	if (rc == 1)
		log_info("client %s is no longer degraded: every published key is in the hardware",
			 client);
	return rc == 1;
}

static int reconcile_rows(struct cimdd *d)
{
	struct row {
		char client[CIMD_NAME_MAX + 1];
		char kid[CIMD_KID_LEN + 1];
		char backend[16];
		char alg[16];
		char state[16];
		uint8_t ref[CIMD_KEYREF_MAX];
		size_t ref_len;
	} *k = NULL, *nk;
	struct key_store *ks;
	struct ks_key *key = NULL;
	sqlite3_stmt *s = NULL;
	size_t n = 0, i;
	int missing = 0, r;

	if (store_query(d->st, &s,
			"SELECT client, kid, backend, alg, state, ref FROM keys WHERE state IN "
			"('next', 'active', 'retiring', 'retired')",
			"") < 0)
		return -EIO;
	while (sqlite3_step(s) == SQLITE_ROW) {
		if ((size_t)sqlite3_column_bytes(s, 5) > CIMD_KEYREF_MAX ||
		    (nk = realloc(k, (n + 1) * sizeof(*k))) == NULL)
			continue;
		k = nk;
		snprintf(k[n].client, sizeof(k[n].client), "%s", sqlite3_column_text(s, 0));
		snprintf(k[n].kid, sizeof(k[n].kid), "%s", sqlite3_column_text(s, 1));
		snprintf(k[n].backend, sizeof(k[n].backend), "%s", sqlite3_column_text(s, 2));
		snprintf(k[n].alg, sizeof(k[n].alg), "%s", sqlite3_column_text(s, 3));
		snprintf(k[n].state, sizeof(k[n].state), "%s", sqlite3_column_text(s, 4));
		k[n].ref_len = (size_t)sqlite3_column_bytes(s, 5);
		memcpy(k[n].ref, sqlite3_column_blob(s, 5), k[n].ref_len);
		n++;
	}
	sqlite3_finalize(s);
	for (i = 0; i < n; i++) {
		if ((ks = cimdd_key_store(d, k[i].backend)) == NULL) {
			log_warn("reconcile: backend %s is not open: key %s of %s not checked",
				 k[i].backend, k[i].kid, k[i].client);
			continue;
		}
		r = key_store_load(ks, cimd_alg_from_name(k[i].alg), k[i].ref, k[i].ref_len, &key);
		ks_key_free(&key);
		if (r != -CIMD_ENOKEY)
			continue;
		if (strcmp(k[i].state, "retired") == 0) {
			/* Destroyed in hardware, and the crash came before the row said so. */
			log_info("reconcile: retired key %s of %s is gone from the hardware: "
				 "recorded as destroyed",
				 k[i].kid, k[i].client);
			if (store_begin(d->st) == 0 &&
			    transition(d, k[i].client, k[i].kid, "retired", "destroyed", "cimdd",
				       NULL) == 0 &&
			    store_commit(d->st) == 0)
				continue;
			store_rollback(d->st);
			continue;
		}
		/* Never silently dropped: the record stays, the client is marked. */
		log_err("reconcile: key %s (%s) of client %s has NO hardware key (%s); client %s "
			"is marked degraded",
			k[i].kid, k[i].state, k[i].client, key_store_errmsg(ks), k[i].client);
		missing++;
		if (store_begin(d->st) == 0 &&
		    store_exec(d->st, "UPDATE clients SET degraded = 1 WHERE name = ?", "s",
			       k[i].client) >= 0 &&
		    store_commit(d->st) == 0)
			reconcile_record(d, k[i].client, k[i].kid, "hardware key missing",
					 "client marked degraded");
		else
			store_rollback(d->st);
	}
	free(k);
	/* Degraded clients whose keys are all there again are restored. */
	if (store_query(d->st, &s, "SELECT name FROM clients WHERE degraded = 1", "") == 0) {
		char(*names)[CIMD_NAME_MAX + 1] = NULL, (*nn)[CIMD_NAME_MAX + 1];
		size_t m = 0;

		while (sqlite3_step(s) == SQLITE_ROW &&
		       (nn = realloc(names, (m + 1) * sizeof(*names))) != NULL) {
			names = nn;
			snprintf(names[m++], sizeof(names[0]), "%s", sqlite3_column_text(s, 0));
		}
		sqlite3_finalize(s);
		for (i = 0; i < m; i++)
			keys_recheck_degraded(d, names[i], "cimdd");
		free(names);
	}
	return missing;
}

/* Keys the hardware holds: each must have a row that wants it kept. */
static int reconcile_hardware(struct cimdd *d)
{
	struct ks_ref *refs = NULL;
	struct key_store *ks;
	sqlite3_stmt *s = NULL;
	char state[16], kid[CIMD_KID_LEN + 1], client[CIMD_NAME_MAX + 1], alg[16];
	size_t b, i, n = 0;
	int removed = 0, r;

	for (b = 0; b < d->cfg->n_backends; b++) {
		if ((ks = d->ks[b]) == NULL)
			continue;
		if ((r = key_store_list(ks, CIMD_CLIENTS_MAX * CIMD_KEYS_PER_CLIENT_MAX, &refs,
					&n)) < 0) {
			log_warn("reconcile: cannot list the keys of backend %s: %s",
				 d->cfg->backends[b].name, key_store_errmsg(ks));
			continue;
		}
		for (i = 0; i < n; i++) {
			state[0] = '\0';
			if (store_query(
				d->st, &s,
				"SELECT state, kid, client, alg FROM keys WHERE backend = ? AND "
				"ref = ?",
				"sb", d->cfg->backends[b].name, refs[i].ref, refs[i].len) == 0) {
				if (sqlite3_step(s) == SQLITE_ROW) {
					snprintf(state, sizeof(state), "%s",
						 sqlite3_column_text(s, 0));
					snprintf(kid, sizeof(kid), "%s", sqlite3_column_text(s, 1));
					snprintf(client, sizeof(client), "%s",
						 sqlite3_column_text(s, 2));
					snprintf(alg, sizeof(alg), "%s", sqlite3_column_text(s, 3));
				}
				sqlite3_finalize(s);
				s = NULL;
			}
			/* The appliance's attestation keys are known too (attest.c). */
			if (state[0] == '\0' &&
			    store_query(d->st, &s,
					"SELECT 1 FROM attest_keys WHERE backend = ? AND ref = ?",
					"sb", d->cfg->backends[b].name, refs[i].ref,
					refs[i].len) == 0) {
				int known = sqlite3_step(s) == SQLITE_ROW;

				sqlite3_finalize(s);
				s = NULL;
				if (known)
					continue;
			}
			if (state[0] != '\0' && strcmp(state, "destroyed") != 0 &&
			    strcmp(state, "revoked") != 0)
				continue;
			if (state[0] == '\0') {
				/* No record.  Ours from a crash between generating and
				 * recording (its tag is a live intent): destroy it.  Not
				 * ours by this database (a restored or wrong database, or
				 * another appliance's token): report it and leave it. */
				int intent = 0;
				if (refs[i].tag[0] != '\0' &&
				    store_query(
					d->st, &s,
					"SELECT 1 FROM key_intents WHERE tag = ? AND backend = ?",
					"ss", refs[i].tag, d->cfg->backends[b].name) == 0) {
					intent = sqlite3_step(s) == SQLITE_ROW;
					sqlite3_finalize(s);
					s = NULL;
				}
				if (!intent) {
					log_err("reconcile: a %s key labelled cimdd%s%s is not "
						"known to "
						"this database: left in place (a restored or wrong "
						"database?)",
						d->cfg->backends[b].name, refs[i].tag[0] ? ":" : "",
						refs[i].tag);
					reconcile_record(d, "-", "-", "unknown hardware key",
							 "left in place");
					continue;
				}
				r = destroy_ref(ks, NULL, refs[i].ref, refs[i].len);
				log_warn("reconcile: a %s key whose generation was never recorded "
					 "(intent %s) was in the hardware: %s",
					 d->cfg->backends[b].name, refs[i].tag,
					 r == 0 ? "destroyed" : key_store_errmsg(ks));
				reconcile_record(d, "-", "-", "hardware key without a record",
						 r == 0 ? "destroyed" : "destroy failed");
			} else {
				/* A record that says it must be gone. */
				r = destroy_ref(ks, alg, refs[i].ref, refs[i].len);
				log_warn("reconcile: %s key %s of %s was still in the hardware: %s",
					 state, kid, client,
					 r == 0 ? "destroyed" : key_store_errmsg(ks));
				if (r == 0 && strcmp(state, "revoked") == 0 &&
				    store_begin(d->st) == 0) {
					if (store_exec(d->st,
						       "UPDATE keys SET destroyed = "
						       "coalesce(destroyed, ?) "
						       "WHERE kid = ?",
						       "is", (int64_t)time(NULL), kid) < 0 ||
					    store_commit(d->st) < 0)
						store_rollback(d->st);
				}
				reconcile_record(d, client, kid, "hardware key of a gone key",
						 r == 0 ? "destroyed" : "destroy failed");
			}
			if (r == 0)
				removed++;
		}
		ks_refs_free(&refs, n);
		/* What intents remain had no key made, or their key was just
		 * destroyed: none is in progress while we reconcile. */
		if (store_begin(d->st) == 0 &&
		    store_exec(d->st, "DELETE FROM key_intents WHERE backend = ?", "s",
			       d->cfg->backends[b].name) >= 0 &&
		    store_commit(d->st) == 0)
			continue;
		store_rollback(d->st);
	}
	return removed;
}

int keys_reconcile(struct cimdd *d)
{
	int missing = reconcile_rows(d), removed = reconcile_hardware(d);

	if (missing > 0 || removed > 0)
		log_warn("reconcile: %d keys missing from the hardware, %d stray hardware keys "
			 "destroyed",
			 missing, removed);
	return missing;
}
