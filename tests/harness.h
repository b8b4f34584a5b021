/*
 * harness.h — the test harness: TAP-style results, temporary directories,
 * SoftHSM2 tokens and swtpm simulators that each test starts and stops itself.
 *
 * Every test binary prints "ok N - ..." / "not ok N - ..." lines and a last line
 * "# N passed, N failed"; tests/run.sh adds them up.
 *
 * A test owns what it starts (STYLE.md 21).  Linking the harness makes the
 * test binary, before main(), the leader of a process group of its own; when it
 * ends (exit, t_cleanup(), or a fatal signal: SIGSEGV, SIGBUS, SIGFPE, SIGILL,
 * SIGABRT, SIGSYS, SIGTERM, SIGINT, SIGHUP, SIGQUIT) everything it started is
 * killed: the rest of its group, its descendants that left the group, and the
 * processes named by NAME.pid files under t_tmpdir() (nginx) that started after
 * it.  Children it forks without exec are not the test: their exit kills nothing.
 * A test that starts a PostgreSQL cluster (t_pg_start) becomes a child
 * subreaper, so that what its postmaster forked stays among its descendants
 * when the postmaster dies first.
 */
#ifndef CIMD_TEST_HARNESS_H
#define CIMD_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

#include "fw.h"

/* Records one check; returns cond so a test can stop early. */
int t_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A text put before every following result ("tpm2: "), or NULL. */
void t_set_prefix(const char *prefix);
/* Checks the logs of every daemon t_daemon_start() started (below), kills
 * what the test left running, removes the directory, prints the totals; the
 * exit status of main. */
int t_done(void);
/* A process's state letter (proc(5): R, S, Z...), 0 when there is none. */
char t_proc_state(pid_t pid);
/* Monotonic milliseconds. */
double t_now_ms(void);

/* A fresh directory under $TMPDIR (or /tmp); removed by t_cleanup(), which
 * first kills what the test left running. */
const char *t_tmpdir(void);
void t_cleanup(void);
/* Writes a file (mode 0600); 0 or -errno. */
int t_write_file(const char *path, const void *buf, size_t len);
/* Runs a shell command, its output to stdout prefixed "# "; its exit status. */
int t_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Like t_sh, and the output (at most len - 1 bytes) into out, which is a
 * string whatever happens. */
int t_sh_out(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The build this test binary belongs to (BUILD of BUILD/tests/test_x), into buf. */
const char *t_build_dir(char *buf, size_t len);
/* build/bin/NAME of the build this test binary belongs to, into buf. */
const char *t_bin(const char *name, char *buf, size_t len);

/* A daemon under test: cimdd -c conf -f, stderr to log. */
struct t_daemon {
	pid_t pid;
	char conf[600];
	char log[600];
	char sock[600];
	const char *arg; /* one more argument for cimdd, or NULL */
};
int t_daemon_start(struct t_daemon *d);
/* Sends sig and waits; the exit status (or 128 + signal), -1 if it was not
 * running.  Then reads the log from where the last look ended: a line about a
 * forbidden system call (the publisher's seccomp filter) is a failed check,
 * printed.  t_done() reads every such log to its end the same way. */
int t_daemon_stop(struct t_daemon *d, int sig);
/* Counts lines of the daemon's log that contain needle. */
int t_log_count(const struct t_daemon *d, const char *needle);

/* A SoftHSM2 token in a fresh directory, with its own SOFTHSM2_CONF. */
struct t_softhsm {
	char dir[512];
	char conf[1024]; /* key store configuration string */
	char pin_file[600];
};
#define T_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
int t_softhsm_init(struct t_softhsm *h, const char *label, const char *pin);

/* swtpm on a fresh pair of loopback ports, its state in a fresh directory.
 * No free pair is a failed check and a negative return. */
struct t_swtpm {
	pid_t pid;
	int port; /* the TPM command port; port + 1 is the control port */
	char dir[512];
	char conf[256]; /* key store configuration string */
};
int t_swtpm_start(struct t_swtpm *s);
/* Starts it again on the same port and state, after t_swtpm_kill(). */
int t_swtpm_restart(struct t_swtpm *s);
void t_swtpm_kill(struct t_swtpm *s);

/*
 * A throwaway PostgreSQL cluster (the binaries of `pg_config --bindir`): initdb
 * (superuser cimdd, trust, UTF8, locale C) in a fresh directory under
 * t_tmpdir(), then the postmaster, started as the test's child (not by pg_ctl,
 * whose postmaster leaves our session) so that it and every process it forks
 * stay ours until the test ends; it dies with the thread that started it, even
 * of SIGKILL (call these from the main thread).  As root they run as nobody,
 * who owns the directory.  The server listens on a Unix socket in dir only (no
 * TCP port to take or be taken) with fsync on; database cimdd exists.  A start
 * takes about 0.7 s idle, 1.5 s on a busy machine (initdb, CREATE DATABASE).
 */
struct t_pg {
	pid_t pid;	    /* the postmaster, 0 when stopped */
	char dir[512];	    /* the socket directory; data/ and postgres.log inside */
	char data[600];	    /* the data directory */
	char log[600];	    /* the server's stderr, appended to by every start */
	char conninfo[700]; /* host=DIR port=5432 dbname=cimdd user=cimdd */
};
/* 0, or a negative code with the reason and the log's end printed. */
int t_pg_start(struct t_pg *pg);
/* Fast shutdown (SIGINT), waiting for the postmaster to exit: 0 when it ended
 * cleanly, a negative code otherwise (then it has been killed). */
int t_pg_stop(struct t_pg *pg);
/* Starts the postmaster again on the same data and socket, after t_pg_stop()
 * or t_pg_kill(); waits until it accepts connections (crash recovery done). */
int t_pg_restart(struct t_pg *pg);
/* A crash: SIGKILL to the postmaster and every process it started, and waits
 * until they are gone. */
void t_pg_kill(struct t_pg *pg);
/* One SQL text (printf format) on a connection of its own to pg->conninfo:
 * the first column of the first row into out (empty without a row) when out
 * is not NULL.  0, or -1 with the server's message printed. */
int t_pg_sql(struct t_pg *pg, char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* make check STORE=postgresql: whether the daemons the test starts keep their
 * state in PostgreSQL (each state directory a cluster of its own, made by
 * t_daemon_start); the cluster that holds the database at db_path (a state
 * directory's cimdd.db), NULL when SQLite does. */
int t_store_pg(void);
struct t_pg *t_store_cluster(const char *db_path);
/* SQL on the database at db_path (STATE_DIR/cimdd.db), whichever engine holds
 * it: the first column of the first row into out (when not NULL); 0, or -1
 * with the reason printed. */
int t_db_sql(const char *db_path, char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The bytes of the value of a scalar query fmt ("SELECT ref FROM keys WHERE
 * ..."), at most cap; 0, or -1 (none, too long, or an error). */
int t_db_blob(const char *db_path, void *out, size_t cap, size_t *ret_len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The store (service.h) of the database at db_path, whichever engine holds it. */
struct store;
int t_db_open(const char *db_path, struct store **ret, char *err, size_t errlen);
/* How many journal records of kind hold needle in their bytes; -1 on error. */
int t_db_journal_count(const char *db_path, const char *kind, const char *needle);
/* A database at db_path (DIR/NAME.db) for a test that opens its own store
 * (t_db_open) rather than a daemon: in PostgreSQL mode a cluster for DIR,
 * which t_db_* then reach, as a daemon's state directory gets one.  0, or a
 * negative code. */
int t_db_create(const char *db_path);
/*
 * The rows of one query (printf format; no parameters) on the database at
 * db_path, read one at a time: cb(arg, n, v, len) with the row's n values
 * (at most 16), each as its bytes with a NUL after them (a blob's own, a
 * number as its text), NULL for NULL; they are freed when cb returns, and a
 * nonzero return ends the reading.  The rows read, or -1 with the reason
 * printed.
 */
typedef int t_db_row_fn(void *arg, int n, char **v, size_t *len);
int t_db_each(const char *db_path, t_db_row_fn *cb, void *arg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Each journal record of kind (NULL: of every kind) in order, parsed, to
 * cb(arg, record) (borrowed; a nonzero return ends it): the records read, or
 * -1.  A record's members are read here in C, so that no test needs an
 * engine's JSON functions (docs/architecture.md, "The store"). */
typedef int t_db_record_fn(void *arg, json_t *rec);
int t_db_journal_each(const char *db_path, const char *kind, t_db_record_fn *cb, void *arg);
/* How many journal records of kind have every member of the object that fmt
 * and the arguments pack (json_pack: "{sssi}", "client", "agent-a", "uid",
 * 1000), each with an equal value; -1 on error. */
int t_db_journal_match(const char *db_path, const char *kind, const char *fmt, ...);
/* How many assertion.issue records name a key (kid, or any key when NULL)
 * after the key.state record of its revocation; -1 on error. */
int t_db_issued_after_revocation(const char *db_path, const char *kid);
/* Each `from` replaced by `to` in the bytes of a blob column, as text, in the
 * rows of table that where selects (no quote in from or to): 0, or -1. */
int t_db_replace(const char *db_path, const char *table, const char *column, const char *where,
		 const char *from, const char *to);
/* A copy of the database at db_path kept under name, and the database made
 * that copy again (as a backup is restored); its daemon stopped.  0, or -1. */
int t_db_save(const char *db_path, const char *name);
int t_db_restore(const char *db_path, const char *name);
/* The bytes the database takes: SQLite's file and WAL, once the WAL is folded
 * into the file and truncated; PostgreSQL's pg_database_size (its WAL is the
 * cluster's, recycled, not the database's).  -1 on error. */
long long t_db_bytes(const char *db_path);

/*
 * The key store contract on one backend and algorithm: generate; the JWK has
 * only public members and kid = RFC 7638 thumbprint; JWS verified by our
 * verifier, by the openssl CLI and by node's jose; reload from the stored
 * reference in a fresh key store and sign again; destroy, then signing fails.
 */
void t_keystore_roundtrip(const char *conf, enum cimd_alg alg);
/* key_store_sign_batch: mixed algorithms in one call, each verified; a failing
 * request fails alone; empty and oversized batches refused. */
void t_keystore_batch(const char *conf);

/*
 * A whole appliance under test: a directory of its own (0711, so that other
 * uids reach its sockets), a fresh loopback port, a self-signed TLS certificate
 * for 127.0.0.1 (its own CA), and cimdd started on backend_conf with:
 *   state_dir, base_url https://127.0.0.1:PORT, backend, admin_socket and
 *   sign_socket in DIR/run, listen, tls_cert, tls_key, two_person_rule = no
 *   (unless extra sets it), operator alice = our uid with every role
 * plus extra (more "key = value\n" lines, or NULL).
 */
struct t_cimdd {
	struct t_daemon dm;
	char dir[400];
	char base[64]; /* https://127.0.0.1:PORT */
	int port;
	char ca[600]; /* the certificate to trust */
	char sign_sock[600];
	char db[600];
	char ctl[700]; /* this build's cimdctl */
};
/* No free port is a failed check and a negative return. */
int t_cimdd_start(struct t_cimdd *c, const char *name, const char *backend_conf, const char *extra);
/* The same with base_url set to base_url (a node of a cluster, which
 * publishes under the cluster's URL); c->base stays where its publisher
 * listens. */
int t_cimdd_start_as(struct t_cimdd *c, const char *name, const char *backend_conf,
		     const char *extra, const char *base_url);
/* cimdctl -s ADMIN_SOCKET ARGS (stderr included) into out; its exit status. */
int t_cimdd_ctl(struct t_cimdd *c, char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* cimdctl audit export into c->dir/NAME, then audit verify against the
 * attestation keys in c->dir/ak.json: the verify's exit status and output
 * (-1 with the reason in out when the export failed). */
int t_cimdd_audit(struct t_cimdd *c, const char *name, char *out, size_t len);
/* One SQL text (printf format) run on c's database, by a connection of its
 * own that waits up to 5 s for a lock (WAL: a running daemon keeps serving):
 * 0, or -1 with SQLite's message printed. */
int t_cimdd_sql(struct t_cimdd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Client name: an approved client_credentials document, our uid allowed, aud
 * its audience.  0, or -1 with the failing answer printed. */
int t_cimdd_client(struct t_cimdd *c, const char *name, const char *aud);
/* GET BASE PATH over TLS into DIR/file; the HTTP status.  No complete answer
 * (refused, reset, timed out) is status 0 and an empty file. */
int t_cimdd_fetch(struct t_cimdd *c, const char *path, const char *file);
/* curl -s --cacert CA BASE PATH into out; curl's exit status.  When curl fails,
 * out is empty. */
int t_cimdd_get(struct t_cimdd *c, const char *path, char *out, size_t len);

/* ---- cimdd's sockets, one JSON line each way (tools/lineio.c, as cimdctl
 * and libcimd talk) ---- */

/* A connection to the Unix socket at path: 0 and *ret_fd, or -errno. */
int t_line_connect(const char *path, int *ret_fd);
/* 1 when a Unix socket at path accepts a connection (a daemon is up). */
int t_unix_up(const char *path);
/* Sends req (taken) as one line on fd and reads the whole answer line, as
 * much of it as fits into out (NUL-terminated, without its newline), waiting
 * at most timeout_ms each time the socket is not ready.  0, or -ETIMEDOUT,
 * -ECONNRESET, -EMSGSIZE (over 64 MiB) or another negative code. */
int t_line_call(int fd, json_t *req, char *out, size_t len, int timeout_ms);

#endif
