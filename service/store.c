/*
 * store.c — the state database (SQLite) and its append-only, hash-chained
 * journal.
 *
 * One database in the state directory, WAL with synchronous=FULL: a commit is
 * on disk when store_commit() returns.  The schema has a version; migrations run
 * forward only, each in its own transaction; a database written by a newer
 * cimdd is refused rather than guessed at.  Key material never enters it: keys
 * are custody references (firmware/fw.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sqlite3.h>

#include "service.h"
#include "store_sqlite.h"

#define STORE_STMTS 64

/* A statement of store_query: in the cache (cached), or prepared for one use
 * because every cached one was busy (then freed by store_done). */
struct store_rows {
	sqlite3_stmt *s;
	int cached;
};

struct store {
	sqlite3 *db;
	int version;
	/* The journal's two statements, prepared once: appending is the hot
	 * path of the signing socket. */
	sqlite3_stmt *head, *insert;
	/* The Merkle tree head of the journal (RFC 9162 §2.1.1; docs/audit.md),
	 * cached while this handle is the one appending: tree_valid says the
	 * cache equals what the database holds plus this transaction's appends;
	 * tree_dirty that those appends are not yet written to journal_tree
	 * (they are, once, at store_commit). */
	struct merkle_frontier tree;
	int tree_valid, tree_dirty;
	/* The statements of store_query and store_exec, prepared once per SQL
	 * text and reused: SQLite spends longer parsing most of them than
	 * running them (issue 13, docs/scaling.md).  A statement is busy from
	 * store_query until store_done; the least recently used one that is not
	 * busy makes room for a new text. */
	struct stmt_slot {
		struct store_rows q;
		uint32_t hash; /* FNV-1a of the SQL text */
		int busy;
		uint64_t used;
	} stmts[STORE_STMTS];
	uint64_t stmt_clock;
};

/* Migration N takes the schema from version N - 1 to N. */
static const char *const migrations[] = {
    /* 1: the journal, clients, documents and keys. */
    "CREATE TABLE journal ("
    "  seq    INTEGER PRIMARY KEY,"
    "  time   INTEGER NOT NULL,"
    "  kind   TEXT NOT NULL,"
    "  record BLOB NOT NULL," /* the exact bytes that were hashed */
    "  hash   BLOB NOT NULL"  /* SHA-256(record) */
    ");"
    "CREATE TABLE clients ("
    "  name     TEXT PRIMARY KEY,"
    "  owner    TEXT NOT NULL,"
    "  backend  TEXT NOT NULL,"
    "  alg      TEXT NOT NULL,"
    "  created  INTEGER NOT NULL,"
    "  degraded INTEGER NOT NULL DEFAULT 0,"
    "  rotate_every INTEGER"
    ");"
    "CREATE TABLE client_callers ("
    "  client TEXT NOT NULL REFERENCES clients(name),"
    "  kind   TEXT NOT NULL CHECK (kind IN ('uid', 'gid')),"
    "  id     INTEGER NOT NULL,"
    "  PRIMARY KEY (client, kind, id)"
    ");"
    "CREATE TABLE client_audiences ("
    "  client TEXT NOT NULL REFERENCES clients(name),"
    "  aud    TEXT NOT NULL,"
    "  PRIMARY KEY (client, aud)"
    ");"
    "CREATE TABLE documents ("
    "  client    TEXT NOT NULL REFERENCES clients(name),"
    "  version   INTEGER NOT NULL,"
    "  state     TEXT NOT NULL CHECK (state IN ('submitted', 'approved', 'superseded')),"
    "  bytes     BLOB NOT NULL,"
    "  sha256    BLOB NOT NULL,"
    "  submitter TEXT NOT NULL,"
    "  submitted INTEGER NOT NULL,"
    "  approver  TEXT,"
    "  approved  INTEGER,"
    "  PRIMARY KEY (client, version)"
    ");"
    "CREATE TABLE keys ("
    "  kid       TEXT PRIMARY KEY,"
    "  client    TEXT NOT NULL REFERENCES clients(name),"
    "  alg       TEXT NOT NULL,"
    "  backend   TEXT NOT NULL,"
    "  ref       BLOB NOT NULL,"
    "  state     TEXT NOT NULL CHECK (state IN"
    "              ('next', 'active', 'retiring', 'retired', 'destroyed', 'revoked')),"
    "  created   INTEGER NOT NULL,"
    "  activated INTEGER,"
    "  retiring  INTEGER,"
    "  retired   INTEGER,"
    "  destroyed INTEGER,"
    "  revoked   INTEGER,"
    "  revoke_reason TEXT"
    ");"
    "CREATE UNIQUE INDEX one_active_key ON keys(client) WHERE state = 'active';",
    /* 2: intents of key generation (keys.c: keys_generate). */
    "CREATE TABLE key_intents ("
    "  tag     TEXT PRIMARY KEY,"
    "  backend TEXT NOT NULL,"
    "  client  TEXT NOT NULL,"
    "  created INTEGER NOT NULL"
    ");",
    /* 3: the public JWK of each key, for publication without touching hardware. */
    "ALTER TABLE keys ADD COLUMN jwk TEXT;",
    /* 4: a client's signing policy: assertion lifetime and rate (NULL: the
     * configuration's default). */
    "ALTER TABLE clients ADD COLUMN assertion_ttl INTEGER;"
    "ALTER TABLE clients ADD COLUMN rate_limit INTEGER;",
    /* 5: attestations (attest.c): the appliance's attestation keys, every
     * attestation issued, and a signed record of every revocation. */
    "CREATE TABLE attest_keys ("
    "  kid     TEXT PRIMARY KEY,"
    "  backend TEXT NOT NULL,"
    "  ref     BLOB NOT NULL,"
    "  jwk     TEXT NOT NULL,"
    "  tpm_public BLOB,"
    "  state   TEXT NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),"
    "  created INTEGER NOT NULL,"
    "  retired INTEGER"
    ");"
    "CREATE UNIQUE INDEX one_active_attest_key ON attest_keys(backend) WHERE state = 'active';"
    "CREATE TABLE attestations ("
    "  id       INTEGER PRIMARY KEY,"
    "  client   TEXT NOT NULL REFERENCES clients(name),"
    "  inputs   BLOB NOT NULL," /* SHA-256 of what it states, evidence and times aside */
    "  cimd_sha256 TEXT NOT NULL,"
    "  jwks_sha256 TEXT NOT NULL,"
    "  attest_kid  TEXT NOT NULL,"
    "  envelope TEXT NOT NULL,"
    "  seq      INTEGER NOT NULL," /* its attest.issue journal record */
    "  created  INTEGER NOT NULL"
    ");"
    "CREATE INDEX attestations_client ON attestations(client, id);"
    "CREATE TABLE revocations ("
    "  id       INTEGER PRIMARY KEY,"
    "  kid      TEXT NOT NULL REFERENCES keys(kid),"
    "  client   TEXT NOT NULL,"
    "  attest_kid TEXT NOT NULL,"
    "  envelope TEXT NOT NULL,"
    "  created  INTEGER NOT NULL"
    ");"
    "CREATE INDEX revocations_kid ON revocations(kid, id);"
    "ALTER TABLE keys ADD COLUMN revoked_by TEXT;",
    /* 6: the journal as a Merkle tree (docs/audit.md): each record's leaf
     * hash, the tree's frontier, and the signed checkpoints. */
    "ALTER TABLE journal ADD COLUMN leaf BLOB;" /* SHA-256(0x00 || record) */
    "CREATE TABLE journal_tree ("
    "  id    INTEGER PRIMARY KEY CHECK (id = 1),"
    "  size  INTEGER NOT NULL,"
    "  nodes BLOB NOT NULL" /* the frontier's subtree roots, lowest size bit first */
    ");"
    "CREATE TABLE checkpoints ("
    "  id      INTEGER PRIMARY KEY,"
    "  size    INTEGER NOT NULL,"
    "  root    BLOB NOT NULL,"
    "  counter INTEGER," /* the TPM NV counter it carries, if any */
    "  note    TEXT NOT NULL,"
    "  seq     INTEGER NOT NULL," /* its checkpoint journal record */
    "  created INTEGER NOT NULL"
    ");"
    /* An issued assertion found by its jti, for receipts. */
    "ALTER TABLE journal ADD COLUMN jti TEXT;"
    "UPDATE journal SET jti = json_extract(CAST(record AS TEXT), '$.jti') "
    "  WHERE kind = 'assertion.issue';"
    "CREATE UNIQUE INDEX journal_jti ON journal(jti) WHERE jti IS NOT NULL;"
    /* Every distinct CIMD document and JWKS handed to the publisher, for the
     * audit bundle: its publish journal record orders it among key changes. */
    "CREATE TABLE publications ("
    "  id      INTEGER PRIMARY KEY,"
    "  path    TEXT NOT NULL,"
    "  client  TEXT NOT NULL,"
    "  sha256  TEXT NOT NULL,"
    "  bytes   BLOB NOT NULL,"
    "  seq     INTEGER NOT NULL,"
    "  created INTEGER NOT NULL"
    ");"
    "CREATE INDEX publications_path ON publications(path, id);"
    /* A revocation record's attest.revocation journal record (0: before 6). */
    "ALTER TABLE revocations ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;",
    /* 7: scale (docs/scaling.md).  Every per-client lookup by an index, so
     * that no operation costs in proportion to all clients. */
    "CREATE INDEX keys_client ON keys(client, state);"
    "CREATE INDEX keys_ref ON keys(backend, ref);"
    "CREATE INDEX keys_state ON keys(state);"
    /* The scheduler's looks (keys.c, keys_tick): what falls due first. */
    "CREATE INDEX keys_retiring ON keys(retiring) WHERE state = 'retiring';"
    "CREATE INDEX keys_retired ON keys(retired) WHERE state = 'retired';"
    "CREATE INDEX keys_revoked ON keys(revoked) WHERE state = 'revoked' AND destroyed IS NULL;"
    "CREATE INDEX attest_keys_ref ON attest_keys(backend, ref);"
    "CREATE INDEX revocations_client ON revocations(client, id);"
    "CREATE INDEX documents_approved ON documents(client) WHERE state = 'approved';"
    /* When a JWKS naming the key was first recorded as published (publish.c):
     * the signer signs only with published keys.  Keys a migrated database
     * already served count as published. */
    "ALTER TABLE keys ADD COLUMN published INTEGER;"
    "UPDATE keys SET published = created WHERE state IN ('next', 'active', 'retiring');"
    /* The change marker: a client whose published facts may have changed
     * (its document, keys, callers, audiences, policy, attestation or
     * revocation records), written by triggers in the same transaction as
     * the change, whoever makes it, and taken by the main loop, which issues
     * the client's attestation, publishes what changed and drops the
     * client's cached signing policy (cimdd.c).  The name '' stands for
     * what is not a client's: the attestation keys and the checkpoint. */
    "CREATE TABLE dirty (seq INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL UNIQUE);"
    "INSERT INTO dirty (client) SELECT name FROM clients;"
    "INSERT INTO dirty (client) VALUES ('');"
    "CREATE TRIGGER clients_dirty_i AFTER INSERT ON clients BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.name; INSERT INTO dirty (client) VALUES (NEW.name); "
    "END;"
    "CREATE TRIGGER clients_dirty_u AFTER UPDATE ON clients BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.name; INSERT INTO dirty (client) VALUES (NEW.name); "
    "END;"
    "CREATE TRIGGER callers_dirty_i AFTER INSERT ON client_callers BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    "CREATE TRIGGER callers_dirty_d AFTER DELETE ON client_callers BEGIN "
    "  DELETE FROM dirty WHERE client = OLD.client; INSERT INTO dirty (client) VALUES "
    "(OLD.client); END;"
    "CREATE TRIGGER audiences_dirty_i AFTER INSERT ON client_audiences BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    "CREATE TRIGGER audiences_dirty_d AFTER DELETE ON client_audiences BEGIN "
    "  DELETE FROM dirty WHERE client = OLD.client; INSERT INTO dirty (client) VALUES "
    "(OLD.client); END;"
    "CREATE TRIGGER documents_dirty_i AFTER INSERT ON documents BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    "CREATE TRIGGER documents_dirty_u AFTER UPDATE ON documents BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    "CREATE TRIGGER keys_dirty_i AFTER INSERT ON keys BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    /* Not on published or the lifecycle's times: they change nothing served. */
    "CREATE TRIGGER keys_dirty_u AFTER UPDATE OF state, jwk, client, alg ON keys BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    "CREATE TRIGGER attestations_dirty_i AFTER INSERT ON attestations BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    "CREATE TRIGGER revocations_dirty_i AFTER INSERT ON revocations BEGIN "
    "  DELETE FROM dirty WHERE client = NEW.client; INSERT INTO dirty (client) VALUES "
    "(NEW.client); END;"
    /* A new active attestation key: every client of its backend is attested
     * again (the one change that is about all of them). */
    "CREATE TRIGGER attest_keys_dirty_i AFTER INSERT ON attest_keys BEGIN "
    "  DELETE FROM dirty WHERE client = '' OR client IN "
    "    (SELECT name FROM clients WHERE backend = NEW.backend);"
    "  INSERT INTO dirty (client) VALUES ('');"
    "  INSERT INTO dirty (client) SELECT name FROM clients WHERE backend = NEW.backend; END;"
    "CREATE TRIGGER attest_keys_dirty_u AFTER UPDATE ON attest_keys BEGIN "
    "  DELETE FROM dirty WHERE client = ''; INSERT INTO dirty (client) VALUES (''); END;"
    "CREATE TRIGGER checkpoints_dirty_i AFTER INSERT ON checkpoints BEGIN "
    "  DELETE FROM dirty WHERE client = ''; INSERT INTO dirty (client) VALUES (''); END;",
    /* 8: changes to who may sign for a client and for which audience, under
     * the two-person rule (registry.c, docs/governance.md): proposed by one
     * operator, made when another approves.  fields are the operation's own
     * journal fields as its change.submit record names them.  A pending
     * change changes nothing served: no trigger marks it. */
    "CREATE TABLE changes ("
    "  id        INTEGER PRIMARY KEY,"
    "  client    TEXT NOT NULL REFERENCES clients(name),"
    "  op        TEXT NOT NULL,"
    "  fields    TEXT NOT NULL,"
    "  state     TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),"
    "  submitter TEXT NOT NULL,"
    "  submitted INTEGER NOT NULL,"
    "  decider   TEXT,"
    "  decided   INTEGER,"
    "  reason    TEXT"
    ");"
    "CREATE INDEX changes_pending ON changes(client, id) WHERE state = 'pending';",
    /* 9: the records that can change a table, for the start-up check against
     * the journal (tables.c): by the kind in the record's own bytes. */
    "CREATE INDEX journal_tables ON journal(seq) WHERE " JOURNAL_TABLES_WHERE ";",
};

#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static const char zero_hash[65] =
    "0000000000000000000000000000000000000000000000000000000000000000";

static int sql_fail(struct store *st, char *errbuf, size_t errlen, const char *what)
{
	if (errbuf != NULL)
		snprintf(errbuf, errlen, "%s: %s", what, sqlite3_errmsg(st->db));
	return -EIO;
}

static int exec(struct store *st, const char *sql)
{
	return sqlite3_exec(st->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

static int user_version(struct store *st, int *ret)
{
	sqlite3_stmt *s;
	int r = -EIO;

	if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
		return -EIO;
	if (sqlite3_step(s) == SQLITE_ROW) {
		*ret = sqlite3_column_int(s, 0);
		r = 0;
	}
	sqlite3_finalize(s);
	return r;
}

static int migrate(struct store *st, char *errbuf, size_t errlen)
{
	char sql[64];
	int v;

	if (user_version(st, &v) < 0)
		return sql_fail(st, errbuf, errlen, "reading the schema version");
	if (v > SCHEMA_VERSION) {
		if (errbuf != NULL)
			snprintf(errbuf, errlen,
				 "database schema version %d is newer than this cimdd's (%d): "
				 "refusing to touch it",
				 v, SCHEMA_VERSION);
		return -EPROTO;
	}
	for (; v < SCHEMA_VERSION; v++) {
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v + 1);
		if (exec(st, "BEGIN IMMEDIATE") < 0 || exec(st, migrations[v]) < 0 ||
		    exec(st, sql) < 0) {
			int r = sql_fail(st, errbuf, errlen, "migrating the schema");
			exec(st, "ROLLBACK");
			return r;
		}
		if (exec(st, "COMMIT") < 0)
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
	sqlite3_stmt *s;
	const uint8_t *p;
	int64_t size;
	unsigned i;
	int rc, r = -EIO;

	if (sqlite3_prepare_v2(st->db, "SELECT size, nodes FROM journal_tree WHERE id = 1", -1, &s,
			       NULL) != SQLITE_OK)
		return -EIO;
	if ((rc = sqlite3_step(s)) == SQLITE_DONE) {
		merkle_frontier_init(ret);
		*ret_found = 0;
		r = 0;
	} else if (rc == SQLITE_ROW) {
		size = sqlite3_column_int64(s, 0);
		p = sqlite3_column_blob(s, 1);
		if (size < 0 || sqlite3_column_bytes(s, 1) !=
				    32 * __builtin_popcountll((unsigned long long)size)) {
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
	sqlite3_finalize(s);
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
	sqlite3_stmt *s = NULL;
	uint8_t leaf[32];
	int64_t head = 0;
	int found, rc, r;

	if (exec(st, "BEGIN IMMEDIATE") < 0)
		return sql_fail(st, errbuf, errlen, "opening the journal");
	if ((r = tree_read(st, &found, &f)) < 0)
		goto fail;
	if (sqlite3_prepare_v2(st->db, "SELECT seq, record, leaf FROM journal ORDER BY seq", -1, &s,
			       NULL) != SQLITE_OK) {
		r = -EIO;
		goto fail;
	}
	if (found) {
		sqlite3_finalize(s);
		s = NULL;
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
	merkle_frontier_init(&f);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		leaf_of(sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1), leaf);
		merkle_frontier_append(&f, leaf);
		if (sqlite3_column_type(s, 2) == SQLITE_NULL &&
		    store_exec(st, "UPDATE journal SET leaf = ? WHERE seq = ?", "bi", leaf,
			       sizeof(leaf), sqlite3_column_int64(s, 0)) != 1) {
			r = -EIO;
			goto fail;
		}
	}
	if (rc != SQLITE_DONE || (r = tree_write(st, &f)) < 0) {
		r = -EIO;
		goto fail;
	}
	r = 0;
done:
	sqlite3_finalize(s);
	if (r < 0) {
		exec(st, "ROLLBACK");
		return r;
	}
	if (exec(st, "COMMIT") < 0)
		return sql_fail(st, errbuf, errlen, "committing the journal's tree");
	return 0;
fail:
	sqlite3_finalize(s);
	exec(st, "ROLLBACK");
	return errbuf != NULL && r == -EIO
		   ? sql_fail(st, errbuf, errlen, "building the journal's tree")
		   : r;
}

int store_open(const char *path, struct store **ret_st, char *errbuf, size_t errlen)
{
	struct store *st;
	int r;

	if ((st = calloc(1, sizeof(*st))) == NULL)
		return -ENOMEM;
	if (sqlite3_open_v2(path, &st->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
				SQLITE_OPEN_NOFOLLOW,
			    NULL) != SQLITE_OK) {
		r = sql_fail(st, errbuf, errlen, path);
		goto out;
	}
	sqlite3_extended_result_codes(st->db, 1);
	sqlite3_busy_timeout(st->db, 5000);
	/* WAL + FULL: a committed transaction survives power loss (SQLite docs,
	 * "PRAGMA synchronous"). */
	if (exec(st, "PRAGMA journal_mode = WAL") < 0 ||
	    exec(st, "PRAGMA synchronous = FULL") < 0 || exec(st, "PRAGMA foreign_keys = ON") < 0 ||
	    exec(st, "PRAGMA secure_delete = ON") < 0) {
		r = sql_fail(st, errbuf, errlen, path);
		goto out;
	}
	if ((r = migrate(st, errbuf, errlen)) < 0 || (r = tree_prepare(st, errbuf, errlen)) < 0)
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
	size_t i;

	if (st == NULL)
		return;
	sqlite3_finalize(st->head);
	sqlite3_finalize(st->insert);
	for (i = 0; i < STORE_STMTS; i++)
		sqlite3_finalize(st->stmts[i].q.s);
	sqlite3_close_v2(st->db);
	free(st);
	*pst = NULL;
}

int64_t store_changes(struct store *st)
{
	return sqlite3_total_changes64(st->db);
}

int store_schema_version(struct store *st)
{
	return st->version;
}

sqlite3 *store_db(struct store *st)
{
	return st->db;
}

static int bind_va(sqlite3_stmt *s, const char *types, va_list ap)
{
	const char *str;
	const void *blob;
	size_t n;
	int i, rc = SQLITE_OK;

	for (i = 1; *types && rc == SQLITE_OK; types++, i++) {
		switch (*types) {
		case 's':
			str = va_arg(ap, const char *);
			rc = str ? sqlite3_bind_text(s, i, str, -1, SQLITE_TRANSIENT)
				 : sqlite3_bind_null(s, i);
			break;
		case 'i':
			rc = sqlite3_bind_int64(s, i, va_arg(ap, int64_t));
			break;
		case 'b':
			blob = va_arg(ap, const void *);
			n = va_arg(ap, size_t);
			rc = sqlite3_bind_blob(s, i, blob, (int)n, SQLITE_TRANSIENT);
			break;
		default:
			return -EINVAL;
		}
	}
	return rc == SQLITE_OK ? 0 : -EIO;
}

static uint32_t sql_hash(const char *sql)
{
	uint32_t h = 2166136261u;

	while (*sql != '\0')
		h = (h ^ (uint8_t)*sql++) * 16777619u;
	return h;
}

/* The statement for sql, from the cache or prepared (and cached, unless every
 * slot is busy: then it is finalized by store_done). */
static struct store_rows *stmt_get(struct store *st, const char *sql)
{
	struct stmt_slot *e, *victim = NULL;
	struct store_rows *q;
	uint32_t h = sql_hash(sql);
	sqlite3_stmt *s;
	size_t i;

	for (i = 0; i < STORE_STMTS; i++) {
		e = &st->stmts[i];
		if (e->q.s != NULL && !e->busy && e->hash == h &&
		    strcmp(sqlite3_sql(e->q.s), sql) == 0) {
			e->busy = 1;
			e->used = ++st->stmt_clock;
			return &e->q;
		}
		if (!e->busy && (victim == NULL || e->q.s == NULL ||
				 (victim->q.s != NULL && e->used < victim->used)))
			victim = e;
	}
	if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK)
		return NULL;
	if (victim == NULL) {
		if ((q = calloc(1, sizeof(*q))) == NULL) {
			sqlite3_finalize(s);
			return NULL;
		}
		q->s = s;
		return q;
	}
	sqlite3_finalize(victim->q.s);
	victim->q.s = s;
	victim->q.cached = 1;
	victim->hash = h;
	victim->busy = 1;
	victim->used = ++st->stmt_clock;
	return &victim->q;
}

void store_done(struct store *st, struct store_rows *q)
{
	size_t i;

	if (q == NULL)
		return;
	if (!q->cached) {
		sqlite3_finalize(q->s);
		free(q);
		return;
	}
	for (i = 0; i < STORE_STMTS; i++)
		if (&st->stmts[i].q == q) {
			sqlite3_reset(q->s);
			sqlite3_clear_bindings(q->s);
			st->stmts[i].busy = 0;
			return;
		}
}

/* Prepares sql and binds its parameters; *ret only on success. */
static int prepare_va(struct store *st, struct store_rows **ret, const char *sql, const char *types,
		      va_list ap)
{
	struct store_rows *q;
	int r;

	if ((q = stmt_get(st, sql)) == NULL)
		return -EIO;
	if ((r = bind_va(q->s, types, ap)) < 0) {
		store_done(st, q);
		return r;
	}
	*ret = q;
	return 0;
}

int store_query(struct store *st, struct store_rows **ret, const char *sql, const char *types, ...)
{
	va_list ap;
	int r;

	va_start(ap, types);
	r = prepare_va(st, ret, sql, types, ap);
	va_end(ap);
	return r;
}

int store_next(struct store_rows *q)
{
	switch (sqlite3_step(q->s)) {
	case SQLITE_ROW:
		return 1;
	case SQLITE_DONE:
		return 0;
	default:
		return -EIO;
	}
}

const char *store_text(struct store_rows *q, int col)
{
	return (const char *)sqlite3_column_text(q->s, col);
}

int64_t store_int(struct store_rows *q, int col)
{
	return sqlite3_column_int64(q->s, col);
}

const void *store_blob(struct store_rows *q, int col)
{
	return sqlite3_column_blob(q->s, col);
}

size_t store_len(struct store_rows *q, int col)
{
	int n = sqlite3_column_bytes(q->s, col);

	return n > 0 ? (size_t)n : 0;
}

int store_null(struct store_rows *q, int col)
{
	return sqlite3_column_type(q->s, col) == SQLITE_NULL;
}

int store_columns(struct store_rows *q)
{
	return sqlite3_column_count(q->s);
}

int store_exec(struct store *st, const char *sql, const char *types, ...)
{
	struct store_rows *q = NULL;
	va_list ap;
	int r;

	va_start(ap, types);
	r = prepare_va(st, &q, sql, types, ap);
	va_end(ap);
	if (r < 0)
		return r;
	r = sqlite3_step(q->s) == SQLITE_DONE ? sqlite3_changes(st->db) : -EIO;
	store_done(st, q);
	return r;
}

int store_begin(struct store *st)
{
	/* IMMEDIATE: take the write lock now, not at the first write. */
	return exec(st, "BEGIN IMMEDIATE");
}

int store_commit(struct store *st)
{
	/* The tree head goes with the records it covers, in their transaction. */
	if (st->tree_dirty && tree_write(st, &st->tree) < 0) {
		store_rollback(st);
		return -EIO;
	}
	st->tree_dirty = 0;
	if (exec(st, "COMMIT") < 0) {
		st->tree_valid = 0;
		return -EIO;
	}
	return 0;
}

int store_read_begin(struct store *st)
{
	return exec(st, "BEGIN DEFERRED");
}

void store_read_end(struct store *st)
{
	if (!sqlite3_get_autocommit(st->db))
		exec(st, "ROLLBACK"); /* nothing was written: ends the snapshot */
}

void store_rollback(struct store *st)
{
	st->tree_valid = 0;
	st->tree_dirty = 0;
	if (!sqlite3_get_autocommit(st->db))
		exec(st, "ROLLBACK");
}

/* A statement kept in *slot, prepared on first use and reset for reuse. */
static sqlite3_stmt *cached(struct store *st, sqlite3_stmt **slot, const char *sql)
{
	if (*slot == NULL &&
	    sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL) != SQLITE_OK)
		return NULL;
	sqlite3_reset(*slot);
	sqlite3_clear_bindings(*slot);
	return *slot;
}

int journal_head(struct store *st, int64_t *ret_seq, char ret_hash[65])
{
	sqlite3_stmt *s;
	int rc, r = 0;

	if ((s = cached(st, &st->head,
			"SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")) == NULL)
		return -EIO;
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && sqlite3_column_bytes(s, 1) == SHA256_DIGEST_LENGTH) {
		*ret_seq = sqlite3_column_int64(s, 0);
		hex_encode(sqlite3_column_blob(s, 1), SHA256_DIGEST_LENGTH, ret_hash);
	} else if (rc == SQLITE_DONE) {
		*ret_seq = 0;
		memcpy(ret_hash, zero_hash, 65);
	} else {
		r = -EIO;
	}
	sqlite3_reset(s);
	return r;
}

static const char *const reserved[] = {"seq", "time", "prev", "kind", "actor"};

int journal_append(struct store *st, const char *kind, const char *actor, const json_t *fields,
		   int64_t *ret_seq)
{
	char prev[65], *bytes = NULL;
	uint8_t md[SHA256_DIGEST_LENGTH], leaf[32];
	sqlite3_stmt *s = NULL;
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
	if (sqlite3_get_autocommit(st->db))
		return -EINVAL;
	if ((r = journal_head(st, &seq, prev)) < 0)
		return r;
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
	if ((s = cached(st, &st->insert,
			"INSERT INTO journal (seq, time, kind, record, hash, leaf, jti) "
			"VALUES (?, ?, ?, ?, ?, ?, ?)")) == NULL) {
		r = -EIO;
		goto out;
	}
	sqlite3_bind_int64(s, 1, seq);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)now);
	sqlite3_bind_text(s, 3, kind, -1, SQLITE_STATIC);
	sqlite3_bind_blob(s, 4, bytes, (int)n, SQLITE_STATIC);
	sqlite3_bind_blob(s, 5, md, sizeof(md), SQLITE_STATIC);
	sqlite3_bind_blob(s, 6, leaf, sizeof(leaf), SQLITE_STATIC);
	if (strcmp(kind, "assertion.issue") == 0 && fields != NULL &&
	    json_is_string(json_object_get(fields, "jti")))
		sqlite3_bind_text(s, 7, json_string_value(json_object_get(fields, "jti")), -1,
				  SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE) {
		r = -EIO;
		goto out;
	}
	merkle_frontier_append(&st->tree, leaf);
	st->tree_dirty = 1;
	if (ret_seq != NULL)
		*ret_seq = seq;
	r = 0;
out:
	if (s != NULL) {
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
	if (r < 0 && r != -EINVAL && r != -E2BIG)
		st->tree_valid = 0;
	free(bytes);
	json_decref(rec);
	return r;
}

int journal_verify(struct store *st, int64_t *ret_count, int64_t *ret_bad_seq)
{
	struct merkle_frontier tree, stored;
	char prev[65];
	uint8_t md[SHA256_DIGEST_LENGTH], leaf[32];
	sqlite3_stmt *s;
	json_t *rec;
	int64_t seq, count = 0, bad = 0;
	const char *p;
	int rc, r = 0;

	memcpy(prev, zero_hash, sizeof(prev));
	/* One read transaction: the records and the tree head from one snapshot,
	 * while the signer's handle keeps appending. */
	if (exec(st, "BEGIN") < 0)
		return -EIO;
	if (sqlite3_prepare_v2(st->db, "SELECT seq, record, hash, leaf FROM journal ORDER BY seq",
			       -1, &s, NULL) != SQLITE_OK) {
		exec(st, "ROLLBACK");
		return -EIO;
	}
	merkle_frontier_init(&tree);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const void *bytes = sqlite3_column_blob(s, 1);
		int n = sqlite3_column_bytes(s, 1);

		seq = sqlite3_column_int64(s, 0);
		count++;
		SHA256(bytes, (size_t)n, md);
		rec = json_loadb(bytes, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
		p = json_string_value(json_object_get(rec, "prev"));
		/* Each record: numbered in order, naming the previous record's hash,
		 * and hashing to what was stored beside it. */
		if (seq != count || rec == NULL ||
		    json_integer_value(json_object_get(rec, "seq")) != seq || p == NULL ||
		    strcmp(p, prev) != 0 || sqlite3_column_bytes(s, 2) != (int)sizeof(md) ||
		    CRYPTO_memcmp(sqlite3_column_blob(s, 2), md, sizeof(md)) != 0 ||
		    (leaf_of(bytes, (size_t)n, leaf), sqlite3_column_bytes(s, 3) != 32) ||
		    CRYPTO_memcmp(sqlite3_column_blob(s, 3), leaf, 32) != 0) {
			json_decref(rec);
			bad = seq;
			r = -CIMD_EVERIFY;
			break;
		}
		json_decref(rec);
		hex_encode(md, sizeof(md), prev);
		merkle_frontier_append(&tree, leaf);
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = -EIO;
	sqlite3_finalize(s);
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
	exec(st, "COMMIT");
	if (r == -CIMD_EVERIFY && ret_bad_seq != NULL)
		*ret_bad_seq = bad;
	if (r == 0 && ret_count != NULL)
		*ret_count = count;
	return r;
}

int journal_list(struct store *st, int64_t since, size_t max, size_t max_bytes, int raw,
		 json_t **ret_records)
{
	size_t bytes = 0;
	sqlite3_stmt *s;
	json_t *arr, *rec;
	int rc, r = 0;

	if ((arr = json_array()) == NULL)
		return -ENOMEM;
	if (sqlite3_prepare_v2(st->db,
			       "SELECT record FROM journal WHERE seq >= ? ORDER BY seq LIMIT ?", -1,
			       &s, NULL) != SQLITE_OK) {
		json_decref(arr);
		return -EIO;
	}
	sqlite3_bind_int64(s, 1, since);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)max);
	rc = SQLITE_DONE;
	while (bytes < max_bytes) {
		if ((rc = sqlite3_step(s)) != SQLITE_ROW)
			break;
		bytes += (size_t)sqlite3_column_bytes(s, 0);
		/* raw: the exact bytes the chain and the tree hash, as a string */
		rec = raw ? json_stringn(sqlite3_column_blob(s, 0),
					 (size_t)sqlite3_column_bytes(s, 0))
			  : json_loadb(sqlite3_column_blob(s, 0),
				       (size_t)sqlite3_column_bytes(s, 0), 0, NULL);
		if (rec == NULL || json_array_append_new(arr, rec) < 0) {
			r = -EIO;
			break;
		}
	}
	if (r == 0 && rc != SQLITE_DONE && rc != SQLITE_ROW) /* ROW: stopped at the byte cap */
		r = -EIO;
	sqlite3_finalize(s);
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
	sqlite3_stmt *s = NULL;
	uint64_t i = 0, size = count;
	int rc, r = -EIO;

	if (first == 0 || count == 0 || count > MERKLE_LEAVES_MAX || first > MERKLE_LEAVES_MAX)
		return -EINVAL;
	if ((leaves = malloc(count * 32)) == NULL)
		return -ENOMEM;
	if (sqlite3_prepare_v2(
		st->db, "SELECT seq, leaf FROM journal WHERE seq >= ? AND seq < ? ORDER BY seq", -1,
		&s, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(s, 1, (sqlite3_int64)first);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)(first + count));
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if ((uint64_t)sqlite3_column_int64(s, 0) != first + i ||
		    sqlite3_column_bytes(s, 1) != 32) {
			r = -CIMD_EVERIFY;
			goto out;
		}
		memcpy(leaves[i++], sqlite3_column_blob(s, 1), 32);
	}
	if (rc != SQLITE_DONE)
		goto out;
	if (i != size) {
		r = -CIMD_EVERIFY;
		goto out;
	}
	*ret_leaves = leaves;
	leaves = NULL;
	r = 0;
out:
	sqlite3_finalize(s);
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
	sqlite3_interrupt(st->db);
}

void store_busy_timeout(struct store *st, int ms)
{
	sqlite3_busy_timeout(st->db, ms);
}

int journal_table_records(struct store *st, struct store_rows **ret)
{
	return store_query(
	    st, ret, "SELECT record FROM journal WHERE " JOURNAL_TABLES_WHERE " ORDER BY seq", "");
}
