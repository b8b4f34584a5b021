/*
 * tables.c — at start, the state tables checked against the journal
 * (docs/audit.md, "The tables and the journal"; issue 15, item 6).
 *
 * Every change to a client, its callers, audiences, policy, documents or keys
 * is one transaction with its journal record (registry.c, keys.c), so the
 * tables are a function of the journal.  Tables edited behind the daemon's
 * back (the database opened while it was stopped) are not: a caller added, a
 * document's bytes and digest replaced, a next and an active key swapped.
 * Served, attested and audited, such an edit would look like the appliance's
 * own doing.  So before anything is published or signed, the journal's
 * records are replayed (firmware/replay.c, the one implementation that
 * `cimdctl audit verify` uses too) and the result compared with the tables.
 * A difference refuses the start, naming the table and the row, unless the
 * operator accepts the tables as they are (cimdd --accept-tables): then each
 * difference is journaled as a tables.accepted record, which the replay
 * applies, so the tables stand from then on and every auditor sees it.
 *
 * Only the records that change tables are read, by a partial index (schema
 * 8) on the kind written in the record's own bytes (which the hash chain
 * covers), not on the journal's kind column (which it does not): the
 * journal is mostly assertion.issue records, which neither pay for the
 * index's upkeep beyond one short scan of their first bytes nor are read.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "replay.h"
#include "service.h"

#define TABLES_LOGGED 20 /* differences logged one by one; the rest counted */

/* ---- the journal's side ---- */

static int replay_journal(struct store *st, struct replay *rp, size_t *ret_n)
{
	struct store_rows *s = NULL;
	json_t *rec;
	size_t n = 0;
	int rc, r = 0;

	if (journal_table_records(st, &s) < 0)
		return -EIO;
	while (r == 0 && (rc = store_next(s)) > 0) {
		rec = json_loadb(store_blob(s, 0), store_len(s, 0), 0, NULL);
		if (rec != NULL &&
		    replay_governs(json_string_value(json_object_get(rec, "kind")))) {
			r = replay_apply(rp, rec);
			n++;
		}
		json_decref(rec);
	}
	if (r == 0 && rc != 0)
		r = -EIO;
	store_done(st, s);
	*ret_n = n;
	return r;
}

/* ---- the tables' side, in the replay's shape (replay.h) ---- */

static json_t *client_of(json_t *clients, const char *name)
{
	json_t *c = json_object_get(clients, name);

	if (c == NULL && (c = json_object()) != NULL && json_object_set_new(clients, name, c) < 0)
		c = NULL;
	return c;
}

static json_t *col_int_or_null(struct store_rows *s, int col)
{
	return store_null(s, col) ? json_null() : json_integer(store_int(s, col));
}

static const char *text(struct store_rows *s, int col)
{
	const char *t = store_text(s, col);

	return t != NULL ? t : "";
}

static int read_clients(struct store *st, json_t *clients)
{
	struct store_rows *s = NULL;
	json_t *c;
	int rc, r = 0;

	if (store_query(st, &s,
			"SELECT name, owner, backend, alg, degraded, assertion_ttl, rate_limit "
			"FROM clients",
			"") < 0)
		return -EIO;
	while (r == 0 && (rc = store_next(s)) > 0) {
		c = json_pack("{sssssssbsosos{}s{}s{}}", "owner", text(s, 1), "backend", text(s, 2),
			      "alg", text(s, 3), "degraded", (int)store_int(s, 4) != 0, "ttl",
			      col_int_or_null(s, 5), "rate", col_int_or_null(s, 6), "callers",
			      "audiences", "documents");
		if (c == NULL || json_object_set_new(clients, text(s, 0), c) < 0)
			r = -ENOMEM;
	}
	if (r == 0 && rc != 0)
		r = -EIO;
	store_done(st, s);
	return r;
}

/* Callers ("uid:N") and audiences: a set under each client. */
static int read_sets(struct store *st, json_t *clients)
{
	static const struct {
		const char *sql, *member;
	} sets[] = {
	    {"SELECT client, kind || ':' || id FROM client_callers", "callers"},
	    {"SELECT client, aud FROM client_audiences", "audiences"},
	};
	struct store_rows *s = NULL;
	json_t *c, *set;
	size_t i;
	int rc = 0, r = 0;

	for (i = 0; r == 0 && i < sizeof(sets) / sizeof(sets[0]); i++) {
		if (store_query(st, &s, sets[i].sql, "") < 0)
			return -EIO;
		while (r == 0 && (rc = store_next(s)) > 0) {
			if ((c = client_of(clients, text(s, 0))) == NULL)
				r = -ENOMEM;
			else if ((set = json_object_get(c, sets[i].member)) == NULL &&
				 json_object_set_new(c, sets[i].member, set = json_object()) < 0)
				r = -ENOMEM;
			else if (json_object_set_new(set, text(s, 1), json_true()) < 0)
				r = -ENOMEM;
		}
		if (r == 0 && rc != 0)
			r = -EIO;
		store_done(st, s);
		s = NULL;
	}
	return r;
}

/* Each version: the SHA-256 of the bytes it serves, its state, and, only when
 * it is not that digest, its sha256 column. */
static int read_documents(struct store *st, json_t *clients)
{
	struct store_rows *s = NULL;
	uint8_t md[SHA256_DIGEST_LENGTH];
	char hex[65], col[65], v[24];
	json_t *c, *docs, *d;
	int rc, r = 0;

	if (store_query(st, &s, "SELECT client, version, state, bytes, sha256 FROM documents", "") <
	    0)
		return -EIO;
	while (r == 0 && (rc = store_next(s)) > 0) {
		SHA256(store_blob(s, 3), store_len(s, 3), md);
		hex_encode(md, sizeof(md), hex);
		if (store_len(s, 4) == SHA256_DIGEST_LENGTH)
			hex_encode(store_blob(s, 4), SHA256_DIGEST_LENGTH, col);
		else
			snprintf(col, sizeof(col), "malformed");
		snprintf(v, sizeof(v), "%lld", (long long)store_int(s, 1));
		d = json_pack("{ssss}", "sha256", hex, "state", text(s, 2));
		if (d != NULL && strcmp(col, hex) != 0)
			json_object_set_new(d, "column", json_string(col));
		if (d == NULL || (c = client_of(clients, text(s, 0))) == NULL ||
		    ((docs = json_object_get(c, "documents")) == NULL &&
		     json_object_set_new(c, "documents", docs = json_object()) < 0) ||
		    json_object_set_new(docs, v, d) < 0)
			r = -ENOMEM;
	}
	if (r == 0 && rc != 0)
		r = -EIO;
	store_done(st, s);
	return r;
}

/* A published key's JWK must be the key its kid names (RFC 7638): what the
 * JWKS serves is this column. */
static int jwk_is_kid(const char *jwk, const char *kid)
{
	char tp[CIMD_KID_LEN + 1];
	json_t *j = jwk != NULL ? json_loads(jwk, 0, NULL) : NULL;
	int ok = j != NULL && jwk_thumbprint(j, tp) == 0 && strcmp(tp, kid) == 0;

	json_decref(j);
	return ok;
}

static int read_keys(struct store *st, const json_t *clients, json_t *keys)
{
	struct store_rows *s = NULL;
	const char *state, *calg;
	json_t *k;
	int rc, r = 0;

	if (store_query(st, &s, "SELECT kid, client, alg, backend, state, jwk, node FROM keys",
			"") < 0)
		return -EIO;
	while (r == 0 && (rc = store_next(s)) > 0) {
		state = text(s, 4);
		calg =
		    json_string_value(json_object_get(json_object_get(clients, text(s, 1)), "alg"));
		k = json_pack("{ssssssss}", "client", text(s, 1), "backend", text(s, 3), "state",
			      state, "node", text(s, 6));
		/* Facts that hold of every key the daemon made: present only when
		 * they do not, so that the replay (which never sets them) differs. */
		if (k != NULL && calg != NULL && strcmp(calg, text(s, 2)) != 0)
			json_object_set_new(k, "alg", json_string(text(s, 2)));
		if (k != NULL &&
		    (strcmp(state, "next") == 0 || strcmp(state, "active") == 0 ||
		     strcmp(state, "retiring") == 0) &&
		    !jwk_is_kid(store_text(s, 5), text(s, 0)))
			json_object_set_new(k, "thumbprint", json_string("not its kid"));
		if (k == NULL || json_object_set_new(keys, text(s, 0), k) < 0)
			r = -ENOMEM;
	}
	if (r == 0 && rc != 0)
		r = -EIO;
	store_done(st, s);
	return r;
}

static int read_tables(struct store *st, json_t **ret)
{
	json_t *t = json_pack("{s{}s{}}", "clients", "keys");
	int r;

	if (t == NULL)
		return -ENOMEM;
	if ((r = read_clients(st, json_object_get(t, "clients"))) < 0 ||
	    (r = read_sets(st, json_object_get(t, "clients"))) < 0 ||
	    (r = read_documents(st, json_object_get(t, "clients"))) < 0 ||
	    (r = read_keys(st, json_object_get(t, "clients"), json_object_get(t, "keys"))) < 0) {
		json_decref(t);
		return r;
	}
	*ret = t;
	return 0;
}

/* ---- the comparison ---- */

/* Each difference: {"table", "row", "path", "value"}, a tables.accepted
 * record's fields as they are. */
static int collect(void *arg, const char *table, const char *words, const json_t *path,
		   const json_t *value)
{
	json_t *diffs = arg;

	/* The walk goes on changing path: a copy of it. */
	return json_array_append_new(diffs, json_pack("{sssssosO}", "table", table, "row", words,
						      "path", json_deep_copy(path), "value",
						      value ? value : json_null()));
}

/* The differences accepted, each a journal record, in one transaction. */
static int accept_all(struct svc *d, const json_t *diffs, char *err, size_t errlen)
{
	const json_t *x;
	size_t i;

	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	json_array_foreach(diffs, i, x)
	{
		if (journal_append(d->st, "tables.accepted", "cimdd", x, NULL) < 0) {
			store_rollback(d->st);
			return cimd_fail(err, errlen, -EIO,
					 "journaling the accepted tables failed (%s): nothing "
					 "was accepted",
					 json_string_value(json_object_get(x, "row")));
		}
		log_warn("--accept-tables: %s: accepted, journaled as tables.accepted",
			 json_string_value(json_object_get(x, "row")));
	}
	if (store_commit(d->st) < 0) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "database error: nothing was accepted");
	}
	return 0;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

int tables_check(struct svc *d, int accept, char *err, size_t errlen)
{
	struct replay *rp = NULL;
	json_t *tables = NULL, *diffs = json_array();
	struct timespec t0;
	size_t i, records = 0;
	long n;
	int r;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (diffs == NULL || replay_new(&rp) < 0) {
		r = cimd_fail(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	/* One snapshot: the journal and the tables as of one commit. */
	if (store_read_begin(d->st) < 0) {
		r = cimd_fail(err, errlen, -EIO, "database error");
		goto out;
	}
	r = replay_journal(d->st, rp, &records);
	if (r == 0)
		r = read_tables(d->st, &tables);
	store_read_end(d->st);
	if (r < 0) {
		r = cimd_fail(err, errlen, r, "reading the journal and the tables: %s",
			      cimd_strerror(r));
		goto out;
	}
	if ((n = replay_diff(rp, tables, collect, diffs)) < 0) {
		r = cimd_fail(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	log_info("tables: %zu clients and %zu keys checked against %zu journal records in %.0f ms",
		 json_object_size(json_object_get(tables, "clients")),
		 json_object_size(json_object_get(tables, "keys")), records, ms_since(&t0));
	if (n == 0) {
		r = 0;
		goto out;
	}
	if (accept) {
		r = accept_all(d, diffs, err, errlen);
		goto out;
	}
	for (i = 0; i < (size_t)n && i < TABLES_LOGGED; i++)
		log_err("tables: %s",
			json_string_value(json_object_get(json_array_get(diffs, i), "row")));
	if (n > TABLES_LOGGED)
		log_err("tables: and %ld more differences", n - TABLES_LOGGED);
	r = cimd_fail(err, errlen, -CIMD_EVERIFY,
		      "%s%s: the state tables are not what the journal's records made them "
		      "(edited behind cimdd's back?); refusing to run on them, unless started "
		      "with --accept-tables, which journals them (docs/audit.md, \"The tables "
		      "and the journal\")",
		      json_string_value(json_object_get(json_array_get(diffs, 0), "row")),
		      n > 1 ? ", and more (logged above)" : "");
out:
	json_decref(tables);
	json_decref(diffs);
	replay_free(&rp);
	return r;
}
