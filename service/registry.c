/*
 * registry.c — clients and their CIMD documents: what the admin operations
 * client.add/list/show/allow/audience/policy, change.list/approve/reject and
 * doc.submit/approve/show do, as functions of C values (their wire handlers
 * are in admin_ops.c).  Under the two-person rule, changes to who may sign
 * (callers, audiences, policies) are proposed and made on another operator's
 * approval, as documents are.
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

#include "service.h"

const char *reg_client_id(const struct cimd_config *cfg, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/clients/%s", cfg->base_url, name);
	return buf;
}

const char *reg_jwks_uri(const struct cimd_config *cfg, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/clients/%s/jwks.json", cfg->base_url, name);
	return buf;
}

/* A client name (NULL: none was given): well-formed, and (if must_exist)
 * known. */
static int client_check(struct store *st, const char *name, int must_exist, char *err,
			size_t errlen)
{
	struct store_rows *s = NULL;
	int rc;

	if (name == NULL)
		return cimd_fail(err, errlen, -EINVAL, "missing client name");
	if (!cimd_valid_name(name))
		return cimd_fail(err, errlen, -EINVAL,
				 "client name '%.80s' must match [a-z0-9][a-z0-9-]{0,62}", name);
	if (must_exist) {
		if (store_query(st, &s, "SELECT 1 FROM clients WHERE name = ?", "s", name) < 0)
			return cimd_fail(err, errlen, -EIO, "database error");
		rc = store_next(s);
		store_done(st, s);
		if (rc <= 0)
			return cimd_fail(err, errlen, -CIMD_ENOCLIENT, "no client named %s", name);
	}
	return 0;
}

/* Commits the open transaction after journaling kind with fields (stolen). */
static int commit(struct svc *d, const char *actor, const char *kind, json_t *fields, char *err,
		  size_t errlen)
{
	/* No record, no change: a record that could not be built fails the change. */
	int r = fields == NULL ? -ENOMEM : journal_append(d->st, kind, actor, fields, NULL);

	json_decref(fields);
	if (r < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "database error: nothing was changed");
	}
	return 0;
}

/* count(*) without a WHERE counts the cells of the name index's leaf pages
 * (no row is read): about 10 us at 10,000 clients, so it stays exact. */
static int client_count(struct store *st, int64_t *ret)
{
	struct store_rows *s = NULL;
	int r = -EIO;

	if (store_query(st, &s, "SELECT count(*) FROM clients", "") < 0)
		return -EIO;
	if (store_next(s) > 0) {
		*ret = store_int(s, 0);
		r = 0;
	}
	store_done(st, s);
	return r;
}

/* Inserts document version `version` (state submitted) inside a transaction. */
static int insert_doc(struct svc *d, const char *actor, const char *name, int64_t version,
		      const char *bytes, size_t len, uint8_t md[SHA256_DIGEST_LENGTH])
{
	SHA256((const uint8_t *)bytes, len, md);
	return store_exec(
	    d->st,
	    "INSERT INTO documents (client, version, state, bytes, sha256, submitter, "
	    "submitted) VALUES (?, ?, 'submitted', ?, ?, ?, ?)",
	    "sibbsi", name, version, bytes, len, md, (size_t)SHA256_DIGEST_LENGTH, actor,
	    (int64_t)time(NULL));
}

int reg_client_add(struct svc *d, const char *actor, const char *name, const char *owner,
		   const char *backend, const char *alg_name, const int64_t *rotate_every,
		   const json_t *metadata, char ret_kid[CIMD_KID_LEN + 1],
		   struct reg_doc_result *ret_doc, char *err, size_t errlen)
{
	char cid[CIMD_URL_MAX], juri[CIMD_URL_MAX], hash[65];
	uint8_t md[SHA256_DIGEST_LENGTH];
	struct key_store *ks;
	struct ks_key *key = NULL;
	size_t len;
	char *bytes = NULL;
	json_t *kf = NULL;
	char tag[CIMD_TAG_MAX + 1];
	int64_t n, every = -1;
	int r;

	if ((r = client_check(d->st, name, 0, err, errlen)) < 0)
		return r;
	if (owner == NULL || *owner == '\0' || strlen(owner) > 256)
		return cimd_fail(err, errlen, -EINVAL,
				 "an owner (1 to 256 characters) is required");
	if (backend == NULL)
		backend = d->cfg->default_backend;
	if (config_backend(d->cfg, backend) == NULL)
		return cimd_fail(err, errlen, -EINVAL, "backend '%s' is not configured", backend);
	if ((ks = custody_store(d->custody, backend)) == NULL)
		return cimd_fail(err, errlen, -CIMD_EUNAVAILABLE,
				 "backend '%s' is not available now", backend);
	if (rotate_every != NULL) {
		/* The client's own rotation period; without it, the appliance's. */
		if (*rotate_every < 0 || *rotate_every > CIMD_DURATION_MAX ||
		    (*rotate_every > 0 && *rotate_every <= d->cfg->jwks_max_age))
			return cimd_fail(err, errlen, -EINVAL, REG_ROTATE_EVERY_WORDS,
					 d->cfg->jwks_max_age, CIMD_DURATION_MAX);
		every = *rotate_every;
	}
	if (alg_name == NULL)
		alg_name = "ES256";
	if (cimd_alg_from_name(alg_name) == CIMD_ALG_NONE)
		return cimd_fail(err, errlen, -EINVAL,
				 "algorithm '%.20s' is not ES256, ES384 or PS256", alg_name);
	if (cimd_doc_prepare(metadata, reg_client_id(d->cfg, name, cid, sizeof(cid)),
			     reg_jwks_uri(d->cfg, name, juri, sizeof(juri)), alg_name, &bytes, &len,
			     err, errlen) < 0)
		return -CIMD_EDOCUMENT;
	if (client_check(d->st, name, 1, NULL, 0) == 0) {
		r = cimd_fail(err, errlen, -EEXIST, "a client named %s exists already", name);
		goto out;
	}
	if (client_count(d->st, &n) < 0 || n >= CIMD_CLIENTS_MAX) {
		r = cimd_fail(err, errlen, -EMLINK, "the appliance holds its maximum of %d clients",
			      CIMD_CLIENTS_MAX);
		goto out;
	}
	/* Hardware first, under a committed intent: a crash before the key is
	 * recorded leaves a key reconciliation recognises and removes; a database
	 * row without its key would be worse. */
	if ((r = keys_generate(d, name, backend, alg_name, tag, &key)) < 0) {
		r = cimd_fail(err, errlen, r == -CIMD_EUNAVAILABLE ? r : -EIO,
			      "creating the key: %s",
			      r == -EIO ? "database error" : key_store_errmsg(ks));
		goto out;
	}
	kf = json_pack("{ssssssssss}", "client", name, "kid", ks_key_kid(key), "state", "active",
		       "backend", backend, "node", d->cfg->node);
	if (kf == NULL || store_begin(d->st) < 0 ||
	    store_exec(d->st,
		       "INSERT INTO clients (name, owner, backend, alg, created, rotate_every) "
		       "VALUES (?, ?, "
		       "?, ?, ?, nullif(?, -1))",
		       "ssssii", name, owner, backend, alg_name, (int64_t)time(NULL), every) != 1 ||
	    keys_insert(d, name, alg_name, backend, key, "active") != 1 ||
	    insert_doc(d, actor, name, 1, bytes, len, md) != 1 ||
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) != 1 ||
	    journal_append(d->st, "key.create", actor, kf, NULL) < 0) {
		store_rollback(d->st);
		key_store_destroy(ks, &key);
		keys_intent_drop(d, tag);
		r = cimd_fail(err, errlen, -EIO, "database error: nothing was changed");
		goto out;
	}
	hex_encode(md, sizeof(md), hash);
	r = commit(d, actor, "client.add",
		   json_pack("{sssssssssiss}", "client", name, "owner", owner, "backend", backend,
			     "alg", alg_name, "version", 1, "sha256", hash),
		   err, errlen);
	if (r < 0) {
		key_store_destroy(ks, &key);
		keys_intent_drop(d, tag);
		goto out;
	}
	snprintf(ret_kid, CIMD_KID_LEN + 1, "%s", ks_key_kid(key));
	*ret_doc = (struct reg_doc_result){.version = 1, .state = "submitted"};
	memcpy(ret_doc->sha256, hash, sizeof(hash));
	r = 0;
out:
	json_decref(kf);
	ks_key_free(&key);
	free(bytes);
	return r;
}

static json_t *int_or_null(struct store_rows *s, int col)
{
	return store_null(s, col) ? json_null() : json_integer(store_int(s, col));
}

static json_t *text_or_null(struct store_rows *s, int col)
{
	return store_null(s, col) ? json_null() : json_string(store_text(s, col));
}

/* A client's row with its current approved version and the active kid of node
 * ?1 (this node: in a cluster each node has its own), in one statement: each
 * subquery is one index lookup (documents_approved, keys_node), so a page of
 * clients costs what it holds. */
#define CLIENT_SELECT                                                                              \
	"SELECT name, owner, backend, alg, degraded, "                                             \
	"(SELECT version FROM documents WHERE client = clients.name AND state = 'approved'), "     \
	"(SELECT kid FROM keys WHERE client = clients.name AND node = ?1 AND state = 'active') "   \
	"FROM clients "

/* {name, owner, backend, alg, degraded, version (current approved or null),
 *  active_kid (or null)} for one row of CLIENT_SELECT. */
static json_t *client_row(struct store_rows *s)
{
	return json_pack("{sssssssssososo}", "name", store_text(s, 0), "owner", store_text(s, 1),
			 "backend", store_text(s, 2), "alg", store_text(s, 3), "degraded",
			 json_boolean((int)store_int(s, 4)), "version", int_or_null(s, 5),
			 "active_kid", text_or_null(s, 6));
}

/* client.list pages (docs/protocol.md): an answer, and the work behind it,
 * is bounded by the page, not by the number of clients. */

/* Up to limit clients whose names sort after `after` ("" for the first), in
 * name order (SQLite's BINARY collation: bytes, as names are ASCII), by the
 * primary key's index; *ret_more says whether others follow. */
static int client_page(struct store *st, const char *node, const char *after, int64_t limit,
		       json_t **ret_clients, int *ret_more)
{
	struct store_rows *s = NULL;
	json_t *arr, *row;
	int64_t n = 0;
	int rc, more = 0, r = -EIO;

	if ((arr = json_array()) == NULL)
		return -ENOMEM;
	/* One row more than the page: whether another page follows. */
	if (store_query(st, &s, CLIENT_SELECT "WHERE name > ?2 ORDER BY name LIMIT ?3", "ssi", node,
			after, limit + 1) < 0)
		goto out;
	while ((rc = store_next(s)) > 0) {
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
	if (rc < 0)
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

int reg_client_page(struct svc *d, const char *after, const int64_t *limit, json_t **ret_clients,
		    char ret_next[CIMD_NAME_MAX + 1], char *err, size_t errlen)
{
	json_t *arr = NULL;
	int more;

	if (after != NULL && !cimd_valid_name(after))
		return cimd_fail(err, errlen, -EINVAL, REG_AFTER_WORDS);
	if (limit != NULL && (*limit < 1 || *limit > CIMD_LIST_PAGE_MAX))
		return cimd_fail(err, errlen, -EINVAL, REG_LIMIT_WORDS, CIMD_LIST_PAGE_MAX);
	if (client_page(d->st, d->cfg->node, after ? after : "",
			limit ? *limit : CIMD_LIST_PAGE_DEFAULT, &arr, &more) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	snprintf(ret_next, CIMD_NAME_MAX + 1, "%s",
		 more ? json_string_value(
			    json_object_get(json_array_get(arr, json_array_size(arr) - 1), "name"))
		      : "");
	*ret_clients = arr;
	return 0;
}

static json_t *column_list(struct store *st, const char *sql, const char *name, int as_int)
{
	struct store_rows *s = NULL;
	json_t *arr = json_array();

	if (arr == NULL || store_query(st, &s, sql, "s", name) < 0) {
		json_decref(arr);
		return NULL;
	}
	while (store_next(s) > 0)
		json_array_append_new(arr, as_int ? json_integer(store_int(s, 0))
						  : json_string(store_text(s, 0)));
	store_done(st, s);
	return arr;
}

static json_t *documents_of(struct store *st, const char *name)
{
	struct store_rows *s = NULL;
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
	while (store_next(s) > 0) {
		hex_encode(store_blob(s, 2), SHA256_DIGEST_LENGTH, hash);
		json_array_append_new(
		    arr, json_pack("{sIsssssssIsoso}", "version", (json_int_t)store_int(s, 0),
				   "state", store_text(s, 1), "sha256", hash, "submitter",
				   store_text(s, 3), "submitted", (json_int_t)store_int(s, 4),
				   "approver", text_or_null(s, 5), "approved", int_or_null(s, 6)));
	}
	store_done(st, s);
	return arr;
}

int reg_client_show(struct svc *d, const char *name, json_t **ret_client, char *err, size_t errlen)
{
	struct store_rows *s = NULL;
	json_t *o;
	char cid[CIMD_URL_MAX], juri[CIMD_URL_MAX];
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if (store_query(d->st, &s, CLIENT_SELECT "WHERE name = ?2", "ss", d->cfg->node, name) < 0 ||
	    store_next(s) <= 0) {
		store_done(d->st, s);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	o = client_row(s);
	store_done(d->st, s);
	if (o == NULL)
		return cimd_fail(err, errlen, -ENOMEM, "out of memory");
	json_object_set_new(o, "client_id",
			    json_string(reg_client_id(d->cfg, name, cid, sizeof(cid))));
	json_object_set_new(o, "jwks_uri",
			    json_string(reg_jwks_uri(d->cfg, name, juri, sizeof(juri))));
	json_object_set_new(o, "uids",
			    column_list(d->st,
					"SELECT id FROM client_callers WHERE client = ? "
					"AND kind = 'uid' ORDER BY id",
					name, 1));
	json_object_set_new(o, "gids",
			    column_list(d->st,
					"SELECT id FROM client_callers WHERE client = ? "
					"AND kind = 'gid' ORDER BY id",
					name, 1));
	json_object_set_new(
	    o, "audiences",
	    column_list(d->st, "SELECT aud FROM client_audiences WHERE client = ? ORDER BY aud",
			name, 0));
	json_object_set_new(o, "documents", documents_of(d->st, name));
	/* The policy in effect: the client's own, else the configuration's. */
	if (store_query(d->st, &s, "SELECT assertion_ttl, rate_limit FROM clients WHERE name = ?",
			"s", name) == 0 &&
	    store_next(s) > 0) {
		json_object_set_new(o, "assertion_ttl",
				    json_integer(store_null(s, 0) ? d->cfg->assertion_default_ttl
								  : store_int(s, 0)));
		json_object_set_new(o, "rate_limit",
				    json_integer(store_null(s, 1) ? d->cfg->assertion_rate_limit
								  : store_int(s, 1)));
	}
	store_done(d->st, s);
	*ret_client = o;
	return 0;
}

static int64_t count_of(struct store *st, const char *sql, const char *name)
{
	struct store_rows *s = NULL;
	int64_t n = -1;

	if (store_query(st, &s, sql, "s", name) == 0 && store_next(s) > 0)
		n = store_int(s, 0);
	store_done(st, s);
	return n;
}

/* ---- who may sign as a client, and for which audience ---- */

/*
 * client.allow, client.audience and client.policy decide who may sign as a
 * client and for which audience.  Under the two-person rule one operator
 * proposes such a change and another, who holds the approve role, makes it,
 * as with documents (issue 15: one operator with the submit role alone made
 * their own uid a caller of a client, for their own audience).  Each
 * operation is its journal fields (the record's fields as without the rule)
 * and a function that makes it from those fields alone inside an open
 * transaction: the same function makes it at once when the rule is off,
 * tries it when it is proposed (and undoes it: a change that cannot be made
 * is refused then, not at approval), and makes it when it is approved.
 */

static int allow_apply(struct svc *d, const json_t *f, int remove, char *err, size_t errlen)
{
	const char *name = json_string_value(json_object_get(f, "client"));
	const char *kind = json_object_get(f, "uid") != NULL ? "uid" : "gid";
	int64_t v = json_integer_value(json_object_get(f, kind));
	int r;

	if (!remove && count_of(d->st, "SELECT count(*) FROM client_callers WHERE client = ?",
				name) >= CIMD_CALLERS_MAX)
		return cimd_fail(err, errlen, -EMLINK, "%s already allows %d callers", name,
				 CIMD_CALLERS_MAX);
	r = remove
		? store_exec(d->st,
			     "DELETE FROM client_callers WHERE client = ? AND kind = ? AND id = ?",
			     "ssi", name, kind, v)
		: store_exec(d->st,
			     "INSERT INTO client_callers (client, kind, id) VALUES (?, ?, ?) "
			     "ON CONFLICT DO NOTHING",
			     "ssi", name, kind, v);
	if (r < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (r == 0)
		return remove ? cimd_fail(err, errlen, -ENOENT, "%s %lld was not allowed for %s",
					  kind, (long long)v, name)
			      : cimd_fail(err, errlen, -EEXIST, "%s %lld is already allowed for %s",
					  kind, (long long)v, name);
	return 0;
}

static int allow_add(struct svc *d, const json_t *f, char *err, size_t errlen)
{
	return allow_apply(d, f, 0, err, errlen);
}

static int allow_remove(struct svc *d, const json_t *f, char *err, size_t errlen)
{
	return allow_apply(d, f, 1, err, errlen);
}

static int audience_apply(struct svc *d, const json_t *f, int remove, char *err, size_t errlen)
{
	const char *name = json_string_value(json_object_get(f, "client"));
	const char *aud = json_string_value(json_object_get(f, "audience"));
	int r;

	if (!remove && count_of(d->st, "SELECT count(*) FROM client_audiences WHERE client = ?",
				name) >= CIMD_AUDIENCES_MAX)
		return cimd_fail(err, errlen, -EMLINK, "%s already has %d audiences", name,
				 CIMD_AUDIENCES_MAX);
	r = remove ? store_exec(d->st, "DELETE FROM client_audiences WHERE client = ? AND aud = ?",
				"ss", name, aud)
		   : store_exec(d->st,
				"INSERT INTO client_audiences (client, aud) VALUES (?, ?) "
				"ON CONFLICT DO NOTHING",
				"ss", name, aud);
	if (r < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (r == 0)
		return remove ? cimd_fail(err, errlen, -ENOENT, "%s is not an audience of %s", aud,
					  name)
			      : cimd_fail(err, errlen, -EEXIST, "%s is already an audience of %s",
					  aud, name);
	return 0;
}

static int audience_add(struct svc *d, const json_t *f, char *err, size_t errlen)
{
	return audience_apply(d, f, 0, err, errlen);
}

static int audience_remove(struct svc *d, const json_t *f, char *err, size_t errlen)
{
	return audience_apply(d, f, 1, err, errlen);
}

static int policy_apply(struct svc *d, const json_t *f, char *err, size_t errlen)
{
	const json_t *ttl = json_object_get(f, "ttl"), *rate = json_object_get(f, "rate");

	/* assertion_max_ttl may have come down since the change was proposed. */
	if (ttl != NULL && json_integer_value(ttl) > d->cfg->assertion_max_ttl)
		return cimd_fail(err, errlen, -EINVAL, REG_TTL_WORDS, d->cfg->assertion_default_ttl,
				 d->cfg->assertion_max_ttl);
	/* 0 stores NULL: back to the configuration's default; -1 leaves it. */
	if (store_exec(
		d->st,
		"UPDATE clients SET "
		"assertion_ttl = CASE WHEN ?1 < 0 THEN assertion_ttl ELSE nullif(?1, 0) END, "
		"rate_limit = CASE WHEN ?2 < 0 THEN rate_limit ELSE ?2 END "
		"WHERE name = ?3",
		"iis", ttl ? (int64_t)json_integer_value(ttl) : (int64_t)-1,
		rate ? (int64_t)json_integer_value(rate) : (int64_t)-1,
		json_string_value(json_object_get(f, "client"))) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	return 0;
}

/* The operations, by their journal records' kinds. */
static const struct change_op {
	const char *op;
	int (*apply)(struct svc *d, const json_t *fields, char *err, size_t errlen);
} change_ops[] = {
    {"client.allow", allow_add},	   {"client.disallow", allow_remove},
    {"client.audience.add", audience_add}, {"client.audience.remove", audience_remove},
    {"client.policy", policy_apply},
};
enum { CH_ALLOW, CH_DISALLOW, CH_AUDIENCE_ADD, CH_AUDIENCE_REMOVE, CH_POLICY };

static const struct change_op *change_op_named(const char *op)
{
	size_t i;

	for (i = 0; op != NULL && i < sizeof(change_ops) / sizeof(change_ops[0]); i++)
		if (strcmp(change_ops[i].op, op) == 0)
			return &change_ops[i];
	return NULL;
}

/* Inside the open transaction, which it ends: the change op with fields
 * (stolen) recorded as pending, and its change.submit record, {"id", "op",
 * ...fields}.  *ret_change its id. */
static int propose(struct svc *d, const char *actor, const struct change_op *op, json_t *fields,
		   int64_t *ret_change, char *err, size_t errlen)
{
	/* The fields as their record will have them (this file builds each
	 * operation's in one order, so equal changes are equal texts). */
	char *text = json_dumps(fields, JSON_COMPACT);
	struct store_rows *s = NULL;
	json_t *rec = NULL;
	int64_t id = 0, n = -1;
	int r;

	if (text == NULL) {
		r = cimd_fail(err, errlen, -ENOMEM, "out of memory");
		goto fail;
	}
	/* One proposal of one change at a time, and a bound on all of them. */
	if (store_query(d->st, &s,
			"SELECT (SELECT id FROM changes WHERE state = 'pending' AND op = ? AND "
			"fields = ?), (SELECT count(*) FROM changes WHERE state = 'pending')",
			"ss", op->op, text) == 0 &&
	    store_next(s) > 0) {
		id = store_int(s, 0);
		n = store_int(s, 1);
	}
	store_done(d->st, s);
	if (id > 0) {
		r = cimd_fail(err, errlen, -EEXIST, "change %lld already proposes this",
			      (long long)id);
		goto fail;
	}
	if (n < 0 || n >= CIMD_CHANGES_PENDING_MAX) {
		r = n < 0 ? cimd_fail(err, errlen, -EIO, "database error")
			  : cimd_fail(err, errlen, -EMLINK, "%d changes await approval already",
				      CIMD_CHANGES_PENDING_MAX);
		goto fail;
	}
	if (store_query(d->st, &s,
			"INSERT INTO changes (client, op, fields, state, submitter, submitted) "
			"VALUES (?, ?, ?, 'pending', ?, ?) RETURNING id",
			"ssssi", json_string_value(json_object_get(fields, "client")), op->op, text,
			actor, (int64_t)time(NULL)) < 0 ||
	    store_next(s) <= 0) {
		store_done(d->st, s);
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto fail;
	}
	id = store_int(s, 0);
	n = store_next(s); /* the statement runs to its end: 0 */
	store_done(d->st, s);
	if (n != 0) {
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto fail;
	}
	if ((rec = json_pack("{sIss}", "id", (json_int_t)id, "op", op->op)) == NULL ||
	    json_object_update(rec, fields) < 0) {
		r = cimd_fail(err, errlen, -ENOMEM, "out of memory");
		goto fail;
	}
	free(text);
	json_decref(fields);
	if ((r = commit(d, actor, "change.submit", rec, err, errlen)) < 0)
		return r;
	*ret_change = id;
	return 0;
fail:
	store_rollback(d->st);
	free(text);
	json_decref(fields);
	json_decref(rec);
	return r;
}

/* The change op with fields (stolen; their client exists) made at once, or
 * under the two-person rule tried, undone and proposed: *ret_change is then
 * its id, else 0. */
static int change_make(struct svc *d, const char *actor, const struct change_op *op, json_t *fields,
		       int64_t *ret_change, char *err, size_t errlen)
{
	int two = d->cfg->two_person_rule, r;

	if (fields == NULL)
		return cimd_fail(err, errlen, -ENOMEM, "out of memory");
	if (store_begin(d->st) < 0 || (two && store_exec(d->st, "SAVEPOINT proposal", "") < 0)) {
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto fail;
	}
	if ((r = op->apply(d, fields, err, errlen)) < 0)
		goto fail;
	if (!two) {
		*ret_change = 0;
		return commit(d, actor, op->op, fields, err, errlen);
	}
	if (store_exec(d->st, "ROLLBACK TO proposal", "") < 0 ||
	    store_exec(d->st, "RELEASE proposal", "") < 0) {
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto fail;
	}
	return propose(d, actor, op, fields, ret_change, err, errlen);
fail:
	store_rollback(d->st);
	json_decref(fields);
	return r;
}

int reg_client_allow(struct svc *d, const char *actor, const char *name, const char *kind,
		     int64_t v, int remove, int64_t *ret_change, char *err, size_t errlen)
{
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if (kind == NULL || (strcmp(kind, "uid") != 0 && strcmp(kind, "gid") != 0) || v < 0 ||
	    v > 0x7fffffff)
		return cimd_fail(err, errlen, -EINVAL, "give one uid or one gid (0 to 2147483647)");
	return change_make(d, actor, &change_ops[remove ? CH_DISALLOW : CH_ALLOW],
			   json_pack("{sssI}", "client", name, kind, (json_int_t)v), ret_change,
			   err, errlen);
}

int reg_client_policy(struct svc *d, const char *actor, const char *name, const int64_t *ttl,
		      const int64_t *rate, int64_t *ret_change, char *err, size_t errlen)
{
	json_t *f;
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if (ttl != NULL && (*ttl < 0 || *ttl > d->cfg->assertion_max_ttl))
		return cimd_fail(err, errlen, -EINVAL, REG_TTL_WORDS, d->cfg->assertion_default_ttl,
				 d->cfg->assertion_max_ttl);
	if (rate != NULL && (*rate < 0 || *rate > CIMD_RATE_MAX))
		return cimd_fail(err, errlen, -EINVAL, REG_RATE_WORDS, CIMD_RATE_MAX);
	if (ttl == NULL && rate == NULL)
		return cimd_fail(err, errlen, -EINVAL, "give ttl, rate or both");
	f = json_pack("{ss}", "client", name);
	if (f != NULL && ttl != NULL)
		json_object_set_new(f, "ttl", json_integer(*ttl));
	if (f != NULL && rate != NULL)
		json_object_set_new(f, "rate", json_integer(*rate));
	return change_make(d, actor, &change_ops[CH_POLICY], f, ret_change, err, errlen);
}

int reg_client_audience(struct svc *d, const char *actor, const char *name, const char *add,
			const char *del, int64_t *ret_change, char *err, size_t errlen)
{
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if ((add == NULL) == (del == NULL))
		return cimd_fail(err, errlen, -EINVAL, "give one audience to add or to remove");
	if (add != NULL && cimd_https_url("audience", add, err, errlen) < 0)
		return -EINVAL;
	return change_make(d, actor, &change_ops[add ? CH_AUDIENCE_ADD : CH_AUDIENCE_REMOVE],
			   json_pack("{ssss}", "client", name, "audience", add ? add : del),
			   ret_change, err, errlen);
}

/* ---- pending changes: list, approve, reject ---- */

int reg_change_list(struct svc *d, const char *name, json_t **ret_changes, char *err, size_t errlen)
{
	struct store_rows *s = NULL;
	json_t *arr, *row;
	int rc, r;

	if (name != NULL && (r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if ((arr = json_array()) == NULL)
		return cimd_fail(err, errlen, -ENOMEM, "out of memory");
	/* At most CIMD_CHANGES_PENDING_MAX rows, by the partial index. */
	if (store_query(d->st, &s,
			"SELECT id, client, op, fields, submitter, submitted FROM changes "
			"WHERE state = 'pending' AND (CAST(?1 AS TEXT) IS NULL OR client = ?1) "
			"ORDER BY id",
			"s", name) < 0) {
		json_decref(arr);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	while ((rc = store_next(s)) > 0) {
		row = json_pack("{sIsssssosssI}", "id", (json_int_t)store_int(s, 0), "client",
				store_text(s, 1), "op", store_text(s, 2), "fields",
				json_loads(store_text(s, 3), 0, NULL), "submitter",
				store_text(s, 4), "submitted", (json_int_t)store_int(s, 5));
		if (row == NULL || json_array_append_new(arr, row) < 0)
			break;
	}
	store_done(d->st, s);
	if (rc != 0) {
		json_decref(arr);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	*ret_changes = arr;
	return 0;
}

/* A pending change, read inside the open transaction. */
struct change_row {
	const struct change_op *op;
	char client[CIMD_NAME_MAX + 1];
	char submitter[CIMD_NAME_MAX + 1];
	json_t *fields;
};

static int change_load(struct svc *d, int64_t id, struct change_row *ret, char *err, size_t errlen)
{
	struct store_rows *s = NULL;
	const char *state;
	int r = 0;

	if (id < 1)
		return cimd_fail(err, errlen, -EINVAL, "a change id (1, 2, ...) is required");
	if (store_query(d->st, &s,
			"SELECT client, op, fields, state, submitter FROM changes WHERE id = ?",
			"i", id) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (store_next(s) <= 0) {
		store_done(d->st, s);
		return cimd_fail(err, errlen, -ENOENT, "there is no change %lld", (long long)id);
	}
	state = store_text(s, 3);
	ret->op = change_op_named(store_text(s, 1));
	snprintf(ret->client, sizeof(ret->client), "%s", store_text(s, 0));
	snprintf(ret->submitter, sizeof(ret->submitter), "%s", store_text(s, 4));
	if (strcmp(state, "pending") != 0)
		r = cimd_fail(err, errlen, -EBUSY, "change %lld is %s, not pending", (long long)id,
			      state);
	else if (ret->op == NULL || (ret->fields = json_loads(store_text(s, 2), 0, NULL)) == NULL)
		r = cimd_fail(err, errlen, -EIO, "database error: change %lld cannot be read",
			      (long long)id);
	store_done(d->st, s);
	return r;
}

int reg_change_approve(struct svc *d, const char *actor, int64_t id, json_t **ret_change, char *err,
		       size_t errlen)
{
	struct change_row c = {0};
	char why[400];
	json_t *o;
	int r;

	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if ((r = change_load(d, id, &c, err, errlen)) < 0)
		goto fail;
	/* The rule as for documents (reg_doc_approve). */
	if (d->cfg->two_person_rule && strcmp(c.submitter, actor) == 0) {
		r = cimd_fail(err, errlen, -EPERM,
			      "two-person rule: %s proposed change %lld and may not approve it",
			      c.submitter, (long long)id);
		goto fail;
	}
	if ((r = c.op->apply(d, c.fields, why, sizeof(why))) < 0) {
		cimd_fail(err, errlen, r, "change %lld cannot be made now: %s", (long long)id, why);
		goto fail;
	}
	if (store_exec(
		d->st,
		"UPDATE changes SET state = 'approved', decider = ?, decided = ? WHERE id = ?",
		"sii", actor, (int64_t)time(NULL), id) != 1) {
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto fail;
	}
	o = json_pack("{sIssssss}", "id", (json_int_t)id, "client", c.client, "op", c.op->op,
		      "state", "approved");
	/* The operation's own record, as without the rule, and whose it was. */
	json_object_set_new(c.fields, "change", json_integer(id));
	json_object_set_new(c.fields, "submitter", json_string(c.submitter));
	if ((r = commit(d, actor, c.op->op, c.fields, err, errlen)) < 0) {
		json_decref(o);
		return r;
	}
	if (o == NULL)
		return cimd_fail(err, errlen, -ENOMEM, "change %lld made; out of memory",
				 (long long)id);
	*ret_change = o;
	return 0;
fail:
	store_rollback(d->st);
	json_decref(c.fields);
	return r;
}

int reg_change_reject(struct svc *d, const char *actor, int may_reject_others, int64_t id,
		      const char *reason, char *err, size_t errlen)
{
	struct change_row c = {0};
	int withdrawn, r;

	if (reason == NULL || *reason == '\0' || strlen(reason) > 512)
		return cimd_fail(err, errlen, -EINVAL,
				 "a reason (1 to 512 characters) is required");
	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if ((r = change_load(d, id, &c, err, errlen)) < 0)
		goto fail;
	withdrawn = strcmp(c.submitter, actor) == 0;
	if (!withdrawn && !may_reject_others) {
		r = cimd_fail(err, errlen, -EPERM,
			      "operator %s may withdraw only their own changes: rejecting change "
			      "%lld of %s needs the approve role",
			      actor, (long long)id, c.submitter);
		goto fail;
	}
	if (store_exec(
		d->st,
		"UPDATE changes SET state = 'rejected', decider = ?, decided = ?, reason = ? "
		"WHERE id = ?",
		"sisi", actor, (int64_t)time(NULL), reason, id) != 1) {
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto fail;
	}
	json_decref(c.fields);
	return commit(d, actor, "change.reject",
		      json_pack("{sIsssssssssb}", "id", (json_int_t)id, "client", c.client, "op",
				c.op->op, "submitter", c.submitter, "reason", reason, "withdrawn",
				withdrawn),
		      err, errlen);
fail:
	store_rollback(d->st);
	json_decref(c.fields);
	return r;
}

/* The client's latest document version, or with approved its approved one;
 * 0 when there is none.  The approved one by the partial index
 * documents_approved: one row, however many versions the client has ("+"
 * keeps the planner from walking the primary key for max()). */
static int64_t latest_version(struct store *st, const char *name, int approved)
{
	struct store_rows *s = NULL;
	int64_t v = 0;

	int r = approved
		    ? store_query(st, &s,
				  "SELECT max(+version) FROM documents WHERE client = ? AND "
				  "state = 'approved'",
				  "s", name)
		    : store_query(st, &s, "SELECT max(version) FROM documents WHERE client = ?",
				  "s", name);

	if (r == 0 && store_next(s) > 0)
		v = store_int(s, 0);
	store_done(st, s);
	return v;
}

/* The version's state and digest, as an operation leaves them. */
static void doc_result(struct reg_doc_result *ret, int64_t version, const char *state,
		       const char hash[65])
{
	ret->version = version;
	ret->state = state;
	memcpy(ret->sha256, hash, sizeof(ret->sha256));
}

int reg_doc_submit(struct svc *d, const char *actor, const char *name, const json_t *metadata,
		   struct reg_doc_result *ret_doc, char *err, size_t errlen)
{
	const char *alg;
	char cid[CIMD_URL_MAX], juri[CIMD_URL_MAX], hash[65], *bytes = NULL;
	uint8_t md[SHA256_DIGEST_LENGTH];
	struct store_rows *s = NULL;
	int64_t version;
	size_t len;
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if (store_query(d->st, &s, "SELECT alg FROM clients WHERE name = ?", "s", name) < 0 ||
	    store_next(s) <= 0) {
		store_done(d->st, s);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	alg = store_text(s, 0);
	if (cimd_doc_prepare(metadata, reg_client_id(d->cfg, name, cid, sizeof(cid)),
			     reg_jwks_uri(d->cfg, name, juri, sizeof(juri)), alg, &bytes, &len, err,
			     errlen) < 0) {
		store_done(d->st, s);
		return -CIMD_EDOCUMENT;
	}
	store_done(d->st, s);
	if (store_begin(d->st) < 0) {
		free(bytes);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	version = latest_version(d->st, name, 0) + 1;
	if (insert_doc(d, actor, name, version, bytes, len, md) != 1) {
		store_rollback(d->st);
		free(bytes);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	free(bytes);
	hex_encode(md, sizeof(md), hash);
	if ((r = commit(d, actor, "doc.submit",
			json_pack("{sssIss}", "client", name, "version", (json_int_t)version,
				  "sha256", hash),
			err, errlen)) < 0)
		return r;
	doc_result(ret_doc, version, "submitted", hash);
	return 0;
}

int reg_doc_approve(struct svc *d, const char *actor, const char *name, int64_t version,
		    struct reg_doc_result *ret_doc, char *err, size_t errlen)
{
	const char *state;
	char submitter[CIMD_NAME_MAX + 1], hash[65];
	int64_t current;
	struct store_rows *s = NULL;
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if (version < 1)
		return cimd_fail(err, errlen, -EINVAL,
				 "a document version (1, 2, ...) is required");
	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (store_query(
		d->st, &s,
		"SELECT state, submitter, sha256 FROM documents WHERE client = ? AND version = ?",
		"si", name, version) < 0 ||
	    store_next(s) <= 0) {
		store_done(d->st, s);
		store_rollback(d->st);
		return cimd_fail(err, errlen, -ENOENT, "%s has no document version %lld", name,
				 (long long)version);
	}
	state = store_text(s, 0);
	snprintf(submitter, sizeof(submitter), "%s", store_text(s, 1));
	hex_encode(store_blob(s, 2), SHA256_DIGEST_LENGTH, hash);
	if (strcmp(state, "submitted") != 0) {
		r = cimd_fail(err, errlen, -EBUSY,
			      "version %lld of %s is %s, not awaiting approval", (long long)version,
			      name, state);
		store_done(d->st, s);
		store_rollback(d->st);
		return r;
	}
	store_done(d->st, s);
	if (d->cfg->two_person_rule && strcmp(submitter, actor) == 0) {
		store_rollback(d->st);
		return cimd_fail(
		    err, errlen, -EPERM,
		    "two-person rule: %s submitted version %lld and may not approve it", submitter,
		    (long long)version);
	}
	current = latest_version(d->st, name, 1);
	if (version < current) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -ESTALE,
				 "version %lld is older than the approved version %lld",
				 (long long)version, (long long)current);
	}
	if (store_exec(
		d->st,
		"UPDATE documents SET state = 'superseded' WHERE client = ? AND state = 'approved'",
		"s", name) < 0 ||
	    store_exec(d->st,
		       "UPDATE documents SET state = 'approved', approver = ?, approved = ? "
		       "WHERE client = ? AND version = ?",
		       "sisi", actor, (int64_t)time(NULL), name, version) != 1) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	if ((r = commit(d, actor, "doc.approve",
			json_pack("{sssIssssso}", "client", name, "version", (json_int_t)version,
				  "sha256", hash, "submitter", submitter, "superseded",
				  current ? json_integer(current) : json_null()),
			err, errlen)) < 0)
		return r;
	doc_result(ret_doc, version, "approved", hash);
	return 0;
}

int reg_doc_show(struct svc *d, const char *name, const int64_t *want, json_t **ret_document,
		 char *err, size_t errlen)
{
	int64_t version;
	struct store_rows *s = NULL;
	json_t *o;
	char hash[65];
	int r;

	if ((r = client_check(d->st, name, 1, err, errlen)) < 0)
		return r;
	if (want != NULL && *want < 1)
		return cimd_fail(err, errlen, -EINVAL, REG_VERSION_WORDS);
	/* Default: the approved version, or else the latest submitted. */
	version = want ? *want : latest_version(d->st, name, 1);
	if (version == 0)
		version = latest_version(d->st, name, 0);
	if (store_query(
		d->st, &s,
		"SELECT version, state, bytes, sha256, submitter, submitted, approver, approved "
		"FROM documents WHERE client = ? AND version = ?",
		"si", name, version) < 0 ||
	    store_next(s) <= 0) {
		store_done(d->st, s);
		return cimd_fail(err, errlen, -ENOENT, "%s has no document version %lld", name,
				 (long long)version);
	}
	hex_encode(store_blob(s, 3), SHA256_DIGEST_LENGTH, hash);
	o = json_pack("{sIssss%sssssIsoso}", "version", (json_int_t)store_int(s, 0), "state",
		      store_text(s, 1), "bytes", (const char *)store_blob(s, 2), store_len(s, 2),
		      "sha256", hash, "submitter", store_text(s, 4), "submitted",
		      (json_int_t)store_int(s, 5), "approver", text_or_null(s, 6), "approved",
		      int_or_null(s, 7));
	store_done(d->st, s);
	if (o == NULL)
		return cimd_fail(err, errlen, -ENOMEM, "out of memory");
	*ret_document = o;
	return 0;
}
