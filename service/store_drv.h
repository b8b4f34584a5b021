/*
 * store_drv.h — what store.c asks of a database engine (docs/architecture.md,
 * "The store").  store.c keeps the journal, its tree and the migrations'
 * order; an engine keeps connections, statements, transactions and its own
 * dialect of the schema.  Service code sees neither: it speaks store_*.
 */
#ifndef CIMD_STORE_DRV_H
#define CIMD_STORE_DRV_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct store_conn; /* an engine's connection */

/* The rows of one statement: each engine's own begins with this. */
struct store_rows {
	const struct store_drv *drv;
};

struct store_drv {
	const char *name;
	/* Opens target (a path, a connection string) and sets the session up;
	 * errbuf says why not. */
	int (*open)(const char *target, struct store_conn **ret, char *errbuf, size_t errlen);
	void (*close)(struct store_conn *c);
	/* Statements without parameters or rows, several at once (DDL). */
	int (*exec)(struct store_conn *c, const char *sql);
	/* A statement with its parameters bound (types as store_query), kept
	 * prepared per SQL text; handed back with done. */
	int (*query)(struct store_conn *c, struct store_rows **ret, const char *sql,
		     const char *types, va_list ap);
	void (*done)(struct store_conn *c, struct store_rows *q);
	int (*next)(struct store_rows *q);
	/* Rows the statement changed, once next has returned 0. */
	int64_t (*changed)(struct store_conn *c, struct store_rows *q);
	const char *(*text)(struct store_rows *q, int col);
	int64_t (*integer)(struct store_rows *q, int col);
	const void *(*blob)(struct store_rows *q, int col);
	size_t (*len)(struct store_rows *q, int col);
	int (*null)(struct store_rows *q, int col);
	int (*columns)(struct store_rows *q);
	/* Transactions.  A write transaction excludes every other writer on the
	 * database from its start (not from its first write); a read
	 * transaction sees one snapshot. */
	int (*begin)(struct store_conn *c, int write);
	int (*commit)(struct store_conn *c);
	void (*rollback)(struct store_conn *c);
	/* The schema version the database records, and setting it inside the
	 * migration's transaction. */
	int (*version)(struct store_conn *c, int *ret);
	int (*set_version)(struct store_conn *c, int v);
	const char *const *migrations; /* migrations[N - 1] takes version N - 1 to N */
	int n_migrations;
	/* journal_table_records' query, in this engine's dialect. */
	const char *table_records_sql;
	/* Rows changed through this connection since it opened. */
	int64_t (*total_changes)(struct store_conn *c);
	void (*interrupt)(struct store_conn *c);
	void (*busy_timeout)(struct store_conn *c, int ms);
	/* The connection refuses to write from now on. */
	int (*read_only)(struct store_conn *c);
	/* The server is out of reach (the last statement found the connection
	 * gone, and it could not be made again). */
	int (*lost)(struct store_conn *c);
	/* This connection's daemon is node `node` of the database: -EBUSY when
	 * another daemon runs under that name (kept across reconnections). */
	int (*claim)(struct store_conn *c, const char *node);
	/* 1 while this connection's daemon is the cluster's leader (it signs
	 * the checkpoints), trying to become it when no one is. */
	int (*leader)(struct store_conn *c);
	/* A descriptor that turns readable when another connection has marked
	 * a change (-1: none; the caller looks every second anyway), and taking
	 * what arrived on it (the number of notifications, or -EIO). */
	int (*listen)(struct store_conn *c);
	int (*notified)(struct store_conn *c);
	/* Names the connection's sessions after node (kept across
	 * reconnections). */
	void (*label)(struct store_conn *c, const char *node);
	const char *(*errmsg)(struct store_conn *c);
};

/* FNV-1a of an SQL text: the engines' statement caches look texts up by it
 * (here, not in store.c, which calls the engines: no circle). */
static inline uint32_t store_sql_hash(const char *sql)
{
	uint32_t h = 2166136261u;

	while (*sql != '\0')
		h = (h ^ (uint8_t)*sql++) * 16777619u;
	return h;
}

/*
 * Migration 10, in the dialect both engines read: nodes (docs/scaling.md, "A
 * cluster").  Each cimdd sharing one database is a node with its own
 * hardware; every key, key intent, attestation key and attestation records
 * the node that holds it or issued it.  Rows from before are the single
 * appliance's, node 'local' (CIMD_NODE_DEFAULT).  A node holds at most one
 * active key per client; seen is how far it has taken the change markers
 * (dirty.seq), so that every node, not only the first to look, publishes
 * each change.
 */
#define STORE_MIGRATION_NODES                                                                      \
	"CREATE TABLE nodes ("                                                                     \
	"  name      TEXT PRIMARY KEY,"                                                            \
	"  hardware  TEXT NOT NULL,"                                                               \
	"  joined    BIGINT NOT NULL,"                                                             \
	"  heartbeat BIGINT NOT NULL,"                                                             \
	"  seen      BIGINT NOT NULL DEFAULT 0,"                                                   \
	"  revoked   BIGINT,"                                                                      \
	"  revoked_by TEXT,"                                                                       \
	"  revoke_reason TEXT"                                                                     \
	");"                                                                                       \
	"ALTER TABLE keys ADD COLUMN node TEXT NOT NULL DEFAULT 'local';"                          \
	"ALTER TABLE key_intents ADD COLUMN node TEXT NOT NULL DEFAULT 'local';"                   \
	"ALTER TABLE attest_keys ADD COLUMN node TEXT NOT NULL DEFAULT 'local';"                   \
	"ALTER TABLE attestations ADD COLUMN node TEXT NOT NULL DEFAULT 'local';"                  \
	"DROP INDEX one_active_key;"                                                               \
	"CREATE UNIQUE INDEX one_active_key ON keys(client, node) WHERE state = 'active';"         \
	"DROP INDEX one_active_attest_key;"                                                        \
	"CREATE UNIQUE INDEX one_active_attest_key ON attest_keys(node, backend) "                 \
	"  WHERE state = 'active';"                                                                \
	"CREATE INDEX keys_node ON keys(node, client, state);"                                     \
	"CREATE INDEX attestations_node ON attestations(client, node, id);"

extern const struct store_drv store_sqlite;
extern const struct store_drv store_postgresql;

#endif
