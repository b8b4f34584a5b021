/*
 * replay.c — the state tables replayed from the journal (replay.h).
 *
 * Each kind below names the records of service/registry.c and service/keys.c
 * that change a table, and what each changes; every other kind changes none.
 * A record is applied as the daemon applied it, in the same transaction as
 * its row: so the state after record S is what the tables held when S was
 * committed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt.h"
#include "replay.h"

struct replay {
	json_t *state;	 /* {"clients": {...}, "keys": {...}} */
	int64_t max_ttl; /* config.reload's assertion_max_ttl since daemon.start; 0: unknown */
};

/* The kinds that change a table, or what an assertion is checked against. */
static const char *const governing[] = {
    "client.add",      "client.allow",	      "client.disallow",
    "client.policy",   "client.audience.add", "client.audience.remove",
    "client.restored", "doc.submit",	      "doc.approve",
    "key.create",      "key.state",	      "reconcile",
    "tables.accepted", "config.reload",	      "daemon.start",
};

int replay_governs(const char *kind)
{
	size_t i;

	for (i = 0; kind != NULL && i < sizeof(governing) / sizeof(governing[0]); i++)
		if (strcmp(kind, governing[i]) == 0)
			return 1;
	return 0;
}

int replay_new(struct replay **ret)
{
	struct replay *rp = calloc(1, sizeof(*rp));

	if (rp == NULL || (rp->state = json_pack("{s{}s{}}", "clients", "keys")) == NULL) {
		free(rp);
		return -ENOMEM;
	}
	*ret = rp;
	return 0;
}

void replay_free(struct replay **prp)
{
	if (*prp == NULL)
		return;
	json_decref((*prp)->state);
	free(*prp);
	*prp = NULL;
}

const json_t *replay_state(const struct replay *rp)
{
	return rp->state;
}

int64_t replay_max_ttl(const struct replay *rp)
{
	return rp->max_ttl;
}

static const char *sget(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/* o[k], an object, made when absent. */
static json_t *obj(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	if (json_is_object(v))
		return v;
	if ((v = json_object()) == NULL || json_object_set_new(o, k, v) < 0)
		return NULL;
	return v;
}

static json_t *client(struct replay *rp, const json_t *rec)
{
	const char *name = sget(rec, "client");

	return name == NULL ? NULL : json_object_get(json_object_get(rp->state, "clients"), name);
}

/* client.add: the client, its first document submitted (registry.c). */
static int client_add(struct replay *rp, const json_t *rec)
{
	const char *name = sget(rec, "client");
	char v[24];
	json_t *c;

	if (name == NULL)
		return 0;
	/* callers and audiences are made when the first is added: an empty
	 * object costs a hash table, and absent is empty (replay_diff). */
	c = json_pack("{sO?sO?sO?snsnsbs{}}", "owner", json_object_get(rec, "owner"), "backend",
		      json_object_get(rec, "backend"), "alg", json_object_get(rec, "alg"), "ttl",
		      "rate", "degraded", 0, "documents");
	if (c == NULL)
		return -ENOMEM;
	snprintf(v, sizeof(v), "%" JSON_INTEGER_FORMAT,
		 json_integer_value(json_object_get(rec, "version")));
	if (json_object_set_new(json_object_get(c, "documents"), v,
				json_pack("{sOss}", "sha256", json_object_get(rec, "sha256"),
					  "state", "submitted")) < 0 ||
	    json_object_set_new(json_object_get(rp->state, "clients"), name, c) < 0)
		return -ENOMEM;
	return 0;
}

/* client.allow / client.disallow: {"client", "uid"|"gid": N}. */
static int client_caller(struct replay *rp, const json_t *rec, int allow)
{
	json_t *c = client(rp, rec), *callers;
	const char *kind = json_object_get(rec, "uid") != NULL ? "uid" : "gid";
	char key[40];

	if (c == NULL || !json_is_integer(json_object_get(rec, kind)))
		return 0;
	snprintf(key, sizeof(key), "%s:%" JSON_INTEGER_FORMAT, kind,
		 json_integer_value(json_object_get(rec, kind)));
	if ((callers = obj(c, "callers")) == NULL)
		return -ENOMEM;
	if (!allow)
		return json_object_del(callers, key), 0;
	return json_object_set_new(callers, key, json_true()) < 0 ? -ENOMEM : 0;
}

/* client.policy: "ttl" 0 is the configuration's default (stored NULL); "rate"
 * is stored as given. */
static int client_policy(struct replay *rp, const json_t *rec)
{
	json_t *c = client(rp, rec), *ttl = json_object_get(rec, "ttl");
	json_t *rate = json_object_get(rec, "rate");

	if (c == NULL)
		return 0;
	if (json_is_integer(ttl) &&
	    json_object_set_new(c, "ttl",
				json_integer_value(ttl) == 0 ? json_null() : json_copy(ttl)) < 0)
		return -ENOMEM;
	if (json_is_integer(rate) && json_object_set(c, "rate", rate) < 0)
		return -ENOMEM;
	return 0;
}

static int client_audience(struct replay *rp, const json_t *rec, int add)
{
	json_t *c = client(rp, rec), *auds;
	const char *aud = sget(rec, "audience");

	if (c == NULL || aud == NULL)
		return 0;
	if ((auds = obj(c, "audiences")) == NULL)
		return -ENOMEM;
	if (!add)
		return json_object_del(auds, aud), 0;
	return json_object_set_new(auds, aud, json_true()) < 0 ? -ENOMEM : 0;
}

/* doc.submit: a version submitted.  doc.approve: the approved one superseded,
 * this one approved with the digest the approval read (what is served). */
static int doc_change(struct replay *rp, const json_t *rec, int approve)
{
	json_t *c = client(rp, rec), *docs, *d;
	const char *k, *st;
	char v[24];

	if (c == NULL || !json_is_string(json_object_get(rec, "sha256")))
		return 0;
	if ((docs = obj(c, "documents")) == NULL)
		return -ENOMEM;
	json_object_foreach(docs, k, d)
	{
		st = sget(d, "state");
		if (approve && st != NULL && strcmp(st, "approved") == 0 &&
		    json_object_set_new(d, "state", json_string("superseded")) < 0)
			return -ENOMEM;
	}
	snprintf(v, sizeof(v), "%" JSON_INTEGER_FORMAT,
		 json_integer_value(json_object_get(rec, "version")));
	return json_object_set_new(docs, v,
				   json_pack("{sOss}", "sha256", json_object_get(rec, "sha256"),
					     "state", approve ? "approved" : "submitted")) < 0
		   ? -ENOMEM
		   : 0;
}

/* key.create {"client","kid","state","backend"[,"node"]}; key.state {"kid","to"}.
 * A key.create without a node is from before nodes (schema 10): the single
 * appliance's, node "local". */
static int key_change(struct replay *rp, const json_t *rec, int create)
{
	json_t *keys = json_object_get(rp->state, "keys"), *k;
	const char *kid = sget(rec, "kid"), *to = sget(rec, create ? "state" : "to");
	const char *node = sget(rec, "node");

	if (kid == NULL || to == NULL)
		return 0;
	if (create)
		return json_object_set_new(keys, kid,
					   json_pack("{sO?sO?ssss}", "client",
						     json_object_get(rec, "client"), "backend",
						     json_object_get(rec, "backend"), "state", to,
						     "node", node != NULL ? node : "local")) < 0
			   ? -ENOMEM
			   : 0;
	if ((k = obj(keys, kid)) == NULL)
		return -ENOMEM;
	return json_object_set_new(k, "state", json_string(to)) < 0 ? -ENOMEM : 0;
}

/* reconcile: a key missing from the hardware marks its client degraded
 * (keys.c, recon_apply); client.restored clears it. */
static int degraded(struct replay *rp, const json_t *rec, int on)
{
	json_t *c = client(rp, rec);

	if (c == NULL || (on && strcmp(sget(rec, "action") ? sget(rec, "action") : "",
				       "client marked degraded") != 0))
		return 0;
	return json_object_set_new(c, "degraded", json_boolean(on)) < 0 ? -ENOMEM : 0;
}

/* tables.accepted: the tables' value at path, as the operator accepted it. */
static int accepted(struct replay *rp, const json_t *rec)
{
	const json_t *path = json_object_get(rec, "path"), *value = json_object_get(rec, "value");
	json_t *o = rp->state;
	size_t i, n = json_array_size(path);
	const char *k;

	if (n == 0)
		return 0;
	for (i = 0; i + 1 < n; i++)
		if ((k = json_string_value(json_array_get(path, i))) == NULL ||
		    (o = obj(o, k)) == NULL)
			return k == NULL ? 0 : -ENOMEM;
	if ((k = json_string_value(json_array_get(path, n - 1))) == NULL)
		return 0;
	if (value == NULL || json_is_null(value))
		return json_object_del(o, k), 0;
	return json_object_set_new(o, k, json_deep_copy(value)) < 0 ? -ENOMEM : 0;
}

int replay_apply(struct replay *rp, const json_t *rec)
{
	const char *kind = sget(rec, "kind");
	json_int_t ttl;

	if (kind == NULL)
		return 0;
	if (strcmp(kind, "client.add") == 0)
		return client_add(rp, rec);
	if (strcmp(kind, "client.allow") == 0 || strcmp(kind, "client.disallow") == 0)
		return client_caller(rp, rec, kind[7] == 'a');
	if (strcmp(kind, "client.policy") == 0)
		return client_policy(rp, rec);
	if (strcmp(kind, "client.audience.add") == 0 || strcmp(kind, "client.audience.remove") == 0)
		return client_audience(rp, rec, kind[16] == 'a');
	if (strcmp(kind, "client.restored") == 0 || strcmp(kind, "reconcile") == 0)
		return degraded(rp, rec, kind[0] == 'r');
	if (strcmp(kind, "doc.submit") == 0 || strcmp(kind, "doc.approve") == 0)
		return doc_change(rp, rec, kind[4] == 'a');
	if (strcmp(kind, "key.create") == 0 || strcmp(kind, "key.state") == 0)
		return key_change(rp, rec, kind[4] == 'c');
	if (strcmp(kind, "tables.accepted") == 0)
		return accepted(rp, rec);
	if (strcmp(kind, "daemon.start") == 0)
		rp->max_ttl = 0; /* a start reads the configuration unjournaled */
	if (strcmp(kind, "config.reload") == 0 &&
	    (ttl = json_integer_value(json_object_get(rec, "assertion_max_ttl"))) > 0)
		rp->max_ttl = ttl;
	return 0;
}

/* ---- an assertion against the state in force ---- */

int replay_check_assertion(const struct replay *rp, const json_t *rec, int *ret_by_gid, char *err,
			   size_t errlen)
{
	const char *name = sget(rec, "client"), *kid = sget(rec, "kid"), *aud = sget(rec, "aud");
	const json_t *c = json_object_get(json_object_get(rp->state, "clients"), name ? name : "");
	const json_t *k = json_object_get(json_object_get(rp->state, "keys"), kid ? kid : "");
	json_int_t uid = json_integer_value(json_object_get(rec, "uid"));
	const json_t *gid = json_object_get(rec, "gid");
	json_int_t iat = json_integer_value(json_object_get(rec, "iat"));
	json_int_t exp = json_integer_value(json_object_get(rec, "exp"));
	const char *ks = sget(k, "state") ? sget(k, "state") : "unknown";
	const json_t *callers = json_object_get(c, "callers");
	char key[40];
	int by_gid = 0;

	if (c == NULL)
		return cimd_fail(err, errlen, -CIMD_EVERIFY, "client %s is not in the journal",
				 name ? name : "(none)");
	/* The record names the group when a group allowed the caller; records
	 * from before it did (by_gid) can only be counted, not concluded. */
	if (gid != NULL)
		snprintf(key, sizeof(key), "gid:%" JSON_INTEGER_FORMAT, json_integer_value(gid));
	else
		snprintf(key, sizeof(key), "uid:%" JSON_INTEGER_FORMAT, uid);
	if (json_object_get(callers, key) == NULL) {
		const char *ck;
		const json_t *v;

		json_object_foreach((json_t *)callers, ck, v)
		{
			if (gid == NULL && strncmp(ck, "gid:", 4) == 0)
				by_gid = 1;
		}
		if (!by_gid && gid != NULL)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "gid %" JSON_INTEGER_FORMAT " is not allowed for %s",
					 json_integer_value(gid), name);
		if (!by_gid)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "uid %" JSON_INTEGER_FORMAT " is not allowed for %s", uid,
					 name);
	}
	if (aud == NULL || json_object_get(json_object_get(c, "audiences"), aud) == NULL)
		return cimd_fail(err, errlen, -CIMD_EVERIFY, "audience %s is not one of %s's",
				 aud ? aud : "(none)", name);
	if (k == NULL || strcmp(sget(k, "client") ? sget(k, "client") : "", name) != 0)
		return cimd_fail(err, errlen, -CIMD_EVERIFY, "key %s is not a key of %s",
				 kid ? kid : "(none)", name);
	if (strcmp(ks, "active") != 0 && strcmp(ks, "retiring") != 0)
		return cimd_fail(err, errlen, -CIMD_EVERIFY, "key %s of %s is %s: it does not sign",
				 kid, name, ks);
	if (exp <= iat || (rp->max_ttl > 0 && exp - iat > rp->max_ttl))
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "its lifetime %" JSON_INTEGER_FORMAT
				 " s is not within assertion_max_ttl (%" PRId64 " s)",
				 exp - iat, rp->max_ttl);
	*ret_by_gid = by_gid;
	return 0;
}

/* ---- differences between the state and the tables ---- */

struct diff {
	replay_diff_fn fn;
	void *arg;
	long n;
	int failed;
};

/* Absent, null and {} are alike: nothing there. */
static int nothing(const json_t *v)
{
	return v == NULL || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0);
}

static void show(const json_t *v, char *out, size_t len)
{
	if (nothing(v))
		snprintf(out, len, "none");
	else if (json_is_string(v))
		snprintf(out, len, "%.100s", json_string_value(v));
	else if (json_is_integer(v))
		snprintf(out, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_boolean(v))
		snprintf(out, len, "%s", json_is_true(v) ? "true" : "false");
	else
		snprintf(out, len, "present");
}

/* The table a path names, and the difference in words. */
static const char *words(const json_t *path, const json_t *j, const json_t *t, char *out,
			 size_t len)
{
	const char *p[6] = {"", "", "", "", "", ""}, *table;
	size_t i, n = json_array_size(path);
	char jw[128], tw[128];
	char caller[40], *c;
	const char *absent = nothing(t) ? ", which the journal holds, is not in the table"
					: " is not in the journal";

	for (i = 0; i < n && i < 6; i++)
		if (json_is_string(json_array_get(path, i)))
			p[i] = json_string_value(json_array_get(path, i));
	show(j, jw, sizeof(jw));
	show(t, tw, sizeof(tw));
	if (strcmp(p[0], "keys") == 0) {
		table = "keys";
		if (n == 2)
			snprintf(out, len, "keys: %s%s", p[1], absent);
		else if (strcmp(p[2], "thumbprint") == 0)
			snprintf(out, len, "keys: %s: its public JWK is not the key its kid names",
				 p[1]);
		else if (strcmp(p[2], "alg") == 0)
			snprintf(out, len, "keys: %s: its alg %s is not its client's", p[1], tw);
		else
			snprintf(out, len, "keys: %s: %s is %s, the journal says %s", p[1], p[2],
				 tw, jw);
	} else if (n >= 4 && strcmp(p[2], "callers") == 0) {
		table = "client_callers";
		snprintf(caller, sizeof(caller), "%s", p[3]); /* "uid:4242" reads "uid 4242" */
		if ((c = strchr(caller, ':')) != NULL)
			*c = ' ';
		snprintf(out, len, "client_callers: %s for %s%s", caller, p[1], absent);
	} else if (n >= 4 && strcmp(p[2], "audiences") == 0) {
		table = "client_audiences";
		snprintf(out, len, "client_audiences: %s for %s%s", p[3], p[1], absent);
	} else if (n >= 4 && strcmp(p[2], "documents") == 0) {
		table = "documents";
		if (n == 4)
			snprintf(out, len, "documents: %s version %s%s", p[1], p[3], absent);
		else if (strcmp(p[4], "column") == 0)
			snprintf(out, len,
				 "documents: %s version %s: its sha256 column is not the SHA-256 "
				 "of its bytes",
				 p[1], p[3]);
		else if (strcmp(p[4], "sha256") == 0)
			snprintf(out, len,
				 "documents: %s version %s: its bytes have SHA-256 %s, the journal "
				 "records %s",
				 p[1], p[3], tw, jw);
		else
			snprintf(out, len,
				 "documents: %s version %s: %s is %s, the journal says %s", p[1],
				 p[3], p[4], tw, jw);
	} else {
		table = "clients";
		if (n == 2)
			snprintf(out, len, "clients: %s%s", p[1], absent);
		else
			snprintf(out, len, "clients: %s: %s is %s, the journal says %s", p[1], p[2],
				 tw, jw);
	}
	return table;
}

static void emit(struct diff *df, const json_t *path, const json_t *j, const json_t *t)
{
	char w[512];
	const char *table = words(path, j, t, w, sizeof(w));

	df->n++;
	if (df->fn(df->arg, table, w, path, nothing(t) ? NULL : t) < 0)
		df->failed = 1;
}

static void walk(struct diff *df, json_t *path, const json_t *j, const json_t *t)
{
	const char *k;
	const json_t *v;

	if (df->failed)
		return;
	if (json_is_object(j) && json_is_object(t)) {
		json_object_foreach((json_t *)t, k, v)
		{
			if (json_array_append_new(path, json_string(k)) < 0) {
				df->failed = 1;
				return;
			}
			walk(df, path, json_object_get(j, k), v);
			json_array_remove(path, json_array_size(path) - 1);
		}
		json_object_foreach((json_t *)j, k, v)
		{
			if (json_object_get(t, k) != NULL || nothing(v))
				continue;
			if (json_array_append_new(path, json_string(k)) < 0) {
				df->failed = 1;
				return;
			}
			emit(df, path, v, NULL);
			json_array_remove(path, json_array_size(path) - 1);
		}
		return;
	}
	if ((nothing(j) && nothing(t)) || (j != NULL && t != NULL && json_equal(j, t)))
		return;
	emit(df, path, j, t);
}

long replay_diff(const struct replay *rp, const json_t *tables, replay_diff_fn fn, void *arg)
{
	static const char *const parts[] = {"clients", "keys"};
	struct diff df = {fn, arg, 0, 0};
	json_t *path;
	size_t i;

	for (i = 0; i < 2 && !df.failed; i++) {
		if ((path = json_pack("[s]", parts[i])) == NULL)
			return -ENOMEM;
		walk(&df, path, json_object_get(rp->state, parts[i]),
		     json_object_get(tables, parts[i]));
		json_decref(path);
	}
	return df.failed ? -ENOMEM : df.n;
}
