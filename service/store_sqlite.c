/*
 * store_sqlite.c — the SQLite engine of the store (store_drv.h): one database
 * file in the state directory, WAL with synchronous = FULL, so that a commit
 * is on disk when it returns (SQLite docs, "PRAGMA synchronous").  The
 * embedded default: one host, no server.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "service.h"
#include "store_drv.h"
#include "store_sqlite.h"

#define STMTS 64

/* A statement of query: in the cache (cached), or prepared for one use
 * because every cached one was busy (then freed by done). */
struct sq_rows {
	struct store_rows base;
	sqlite3_stmt *s;
	int cached;
};

struct store_conn {
	sqlite3 *db;
	/* The statements of query, prepared once per SQL text and reused:
	 * SQLite spends longer parsing most of them than running them (issue
	 * 13, docs/scaling.md).  A statement is busy from query until done;
	 * the least recently used one that is not busy makes room for a new
	 * text. */
	struct stmt_slot {
		struct sq_rows q;
		uint32_t hash; /* FNV-1a of the SQL text */
		int busy;
		uint64_t used;
	} stmts[STMTS];
	uint64_t clock;
};

#define SQ(q) ((struct sq_rows *)(q))

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
    /* 10: nodes (store_drv.h). */
    STORE_MIGRATION_NODES,
};

static int sq_exec(struct store_conn *c, const char *sql)
{
	return sqlite3_exec(c->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

static const char *sq_errmsg(struct store_conn *c)
{
	return sqlite3_errmsg(c->db);
}

static void sq_close(struct store_conn *c)
{
	size_t i;

	if (c == NULL)
		return;
	for (i = 0; i < STMTS; i++)
		sqlite3_finalize(c->stmts[i].q.s);
	sqlite3_close_v2(c->db);
	free(c);
}

static int sq_open(const char *path, struct store_conn **ret, char *errbuf, size_t errlen)
{
	struct store_conn *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return -ENOMEM;
	if (sqlite3_open_v2(path, &c->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
				SQLITE_OPEN_NOFOLLOW,
			    NULL) != SQLITE_OK)
		goto fail;
	sqlite3_extended_result_codes(c->db, 1);
	sqlite3_busy_timeout(c->db, 5000);
	/* WAL + FULL: a committed transaction survives power loss. */
	if (sq_exec(c, "PRAGMA journal_mode = WAL") < 0 ||
	    sq_exec(c, "PRAGMA synchronous = FULL") < 0 ||
	    sq_exec(c, "PRAGMA foreign_keys = ON") < 0 ||
	    sq_exec(c, "PRAGMA secure_delete = ON") < 0)
		goto fail;
	*ret = c;
	return 0;
fail:
	if (errbuf != NULL)
		snprintf(errbuf, errlen, "%s: %s", path,
			 c->db != NULL ? sqlite3_errmsg(c->db) : "out of memory");
	sq_close(c);
	return -EIO;
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

/* The statement for sql, from the cache or prepared (and cached, unless every
 * slot is busy: then it is finalized by done). */
static struct sq_rows *stmt_get(struct store_conn *c, const char *sql)
{
	struct stmt_slot *e, *victim = NULL;
	struct sq_rows *q;
	uint32_t h = store_sql_hash(sql);
	sqlite3_stmt *s;
	size_t i;

	for (i = 0; i < STMTS; i++) {
		e = &c->stmts[i];
		if (e->q.s != NULL && !e->busy && e->hash == h &&
		    strcmp(sqlite3_sql(e->q.s), sql) == 0) {
			e->busy = 1;
			e->used = ++c->clock;
			return &e->q;
		}
		if (!e->busy && (victim == NULL || e->q.s == NULL ||
				 (victim->q.s != NULL && e->used < victim->used)))
			victim = e;
	}
	if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK)
		return NULL;
	if (victim == NULL) {
		if ((q = calloc(1, sizeof(*q))) == NULL) {
			sqlite3_finalize(s);
			return NULL;
		}
		q->base.drv = &store_sqlite;
		q->s = s;
		return q;
	}
	sqlite3_finalize(victim->q.s);
	victim->q.base.drv = &store_sqlite;
	victim->q.s = s;
	victim->q.cached = 1;
	victim->hash = h;
	victim->busy = 1;
	victim->used = ++c->clock;
	return &victim->q;
}

static void sq_done(struct store_conn *c, struct store_rows *rows)
{
	struct sq_rows *q = SQ(rows);
	size_t i;

	if (!q->cached) {
		sqlite3_finalize(q->s);
		free(q);
		return;
	}
	for (i = 0; i < STMTS; i++)
		if (&c->stmts[i].q == q) {
			sqlite3_reset(q->s);
			sqlite3_clear_bindings(q->s);
			c->stmts[i].busy = 0;
			return;
		}
}

static int sq_query(struct store_conn *c, struct store_rows **ret, const char *sql,
		    const char *types, va_list ap)
{
	struct sq_rows *q;
	int r;

	if ((q = stmt_get(c, sql)) == NULL)
		return -EIO;
	if ((r = bind_va(q->s, types, ap)) < 0) {
		sq_done(c, &q->base);
		return r;
	}
	*ret = &q->base;
	return 0;
}

static int sq_next(struct store_rows *q)
{
	switch (sqlite3_step(SQ(q)->s)) {
	case SQLITE_ROW:
		return 1;
	case SQLITE_DONE:
		return 0;
	default:
		return -EIO;
	}
}

static int64_t sq_changed(struct store_conn *c, struct store_rows *q)
{
	(void)q;
	return sqlite3_changes64(c->db);
}

static const char *sq_text(struct store_rows *q, int col)
{
	return (const char *)sqlite3_column_text(SQ(q)->s, col);
}

static int64_t sq_integer(struct store_rows *q, int col)
{
	return sqlite3_column_int64(SQ(q)->s, col);
}

static const void *sq_blob(struct store_rows *q, int col)
{
	return sqlite3_column_blob(SQ(q)->s, col);
}

static size_t sq_len(struct store_rows *q, int col)
{
	int n = sqlite3_column_bytes(SQ(q)->s, col);

	return n > 0 ? (size_t)n : 0;
}

static int sq_null(struct store_rows *q, int col)
{
	return sqlite3_column_type(SQ(q)->s, col) == SQLITE_NULL;
}

static int sq_columns(struct store_rows *q)
{
	return sqlite3_column_count(SQ(q)->s);
}

static int sq_begin(struct store_conn *c, int write)
{
	/* IMMEDIATE: take the write lock now, not at the first write.  A
	 * DEFERRED read takes its snapshot at its first read. */
	return sq_exec(c, write ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED");
}

static int sq_commit(struct store_conn *c)
{
	return sq_exec(c, "COMMIT");
}

static void sq_rollback(struct store_conn *c)
{
	if (!sqlite3_get_autocommit(c->db))
		sq_exec(c, "ROLLBACK");
}

static int sq_version(struct store_conn *c, int *ret)
{
	sqlite3_stmt *s;
	int r = -EIO;

	if (sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
		return -EIO;
	if (sqlite3_step(s) == SQLITE_ROW) {
		*ret = sqlite3_column_int(s, 0);
		r = 0;
	}
	sqlite3_finalize(s);
	return r;
}

static int sq_set_version(struct store_conn *c, int v)
{
	char sql[64];

	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v);
	return sq_exec(c, sql);
}

static int64_t sq_total_changes(struct store_conn *c)
{
	return sqlite3_total_changes64(c->db);
}

static void sq_interrupt(struct store_conn *c)
{
	sqlite3_interrupt(c->db);
}

static void sq_busy_timeout(struct store_conn *c, int ms)
{
	sqlite3_busy_timeout(c->db, ms);
}

static int sq_lost(struct store_conn *c)
{
	(void)c;
	return 0; /* a file: never out of reach the way a server is */
}

static int sq_claim(struct store_conn *c, const char *node)
{
	(void)c;
	(void)node;
	return 0; /* the state directory's lock file (cimdd.c) is the claim */
}

/* One node on one file: always the leader, and no one else to hear from. */
static int sq_leader(struct store_conn *c)
{
	(void)c;
	return 1;
}

static int sq_listen(struct store_conn *c)
{
	(void)c;
	return -1;
}

static int sq_notified(struct store_conn *c)
{
	(void)c;
	return 0;
}

static void sq_label(struct store_conn *c, const char *node)
{
	(void)c;
	(void)node;
}

static int sq_read_only(struct store_conn *c)
{
	return sq_exec(c, "PRAGMA query_only = 1");
}

struct sqlite3 *store_sqlite_db(struct store_conn *c)
{
	return c->db;
}

const struct store_drv store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .exec = sq_exec,
    .query = sq_query,
    .done = sq_done,
    .next = sq_next,
    .changed = sq_changed,
    .text = sq_text,
    .integer = sq_integer,
    .blob = sq_blob,
    .len = sq_len,
    .null = sq_null,
    .columns = sq_columns,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .version = sq_version,
    .set_version = sq_set_version,
    .migrations = migrations,
    .n_migrations = (int)(sizeof(migrations) / sizeof(migrations[0])),
    .table_records_sql = "SELECT record FROM journal WHERE " JOURNAL_TABLES_WHERE " ORDER BY seq",
    .total_changes = sq_total_changes,
    .interrupt = sq_interrupt,
    .busy_timeout = sq_busy_timeout,
    .read_only = sq_read_only,
    .lost = sq_lost,
    .claim = sq_claim,
    .leader = sq_leader,
    .listen = sq_listen,
    .notified = sq_notified,
    .label = sq_label,
    .errmsg = sq_errmsg,
};
