/*
 * store_pg.c — the PostgreSQL engine of the store (store_drv.h), for several
 * appliances on one database (docs/scaling.md, "A cluster").
 *
 * What SQLite gives the store by being one file, this engine makes explicit:
 *
 * - One writer at a time.  A write transaction takes a transaction-scoped
 *   advisory lock before anything else (PostgreSQL docs, "Advisory Locks"),
 *   so that writers from every node run one after another, as SQLite's
 *   BEGIN IMMEDIATE makes them on one host.  The journal's hash chain and
 *   tree head need exactly that; statements then run at READ COMMITTED,
 *   each seeing what the writer before committed.
 * - A read transaction is REPEATABLE READ, READ ONLY: one snapshot.
 * - Durability: synchronous_commit = on for this session, whatever the
 *   server's default: a COMMIT that returned is on the server's disk (and on
 *   its synchronous standbys, when it has them).
 *
 * Statements are prepared once per SQL text per connection (PQprepare), as
 * the SQLite engine keeps its own.  The service's SQL is written in the
 * dialect both engines read (docs/architecture.md, "The store"); this file
 * turns SQLite's parameters (?, ?N) into PostgreSQL's ($N) and drops the two
 * planner hints only SQLite reads (INDEXED BY name; a unary + against a column
 * name).  Results come as text: integers are parsed, bytea is decoded from
 * its hex form.  A connection that was lost is reset at the start of the next
 * transaction, so that a node recovers by itself when the database returns.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "service.h"
#include "store_drv.h"

#define STMTS 64
#define PARAMS_MAX 32
#define COLS_MAX 64 /* of a statement's rows; more cannot be read as bytea */
#define BOOLOID 16
#define INT8OID 20
#define BYTEAOID 17
#define TEXTOID 25
/* The advisory lock every write transaction holds: "cimd" in ASCII. */
#define WRITER_LOCK "1667853668"
/* The session lock of a node (store_claim), with the hash of its name as the
 * second key: two cimdd under one node name are refused. */
#define NODE_LOCK "1667853669"
/* The session lock of the cluster's leader (store_leader): the node that
 * signs checkpoints. */
#define LEADER_LOCK "1667853670"
/* How long a session may sit in an open transaction without a statement
 * before the server ends it (session_setup). */
#define IDLE_TX_MS 10000
/* What a node listens for (store_listen): the change markers' NOTIFY. */
#define CHANGES_CHANNEL "cimdd_changes"

struct pg_rows {
	struct store_rows base;
	PGresult *res;
	int row, rows;
	int64_t changed;
	/* bytea columns of the current row, decoded on first use */
	unsigned char *bin[COLS_MAX];
	size_t bin_len[COLS_MAX];
	int bin_row[COLS_MAX];
};

struct store_conn {
	PGconn *pg; /* libpq keeps the parameters (a password too) for PQreset */
	int in_tx;
	int read_only;		       /* store_read_only: again after a reconnection */
	char node[CIMD_NAME_MAX + 1];  /* store_claim's node: claimed again likewise */
	char label[CIMD_NAME_MAX + 8]; /* application_name: set again likewise */
	int leader;		       /* this session holds the leader's lock */
	int listening;		       /* store_listen: LISTEN again likewise */
	int lock_timeout_ms;	       /* store_busy_timeout: likewise; 0: the server's */
	int64_t total_changes;
	char err[256];
	struct pg_stmt {
		char *sql; /* the text as the service wrote it */
		uint32_t hash;
		int nparams;
		Oid types[PARAMS_MAX];
		char name[16];
		uint64_t used;
		int busy;
		struct pg_rows q;
	} stmts[STMTS];
	uint64_t clock, names;
};

#define PGQ(q) ((struct pg_rows *)(q))

static void set_err(struct store_conn *c, const char *what)
{
	const char *m = c->pg != NULL ? PQerrorMessage(c->pg) : "no connection";
	size_t n;

	snprintf(c->err, sizeof(c->err), "%s%s%s", what, *what ? ": " : "", m);
	n = strlen(c->err);
	while (n > 0 && (c->err[n - 1] == '\n' || c->err[n - 1] == ' '))
		c->err[--n] = '\0';
}

static int simple(struct store_conn *c, const char *sql)
{
	PGresult *res = PQexec(c->pg, sql);
	ExecStatusType st = PQresultStatus(res);
	int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;

	if (!ok)
		set_err(c, "");
	PQclear(res);
	return ok ? 0 : -EIO;
}

static void forget_statements(struct store_conn *c)
{
	size_t i;

	for (i = 0; i < STMTS; i++) {
		free(c->stmts[i].sql);
		c->stmts[i].sql = NULL;
	}
}

/* application_name = c->label, a parameter of its own (a node name is
 * [a-z0-9-], but no text is spliced into SQL here). */
static int set_label(struct store_conn *c)
{
	const char *v[1] = {c->label};
	PGresult *res = PQexecParams(c->pg, "SELECT set_config('application_name', $1, false)", 1,
				     NULL, v, NULL, NULL, 0);
	int ok = PQresultStatus(res) == PGRES_TUPLES_OK;

	if (!ok)
		set_err(c, "naming the session");
	PQclear(res);
	return ok ? 0 : -EIO;
}

static void pg_label(struct store_conn *c, const char *node)
{
	snprintf(c->label, sizeof(c->label), "cimdd:%s", node);
	set_label(c);
}

/* The node's session lock: 0, or -EBUSY when another session holds it. */
static int claim(struct store_conn *c)
{
	const char *v[1] = {c->node};
	PGresult *res =
	    PQexecParams(c->pg, "SELECT pg_try_advisory_lock(" NODE_LOCK ", hashtext($1))", 1, NULL,
			 v, NULL, NULL, 0);
	int r = -EIO;

	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		r = strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? 0 : -EBUSY;
	else
		set_err(c, "taking the node's lock");
	if (r == -EBUSY)
		snprintf(c->err, sizeof(c->err),
			 "another cimdd runs as node %s on this database (it holds advisory "
			 "lock " NODE_LOCK " for that name)",
			 c->node);
	PQclear(res);
	return r;
}

static int pg_claim(struct store_conn *c, const char *node)
{
	int r;

	snprintf(c->node, sizeof(c->node), "%s", node);
	if ((r = claim(c)) < 0)
		c->node[0] = '\0';
	return r;
}

/* The leader's lock, tried while this session does not hold it: a session
 * lock, so a node that dies or loses its connection leaves it to another. */
static int pg_leader(struct store_conn *c)
{
	PGresult *res;

	if (c->leader || c->in_tx)
		return c->leader;
	res = PQexec(c->pg, "SELECT pg_try_advisory_lock(" LEADER_LOCK ")");
	c->leader = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
		    strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return c->leader;
}

static int pg_listen(struct store_conn *c)
{
	if (!c->listening && simple(c, "LISTEN " CHANGES_CHANNEL) == 0)
		c->listening = 1;
	return c->listening && PQstatus(c->pg) == CONNECTION_OK ? PQsocket(c->pg) : -1;
}

/* Takes what arrived on the socket; the notifications themselves say nothing
 * more than "look": the change markers say what. */
static int pg_notified(struct store_conn *c)
{
	PGnotify *n;
	int k = 0;

	if (PQconsumeInput(c->pg) == 0)
		return -EIO;
	while ((n = PQnotifies(c->pg)) != NULL) {
		PQfreemem(n);
		k++;
	}
	return k;
}

static int session_setup(struct store_conn *c)
{
	char sql[512];

	/* A host that stops answering in the middle of a transaction (frozen,
	 * or gone without closing its connections) would hold the writer's lock
	 * until TCP gives up, hours later, and every other node with it: the
	 * server ends such a session after IDLE_TX_MS (no transaction of ours
	 * waits on anything but the server), and keepalives end an idle one
	 * (its node and leader locks) within a minute on TCP. */
	snprintf(sql, sizeof(sql),
		 "SET synchronous_commit = on; SET client_min_messages = warning; "
		 "SET application_name = 'cimdd'; SET lock_timeout = %d; "
		 "SET idle_in_transaction_session_timeout = %d; SET tcp_keepalives_idle = 20; "
		 "SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3; "
		 "SET default_transaction_read_only = %s",
		 c->lock_timeout_ms, IDLE_TX_MS, c->read_only ? "on" : "off");
	if (simple(c, sql) < 0)
		return -EIO;
	if (c->listening && simple(c, "LISTEN " CHANGES_CHANNEL) < 0)
		return -EIO;
	if (c->label[0] != '\0' && set_label(c) < 0)
		return -EIO;
	return c->node[0] != '\0' ? claim(c) : 0;
}

static void pg_close(struct store_conn *c)
{
	size_t i;

	if (c == NULL)
		return;
	for (i = 0; i < STMTS; i++)
		PQclear(c->stmts[i].q.res);
	forget_statements(c);
	if (c->pg != NULL)
		PQfinish(c->pg);
	free(c);
}

static int pg_open(const char *conninfo, struct store_conn **ret, char *errbuf, size_t errlen)
{
	struct store_conn *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return -ENOMEM;
	c->lock_timeout_ms = 5000; /* as SQLite's busy timeout (store_sqlite.c) */
	/* A database that does not answer fails a connection in seconds, not
	 * never (libpq's default): the connection string may say otherwise. */
	c->pg = PQconnectdbParams((const char *const[]){"connect_timeout", "dbname", NULL},
				  (const char *const[]){"3", conninfo, NULL}, 1);
	if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK) {
		set_err(c, "connecting to PostgreSQL");
		goto fail;
	}
	if (PQserverVersion(c->pg) < 110000) {
		snprintf(c->err, sizeof(c->err), "PostgreSQL %d is older than 11",
			 PQserverVersion(c->pg) / 10000);
		goto fail;
	}
	if (session_setup(c) < 0)
		goto fail;
	*ret = c;
	return 0;
fail:
	if (errbuf != NULL)
		snprintf(errbuf, errlen, "%s", c->err);
	pg_close(c);
	return -EIO;
}

/* A connection the server or the network dropped is made again, outside a
 * transaction only (one that was open is gone with it: its caller saw an
 * error and rolls back). */
static int reconnect(struct store_conn *c)
{
	if (PQstatus(c->pg) == CONNECTION_OK)
		return 0;
	PQreset(c->pg);
	forget_statements(c);
	c->in_tx = 0;
	c->leader = 0; /* the lock went with the session */
	if (PQstatus(c->pg) != CONNECTION_OK) {
		set_err(c, "reconnecting to PostgreSQL");
		return -EIO;
	}
	return session_setup(c);
}

static int pg_exec(struct store_conn *c, const char *sql)
{
	return simple(c, sql);
}

static const char *pg_errmsg(struct store_conn *c)
{
	return c->err[0] ? c->err : "database error";
}

/*
 * The service's SQL in PostgreSQL's words: ?N and ? become $N (a bare ? the
 * next number), "INDEXED BY name" and a unary + against a name go; nothing
 * inside '...' or "..." is touched.  *ret_n: the number of parameters.
 */
static char *translate(const char *sql, int *ret_n)
{
	size_t len = strlen(sql);
	char *out = malloc(len * 4 + 16), *o = out; /* "?" -> "$NNN" at most */
	const char *p = sql;
	int next = 0, max = 0;
	char quote = 0;

	if (out == NULL)
		return NULL;
	while (*p != '\0') {
		if (quote) {
			if (*p == quote)
				quote = 0;
			*o++ = *p++;
			continue;
		}
		if (*p == '\'' || *p == '"') {
			quote = *p;
			*o++ = *p++;
			continue;
		}
		if (*p == '?') {
			int n;

			p++;
			if (isdigit((unsigned char)*p)) {
				n = (int)strtol(p, (char **)&p, 10);
			} else {
				n = ++next;
			}
			if (n > max)
				max = n;
			o += sprintf(o, "$%d", n);
			continue;
		}
		if (strncmp(p, "INDEXED BY ", 11) == 0) {
			p += 11;
			while (isalnum((unsigned char)*p) || *p == '_')
				p++;
			continue;
		}
		if (*p == '+' && (isalpha((unsigned char)p[1]) || p[1] == '_') && p > sql &&
		    (p[-1] == '(' || p[-1] == ' ' || p[-1] == '=' || p[-1] == ',')) {
			p++; /* SQLite's "use no index on this column" */
			continue;
		}
		*o++ = *p++;
	}
	*o = '\0';
	*ret_n = max;
	return out;
}

static Oid type_of(char t)
{
	/* Typed, all of them: "?1 IS NULL" alone says nothing of $1's type. */
	return t == 'i' ? INT8OID : t == 'b' ? BYTEAOID : TEXTOID;
}

/* The prepared statement for sql with these parameter types. */
static struct pg_stmt *stmt_get(struct store_conn *c, const char *sql, const char *types)
{
	struct pg_stmt *e, *victim = NULL;
	uint32_t h = store_sql_hash(sql);
	PGresult *res;
	char *text, dealloc[48];
	size_t i;
	int n, k;

	for (i = 0; i < STMTS; i++) {
		e = &c->stmts[i];
		if (e->sql != NULL && !e->busy && e->hash == h && strcmp(e->sql, sql) == 0) {
			e->busy = 1;
			e->used = ++c->clock;
			return e;
		}
		if (!e->busy && (victim == NULL || e->sql == NULL ||
				 (victim->sql != NULL && e->used < victim->used)))
			victim = e;
	}
	if (victim == NULL) {
		snprintf(c->err, sizeof(c->err), "every prepared statement is in use");
		return NULL;
	}
	if ((text = translate(sql, &n)) == NULL)
		return NULL;
	if (n > PARAMS_MAX || (size_t)n != strlen(types)) {
		snprintf(c->err, sizeof(c->err), "%d parameters in the SQL, %zu given", n,
			 strlen(types));
		free(text);
		return NULL;
	}
	if (victim->sql != NULL) {
		snprintf(dealloc, sizeof(dealloc), "DEALLOCATE %s", victim->name);
		simple(c, dealloc);
		free(victim->sql);
		victim->sql = NULL;
	}
	for (k = 0; k < n; k++)
		victim->types[k] = type_of(types[k]);
	snprintf(victim->name, sizeof(victim->name), "c%" PRIu64, ++c->names);
	res = PQprepare(c->pg, victim->name, text, n, victim->types);
	free(text);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		set_err(c, "");
		PQclear(res);
		return NULL;
	}
	PQclear(res);
	if ((victim->sql = strdup(sql)) == NULL)
		return NULL;
	victim->hash = h;
	victim->nparams = n;
	victim->busy = 1;
	victim->used = ++c->clock;
	return victim;
}

static void rows_clear(struct pg_rows *q)
{
	size_t i;

	PQclear(q->res);
	q->res = NULL;
	for (i = 0; i < COLS_MAX; i++) {
		PQfreemem(q->bin[i]);
		q->bin[i] = NULL;
		q->bin_row[i] = -1;
	}
}

static void pg_done(struct store_conn *c, struct store_rows *rows)
{
	size_t i;

	for (i = 0; i < STMTS; i++)
		if (&c->stmts[i].q == PGQ(rows)) {
			rows_clear(PGQ(rows));
			c->stmts[i].busy = 0;
			return;
		}
}

static int pg_query(struct store_conn *c, struct store_rows **ret, const char *sql,
		    const char *types, va_list ap)
{
	const char *values[PARAMS_MAX];
	char ints[PARAMS_MAX][24];
	int lengths[PARAMS_MAX], formats[PARAMS_MAX], k;
	struct pg_stmt *e;
	struct pg_rows *q;
	ExecStatusType st;

	if (!c->in_tx && reconnect(c) < 0)
		return -EIO;
	if ((e = stmt_get(c, sql, types)) == NULL && !c->in_tx &&
	    PQstatus(c->pg) != CONNECTION_OK && reconnect(c) == 0)
		e = stmt_get(c, sql, types); /* dropped while idle, as pg_begin */
	if (e == NULL)
		return -EIO;
	for (k = 0; k < e->nparams; k++) {
		lengths[k] = 0;
		formats[k] = 0;
		switch (types[k]) {
		case 's':
			values[k] = va_arg(ap, const char *);
			break;
		case 'i':
			snprintf(ints[k], sizeof(ints[k]), "%" PRId64, va_arg(ap, int64_t));
			values[k] = ints[k];
			break;
		case 'b':
			values[k] = va_arg(ap, const char *);
			lengths[k] = (int)va_arg(ap, size_t);
			formats[k] = 1; /* binary: the bytes themselves */
			if (values[k] == NULL)
				values[k] = "";
			break;
		default:
			e->busy = 0;
			return -EINVAL;
		}
	}
	q = &e->q;
	q->base.drv = &store_postgresql;
	for (k = 0; k < COLS_MAX; k++)
		q->bin_row[k] = -1;
	q->res = PQexecPrepared(c->pg, e->name, e->nparams, values, lengths, formats, 0);
	st = PQresultStatus(q->res);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
		set_err(c, "");
		rows_clear(q);
		e->busy = 0;
		return -EIO;
	}
	q->row = -1;
	q->rows = PQntuples(q->res);
	q->changed = strtoll(PQcmdTuples(q->res), NULL, 10);
	c->total_changes += q->changed;
	*ret = &q->base;
	return 0;
}

static int pg_next(struct store_rows *rows)
{
	struct pg_rows *q = PGQ(rows);

	if (q->row + 1 >= q->rows) {
		q->row = q->rows;
		return 0;
	}
	q->row++;
	return 1;
}

static int64_t pg_changed(struct store_conn *c, struct store_rows *q)
{
	(void)c;
	return PGQ(q)->changed;
}

static const char *pg_text(struct store_rows *rows, int col)
{
	struct pg_rows *q = PGQ(rows);

	if (PQgetisnull(q->res, q->row, col))
		return NULL;
	return PQgetvalue(q->res, q->row, col);
}

static int64_t pg_integer(struct store_rows *rows, int col)
{
	const char *t = pg_text(rows, col);

	/* A boolean (EXISTS, a comparison) is 1 or 0, as SQLite has it. */
	if (t != NULL && PQftype(PGQ(rows)->res, col) == BOOLOID)
		return t[0] == 't';
	return t != NULL ? strtoll(t, NULL, 10) : 0;
}

/* A bytea column in the text form ("\x" and hex), decoded once per row. */
static const unsigned char *bytes_of(struct pg_rows *q, int col, size_t *ret_len)
{
	const char *t;

	*ret_len = 0;
	if (col < 0 || col >= COLS_MAX || PQgetisnull(q->res, q->row, col))
		return NULL;
	if (PQftype(q->res, col) != BYTEAOID) {
		*ret_len = (size_t)PQgetlength(q->res, q->row, col);
		return (const unsigned char *)PQgetvalue(q->res, q->row, col);
	}
	if (q->bin_row[col] != q->row) {
		PQfreemem(q->bin[col]);
		t = PQgetvalue(q->res, q->row, col);
		q->bin[col] = PQunescapeBytea((const unsigned char *)t, &q->bin_len[col]);
		q->bin_row[col] = q->row;
	}
	*ret_len = q->bin[col] != NULL ? q->bin_len[col] : 0;
	return q->bin[col];
}

static const void *pg_blob(struct store_rows *rows, int col)
{
	size_t n;

	return bytes_of(PGQ(rows), col, &n);
}

static size_t pg_len(struct store_rows *rows, int col)
{
	size_t n;

	bytes_of(PGQ(rows), col, &n);
	return n;
}

static int pg_null(struct store_rows *rows, int col)
{
	return PQgetisnull(PGQ(rows)->res, PGQ(rows)->row, col);
}

static int pg_columns(struct store_rows *rows)
{
	return PQnfields(PGQ(rows)->res);
}

static int pg_begin(struct store_conn *c, int write)
{
	const char *sql = write ? "BEGIN ISOLATION LEVEL READ COMMITTED; "
				  "SELECT pg_advisory_xact_lock(" WRITER_LOCK ")"
				: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
	int r;

	if (reconnect(c) < 0)
		return -EIO;
	/* A connection the server dropped while it was idle (a restart) says so
	 * only when used: made again once, nothing having been done on it. */
	if ((r = simple(c, sql)) < 0 && PQstatus(c->pg) != CONNECTION_OK && reconnect(c) == 0)
		r = simple(c, sql);
	if (r < 0) {
		if (PQstatus(c->pg) == CONNECTION_OK)
			simple(c, "ROLLBACK");
		return -EIO;
	}
	c->in_tx = 1;
	return 0;
}

static int pg_commit(struct store_conn *c)
{
	PGresult *res = PQexec(c->pg, "COMMIT");
	/* A COMMIT of a transaction that had failed answers ROLLBACK. */
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;

	if (!ok)
		set_err(c, "COMMIT");
	PQclear(res);
	c->in_tx = 0;
	return ok ? 0 : -EIO;
}

static void pg_rollback(struct store_conn *c)
{
	if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
		simple(c, "ROLLBACK");
	c->in_tx = 0;
}

static int pg_version(struct store_conn *c, int *ret)
{
	PGresult *res;
	int r = -EIO;

	if (simple(c, "CREATE TABLE IF NOT EXISTS cimdd_schema (version BIGINT NOT NULL)") < 0)
		return -EIO;
	res = PQexec(c->pg, "SELECT max(version) FROM cimdd_schema");
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		*ret = PQgetisnull(res, 0, 0) ? 0 : atoi(PQgetvalue(res, 0, 0));
		r = 0;
	} else {
		set_err(c, "reading the schema version");
	}
	PQclear(res);
	return r;
}

static int pg_set_version(struct store_conn *c, int v)
{
	char sql[96];

	snprintf(sql, sizeof(sql), "DELETE FROM cimdd_schema; INSERT INTO cimdd_schema VALUES (%d)",
		 v);
	return simple(c, sql);
}

static int pg_lost(struct store_conn *c)
{
	return PQstatus(c->pg) != CONNECTION_OK;
}

static int64_t pg_total_changes(struct store_conn *c)
{
	return c->total_changes;
}

static void pg_interrupt(struct store_conn *c)
{
	char err[256];
	PGcancel *k = PQgetCancel(c->pg);

	if (k != NULL) {
		PQcancel(k, err, sizeof(err));
		PQfreeCancel(k);
	}
}

static void pg_busy_timeout(struct store_conn *c, int ms)
{
	/* How long a statement waits for a lock (the writers' advisory lock
	 * included) before it fails. */
	c->lock_timeout_ms = ms;
	session_setup(c);
}

static int pg_read_only(struct store_conn *c)
{
	c->read_only = 1;
	return session_setup(c);
}

/*
 * The schema in PostgreSQL's words, at the version SQLite's migrations reach
 * (store_sqlite.c): versions 1 to 8 are nothing here, 9 is all of it, and
 * every later migration is written for both engines.  INTEGER is BIGINT, BLOB
 * is BYTEA; an INTEGER PRIMARY KEY that SQLite numbers itself is an identity
 * column; keys and attest_keys have SQLite's rowid as a column of that name,
 * which the service orders by; the change markers' triggers are one function.
 */
#define PG_SCHEMA                                                                                  \
	"CREATE TABLE journal (seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, kind TEXT NOT NULL, " \
	"  record BYTEA NOT NULL, hash BYTEA NOT NULL, leaf BYTEA, jti TEXT);"                     \
	"CREATE TABLE clients (name TEXT PRIMARY KEY, owner TEXT NOT NULL, backend TEXT NOT "      \
	"NULL, "                                                                                   \
	"  alg TEXT NOT NULL, created BIGINT NOT NULL, degraded BIGINT NOT NULL DEFAULT 0, "       \
	"  rotate_every BIGINT, assertion_ttl BIGINT, rate_limit BIGINT);"                         \
	"CREATE TABLE client_callers (client TEXT NOT NULL REFERENCES clients(name), "             \
	"  kind TEXT NOT NULL CHECK (kind IN ('uid', 'gid')), id BIGINT NOT NULL, "                \
	"  PRIMARY KEY (client, kind, id));"                                                       \
	"CREATE TABLE client_audiences (client TEXT NOT NULL REFERENCES clients(name), "           \
	"  aud TEXT NOT NULL, PRIMARY KEY (client, aud));"                                         \
	"CREATE TABLE documents (client TEXT NOT NULL REFERENCES clients(name), "                  \
	"  version BIGINT NOT NULL, "                                                              \
	"  state TEXT NOT NULL CHECK (state IN ('submitted', 'approved', 'superseded')), "         \
	"  bytes BYTEA NOT NULL, sha256 BYTEA NOT NULL, submitter TEXT NOT NULL, "                 \
	"  submitted BIGINT NOT NULL, approver TEXT, approved BIGINT, PRIMARY KEY (client, "       \
	"version));"                                                                               \
	"CREATE TABLE keys (rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE, "                \
	"  kid TEXT PRIMARY KEY, client TEXT NOT NULL REFERENCES clients(name), "                  \
	"  alg TEXT NOT NULL, backend TEXT NOT NULL, ref BYTEA NOT NULL, "                         \
	"  state TEXT NOT NULL CHECK (state IN "                                                   \
	"    ('next', 'active', 'retiring', 'retired', 'destroyed', 'revoked')), "                 \
	"  created BIGINT NOT NULL, activated BIGINT, retiring BIGINT, retired BIGINT, "           \
	"  destroyed BIGINT, revoked BIGINT, revoke_reason TEXT, jwk TEXT, revoked_by TEXT, "      \
	"  published BIGINT);"                                                                     \
	"CREATE UNIQUE INDEX one_active_key ON keys(client) WHERE state = 'active';"               \
	"CREATE TABLE key_intents (tag TEXT PRIMARY KEY, backend TEXT NOT NULL, "                  \
	"  client TEXT NOT NULL, created BIGINT NOT NULL);"                                        \
	"CREATE TABLE attest_keys (rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE, "         \
	"  kid TEXT PRIMARY KEY, backend TEXT NOT NULL, ref BYTEA NOT NULL, jwk TEXT NOT NULL, "   \
	"  tpm_public BYTEA, "                                                                     \
	"  state TEXT NOT NULL CHECK (state IN ('active', 'retiring', 'retired')), "               \
	"  created BIGINT NOT NULL, retired BIGINT);"                                              \
	"CREATE UNIQUE INDEX one_active_attest_key ON attest_keys(backend) WHERE state = "         \
	"'active';"                                                                                \
	"CREATE TABLE attestations (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "      \
	"  client TEXT NOT NULL REFERENCES clients(name), inputs BYTEA NOT NULL, "                 \
	"  cimd_sha256 TEXT NOT NULL, jwks_sha256 TEXT NOT NULL, attest_kid TEXT NOT NULL, "       \
	"  envelope TEXT NOT NULL, seq BIGINT NOT NULL, created BIGINT NOT NULL);"                 \
	"CREATE INDEX attestations_client ON attestations(client, id);"                            \
	"CREATE TABLE revocations (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "       \
	"  kid TEXT NOT NULL REFERENCES keys(kid), client TEXT NOT NULL, attest_kid TEXT NOT "     \
	"NULL, "                                                                                   \
	"  envelope TEXT NOT NULL, created BIGINT NOT NULL, seq BIGINT NOT NULL DEFAULT 0);"       \
	"CREATE INDEX revocations_kid ON revocations(kid, id);"                                    \
	"CREATE TABLE journal_tree (id BIGINT PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL, "  \
	"  nodes BYTEA NOT NULL);"                                                                 \
	"CREATE TABLE checkpoints (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "       \
	"  size BIGINT NOT NULL, root BYTEA NOT NULL, counter BIGINT, note TEXT NOT NULL, "        \
	"  seq BIGINT NOT NULL, created BIGINT NOT NULL);"                                         \
	"CREATE UNIQUE INDEX journal_jti ON journal(jti) WHERE jti IS NOT NULL;"                   \
	"CREATE TABLE publications (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "      \
	"  path TEXT NOT NULL, client TEXT NOT NULL, sha256 TEXT NOT NULL, bytes BYTEA NOT NULL, " \
	"  seq BIGINT NOT NULL, created BIGINT NOT NULL);"                                         \
	"CREATE INDEX publications_path ON publications(path, id);"                                \
	"CREATE INDEX keys_client ON keys(client, state);"                                         \
	"CREATE INDEX keys_ref ON keys(backend, ref);"                                             \
	"CREATE INDEX keys_state ON keys(state);"                                                  \
	"CREATE INDEX keys_retiring ON keys(retiring) WHERE state = 'retiring';"                   \
	"CREATE INDEX keys_retired ON keys(retired) WHERE state = 'retired';"                      \
	"CREATE INDEX keys_revoked ON keys(revoked) WHERE state = 'revoked' AND destroyed IS "     \
	"NULL;"                                                                                    \
	"CREATE INDEX attest_keys_ref ON attest_keys(backend, ref);"                               \
	"CREATE INDEX revocations_client ON revocations(client, id);"                              \
	"CREATE INDEX documents_approved ON documents(client) WHERE state = 'approved';"           \
	"CREATE TABLE dirty (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "            \
	"  client TEXT NOT NULL UNIQUE);"                                                          \
	"CREATE TABLE changes (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "           \
	"  client TEXT NOT NULL REFERENCES clients(name), op TEXT NOT NULL, fields TEXT NOT "      \
	"NULL, "                                                                                   \
	"  state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')), "             \
	"  submitter TEXT NOT NULL, submitted BIGINT NOT NULL, decider TEXT, decided BIGINT, "     \
	"  reason TEXT);"                                                                          \
	"CREATE INDEX changes_pending ON changes(client, id) WHERE state = 'pending';"             \
	"CREATE INDEX journal_tables ON journal(seq) WHERE " PG_TABLES_WHERE ";" PG_TRIGGERS

/* SQLite's expression (store_sqlite.h) on the record's bytes. */
#define PG_TABLES_WHERE                                                                            \
	"substring(record FROM position('\",\"kind\":\"'::bytea IN record) + 10 FOR 4) IN "        \
	"('clie'::bytea, 'doc.'::bytea, 'key.'::bytea, 'reco'::bytea, 'tabl'::bytea)"

/* The change markers (store_sqlite.c's triggers on the dirty table): a changed row marks
 * its client, named by the column the trigger is given. */
#define PG_TRIGGERS                                                                                \
	"CREATE FUNCTION cimdd_mark(c TEXT) RETURNS void LANGUAGE sql AS "                         \
	"  'DELETE FROM dirty WHERE client = c; INSERT INTO dirty (client) VALUES (c)';"           \
	"CREATE FUNCTION cimdd_dirty() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "              \
	"  IF TG_OP = 'DELETE' THEN PERFORM cimdd_mark(to_jsonb(OLD) ->> TG_ARGV[0]); "            \
	"  ELSE PERFORM cimdd_mark(to_jsonb(NEW) ->> TG_ARGV[0]); END IF; RETURN NULL; END $$;"    \
	"CREATE FUNCTION cimdd_dirty_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "          \
	"  PERFORM cimdd_mark(''); IF TG_OP = 'INSERT' AND TG_TABLE_NAME = 'attest_keys' THEN "    \
	"    DELETE FROM dirty WHERE client IN (SELECT name FROM clients WHERE backend = "         \
	"NEW.backend); "                                                                           \
	"    INSERT INTO dirty (client) SELECT name FROM clients WHERE backend = NEW.backend; "    \
	"  END IF; RETURN NULL; END $$;"                                                           \
	"CREATE TRIGGER clients_dirty AFTER INSERT OR UPDATE ON clients "                          \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('name');"                                     \
	"CREATE TRIGGER callers_dirty AFTER INSERT OR DELETE ON client_callers "                   \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER audiences_dirty AFTER INSERT OR DELETE ON client_audiences "               \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER documents_dirty AFTER INSERT OR UPDATE ON documents "                      \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER keys_dirty_i AFTER INSERT ON keys "                                        \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER keys_dirty_u AFTER UPDATE OF state, jwk, client, alg ON keys "             \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER attestations_dirty AFTER INSERT ON attestations "                          \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER revocations_dirty AFTER INSERT ON revocations "                            \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty('client');"                                   \
	"CREATE TRIGGER attest_keys_dirty AFTER INSERT OR UPDATE ON attest_keys "                  \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty_all();"                                       \
	"CREATE TRIGGER checkpoints_dirty AFTER INSERT ON checkpoints "                            \
	"  FOR EACH ROW EXECUTE FUNCTION cimdd_dirty_all();"

/* A node learns at once of a change another node made (publish.c): every
 * transaction that marks a client notifies, at its commit, whoever listens. */
#define PG_NOTIFY                                                                                  \
	"CREATE FUNCTION cimdd_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "             \
	"  PERFORM pg_notify('cimdd_changes', ''); RETURN NULL; END $$;"                           \
	"CREATE TRIGGER dirty_notify AFTER INSERT ON dirty "                                       \
	"  FOR EACH STATEMENT EXECUTE FUNCTION cimdd_notify();"

static const char *const pg_migrations[] = {
    "", "", "", "", "", "", "", "", PG_SCHEMA, STORE_MIGRATION_NODES PG_NOTIFY,
};

const struct store_drv store_postgresql = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .exec = pg_exec,
    .query = pg_query,
    .done = pg_done,
    .next = pg_next,
    .changed = pg_changed,
    .text = pg_text,
    .integer = pg_integer,
    .blob = pg_blob,
    .len = pg_len,
    .null = pg_null,
    .columns = pg_columns,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .version = pg_version,
    .set_version = pg_set_version,
    .migrations = pg_migrations,
    .n_migrations = (int)(sizeof(pg_migrations) / sizeof(pg_migrations[0])),
    .table_records_sql = "SELECT record FROM journal WHERE " PG_TABLES_WHERE " ORDER BY seq",
    .total_changes = pg_total_changes,
    .interrupt = pg_interrupt,
    .busy_timeout = pg_busy_timeout,
    .read_only = pg_read_only,
    .lost = pg_lost,
    .claim = pg_claim,
    .leader = pg_leader,
    .listen = pg_listen,
    .notified = pg_notified,
    .label = pg_label,
    .errmsg = pg_errmsg,
};
