/*
 * store.c — the state database and its append-only, hash-chained journal,
 * over an engine (store_drv.h): SQLite (store_sqlite.c, the default: one file
 * in the state directory) or PostgreSQL (store_pg.c).
 *
 * A commit is durable when store_commit() returns, on either engine.  The
 * schema has a version; migrations run forward only, each in its own write
 * transaction; a database written by a newer cimdd is refused rather than
 * guessed at.  Key material never enters it: keys are custody references
 * (firmware/fw.h).  What is here is written once for both engines: the
 * journal's records, their hash chain and Merkle tree head, the migrations'
 * order, the typed statements and rows the rest of the daemon uses.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "service.h"
#include "store_drv.h"
#include "store_sqlite.h"

struct store {
	const struct store_drv *drv;
	struct store_conn *c;
	int version;
	int tx; /* 0 none, 1 a read transaction, 2 a write transaction */
	/* The Merkle tree head of the journal (RFC 9162 §2.1.1; docs/audit.md),
	 * cached while this handle is the one appending: tree_valid says the
	 * cache equals what the database holds plus this transaction's appends;
	 * tree_dirty that those appends are not yet written to journal_tree
	 * (they are, once, at store_commit). */
	struct merkle_frontier tree;
	int tree_valid, tree_dirty;
	/* The journal's head as this write transaction left it: inside one
	 * write transaction no other handle appends (the writer's lock), so
	 * the second append of a group commit needs no query for it.  Read
	 * again at each transaction's first append. */
	int64_t head_seq;
	char head_hash[65];
	int head_valid;
};

static const char zero_hash[65] =
    "0000000000000000000000000000000000000000000000000000000000000000";

static int sql_fail(struct store *st, char *errbuf, size_t errlen, const char *what)
{
	if (errbuf != NULL)
		snprintf(errbuf, errlen, "%s: %s", what, st->drv->errmsg(st->c));
	return -EIO;
}

/* Each migration in its own write transaction, the version read inside it:
 * two nodes that start together on one new database migrate it once. */
static int migrate(struct store *st, char *errbuf, size_t errlen)
{
	const struct store_drv *drv = st->drv;
	int v, r;

	for (;;) {
		if (drv->begin(st->c, 1) < 0)
			return sql_fail(st, errbuf, errlen, "migrating the schema");
		if (drv->version(st->c, &v) < 0) {
			r = sql_fail(st, errbuf, errlen, "reading the schema version");
			drv->rollback(st->c);
			return r;
		}
		if (v > drv->n_migrations) {
			drv->rollback(st->c);
			if (errbuf != NULL)
				snprintf(errbuf, errlen,
					 "database schema version %d is newer than this cimdd's "
					 "(%d): refusing to touch it",
					 v, drv->n_migrations);
			return -EPROTO;
		}
		if (v == drv->n_migrations) {
			drv->rollback(st->c);
			break;
		}
		if (drv->exec(st->c, drv->migrations[v]) < 0 ||
		    drv->set_version(st->c, v + 1) < 0) {
			r = sql_fail(st, errbuf, errlen, "migrating the schema");
			drv->rollback(st->c);
			return r;
		}
		if (drv->commit(st->c) < 0)
			return sql_fail(st, errbuf, errlen, "committing the migration");
	}
	st->version = v;
	return 0;
}

/* ---- the journal's Merkle tree (RFC 9162 §2.1; docs/audit.md) ---- */

/* The frontier as stored: the subtree roots for the set bits of size, lowest
 * first, 32 bytes each. */
static int tree_read(struct store *st, int *ret_found, struct merkle_frontier *ret)
{
	struct store_rows *s = NULL;
	const uint8_t *p;
	int64_t size;
	unsigned i;
	int rc, r = -EIO;

	if (store_query(st, &s, "SELECT size, nodes FROM journal_tree WHERE id = 1", "") < 0)
		return -EIO;
	if ((rc = store_next(s)) == 0) {
		merkle_frontier_init(ret);
		*ret_found = 0;
		r = 0;
	} else if (rc > 0) {
		size = store_int(s, 0);
		p = store_blob(s, 1);
		if (size < 0 || store_len(s, 1) !=
				    32 * (size_t)__builtin_popcountll((unsigned long long)size)) {
			r = -CIMD_EVERIFY;
			goto out;
		}
		merkle_frontier_init(ret);
		ret->size = (uint64_t)size;
		for (i = 0; i < 64; i++)
			if (ret->size & (1ULL << i)) {
				memcpy(ret->nodes[i], p, 32);
				p += 32;
			}
		*ret_found = 1;
		r = 0;
	}
out:
	store_done(st, s);
	return r;
}

static int tree_write(struct store *st, const struct merkle_frontier *f)
{
	uint8_t nodes[64 * 32], *p = nodes;
	unsigned i;

	for (i = 0; i < 64; i++)
		if (f->size & (1ULL << i)) {
			memcpy(p, f->nodes[i], 32);
			p += 32;
		}
	return store_exec(
		   st,
		   "INSERT INTO journal_tree (id, size, nodes) VALUES (1, ?, ?) ON CONFLICT (id) "
		   "DO UPDATE SET size = excluded.size, nodes = excluded.nodes",
		   "ib", (int64_t)f->size, nodes, (size_t)(p - nodes)) == 1
		   ? 0
		   : -EIO;
}

/* RFC 9162 §2.1.1: the leaf hash of a record's bytes. */
static void leaf_of(const void *bytes, size_t n, uint8_t ret[32])
{
	merkle_leaf_hash(bytes, n, ret);
}

/*
 * At open: a database from before the tree (schema 5) gets its leaf hashes
 * and frontier computed once.  A stored frontier that does not match the
 * records means the database was changed outside cimdd: refused, since
 * appending to it would sign over the change.
 */
static int tree_prepare(struct store *st, char *errbuf, size_t errlen)
{
	struct merkle_frontier f;
	struct store_rows *s = NULL;
	uint8_t leaf[32];
	int64_t head = 0;
	int found, rc, r;

	if (store_begin(st) < 0)
		return sql_fail(st, errbuf, errlen, "opening the journal");
	if ((r = tree_read(st, &found, &f)) < 0)
		goto fail;
	if (found) {
		r = journal_head(st, &head, (char[65]){0});
		if (r == 0 && (uint64_t)head != f.size) {
			if (errbuf != NULL)
				snprintf(
				    errbuf, errlen,
				    "the journal's tree head covers %" PRIu64
				    " records but the journal holds %" PRId64
				    ": the database was changed outside cimdd (restore it from "
				    "a backup; docs/audit.md)",
				    f.size, head);
			r = -CIMD_EVERIFY;
		}
		goto done;
	}
	if (store_query(st, &s, "SELECT seq, record, leaf FROM journal ORDER BY seq", "") < 0) {
		r = -EIO;
		goto fail;
	}
	merkle_frontier_init(&f);
	while ((rc = store_next(s)) > 0) {
		leaf_of(store_blob(s, 1), store_len(s, 1), leaf);
		merkle_frontier_append(&f, leaf);
		if (store_null(s, 2) &&
		    store_exec(st, "UPDATE journal SET leaf = ? WHERE seq = ?", "bi", leaf,
			       sizeof(leaf), store_int(s, 0)) != 1) {
			r = -EIO;
			goto fail;
		}
	}
	if (rc != 0 || (r = tree_write(st, &f)) < 0) {
		r = -EIO;
		goto fail;
	}
	r = 0;
done:
	store_done(st, s);
	if (r < 0) {
		store_rollback(st);
		return r;
	}
	if (store_commit(st) < 0)
		return sql_fail(st, errbuf, errlen, "committing the journal's tree");
	return 0;
fail:
	store_done(st, s);
	store_rollback(st);
	return errbuf != NULL && r == -EIO
		   ? sql_fail(st, errbuf, errlen, "building the journal's tree")
		   : r;
}

int store_open(const char *path, struct store **ret_st, char *errbuf, size_t errlen)
{
	return store_open_engine("sqlite", path, ret_st, errbuf, errlen);
}

/* The connection string in a conninfo_file (config.c checked its owner and
 * mode), without the line's end; malloc'd. */
static char *conninfo_read(const char *path, char *errbuf, size_t errlen)
{
	char buf[4096];
	size_t n;
	FILE *f;

	if ((f = fopen(path, "re")) == NULL) {
		snprintf(errbuf, errlen, "conninfo_file %s: %s", path, strerror(errno));
		return NULL;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	if (n == sizeof(buf) - 1) {
		snprintf(errbuf, errlen, "conninfo_file %s: longer than %zu bytes", path,
			 sizeof(buf) - 2);
		return NULL;
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	buf[n] = '\0';
	return strdup(buf);
}

int store_open_config(const struct cimd_config *cfg, struct store **ret_st, char *errbuf,
		      size_t errlen)
{
	char path[PATH_MAX], *ci;
	int r;

	if (cfg->store != NULL && strcmp(cfg->store, "postgresql") == 0) {
		if (cfg->conninfo != NULL) {
			r = store_open_engine("postgresql", cfg->conninfo, ret_st, errbuf, errlen);
		} else {
			if ((ci = conninfo_read(cfg->conninfo_file, errbuf, errlen)) == NULL)
				return -EIO;
			r = store_open_engine("postgresql", ci, ret_st, errbuf, errlen);
			OPENSSL_cleanse(ci, strlen(ci));
			free(ci);
		}
		/* Which node's sessions these are, for the database's operator
		 * (pg_stat_activity.application_name "cimdd:NODE"). */
		if (r == 0)
			(*ret_st)->drv->label((*ret_st)->c, cfg->node);
		return r;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/cimdd.db", cfg->state_dir) >= sizeof(path)) {
		snprintf(errbuf, errlen, "state_dir: too long");
		return -ENAMETOOLONG;
	}
	return store_open_engine("sqlite", path, ret_st, errbuf, errlen);
}

const char *store_engine(const struct store *st)
{
	return st->drv->name;
}

int store_open_engine(const char *engine, const char *target, struct store **ret_st, char *errbuf,
		      size_t errlen)
{
	struct store *st;
	int r;

	if ((st = calloc(1, sizeof(*st))) == NULL)
		return -ENOMEM;
	st->drv = strcmp(engine, "postgresql") == 0 ? &store_postgresql : &store_sqlite;
	if ((r = st->drv->open(target, &st->c, errbuf, errlen)) < 0 ||
	    (r = migrate(st, errbuf, errlen)) < 0 || (r = tree_prepare(st, errbuf, errlen)) < 0)
		goto out;
	*ret_st = st;
	st = NULL;
	r = 0;
out:
	store_free(&st);
	return r;
}

void store_free(struct store **pst)
{
	struct store *st = *pst;

	if (st == NULL)
		return;
	if (st->c != NULL)
		st->drv->close(st->c);
	free(st);
	*pst = NULL;
}

int64_t store_changes(struct store *st)
{
	return st->drv->total_changes(st->c);
}

int store_schema_version(struct store *st)
{
	return st->version;
}

struct sqlite3 *store_db(struct store *st)
{
	return st->drv == &store_sqlite ? store_sqlite_db(st->c) : NULL;
}

int store_query(struct store *st, struct store_rows **ret, const char *sql, const char *types, ...)
{
	va_list ap;
	int r;

	va_start(ap, types);
	r = st->drv->query(st->c, ret, sql, types, ap);
	va_end(ap);
	return r;
}

int store_next(struct store_rows *q)
{
	return q->drv->next(q);
}

const char *store_text(struct store_rows *q, int col)
{
	return q->drv->text(q, col);
}

int64_t store_int(struct store_rows *q, int col)
{
	return q->drv->integer(q, col);
}

const void *store_blob(struct store_rows *q, int col)
{
	return q->drv->blob(q, col);
}

size_t store_len(struct store_rows *q, int col)
{
	return q->drv->len(q, col);
}

int store_null(struct store_rows *q, int col)
{
	return q->drv->null(q, col);
}

int store_columns(struct store_rows *q)
{
	return q->drv->columns(q);
}

void store_done(struct store *st, struct store_rows *q)
{
	if (q != NULL)
		st->drv->done(st->c, q);
}

int store_exec(struct store *st, const char *sql, const char *types, ...)
{
	struct store_rows *q = NULL;
	va_list ap;
	int64_t n;
	int r;

	va_start(ap, types);
	r = st->drv->query(st->c, &q, sql, types, ap);
	va_end(ap);
	if (r < 0)
		return r;
	while ((r = store_next(q)) > 0)
		;
	n = r == 0 ? st->drv->changed(st->c, q) : -EIO;
	store_done(st, q);
	return n < 0 ? (int)n : n > INT_MAX ? INT_MAX : (int)n;
}

int store_begin(struct store *st)
{
	if (st->drv->begin(st->c, 1) < 0)
		return -EIO;
	st->tx = 2;
	st->head_valid = 0;
	return 0;
}

int store_commit(struct store *st)
{
	/* The tree head goes with the records it covers, in their transaction. */
	if (st->tree_dirty && tree_write(st, &st->tree) < 0) {
		store_rollback(st);
		return -EIO;
	}
	st->tree_dirty = 0;
	if (st->drv->commit(st->c) < 0) {
		st->drv->rollback(st->c);
		st->tx = 0;
		st->tree_valid = 0;
		return -EIO;
	}
	st->tx = 0;
	return 0;
}

int store_read_begin(struct store *st)
{
	if (st->drv->begin(st->c, 0) < 0)
		return -EIO;
	st->tx = 1;
	return 0;
}

void store_read_end(struct store *st)
{
	st->drv->rollback(st->c); /* nothing was written: ends the snapshot */
	st->tx = 0;
}

void store_rollback(struct store *st)
{
	st->tree_valid = 0;
	st->tree_dirty = 0;
	st->drv->rollback(st->c);
	st->tx = 0;
}

int journal_head(struct store *st, int64_t *ret_seq, char ret_hash[65])
{
	struct store_rows *s = NULL;
	int rc, r = 0;

	if (store_query(st, &s, "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1", "") < 0)
		return -EIO;
	rc = store_next(s);
	if (rc > 0 && store_len(s, 1) == SHA256_DIGEST_LENGTH) {
		*ret_seq = store_int(s, 0);
		hex_encode(store_blob(s, 1), SHA256_DIGEST_LENGTH, ret_hash);
	} else if (rc == 0) {
		*ret_seq = 0;
		memcpy(ret_hash, zero_hash, 65);
	} else {
		r = -EIO;
	}
	store_done(st, s);
	return r;
}

static const char *const reserved[] = {"seq", "time", "prev", "kind", "actor"};

int journal_append(struct store *st, const char *kind, const char *actor, const json_t *fields,
		   int64_t *ret_seq)
{
	char prev[65], *bytes = NULL;
	uint8_t md[SHA256_DIGEST_LENGTH], leaf[32];
	const char *jti = NULL;
	json_t *rec = NULL;
	int64_t seq;
	time_t now = time(NULL);
	size_t i, n;
	int r;

	if (fields != NULL)
		for (i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
			if (json_object_get(fields, reserved[i]) != NULL)
				return -EINVAL;
	/* A record and the tree head that covers it are one transaction. */
	if (st->tx != 2)
		return -EINVAL;
	if (st->head_valid) {
		seq = st->head_seq;
		memcpy(prev, st->head_hash, sizeof(prev));
	} else if ((r = journal_head(st, &seq, prev)) < 0) {
		return r;
	}
	/* Another handle may have appended since this one last did. */
	if (!st->tree_valid || st->tree.size != (uint64_t)seq) {
		int found;

		if ((r = tree_read(st, &found, &st->tree)) < 0)
			return r;
		if (st->tree.size != (uint64_t)seq)
			return -CIMD_EVERIFY; /* changed outside cimdd: tree_prepare */
		st->tree_valid = 1;
	}
	seq++;
	/* The five fixed members first, in this order, then the fields. */
	rec = json_pack("{sIsIssssss}", "seq", (json_int_t)seq, "time", (json_int_t)now, "prev",
			prev, "kind", kind, "actor", actor);
	if (rec == NULL || (fields != NULL && json_object_update(rec, (json_t *)fields) < 0)) {
		r = -ENOMEM;
		goto out;
	}
	if ((bytes = json_dumps(rec, JSON_COMPACT)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((n = strlen(bytes)) > CIMD_JOURNAL_RECORD_MAX) {
		r = -E2BIG;
		goto out;
	}
	SHA256((const uint8_t *)bytes, n, md);
	leaf_of(bytes, n, leaf);
	if (strcmp(kind, "assertion.issue") == 0 && fields != NULL)
		jti = json_string_value(json_object_get(fields, "jti"));
	if (store_exec(st,
		       "INSERT INTO journal (seq, time, kind, record, hash, leaf, jti) "
		       "VALUES (?, ?, ?, ?, ?, ?, ?)",
		       "iisbbbs", seq, (int64_t)now, kind, bytes, n, md, sizeof(md), leaf,
		       sizeof(leaf), jti) != 1) {
		r = -EIO;
		goto out;
	}
	merkle_frontier_append(&st->tree, leaf);
	st->tree_dirty = 1;
	st->head_seq = seq;
	hex_encode(md, sizeof(md), st->head_hash);
	st->head_valid = 1;
	if (ret_seq != NULL)
		*ret_seq = seq;
	r = 0;
out:
	if (r < 0 && r != -EINVAL && r != -E2BIG)
		st->tree_valid = st->head_valid = 0;
	free(bytes);
	json_decref(rec);
	return r;
}

/* Records read per statement by journal_verify: an engine that hands a
 * statement's rows over at once (PostgreSQL) holds no more than this. */
#define VERIFY_PAGE 10000

/* One record against the chain so far: numbered in order, naming the previous
 * record's hash, and hashing to what was stored beside it. */
static int verify_one(struct store_rows *s, int64_t count, char prev[65],
		      struct merkle_frontier *tree)
{
	uint8_t md[SHA256_DIGEST_LENGTH], leaf[32];
	const void *bytes = store_blob(s, 1);
	size_t n = store_len(s, 1);
	int64_t seq = store_int(s, 0);
	json_t *rec;
	const char *p;
	int ok;

	SHA256(bytes, n, md);
	leaf_of(bytes, n, leaf);
	rec = json_loadb(bytes, n, JSON_REJECT_DUPLICATES, NULL);
	p = json_string_value(json_object_get(rec, "prev"));
	ok = seq == count && rec != NULL &&
	     json_integer_value(json_object_get(rec, "seq")) == seq && p != NULL &&
	     strcmp(p, prev) == 0 && store_len(s, 2) == sizeof(md) &&
	     CRYPTO_memcmp(store_blob(s, 2), md, sizeof(md)) == 0 && store_len(s, 3) == 32 &&
	     CRYPTO_memcmp(store_blob(s, 3), leaf, 32) == 0;
	json_decref(rec);
	if (!ok)
		return -CIMD_EVERIFY;
	hex_encode(md, sizeof(md), prev);
	merkle_frontier_append(tree, leaf);
	return 0;
}

int journal_verify(struct store *st, int64_t *ret_count, int64_t *ret_bad_seq)
{
	struct merkle_frontier tree, stored;
	struct store_rows *s = NULL;
	char prev[65];
	int64_t count = 0, bad = 0, rows;
	int rc = 0, r = 0;

	memcpy(prev, zero_hash, sizeof(prev));
	merkle_frontier_init(&tree);
	/* One read transaction: the records and the tree head from one snapshot,
	 * while the signer's handle keeps appending. */
	if (store_read_begin(st) < 0)
		return -EIO;
	do {
		if (store_query(
			st, &s,
			"SELECT seq, record, hash, leaf FROM journal WHERE seq > ? ORDER BY "
			"seq LIMIT ?",
			"ii", count, (int64_t)VERIFY_PAGE) < 0) {
			r = -EIO;
			break;
		}
		for (rows = 0; r == 0 && (rc = store_next(s)) > 0; rows++)
			if ((r = verify_one(s, count + 1, prev, &tree)) < 0)
				bad = store_int(s, 0);
			else
				count++;
		if (r == 0 && rc != 0)
			r = -EIO;
		store_done(st, s);
	} while (r == 0 && rows == VERIFY_PAGE);
	/* The stored tree head must be the head of exactly these records. */
	if (r == 0) {
		uint8_t a[32], b[32];
		int found;

		if ((r = tree_read(st, &found, &stored)) == 0) {
			merkle_frontier_root(&tree, a);
			merkle_frontier_root(&stored, b);
			if (!found || stored.size != tree.size || memcmp(a, b, 32) != 0) {
				bad = count + 1; /* the tree head, after the last record */
				r = -CIMD_EVERIFY;
			}
		}
	}
	store_read_end(st);
	if (r == -CIMD_EVERIFY && ret_bad_seq != NULL)
		*ret_bad_seq = bad;
	if (r == 0 && ret_count != NULL)
		*ret_count = count;
	return r;
}

int journal_list(struct store *st, int64_t since, size_t max, size_t max_bytes, int raw,
		 json_t **ret_records)
{
	struct store_rows *s = NULL;
	size_t bytes = 0;
	json_t *arr, *rec;
	int rc = 0, r = 0;

	if ((arr = json_array()) == NULL)
		return -ENOMEM;
	if (store_query(st, &s, "SELECT record FROM journal WHERE seq >= ? ORDER BY seq LIMIT ?",
			"ii", since, (int64_t)max) < 0) {
		json_decref(arr);
		return -EIO;
	}
	while (bytes < max_bytes) {
		if ((rc = store_next(s)) <= 0)
			break;
		bytes += store_len(s, 0);
		/* raw: the exact bytes the chain and the tree hash, as a string */
		rec = raw ? json_stringn(store_blob(s, 0), store_len(s, 0))
			  : json_loadb(store_blob(s, 0), store_len(s, 0), 0, NULL);
		if (rec == NULL || json_array_append_new(arr, rec) < 0) {
			r = -EIO;
			break;
		}
	}
	if (r == 0 && rc < 0) /* a row left: stopped at the byte cap */
		r = -EIO;
	store_done(st, s);
	if (r < 0) {
		json_decref(arr);
		return r;
	}
	*ret_records = arr;
	return 0;
}

int journal_tree_head(struct store *st, uint64_t *ret_size, uint8_t ret_root[32])
{
	struct merkle_frontier f;
	int found, r;

	if ((r = tree_read(st, &found, &f)) < 0)
		return r;
	*ret_size = f.size;
	merkle_frontier_root(&f, ret_root);
	return 0;
}

int journal_leaves(struct store *st, uint64_t first, uint64_t count, uint8_t (**ret_leaves)[32])
{
	uint8_t(*leaves)[32];
	struct store_rows *s = NULL;
	uint64_t i = 0, size = count;
	int rc, r = -EIO;

	if (first == 0 || count == 0 || count > MERKLE_LEAVES_MAX || first > MERKLE_LEAVES_MAX)
		return -EINVAL;
	if ((leaves = malloc(count * 32)) == NULL)
		return -ENOMEM;
	if (store_query(st, &s,
			"SELECT seq, leaf FROM journal WHERE seq >= ? AND seq < ? ORDER BY seq",
			"ii", (int64_t)first, (int64_t)(first + count)) < 0)
		goto out;
	while ((rc = store_next(s)) > 0) {
		if ((uint64_t)store_int(s, 0) != first + i || store_len(s, 1) != 32) {
			r = -CIMD_EVERIFY;
			goto out;
		}
		memcpy(leaves[i++], store_blob(s, 1), 32);
	}
	if (rc != 0)
		goto out;
	if (i != size) {
		r = -CIMD_EVERIFY;
		goto out;
	}
	*ret_leaves = leaves;
	leaves = NULL;
	r = 0;
out:
	store_done(st, s);
	free(leaves);
	return r;
}

int journal_record(struct store *st, int64_t seq, char **ret_bytes, size_t *ret_len)
{
	struct store_rows *s = NULL;
	char *b;
	size_t n;
	int rc, r;

	if (store_query(st, &s, "SELECT record FROM journal WHERE seq = ?", "i", seq) < 0)
		return -EIO;
	if ((rc = store_next(s)) == 0) {
		r = -ENOENT;
	} else if (rc < 0) {
		r = -EIO;
	} else {
		n = store_len(s, 0);
		if ((b = malloc(n + 1)) == NULL) {
			r = -ENOMEM;
		} else {
			memcpy(b, store_blob(s, 0), n);
			b[n] = '\0';
			*ret_bytes = b;
			*ret_len = n;
			r = 0;
		}
	}
	store_done(st, s);
	return r;
}

void store_interrupt(struct store *st)
{
	st->drv->interrupt(st->c);
}

void store_busy_timeout(struct store *st, int ms)
{
	st->drv->busy_timeout(st->c, ms);
}

int journal_table_records(struct store *st, struct store_rows **ret)
{
	return store_query(st, ret, st->drv->table_records_sql, "");
}

int store_read_only(struct store *st)
{
	return st->drv->read_only(st->c);
}

int store_lost(struct store *st)
{
	return st->drv->lost(st->c);
}

int store_leader(struct store *st)
{
	return st->tx == 0 && st->drv->leader(st->c);
}

int store_listen(struct store *st)
{
	return st->tx == 0 ? st->drv->listen(st->c) : -1;
}

int store_notified(struct store *st)
{
	return st->drv->notified(st->c);
}

int store_claim(struct store *st, const char *node, char *errbuf, size_t errlen)
{
	int r = st->drv->claim(st->c, node);

	if (r < 0)
		snprintf(errbuf, errlen, "%s", st->drv->errmsg(st->c));
	return r;
}
