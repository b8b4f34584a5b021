/*
 * registry.c — clients and their CIMD documents: the admin operations
 * client.add/list/show/allow/audience and doc.submit/approve/show.
 *
 * Every change is one transaction that also appends its journal record, so the
 * journal and the state never disagree.  A client's first key is created in
 * hardware before the transaction; if the transaction fails the key is
 * destroyed again, and a crash in between leaves an orphan that start-up
 * reconciliation removes.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>
#include <sqlite3.h>

#include "service.h"

const char *reg_client_id(const struct cimd_config *cfg, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/clients/%s", cfg->base_url, name);
	return buf;
}

static const char *jwks_uri(const struct cimd_config *cfg, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/clients/%s/jwks.json", cfg->base_url, name);
	return buf;
}

/* The request's client name: present, well-formed, and (if must_exist) known. */
static enum admin_err client_arg(struct admin_req *q, int must_exist, const char **ret_name)
{
	const char *name = json_string_value(json_object_get(q->args, "name"));
	sqlite3_stmt *s = NULL;
	int rc;

	if (name == NULL)
		return admin_fail(q, AE_BAD_REQUEST, "missing client name");
	if (!cimd_valid_name(name))
		return admin_fail(q, AE_BAD_REQUEST,
				  "client name '%.80s' must match [a-z0-9][a-z0-9-]{0,62}", name);
	if (must_exist) {
		if (store_query(q->d->st, &s, "SELECT 1 FROM clients WHERE name = ?", "s", name) <
		    0)
			return admin_fail(q, AE_INTERNAL, "database error");
		rc = sqlite3_step(s);
		store_done(q->d->st, s);
		if (rc != SQLITE_ROW)
			return admin_fail(q, AE_UNKNOWN_CLIENT, "no client named %s", name);
	}
	*ret_name = name;
	return AE_OK;
}

/* Commits the open transaction after journaling kind with fields (stolen). */
static enum admin_err commit(struct admin_req *q, const char *kind, json_t *fields)
{
	/* No record, no change: a record that could not be built fails the change. */
	int r =
	    fields == NULL ? -ENOMEM : journal_append(q->d->st, kind, q->op->name, fields, NULL);

	json_decref(fields);
	if (r < 0 || store_commit(q->d->st) < 0) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_INTERNAL, "database error: nothing was changed");
	}
	return AE_OK;
}

/* count(*) without a WHERE counts the cells of the name index's leaf pages
 * (no row is read): about 10 us at 10,000 clients, so it stays exact. */
static int client_count(struct store *st, int64_t *ret)
{
	sqlite3_stmt *s = NULL;
	int r = -EIO;

	if (store_query(st, &s, "SELECT count(*) FROM clients", "") < 0)
		return -EIO;
	if (sqlite3_step(s) == SQLITE_ROW) {
		*ret = sqlite3_column_int64(s, 0);
		r = 0;
	}
	store_done(st, s);
	return r;
}

/* Inserts document version `version` (state submitted) inside a transaction. */
static int insert_doc(struct admin_req *q, const char *name, int64_t version, const char *bytes,
		      size_t len, uint8_t md[SHA256_DIGEST_LENGTH])
{
	SHA256((const uint8_t *)bytes, len, md);
	return store_exec(
	    q->d->st,
	    "INSERT INTO documents (client, version, state, bytes, sha256, submitter, "
	    "submitted) VALUES (?, ?, 'submitted', ?, ?, ?, ?)",
	    "sibbsi", name, version, bytes, len, md, (size_t)SHA256_DIGEST_LENGTH, q->op->name,
	    (int64_t)time(NULL));
}

enum admin_err reg_client_add(struct admin_req *q)
{
	struct cimdd *d = q->d;
	const char *name, *owner, *backend, *alg_name;
	char cid[CIMD_URL_MAX], juri[CIMD_URL_MAX], err[512], hash[65];
	uint8_t md[SHA256_DIGEST_LENGTH];
	struct key_store *ks;
	struct ks_key *key = NULL;
	const uint8_t *ref;
	size_t ref_len, len;
	char *bytes = NULL;
	json_t *kf = NULL, *jr;
	char tag[CIMD_TAG_MAX + 1];
	int64_t n, rotate_every = -1;
	enum cimd_alg alg;
	enum admin_err e;
	int r;

	if ((e = client_arg(q, 0, &name)) != AE_OK)
		return e;
	owner = json_string_value(json_object_get(q->args, "owner"));
	if (owner == NULL || *owner == '\0' || strlen(owner) > 256)
		return admin_fail(q, AE_BAD_REQUEST, "an owner (1 to 256 characters) is required");
	backend = json_string_value(json_object_get(q->args, "backend"));
	if (backend == NULL)
		backend = d->cfg->default_backend;
	if (config_backend(d->cfg, backend) == NULL)
		return admin_fail(q, AE_BAD_REQUEST, "backend '%s' is not configured", backend);
	if ((ks = custody_store(d->custody, backend)) == NULL)
		return admin_fail(q, AE_BACKEND_UNAVAILABLE, "backend '%s' is not available now",
				  backend);
	if ((jr = json_object_get(q->args, "rotate_every")) != NULL) {
		/* The client's own rotation period; without it, the appliance's. */
		if (!json_is_integer(jr) || json_integer_value(jr) < 0 ||
		    json_integer_value(jr) > CIMD_DURATION_MAX ||
		    (json_integer_value(jr) > 0 && json_integer_value(jr) <= d->cfg->jwks_max_age))
			return admin_fail(
			    q, AE_BAD_REQUEST,
			    "rotate_every must be 0 (never) or more than jwks_max_age (%ld) "
			    "seconds, up to %d",
			    d->cfg->jwks_max_age, CIMD_DURATION_MAX);
		rotate_every = json_integer_value(jr);
	}
	alg_name = json_string_value(json_object_get(q->args, "alg"));
	if (alg_name == NULL)
		alg_name = "ES256";
	if ((alg = cimd_alg_from_name(alg_name)) == CIMD_ALG_NONE)
		return admin_fail(q, AE_BAD_REQUEST,
				  "algorithm '%.20s' is not ES256, ES384 or PS256", alg_name);
	if (cimd_doc_prepare(json_object_get(q->args, "metadata"),
			     reg_client_id(d->cfg, name, cid, sizeof(cid)),
			     jwks_uri(d->cfg, name, juri, sizeof(juri)), alg_name, &bytes, &len,
			     err, sizeof(err)) < 0)
		return admin_fail(q, AE_INVALID_DOCUMENT, "%s", err);
	if (client_arg(q, 1, &name) == AE_OK) {
		e = admin_fail(q, AE_CONFLICT, "a client named %s exists already", name);
		goto out;
	}
	if (client_count(d->st, &n) < 0 || n >= CIMD_CLIENTS_MAX) {
		e = admin_fail(q, AE_CONFLICT, "the appliance holds its maximum of %d clients",
			       CIMD_CLIENTS_MAX);
		goto out;
	}
	/* Hardware first, under a committed intent: a crash before the key is
	 * recorded leaves a key reconciliation recognises and removes; a database
	 * row without its key would be worse. */
	if ((r = keys_generate(d, name, backend, alg_name, tag, &key)) < 0) {
		e = admin_fail(q, r == -CIMD_EUNAVAILABLE ? AE_BACKEND_UNAVAILABLE : AE_INTERNAL,
			       "creating the key: %s",
			       r == -EIO ? "database error" : key_store_errmsg(ks));
		goto out;
	}
	ks_key_ref(key, &ref, &ref_len);
	kf = json_pack("{ssssssss}", "client", name, "kid", ks_key_kid(key), "state", "active",
		       "backend", backend);
	if (kf == NULL || store_begin(d->st) < 0 ||
	    store_exec(d->st,
		       "INSERT INTO clients (name, owner, backend, alg, created, rotate_every) "
		       "VALUES (?, ?, "
		       "?, ?, ?, nullif(?, -1))",
		       "ssssii", name, owner, backend, alg_name, (int64_t)time(NULL),
		       rotate_every) != 1 ||
	    keys_insert(d, name, alg_name, backend, key, "active") != 1 ||
	    insert_doc(q, name, 1, bytes, len, md) != 1 ||
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) != 1 ||
	    journal_append(d->st, "key.create", q->op->name, kf, NULL) < 0) {
		store_rollback(d->st);
		key_store_destroy(ks, &key);
		keys_intent_drop(d, tag);
		e = admin_fail(q, AE_INTERNAL, "database error: nothing was changed");
		goto out;
	}
	hex_encode(md, sizeof(md), hash);
	e = commit(q, "client.add",
		   json_pack("{sssssssssiss}", "client", name, "owner", owner, "backend", backend,
			     "alg", alg_name, "version", 1, "sha256", hash));
	if (e != AE_OK) {
		key_store_destroy(ks, &key);
		keys_intent_drop(d, tag);
		goto out;
	}
	q->result = json_pack("{sssssssiss}", "client_id", cid, "jwks_uri", juri, "kid",
			      ks_key_kid(key), "version", 1, "state", "submitted");
out:
	json_decref(kf);
	ks_key_free(&key);
	free(bytes);
	return e;
}

static json_t *int_or_null(sqlite3_stmt *s, int col)
{
	return sqlite3_column_type(s, col) == SQLITE_NULL
		   ? json_null()
		   : json_integer(sqlite3_column_int64(s, col));
}

static json_t *text_or_null(sqlite3_stmt *s, int col)
{
	return sqlite3_column_type(s, col) == SQLITE_NULL
		   ? json_null()
		   : json_string((const char *)sqlite3_column_text(s, col));
}

/* A client's row with its current approved version and active kid, in one
 * statement: each subquery is one index lookup (documents_approved,
 * keys_client), so a page of clients costs what it holds. */
#define CLIENT_SELECT                                                                              \
	"SELECT name, owner, backend, alg, degraded, "                                             \
	"(SELECT version FROM documents WHERE client = clients.name AND state = 'approved'), "     \
	"(SELECT kid FROM keys WHERE client = clients.name AND state = 'active') FROM clients "

/* {name, owner, backend, alg, degraded, version (current approved or null),
 *  active_kid (or null)} for one row of CLIENT_SELECT. */
static json_t *client_row(sqlite3_stmt *s)
{
	return json_pack("{sssssssssososo}", "name", (const char *)sqlite3_column_text(s, 0),
			 "owner", (const char *)sqlite3_column_text(s, 1), "backend",
			 (const char *)sqlite3_column_text(s, 2), "alg",
			 (const char *)sqlite3_column_text(s, 3), "degraded",
			 json_boolean(sqlite3_column_int(s, 4)), "version", int_or_null(s, 5),
			 "active_kid", text_or_null(s, 6));
}

/* client.list pages (docs/protocol.md): an answer, and the work behind it,
 * is bounded by the page, not by the number of clients. */

/* Up to limit clients whose names sort after `after` ("" for the first), in
 * name order (SQLite's BINARY collation: bytes, as names are ASCII), by the
 * primary key's index; *ret_more says whether others follow. */
static int client_page(struct store *st, const char *after, int64_t limit, json_t **ret_clients,
		       int *ret_more)
{
	sqlite3_stmt *s = NULL;
	json_t *arr, *row;
	int64_t n = 0;
	int rc, more = 0, r = -EIO;

	if ((arr = json_array()) == NULL)
		return -ENOMEM;
	/* One row more than the page: whether another page follows. */
	if (store_query(st, &s, CLIENT_SELECT "WHERE name > ? ORDER BY name LIMIT ?", "si", after,
			limit + 1) < 0)
		goto out;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (n == limit) {
			more = 1;
			break;
		}
		if ((row = client_row(s)) == NULL || json_array_append_new(arr, row) < 0) {
			r = -ENOMEM;
			goto out;
		}
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		goto out;
	*ret_clients = arr;
	arr = NULL;
	*ret_more = more;
	r = 0;
out:
	store_done(st, s);
	json_decref(arr);
	return r;
}

enum admin_err reg_client_list(struct admin_req *q)
{
	const json_t *ja = json_object_get(q->args, "after"),
		     *jl = json_object_get(q->args, "limit");
	const char *after = "";
	json_int_t limit = CIMD_LIST_PAGE_DEFAULT;
	json_t *arr = NULL, *last;
	int more;

	if (ja != NULL) {
		if (!json_is_string(ja) || !cimd_valid_name(json_string_value(ja)))
			return admin_fail(q, AE_BAD_REQUEST,
					  "after must be a client name ([a-z0-9][a-z0-9-]{0,62})");
		after = json_string_value(ja);
	}
	if (jl != NULL && (!json_is_integer(jl) || (limit = json_integer_value(jl)) < 1 ||
			   limit > CIMD_LIST_PAGE_MAX))
		return admin_fail(q, AE_BAD_REQUEST, "limit must be an integer from 1 to %d",
				  CIMD_LIST_PAGE_MAX);
	if (client_page(q->d->st, after, limit, &arr, &more) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	last = json_array_get(arr, json_array_size(arr) - 1);
	q->result = more ? json_pack("{soss}", "clients", arr, "next",
				     json_string_value(json_object_get(last, "name")))
			 : json_pack("{so}", "clients", arr);
	return q->result ? AE_OK : admin_fail(q, AE_INTERNAL, "out of memory");
}

static json_t *column_list(struct store *st, const char *sql, const char *name, int as_int)
{
	sqlite3_stmt *s = NULL;
	json_t *arr = json_array();

	if (arr == NULL || store_query(st, &s, sql, "s", name) < 0) {
		json_decref(arr);
		return NULL;
	}
	while (sqlite3_step(s) == SQLITE_ROW)
		json_array_append_new(
		    arr, as_int ? json_integer(sqlite3_column_int64(s, 0))
				: json_string((const char *)sqlite3_column_text(s, 0)));
	store_done(st, s);
	return arr;
}

static json_t *documents_of(struct store *st, const char *name)
{
	sqlite3_stmt *s = NULL;
	json_t *arr = json_array();
	char hash[65];

	if (arr == NULL ||
	    store_query(st, &s,
			"SELECT version, state, sha256, submitter, submitted, approver, "
			"approved FROM documents WHERE client = ? ORDER BY version",
			"s", name) < 0) {
		json_decref(arr);
		return NULL;
	}
	while (sqlite3_step(s) == SQLITE_ROW) {
		hex_encode(sqlite3_column_blob(s, 2), SHA256_DIGEST_LENGTH, hash);
		json_array_append_new(
		    arr,
		    json_pack("{sIsssssssIsoso}", "version", (json_int_t)sqlite3_column_int64(s, 0),
			      "state", (const char *)sqlite3_column_text(s, 1), "sha256", hash,
			      "submitter", (const char *)sqlite3_column_text(s, 3), "submitted",
			      (json_int_t)sqlite3_column_int64(s, 4), "approver",
			      text_or_null(s, 5), "approved", int_or_null(s, 6)));
	}
	store_done(st, s);
	return arr;
}

enum admin_err reg_client_show(struct admin_req *q)
{
	const char *name;
	sqlite3_stmt *s = NULL;
	enum admin_err e;
	json_t *o;
	char cid[CIMD_URL_MAX], juri[CIMD_URL_MAX];

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	if (store_query(q->d->st, &s, CLIENT_SELECT "WHERE name = ?", "s", name) < 0 ||
	    sqlite3_step(s) != SQLITE_ROW) {
		store_done(q->d->st, s);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	o = client_row(s);
	store_done(q->d->st, s);
	if (o == NULL)
		return admin_fail(q, AE_INTERNAL, "out of memory");
	json_object_set_new(o, "client_id",
			    json_string(reg_client_id(q->d->cfg, name, cid, sizeof(cid))));
	json_object_set_new(o, "jwks_uri",
			    json_string(jwks_uri(q->d->cfg, name, juri, sizeof(juri))));
	json_object_set_new(o, "uids",
			    column_list(q->d->st,
					"SELECT id FROM client_callers WHERE client = ? "
					"AND kind = 'uid' ORDER BY id",
					name, 1));
	json_object_set_new(o, "gids",
			    column_list(q->d->st,
					"SELECT id FROM client_callers WHERE client = ? "
					"AND kind = 'gid' ORDER BY id",
					name, 1));
	json_object_set_new(
	    o, "audiences",
	    column_list(q->d->st, "SELECT aud FROM client_audiences WHERE client = ? ORDER BY aud",
			name, 0));
	json_object_set_new(o, "documents", documents_of(q->d->st, name));
	/* The policy in effect: the client's own, else the configuration's. */
	if (store_query(q->d->st, &s,
			"SELECT assertion_ttl, rate_limit FROM clients WHERE name = ?", "s",
			name) == 0 &&
	    sqlite3_step(s) == SQLITE_ROW) {
		json_object_set_new(o, "assertion_ttl",
				    json_integer(sqlite3_column_type(s, 0) == SQLITE_NULL
						     ? q->d->cfg->assertion_default_ttl
						     : sqlite3_column_int64(s, 0)));
		json_object_set_new(o, "rate_limit",
				    json_integer(sqlite3_column_type(s, 1) == SQLITE_NULL
						     ? q->d->cfg->assertion_rate_limit
						     : sqlite3_column_int64(s, 1)));
	}
	store_done(q->d->st, s);
	q->result = json_pack("{so}", "client", o);
	return AE_OK;
}

static int64_t count_of(struct store *st, const char *sql, const char *name)
{
	sqlite3_stmt *s = NULL;
	int64_t n = -1;

	if (store_query(st, &s, sql, "s", name) == 0 && sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	store_done(st, s);
	return n;
}

enum admin_err reg_client_allow(struct admin_req *q)
{
	const char *name, *kind;
	json_t *id = json_object_get(q->args, "uid");
	int remove = json_is_true(json_object_get(q->args, "remove"));
	enum admin_err e;
	json_int_t v;
	int r;

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	kind = "uid";
	if (id == NULL) {
		id = json_object_get(q->args, "gid");
		kind = "gid";
	}
	if (!json_is_integer(id) || (v = json_integer_value(id)) < 0 || v > 0x7fffffff ||
	    (json_object_get(q->args, "uid") && json_object_get(q->args, "gid")))
		return admin_fail(q, AE_BAD_REQUEST, "give one uid or one gid (0 to 2147483647)");
	if (!remove && count_of(q->d->st, "SELECT count(*) FROM client_callers WHERE client = ?",
				name) >= CIMD_CALLERS_MAX)
		return admin_fail(q, AE_CONFLICT, "%s already allows %d callers", name,
				  CIMD_CALLERS_MAX);
	if (store_begin(q->d->st) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	r = remove
		? store_exec(q->d->st,
			     "DELETE FROM client_callers WHERE client = ? AND kind = ? AND id = ?",
			     "ssi", name, kind, (int64_t)v)
		: store_exec(
		      q->d->st,
		      "INSERT OR IGNORE INTO client_callers (client, kind, id) VALUES (?, ?, ?)",
		      "ssi", name, kind, (int64_t)v);
	if (r < 0) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	if (r == 0) {
		store_rollback(q->d->st);
		return remove ? admin_fail(q, AE_NOT_FOUND, "%s %lld was not allowed for %s", kind,
					   (long long)v, name)
			      : admin_fail(q, AE_CONFLICT, "%s %lld is already allowed for %s",
					   kind, (long long)v, name);
	}
	return commit(q, remove ? "client.disallow" : "client.allow",
		      json_pack("{sssI}", "client", name, kind, v));
}

/* A non-negative integer member no larger than max; *ret -1 when absent. */
static int policy_arg(struct admin_req *q, const char *member, long max, int64_t *ret)
{
	json_t *v = json_object_get(q->args, member);

	if (v == NULL) {
		*ret = -1;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
		return -EINVAL;
	*ret = json_integer_value(v);
	return 0;
}

enum admin_err reg_client_policy(struct admin_req *q)
{
	const char *name;
	enum admin_err e;
	int64_t ttl, rate;
	json_t *f;
	int r;

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	if (policy_arg(q, "ttl", q->d->cfg->assertion_max_ttl, &ttl) < 0)
		return admin_fail(q, AE_BAD_REQUEST,
				  "ttl must be 0 (the default, %ld s) to assertion_max_ttl (%ld s)",
				  q->d->cfg->assertion_default_ttl, q->d->cfg->assertion_max_ttl);
	if (policy_arg(q, "rate", CIMD_RATE_MAX, &rate) < 0)
		return admin_fail(q, AE_BAD_REQUEST,
				  "rate must be 0 (no limit) to %d assertions per second",
				  CIMD_RATE_MAX);
	if (ttl < 0 && rate < 0)
		return admin_fail(q, AE_BAD_REQUEST, "give ttl, rate or both");
	if (store_begin(q->d->st) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	/* 0 stores NULL: back to the configuration's default. */
	r = store_exec(
	    q->d->st,
	    "UPDATE clients SET "
	    "assertion_ttl = CASE WHEN ?1 < 0 THEN assertion_ttl ELSE nullif(?1, 0) END, "
	    "rate_limit = CASE WHEN ?2 < 0 THEN rate_limit ELSE ?2 END "
	    "WHERE name = ?3",
	    "iis", ttl, rate, name);
	if (r < 0) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	f = json_pack("{ss}", "client", name);
	if (f != NULL && ttl >= 0)
		json_object_set_new(f, "ttl", json_integer(ttl));
	if (f != NULL && rate >= 0)
		json_object_set_new(f, "rate", json_integer(rate));
	return commit(q, "client.policy", f);
}

enum admin_err reg_client_audience(struct admin_req *q)
{
	const char *name, *add = json_string_value(json_object_get(q->args, "add")),
			  *del = json_string_value(json_object_get(q->args, "remove"));
	char err[512];
	enum admin_err e;
	int r;

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	if ((add == NULL) == (del == NULL))
		return admin_fail(q, AE_BAD_REQUEST, "give one audience to add or to remove");
	if (add != NULL && cimd_https_url("audience", add, err, sizeof(err)) < 0)
		return admin_fail(q, AE_BAD_REQUEST, "%s", err);
	if (add != NULL &&
	    count_of(q->d->st, "SELECT count(*) FROM client_audiences WHERE client = ?", name) >=
		CIMD_AUDIENCES_MAX)
		return admin_fail(q, AE_CONFLICT, "%s already has %d audiences", name,
				  CIMD_AUDIENCES_MAX);
	if (store_begin(q->d->st) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	r = add ? store_exec(q->d->st,
			     "INSERT OR IGNORE INTO client_audiences (client, aud) VALUES (?, ?)",
			     "ss", name, add)
		: store_exec(q->d->st, "DELETE FROM client_audiences WHERE client = ? AND aud = ?",
			     "ss", name, del);
	if (r < 0) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	if (r == 0) {
		store_rollback(q->d->st);
		return add ? admin_fail(q, AE_CONFLICT, "%s is already an audience of %s", add,
					name)
			   : admin_fail(q, AE_NOT_FOUND, "%s is not an audience of %s", del, name);
	}
	return commit(q, add ? "client.audience.add" : "client.audience.remove",
		      json_pack("{ssss}", "client", name, "audience", add ? add : del));
}

/* The client's latest document version, or with approved its approved one;
 * 0 when there is none.  The approved one by the partial index
 * documents_approved: one row, however many versions the client has ("+"
 * keeps the planner from walking the primary key for max()). */
static int64_t latest_version(struct store *st, const char *name, int approved)
{
	sqlite3_stmt *s = NULL;
	int64_t v = 0;

	int r = approved
		    ? store_query(st, &s,
				  "SELECT max(+version) FROM documents WHERE client = ? AND "
				  "state = 'approved'",
				  "s", name)
		    : store_query(st, &s, "SELECT max(version) FROM documents WHERE client = ?",
				  "s", name);

	if (r == 0 && sqlite3_step(s) == SQLITE_ROW)
		v = sqlite3_column_int64(s, 0);
	store_done(st, s);
	return v;
}

enum admin_err reg_doc_submit(struct admin_req *q)
{
	const char *name, *alg;
	char cid[CIMD_URL_MAX], juri[CIMD_URL_MAX], err[512], hash[65], *bytes = NULL;
	uint8_t md[SHA256_DIGEST_LENGTH];
	sqlite3_stmt *s = NULL;
	enum admin_err e;
	int64_t version;
	size_t len;

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	if (store_query(q->d->st, &s, "SELECT alg FROM clients WHERE name = ?", "s", name) < 0 ||
	    sqlite3_step(s) != SQLITE_ROW) {
		store_done(q->d->st, s);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	alg = (const char *)sqlite3_column_text(s, 0);
	if (cimd_doc_prepare(json_object_get(q->args, "metadata"),
			     reg_client_id(q->d->cfg, name, cid, sizeof(cid)),
			     jwks_uri(q->d->cfg, name, juri, sizeof(juri)), alg, &bytes, &len, err,
			     sizeof(err)) < 0) {
		store_done(q->d->st, s);
		return admin_fail(q, AE_INVALID_DOCUMENT, "%s", err);
	}
	store_done(q->d->st, s);
	if (store_begin(q->d->st) < 0) {
		free(bytes);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	version = latest_version(q->d->st, name, 0) + 1;
	if (insert_doc(q, name, version, bytes, len, md) != 1) {
		store_rollback(q->d->st);
		free(bytes);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	free(bytes);
	hex_encode(md, sizeof(md), hash);
	if ((e = commit(q, "doc.submit",
			json_pack("{sssIss}", "client", name, "version", (json_int_t)version,
				  "sha256", hash))) != AE_OK)
		return e;
	q->result = json_pack("{sIssss}", "version", (json_int_t)version, "state", "submitted",
			      "sha256", hash);
	return AE_OK;
}

enum admin_err reg_doc_approve(struct admin_req *q)
{
	const char *name, *state;
	json_t *jv = json_object_get(q->args, "version");
	char submitter[CIMD_NAME_MAX + 1], hash[65];
	int64_t version, current;
	sqlite3_stmt *s = NULL;
	enum admin_err e;

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	if (!json_is_integer(jv) || (version = json_integer_value(jv)) < 1)
		return admin_fail(q, AE_BAD_REQUEST, "a document version (1, 2, ...) is required");
	if (store_begin(q->d->st) < 0)
		return admin_fail(q, AE_INTERNAL, "database error");
	if (store_query(
		q->d->st, &s,
		"SELECT state, submitter, sha256 FROM documents WHERE client = ? AND version = ?",
		"si", name, version) < 0 ||
	    sqlite3_step(s) != SQLITE_ROW) {
		store_done(q->d->st, s);
		store_rollback(q->d->st);
		return admin_fail(q, AE_NOT_FOUND, "%s has no document version %lld", name,
				  (long long)version);
	}
	state = (const char *)sqlite3_column_text(s, 0);
	snprintf(submitter, sizeof(submitter), "%s", (const char *)sqlite3_column_text(s, 1));
	hex_encode(sqlite3_column_blob(s, 2), SHA256_DIGEST_LENGTH, hash);
	if (strcmp(state, "submitted") != 0) {
		e = admin_fail(q, AE_CONFLICT, "version %lld of %s is %s, not awaiting approval",
			       (long long)version, name, state);
		store_done(q->d->st, s);
		store_rollback(q->d->st);
		return e;
	}
	store_done(q->d->st, s);
	if (q->d->cfg->two_person_rule && strcmp(submitter, q->op->name) == 0) {
		store_rollback(q->d->st);
		return admin_fail(
		    q, AE_FORBIDDEN,
		    "two-person rule: %s submitted version %lld and may not approve it", submitter,
		    (long long)version);
	}
	current = latest_version(q->d->st, name, 1);
	if (version < current) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_CONFLICT,
				  "version %lld is older than the approved version %lld",
				  (long long)version, (long long)current);
	}
	if (store_exec(
		q->d->st,
		"UPDATE documents SET state = 'superseded' WHERE client = ? AND state = 'approved'",
		"s", name) < 0 ||
	    store_exec(q->d->st,
		       "UPDATE documents SET state = 'approved', approver = ?, approved = ? "
		       "WHERE client = ? AND version = ?",
		       "sisi", q->op->name, (int64_t)time(NULL), name, version) != 1) {
		store_rollback(q->d->st);
		return admin_fail(q, AE_INTERNAL, "database error");
	}
	if ((e = commit(q, "doc.approve",
			json_pack("{sssIssssso}", "client", name, "version", (json_int_t)version,
				  "sha256", hash, "submitter", submitter, "superseded",
				  current ? json_integer(current) : json_null()))) != AE_OK)
		return e;
	q->result = json_pack("{sIssss}", "version", (json_int_t)version, "state", "approved",
			      "sha256", hash);
	return AE_OK;
}

enum admin_err reg_doc_show(struct admin_req *q)
{
	const char *name;
	json_t *jv = json_object_get(q->args, "version");
	int64_t version;
	sqlite3_stmt *s = NULL;
	enum admin_err e;
	char hash[65];

	if ((e = client_arg(q, 1, &name)) != AE_OK)
		return e;
	if (jv != NULL && (!json_is_integer(jv) || json_integer_value(jv) < 1))
		return admin_fail(q, AE_BAD_REQUEST, "version must be 1, 2, ...");
	/* Default: the approved version, or else the latest submitted. */
	version = jv ? json_integer_value(jv) : latest_version(q->d->st, name, 1);
	if (version == 0)
		version = latest_version(q->d->st, name, 0);
	if (store_query(
		q->d->st, &s,
		"SELECT version, state, bytes, sha256, submitter, submitted, approver, approved "
		"FROM documents WHERE client = ? AND version = ?",
		"si", name, version) < 0 ||
	    sqlite3_step(s) != SQLITE_ROW) {
		store_done(q->d->st, s);
		return admin_fail(q, AE_NOT_FOUND, "%s has no document version %lld", name,
				  (long long)version);
	}
	hex_encode(sqlite3_column_blob(s, 3), SHA256_DIGEST_LENGTH, hash);
	q->result = json_pack(
	    "{s{sIssss%sssssIsoso}}", "document", "version", (json_int_t)sqlite3_column_int64(s, 0),
	    "state", (const char *)sqlite3_column_text(s, 1), "bytes",
	    (const char *)sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2), "sha256",
	    hash, "submitter", (const char *)sqlite3_column_text(s, 4), "submitted",
	    (json_int_t)sqlite3_column_int64(s, 5), "approver", text_or_null(s, 6), "approved",
	    int_or_null(s, 7));
	store_done(q->d->st, s);
	return q->result ? AE_OK : admin_fail(q, AE_INTERNAL, "out of memory");
}
