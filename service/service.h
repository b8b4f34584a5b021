/*
 * service.h — the daemon's one internal header.
 *
 *   bounds                                                    (below)
 *   configuration file, cimdd.conf(5)                         (config.c)
 *   state database and the hash-chained journal               (store.c)
 *
 * Conventions as in firmware/fw.h: 0 or a negative code, ret_* outputs written
 * only on success, x_free(T **).
 */
#ifndef CIMD_SERVICE_H
#define CIMD_SERVICE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "fw.h"
#include "pubset.h"

struct sqlite3;

#define CIMD_VERSION "0.1.0"

/* ---- logging (log.c): stderr in the foreground, syslog otherwise ---- */

void log_init(const char *ident, int foreground);
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- bounds: every resource an outside party controls is capped here ---- */

#define CIMD_CONF_MAX (64 * 1024)    /* configuration file */
#define CIMD_CONF_LINE_MAX 1024	     /* one configuration line */
#define CIMD_OPERATORS_MAX 256	     /* operators in the configuration */
#define CIMD_BACKENDS_MAX 4	     /* key store backends in the configuration */
#define CIMD_NAME_MAX 63	     /* client and operator names */
#define CIMD_URL_MAX 512	     /* base_url and every URL a client may name */
#define CIMD_DURATION_MAX 31536000   /* one year, in seconds */
#define CIMD_JOURNAL_RECORD_MAX 8192 /* one journal record, serialised */
#define CIMD_DOC_MAX 5120	     /* a CIMD document as served */
#define CIMD_ADMIN_LINE_MAX 16384    /* one admin request line (a document and then some) */
#define CIMD_ADMIN_CONNS_MAX 32	     /* admin connections at once */
#define CIMD_ADMIN_IDLE_SEC 60	     /* an admin connection idle this long is closed */
#define CIMD_ADMIN_LINE_SEC 10	     /* a request line must be complete this soon after it begins */
#define CIMD_ADMIN_CONNS_PER_UID 4   /* admin connections one operator uid may hold */
#define CIMD_REFUSAL_LOG_SEC 1	     /* refused connections: one log line per this many seconds */
#define CIMD_CHANGES_PENDING_MAX 1000 /* changes awaiting a second operator (two-person rule) */
#define CIMD_JOURNAL_SHOW_BYTES (1024 * 1024) /* record bytes in one journal.show answer */
#define CIMD_KEYS_PER_CLIENT_MAX 16 /* keys a client holds outside retired/destroyed, per node */
#define CIMD_KEYS_PER_CLIENT_ALL 64 /* and on all nodes together: its JWKS's bound */
#define CIMD_NODE_DEFAULT "local"   /* the node name of a single appliance */
#define CIMD_NODE_HEARTBEAT_SEC 5   /* a node writes its heartbeat this often */
#define CIMD_CLIENTS_MAX 10000
/* Paths the publisher serves: four per client (document, JWKS, attestation,
 * revocations) and the appliance's own.  The publisher's bound is the codec's
 * (pubset.h), which cannot see this header. */
_Static_assert(PUBSET_ENTRIES_MAX == 4 * CIMD_CLIENTS_MAX + 16,
	       "PUBSET_ENTRIES_MAX (pubset.h) follows CIMD_CLIENTS_MAX");
#define CIMD_LIST_PAGE_DEFAULT 100   /* clients in one client.list answer, unless asked */
#define CIMD_LIST_PAGE_MAX 1000	     /* and at most */
#define CIMD_CALLERS_MAX 64	     /* uids and gids allowed to sign for one client */
#define CIMD_AUDIENCES_MAX 64	     /* audiences of one client */
#define CIMD_JOURNAL_SHOW_MAX 1000   /* records in one journal.show answer */
#define CIMD_RATE_MAX 1000000	     /* assertions per second, as a rate limit */
#define CIMD_SIGN_LINE_MAX 4096	     /* one signing request line, without its newline */
#define CIMD_SIGN_CONNS_MAX 8192     /* signing connections at once */
#define CIMD_SIGN_CONNS_PER_UID 2048 /* of which one uid may hold */
#define CIMD_SIGN_IDLE_SEC 60	     /* a signing connection idle this long is closed */
#define CIMD_SIGN_LINE_SEC 5	     /* a request line must be complete this soon */
#define CIMD_SIGN_BATCH 16	     /* signatures handed to one key store at once */
#define CIMD_JOURNAL_BATCH_MAX 1024  /* assertions journaled in one transaction */

/* ---- configuration ---- */

enum cimd_role {
	CIMD_ROLE_SUBMIT = 1 << 0,
	CIMD_ROLE_APPROVE = 1 << 1,
	CIMD_ROLE_ROTATE = 1 << 2,
	CIMD_ROLE_REVOKE = 1 << 3,
	CIMD_ROLE_READ = 1 << 4,
};

struct cimd_operator {
	char name[CIMD_NAME_MAX + 1];
	uid_t uid;
	unsigned roles; /* enum cimd_role bits */
};

struct cimd_backend_conf {
	char name[16]; /* "pkcs11" or "tpm2" */
	char *conf;    /* key store configuration string, firmware/fw.h */
};

struct cimd_config {
	char *path;	 /* the file it was read from */
	char *state_dir; /* database and sockets' default home */
	char *base_url;	 /* https://host[:port], no path */
	char *admin_socket;
	mode_t admin_socket_mode;
	long admin_socket_gid; /* the socket's group, or -1 for the daemon's own */
	char *sign_socket;
	mode_t sign_socket_mode;
	long sign_socket_gid; /* as admin_socket_gid */
	char *listen;	      /* host:port of the publisher */
	char *tls_cert;
	char *tls_key;
	char *export_dir;    /* every publication set also written there, or NULL */
	char *store;	     /* "sqlite" (state_dir/cimdd.db) or "postgresql" */
	char *conninfo;	     /* store = postgresql: a libpq connection string, */
	char *conninfo_file; /* or the file that holds one (0600) */
	/* This cimdd's name among the nodes sharing one database (docs/scaling.md,
	 * "A cluster"): its keys, its hardware, its heartbeat.  CIMD_NODE_DEFAULT
	 * for a single appliance. */
	char node[CIMD_NAME_MAX + 1];
	int allow_http; /* serve plain HTTP (behind a TLS-terminating proxy) */
	int two_person_rule;
	char default_backend[16];
	struct cimd_backend_conf backends[CIMD_BACKENDS_MAX];
	size_t n_backends;
	struct cimd_operator operators[CIMD_OPERATORS_MAX];
	size_t n_operators;
	/* durations, seconds */
	long jwks_max_age;
	long cimd_max_age;
	long assertion_default_ttl;
	long assertion_max_ttl;
	long assertion_rate_limit; /* assertions per second per client, 0: none */
	long clock_skew;
	long destroy_delay;
	long rotate_every;	  /* 0: no scheduled rotation unless a client sets one */
	long checkpoint_interval; /* a signed checkpoint at least this often (tlog.c) */
};

/* Reads and checks a configuration file.  On failure errbuf holds
 * "FILE:LINE: reason" (or "FILE: reason") and nothing is returned. */
int config_load(const char *path, struct cimd_config **ret_cfg, char *errbuf, size_t errlen);
/* The same for a configuration already in memory (len bytes, no NUL inside),
 * reported under label: everything config_load does after reading the file.
 * No I/O but group lookups (admin_socket_group, sign_socket_group). */
int config_parse(const char *label, const char *text, size_t len, struct cimd_config **ret_cfg,
		 char *errbuf, size_t errlen);
void config_free(struct cimd_config **cfg);
/* The operator with this uid, or NULL. */
const struct cimd_operator *config_operator(const struct cimd_config *cfg, uid_t uid);
const struct cimd_backend_conf *config_backend(const struct cimd_config *cfg, const char *name);
/* "submit,approve" -> bits; -EINVAL on an unknown role. */
int config_parse_roles(const char *s, unsigned *ret_roles);
/* Words for role bits, "submit,approve", into buf. */
const char *config_roles_str(unsigned roles, char *buf, size_t len);

/* ---- state database and journal ---- */

struct store;

/* Opens (creating, or migrating forward) the database at path: WAL,
 * synchronous=FULL, foreign keys on.  A database from a newer cimdd is refused. */
int store_open(const char *path, struct store **ret_st, char *errbuf, size_t errlen);
/* The same for an engine by name: "sqlite" (target: a file) or "postgresql"
 * (target: a libpq connection string); then for the configured one (store,
 * conninfo, conninfo_file; state_dir/cimdd.db by default). */
int store_open_engine(const char *engine, const char *target, struct store **ret_st, char *errbuf,
		      size_t errlen);
int store_open_config(const struct cimd_config *cfg, struct store **ret_st, char *errbuf,
		      size_t errlen);
/* "sqlite" or "postgresql". */
const char *store_engine(const struct store *st);
void store_free(struct store **st);
int store_schema_version(struct store *st);
/* Rows changed through this handle since it was opened: a cheap "did anything
 * change" for the publisher. */
int64_t store_changes(struct store *st);
/* The SQLite handle, for the tests that check what the store itself sets
 * (PRAGMAs); service code never reaches past the functions below. */
struct sqlite3 *store_db(struct store *st);
/*
 * Prepared statements with typed parameters: types has one letter per '?':
 *   s  const char *            (text; NULL binds NULL)
 *   i  int64_t
 *   b  const void *, size_t    (blob)
 * store_exec runs a statement that returns no rows and gives the number of rows
 * changed.  store_query prepares one whose rows the caller reads with
 * store_next and the column functions, and hands back with store_done.
 * Statements are prepared once per SQL text and kept: sql should be a
 * constant, or one of a few texts a module builds.
 */
struct store_rows;
int store_exec(struct store *st, const char *sql, const char *types, ...);
int store_query(struct store *st, struct store_rows **ret, const char *sql, const char *types, ...);
/* 1: the next row is there to read; 0: no more rows; -EIO: a database error
 * (a constraint, a lock that did not come within the busy timeout). */
int store_next(struct store_rows *q);
/* Column col (from 0) of the current row.  Text and blobs stay valid until
 * the next store_next or store_done; a NULL is NULL text, 0, and length 0. */
const char *store_text(struct store_rows *q, int col);
int64_t store_int(struct store_rows *q, int col);
const void *store_blob(struct store_rows *q, int col);
size_t store_len(struct store_rows *q, int col);
int store_null(struct store_rows *q, int col);
int store_columns(struct store_rows *q);
/* Resets a statement of store_query for its next use; NULL is ignored. */
void store_done(struct store *st, struct store_rows *q);
/* From another thread: the statement running on st fails at its next step. */
void store_interrupt(struct store *st);
/* The database server is out of reach: what failed may pass when it is back
 * (0 for SQLite, a file). */
int store_lost(struct store *st);
/* The daemon's main handle claims its node's name on the database: -EBUSY
 * (errbuf says so) when another cimdd runs under that name (PostgreSQL; on
 * SQLite the state directory's lock is the claim). */
int store_claim(struct store *st, const char *node, char *errbuf, size_t errlen);
/* 1 while this handle's daemon is the cluster's leader, the one node that
 * signs checkpoints (PostgreSQL: a session lock that passes to another node
 * when it dies; SQLite: always).  Outside a transaction. */
int store_leader(struct store *st);
/* A descriptor for poll(2) that turns readable when another node has marked a
 * change, or -1 (SQLite: no other node); store_notified takes what arrived. */
int store_listen(struct store *st);
int store_notified(struct store *st);
/* Every later statement on st refuses to write. */
int store_read_only(struct store *st);
/* How long a statement waits for another handle's write lock before it fails. */
void store_busy_timeout(struct store *st, int ms);

/* Every state change is one transaction: begin, change, journal, commit. */
int store_begin(struct store *st);
int store_commit(struct store *st);
void store_rollback(struct store *st);
/* A read transaction: the queries between see one snapshot and take the
 * database's lock once rather than once each.  Nothing is written inside. */
int store_read_begin(struct store *st);
void store_read_end(struct store *st);

/*
 * Appends a journal record inside the current transaction (-EINVAL outside
 * one).  The record is the
 * compact JSON object {"seq","time","prev","kind","actor", ...fields}; prev is the
 * hex SHA-256 of the previous record's bytes (64 zeros for the first), and the
 * record's own hash is SHA-256 of its bytes.  fields may be NULL and must not
 * use those five names.  *ret_seq, if not NULL, gets the new sequence number.
 */
int journal_append(struct store *st, const char *kind, const char *actor, const json_t *fields,
		   int64_t *ret_seq);
/* Recomputes the chain and the leaf hashes; on the first record that does not
 * hold, *ret_bad_seq is set and -CIMD_EVERIFY returned (count + 1 when the
 * records hold but the stored tree head is not theirs).  *ret_count gets the number of records. */
int journal_verify(struct store *st, int64_t *ret_count, int64_t *ret_bad_seq);
/* Records with seq >= since, oldest first, as a JSON array of the parsed records
 * (raw: of strings holding each record's exact bytes): at most max records and
 * about max_bytes of record bytes. */
int journal_list(struct store *st, int64_t since, size_t max, size_t max_bytes, int raw,
		 json_t **ret_records);
/* The latest record's seq and hex hash (seq 0 and 64 zeros when empty). */
int journal_head(struct store *st, int64_t *ret_seq, char ret_hash[65]);
/* The journal as a Merkle tree (docs/audit.md): record seq is leaf seq - 1,
 * its leaf hash SHA-256(0x00 || record bytes).  The committed tree's size and
 * root; the leaf hashes of records first..first+count-1 (malloc'd); one record's bytes
 * (malloc'd, NUL-terminated; -ENOENT when there is no such record). */
int journal_tree_head(struct store *st, uint64_t *ret_size, uint8_t ret_root[32]);
int journal_leaves(struct store *st, uint64_t first, uint64_t count, uint8_t (**ret_leaves)[32]);
int journal_record(struct store *st, int64_t seq, char **ret_bytes, size_t *ret_len);
/* The records that can change a table (tables.c), oldest first, column 0
 * their bytes: picked by the kind in those bytes, which the hash chain covers,
 * not by the kind column beside them, which it does not. */
int journal_table_records(struct store *st, struct store_rows **ret);

/* ---- CIMD documents (cimd_doc.c) ---- */

/*
 * Checks a submitted document and fills in the identity members the appliance
 * owns (client_id, jwks_uri, token_endpoint_auth_method = private_key_jwt,
 * token_endpoint_auth_signing_alg).  A document that sets any of them to another
 * value is refused, never rewritten.  On success *ret_bytes (malloc'd) is the
 * document as it will be served.  On failure errbuf says which rule failed.
 */
int cimd_doc_prepare(const json_t *doc, const char *client_id, const char *jwks_uri,
		     const char *alg, char **ret_bytes, size_t *ret_len, char *errbuf,
		     size_t errlen);
/* [a-z0-9][a-z0-9-]{0,62} */
int cimd_valid_name(const char *name);
/* An absolute https URL with a host, no userinfo, no fragment, no spaces. */
int cimd_https_url(const char *member, const char *url, char *errbuf, size_t errlen);

/* ---- JWK Sets from the database (jwks.c) ---- */

/* {"keys":[...]} of the JWK text in column 0 of each row of s, which it
 * hands back (store_done); NULL when out of memory. */
json_t *jwks_rows(struct store *st, struct store_rows *s);
/* A client's keys in states next, active, retiring: the JWKS bytes as its
 * jwks_uri serves them (malloc'd), or NULL. */
char *jwks_client(struct store *st, const char *client);

/* ---- custody: the key stores (custody.c) ---- */

/*
 * The one holder of the key stores: the configured backends (by index into
 * cfg->backends, and by name), opening them, whether each answers, and how
 * many hardware calls failed.  A store is NULL while it is not open.
 */
struct custody;
int custody_new(const struct cimd_config *cfg, struct custody **ret);
void custody_free(struct custody **c);
/* Start-up: the TPM opens on the caller's thread, the others in a thread of
 * their own until custody_open_join installs them (failures are logged). */
void custody_open_start(struct custody *c);
void custody_open_join(struct custody *c);
/* Opens what is not open, quietly: 1 when one opened. */
int custody_open_missing(struct custody *c);
size_t custody_count(const struct custody *c);
const char *custody_name(const struct custody *c, size_t i);
/* The index of a backend by name, or -1. */
int custody_index(const struct custody *c, const char *backend);
/* The TPM backend's index (the journal's rollback counter), or -1. */
int custody_tpm(const struct custody *c);
/* A backend's open store, or NULL; from any thread. */
struct key_store *custody_at(struct custody *c, size_t i);
struct key_store *custody_store(struct custody *c, const char *backend);
/* 1 the hardware answered the last probe, 0 it did not, -1 not probed yet. */
int custody_health(const struct custody *c, size_t i);
/* The key a backend's probe signs with: 0 and *ret_key, -ENOENT when there
 * is none yet (an open store is then healthy), -EAGAIN when it cannot be
 * known now (the database is out of reach: the backend is not judged),
 * another code on failure. */
typedef int (*custody_key_fn)(void *arg, size_t i, struct key_store *ks, struct ks_key **ret_key);
/* Signs with each open backend's key; 1 when any backend's health changed
 * (logged). */
int custody_probe(struct custody *c, custody_key_fn key_of, void *arg);
/* A hardware call failed; how many have, for /metrics. */
void custody_failed(struct custody *c);
unsigned long custody_failures(const struct custody *c);

/* ---- the daemon's state: registry, keys, lifecycle (registry.c, keys.c) ---- */

/*
 * What the modules work on, given to each when it is made: the configuration
 * (a reload changes its durations in place: cimdd.c), the database and the
 * key stores.  The daemon as a whole (struct svc: these, the signer, the
 * transparency log, the loop) is cimdd.c's alone.
 */
struct svc {
	struct cimd_config *cfg;
	struct store *st;
	struct custody *custody; /* the key stores (custody.c) */
	int node_revoked;	 /* another node revoked this one (nodes.c): no new key */
};

/* ---- the protocol's error names, both sockets (proto_err.c) ---- */

/* One table for docs/protocol.md's error names: what either socket answers in
 * "error" and what the signer's metrics count under "result".  The signing
 * socket's come first: its counters are indexed by them, up to PE_SIGN_N. */
enum proto_err {
	PE_OK = 0,
	PE_BAD_REQUEST,
	PE_TOO_LARGE,
	PE_FORBIDDEN,
	PE_UNKNOWN_CLIENT,
	PE_AUDIENCE,
	PE_NO_ACTIVE_KEY,
	PE_UNAVAILABLE,
	PE_RATE_LIMITED,
	PE_INTERNAL,
	PE_NOT_FOUND,
	PE_NOT_CHECKPOINTED,
	PE_SIGN_N, /* the signing socket answers only the codes above */
	PE_CONFLICT = PE_SIGN_N,
	PE_INVALID_DOCUMENT,
	PE_N
};
/* The name on the wire; "internal" for a code out of range. */
const char *proto_err_name(enum proto_err e);

/*
 * The admin operations' domain functions (docs/protocol.md names the
 * operations; the wire handlers that decode, call and encode are in
 * admin_ops.c).  They take C values and return 0 or a negative code:
 *   -EINVAL            an input breaks a rule
 *   -CIMD_ENOCLIENT    no client by that name
 *   -ENOENT, -EAGAIN   no such thing (version, key, record), or not yet
 *   -EEXIST, -EMLINK, -ESTALE, -EBUSY   a conflict with what exists
 *   -EPERM             the two-person rule, or a change that is not the
 *                      operator's to withdraw
 *   -CIMD_EDOCUMENT    the document breaks a rule of docs/governance.md
 *   -CIMD_EUNAVAILABLE the hardware is away
 *   another code       the database or memory failed
 * and on failure the words an operator is told in err (which the caller
 * empties first).  actor is the operator the journal records name.
 */
enum {
	CIMD_ESVC = 2000, /* the daemon's own codes, beyond firmware's (fw.h) */
	CIMD_ENOCLIENT,	  /* no client by that name */
	CIMD_EDOCUMENT,	  /* a CIMD document breaks a rule */
};

/* Words that both a wire handler (a member of the wrong type) and its domain
 * function (a value out of range) say, so that an operator reads one sentence
 * for one rule. */
#define REG_ROTATE_EVERY_WORDS                                                                     \
	"rotate_every must be 0 (never) or more than jwks_max_age (%ld) seconds, up to %d"
#define REG_AFTER_WORDS "after must be a client name ([a-z0-9][a-z0-9-]{0,62})"
#define REG_LIMIT_WORDS "limit must be an integer from 1 to %d"
#define REG_TTL_WORDS "ttl must be 0 (the default, %ld s) to assertion_max_ttl (%ld s)"
#define REG_RATE_WORDS "rate must be 0 (no limit) to %d assertions per second"
#define REG_VERSION_WORDS "version must be 1, 2, ..."
#define TLOG_AFTER_WORDS "after must be an id (0 or more)"

/* A document version as an operation left it (hex SHA-256 of its bytes). */
struct reg_doc_result {
	int64_t version;
	const char *state; /* "submitted", "approved" (a constant) */
	char sha256[65];
};

/* client.add: the client, its first key in hardware (*ret_kid) and document
 * version 1 (*ret_doc).  backend NULL: the configuration's default; alg NULL:
 * ES256; rotate_every NULL: the appliance's period; metadata the document. */
int reg_client_add(struct svc *d, const char *actor, const char *name, const char *owner,
		   const char *backend, const char *alg, const int64_t *rotate_every,
		   const json_t *metadata, char ret_kid[CIMD_KID_LEN + 1],
		   struct reg_doc_result *ret_doc, char *err, size_t errlen);
/* client.list: up to *limit (NULL: CIMD_LIST_PAGE_DEFAULT) clients whose
 * names sort after `after` (NULL: from the first); ret_next the last one's
 * name when others follow, else "". */
int reg_client_page(struct svc *d, const char *after, const int64_t *limit, json_t **ret_clients,
		    char ret_next[CIMD_NAME_MAX + 1], char *err, size_t errlen);
/* client.show: the client, its callers, audiences, documents and policy. */
int reg_client_show(struct svc *d, const char *name, json_t **ret_client, char *err, size_t errlen);
/*
 * client.allow, client.policy and client.audience decide who may sign as a
 * client and for which audience.  With the two-person rule off they are made
 * at once (*ret_change 0); with it on they are checked, tried and proposed
 * (a change.submit record), and *ret_change is the pending change's id: another
 * operator with the approve role makes it with reg_change_approve.
 */
/* client.allow: kind "uid" or "gid" id may sign for name (remove: no longer). */
int reg_client_allow(struct svc *d, const char *actor, const char *name, const char *kind,
		     int64_t id, int remove, int64_t *ret_change, char *err, size_t errlen);
/* client.policy: ttl and rate (NULL: unchanged; 0: the configuration's). */
int reg_client_policy(struct svc *d, const char *actor, const char *name, const int64_t *ttl,
		      const int64_t *rate, int64_t *ret_change, char *err, size_t errlen);
/* client.audience: one of add and del, the other NULL. */
int reg_client_audience(struct svc *d, const char *actor, const char *name, const char *add,
			const char *del, int64_t *ret_change, char *err, size_t errlen);
/* change.list: the pending changes (of client name; NULL: of all), oldest
 * first: [{"id","client","op","fields","submitter","submitted"}]. */
int reg_change_list(struct svc *d, const char *name, json_t **ret_changes, char *err,
		    size_t errlen);
/* change.approve: change id made, by an operator other than its submitter
 * while the rule is on; its operation's own record with "change" and
 * "submitter".  *ret_change {"id","client","op","state"}. */
int reg_change_approve(struct svc *d, const char *actor, int64_t id, json_t **ret_change, char *err,
		       size_t errlen);
/* change.reject: change id withdrawn by its submitter or rejected by another
 * operator who may (may_reject_others: holds the approve role), with a reason. */
int reg_change_reject(struct svc *d, const char *actor, int may_reject_others, int64_t id,
		      const char *reason, char *err, size_t errlen);
/* doc.submit, doc.approve: a new version; approving one. */
int reg_doc_submit(struct svc *d, const char *actor, const char *name, const json_t *metadata,
		   struct reg_doc_result *ret_doc, char *err, size_t errlen);
int reg_doc_approve(struct svc *d, const char *actor, const char *name, int64_t version,
		    struct reg_doc_result *ret_doc, char *err, size_t errlen);
/* doc.show: version *version (NULL: the approved one, else the latest). */
int reg_doc_show(struct svc *d, const char *name, const int64_t *version, json_t **ret_document,
		 char *err, size_t errlen);

/* key.list: the client's keys, oldest first. */
int keys_list(struct svc *d, const char *name, json_t **ret_keys, char *err, size_t errlen);
/* key.rotate: a next key, which may be activated from *ret_activate_after. */
int keys_rotate(struct svc *d, const char *actor, const char *name, char ret_kid[CIMD_KID_LEN + 1],
		int64_t *ret_activate_after, char *err, size_t errlen);
/* key.activate: the next key (which must be kid, unless NULL); force: before
 * it has been published for jwks_max_age (*ret_forced: it was). */
int keys_activate(struct svc *d, const char *actor, const char *name, const char *kid, int force,
		  char ret_kid[CIMD_KID_LEN + 1], int *ret_forced, char *err, size_t errlen);
/* key.revoke: kid revoked at once (replace: a new active key made too).  On
 * success err holds a note when a later step failed (else ""). */
struct keys_revoked {
	char replacement[CIMD_KID_LEN + 1]; /* "" without one */
	int client_has_active_key;
};
int keys_revoke(struct svc *d, const char *actor, const char *name, const char *kid,
		const char *reason, int replace, struct keys_revoked *ret, char *err,
		size_t errlen);

/* A key for client made in hardware under a committed intent (keys.c): the
 * caller records the key and deletes the intent row (tag) in one transaction,
 * or, failing, destroys the key and calls keys_intent_drop. */
int keys_generate(struct svc *d, const char *client, const char *backend, const char *alg,
		  char ret_tag[CIMD_TAG_MAX + 1], struct ks_key **ret_key);
void keys_intent_drop(struct svc *d, const char *tag);
/* The same for an attestation key of backend (attest.c records it). */
int keys_generate_attest(struct svc *d, const char *backend, char ret_tag[CIMD_TAG_MAX + 1],
			 struct ks_key **ret_key);
/* Inserts the row of a new key (with its public JWK) inside an open transaction;
 * the number of rows inserted (1) or a negative code. */
int keys_insert(struct svc *d, const char *client, const char *alg, const char *backend,
		struct ks_key *key, const char *state);

/* client_id of NAME: base_url + "/clients/" + NAME, into buf. */
const char *reg_client_id(const struct cimd_config *cfg, const char *name, char *buf, size_t len);
/* jwks_uri of NAME: client_id + "/jwks.json", into buf. */
const char *reg_jwks_uri(const struct cimd_config *cfg, const char *name, char *buf, size_t len);

/* At start, before anything is published or signed: the tables replayed from
 * the journal (tables.c).  A difference is -CIMD_EVERIFY with the first named
 * in err (each is logged), or, with accept, each journaled as a
 * tables.accepted record, after which the tables stand. */
int tables_check(struct svc *d, int accept, char *err, size_t errlen);

/* Runs the lifecycle's timed transitions (retire, destroy, scheduled rotation);
 * called about once a second.  Returns the number of transitions made. */
int keys_tick(struct svc *d, time_t now);
/* A changed client (publish.c): if this node holds no key of it yet (a client
 * made on another node), the scheduler makes this node's first. */
void keys_adopt_check(struct svc *d, const char *client);
/* The backend this node keeps a client's keys in: the client's, when this
 * node has it, else this node's default_backend (a cluster's nodes may hold
 * different hardware: a TPM on one host, an HSM on another). */
const char *keys_node_backend(const struct svc *d, const char *client_backend);
/* Revokes every key of node (next, active, retiring, retired) inside an open
 * transaction, each journaled; *ret_n: how many (nodes.c, node revoke). */
int keys_revoke_node(struct svc *d, const char *actor, const char *node, const char *reason,
		     int64_t *ret_n);

/* ---- the nodes of a cluster (nodes.c) ---- */

/* Registers this node at start (node.join the first time); -EPERM, with the
 * reason in err, for a node that was revoked. */
int nodes_join(struct svc *d, char *err, size_t errlen);
/* The heartbeat, every CIMD_NODE_HEARTBEAT_SEC; -EPERM (logged) once another
 * node has revoked this one: the daemon stops. */
int nodes_heartbeat(struct svc *d, time_t now);
/* [{"name","hardware","joined","heartbeat","keys","this"[,"revoked",
 * "revoke_reason"]}] */
int nodes_list(struct svc *d, json_t **ret, char *err, size_t errlen);
/* Revokes another node and every key it holds, in one journaled step. */
int nodes_revoke(struct svc *d, const char *actor, const char *name, const char *reason,
		 int64_t *ret_keys, char *err, size_t errlen);
/* At start: every key the database holds must exist in its hardware; a missing
 * one is reported and its client marked degraded.  Returns how many are missing. */
int keys_reconcile(struct svc *d);
/* The active attestation key of backend, loaded, and its kid; -ENOENT when
 * it has none, -CIMD_EUNAVAILABLE when the backend is not open. */
int keys_attest_active(struct svc *d, const char *backend, char ret_kid[CIMD_KID_LEN + 1],
		       struct ks_key **ret_key);
/* custody_probe's key: backend i's active attestation key (arg: the daemon). */
int keys_probe_key(void *arg, size_t i, struct key_store *ks, struct ks_key **ret_key);
/* A degraded client whose published keys are all in the hardware again is
 * restored (journal client.restored): 1 restored, 0 still degraded. */
int keys_recheck_degraded(struct svc *d, const char *client, const char *actor);

/* ---- publication (publish.c; the publisher is publisher/) ---- */

struct publication;
/* What is published and the publisher process (publish.c): starts the
 * publisher when `listen` is configured, prepares export_dir when it is. */
struct tlog;
struct signer;
int publication_new(struct svc *d, struct tlog *tl, struct publication **ret);
/* main(), before any thread: CAP_SETUID and CAP_SETGID (granted by the unit to
 * start the publisher as its own user) leave the effective and ambient sets of
 * the first thread, which every later thread inherits (docs/operations.md). */
void publication_caps_init(void);
/* The signer, once started, is told which clients changed. */
void publication_set_signer(struct publication *p, struct signer *sg);
void publication_free(struct publication **p);
/* One turn of the main loop: the changes marked since the last turn (the
 * signer's cached policies dropped, attestations issued, what changed
 * recorded and handed on), a publisher started again when its backoff is
 * over, health and metrics.  1 when changes remain for the next turn. */
/* What the custody process puts in /metrics (malloc'd text), asked for
 * whenever the health or the gauges change. */
typedef char *(*publication_metrics_fn)(void *arg);
void publication_set_metrics(struct publication *p, publication_metrics_fn fn, void *arg);
/* At start-up: the publisher started and the full table handed to it, from
 * the database alone (no hardware, no attestation issued). */
int publication_start(struct publication *p);
int publication_step(struct publication *p);
/* SIGCHLD: a publisher that died is started again after its backoff. */
void publication_child(struct publication *p);
/* The hardware's health changed: /healthz at the next turn. */
void publication_health(struct publication *p);
/* Durations changed (SIGHUP): everything is rendered again. */
void publication_reconfigured(struct publication *p);

/* ---- development instance (dev.c) ---- */

/* Makes (first time) or reuses the instance in dir; *ret_conf is its
 * configuration file.  Sets SOFTHSM2_CONF for this process. */
int dev_prepare(const char *dir, const char *backend, int port, char *ret_conf, size_t len,
		char *errbuf, size_t errlen);
/* Starts what the instance needs beside cimdd: its swtpm simulator, when it has
 * one (*ret_swtpm is then its pid, else 0). */
int dev_start(const char *dir, pid_t *ret_swtpm, char *errbuf, size_t errlen);
/* A loopback port p with p and p + 1 free now (swtpm: commands, control), from
 * below the kernel's ephemeral range; -EADDRNOTAVAIL when every pair is taken. */
int dev_free_port_pair(void);
/* swtpm on 127.0.0.1:port and port + 1, its state in dir, output to log; it
 * dies with its parent.  Returns when both ports answer. */
int dev_swtpm_spawn(const char *state_dir, int port, const char *log, pid_t *ret_pid);

/* ---- attestations (attest.c) ---- */

/* Each open backend gets an attestation key if it has none (first start, or a
 * backend that came up later).  Returns how many were made. */
int attest_keys_ensure(struct svc *d);
/* Attestation keys loaded once for a batch of attest_client calls. */
struct attest_batch {
	struct {
		char kid[CIMD_KID_LEN + 1];
		struct ks_key *key;
		int state; /* 0 not tried, 1 loaded, -1 unavailable */
	} ak[CIMD_BACKENDS_MAX];
};
/* Issues the attestation of client name if what it states changed since its
 * latest one, and the signed record of each of its revoked keys that has none
 * by its backend's active attestation key.  0, or < 0 when the hardware
 * refused or is not there (the caller tries again later). */
int attest_client(struct svc *d, struct attest_batch *b, const char *name);
void attest_batch_end(struct attest_batch *b);
/* Retires the attestation keys that no current record names (cheap unless an
 * attestation key is retiring). */
void attest_retire_unused(struct svc *d);
/* The latest attestation envelope of name if its subjects are these digests
 * (hex SHA-256 of the served CIMD and JWKS bytes), else NULL; malloc'd. */
char *attest_envelope(struct svc *d, const char *name, const char *cimd_hex, const char *jwks_hex);
/* {"revocations":[envelope...]} of name; {"keys":[...]} of the attestation
 * keys in states active and retiring.  malloc'd. */
char *attest_revocations(struct svc *d, const char *name);
char *attest_keys_jwks(struct svc *d);
/* attest.show: name's latest attestation envelope, its journal record and
 * when it was issued. */
int attest_show(struct svc *d, const char *name, json_t **ret_envelope, int64_t *ret_seq,
		int64_t *ret_issued, char *err, size_t errlen);
/* attest_key.rotate: a new active attestation key on backend (NULL: the
 * default; *ret_backend the one used). */
int attest_key_rotate(struct svc *d, const char *actor, const char *backend,
		      const char **ret_backend, char ret_kid[CIMD_KID_LEN + 1], char *err,
		      size_t errlen);

/* ---- the transparency log: checkpoints and proofs (tlog.c, docs/audit.md) ---- */

struct tlog;
/* At start, after the key stores and attestation keys: the latest checkpoint
 * and the proof tree up to it; on a TPM backend, the rollback check against
 * the TPM's counter (-CIMD_EVERIFY, err saying why, when the database is older
 * than the TPM). */
int tlog_open(struct svc *d, int accept_rollback, struct tlog **ret, char *err, size_t errlen);
void tlog_free(struct tlog **tl);
/* The rollback check, when the TPM opened after start: 0 passed (or no TPM),
 * -CIMD_EVERIFY rollback (logged: the daemon must stop), another code: not yet. */
int tlog_check_rollback(struct svc *d, struct tlog *tl);
/* Once a second: a checkpoint when checkpoint_interval has passed since the
 * last one and the journal grew beyond it (force: whenever it grew).  1 when
 * one was issued, 0 when none was due, a negative code when it could not be
 * (-CIMD_EVERIFY: rollback found, the daemon must stop). */
int tlog_tick(struct svc *d, struct tlog *tl, int force);
/* The latest signed checkpoint (malloc'd), NULL when there is none yet. */
/* The latest checkpoint in the database becomes the one served (a cluster's
 * leader signs them; the other nodes follow). */
void tlog_follow(struct svc *d, struct tlog *tl);
char *tlog_checkpoint(struct tlog *tl);
/* Its tree size and issue time (0 and 0 before the first), for /metrics. */
void tlog_latest(struct tlog *tl, uint64_t *ret_size, time_t *ret_issued);
/* {"seq","leaf_index","tree_size","record","proof":[base64...],"checkpoint"}:
 * record seq's inclusion proof in the latest checkpoint, read through st
 * (any handle: the signer's reader calls it from its own thread); record
 * (record_len bytes) its bytes when the caller has read them, else NULL.
 * -ENOENT no such record, -EAGAIN not covered by a checkpoint yet. */
int tlog_inclusion(struct tlog *tl, struct store *st, int64_t seq, const char *record,
		   size_t record_len, json_t **ret);
/* {"old_size","tree_size","proof":[...],"checkpoint"}: a consistency proof
 * from a tree of old_size records to the latest checkpoint. */
int tlog_consistency(struct tlog *tl, struct store *st, uint64_t old_size, json_t **ret);
/* journal.prove and journal.consistency: tlog_inclusion and
 * tlog_consistency with the words an operator is told. */
int tlog_prove(struct svc *d, struct tlog *tl, int64_t seq, json_t **ret, char *err, size_t errlen);
int tlog_prove_consistency(struct svc *d, struct tlog *tl, int64_t old_size, json_t **ret,
			   char *err, size_t errlen);
/* audit.export: one page of kind (checkpoints, publications, attestations,
 * revocations or attest_keys: attestation keys, all ever), oldest first,
 * after id `after`; *ret_next the id to ask after for the next page, -1 when
 * none follows. */
int tlog_export(struct svc *d, const char *kind, int64_t after, json_t **ret_items,
		int64_t *ret_next, char *err, size_t errlen);

/* ---- signing socket (signer.c, sign_request.c) ---- */

/* One request line, parsed and checked (sign_request.c): a JSON object with
 * exactly op ("assert"), client_id and aud (strings) and optionally ttl (whole
 * seconds, 1..max_ttl).  The strings point into json, which the request holds. */
#define CIMD_JTI_MAX 64 /* a jti in a receipt request (ours are 22 characters) */
struct sign_request {
	json_t *json;
	enum { SIGN_OP_ASSERT, SIGN_OP_RECEIPT } op;
	const char *jti; /* receipt */
	const char *client_id;
	const char *aud;
	long ttl; /* 0: the request names none */
};
/* 0 and *ret_req filled (release with sign_request_clear), or -EINVAL with the
 * reason the peer is told in msg.  No I/O, no state: fuzzed on its own. */
int sign_request_parse(const char *line, size_t len, long max_ttl, struct sign_request *ret_req,
		       char *msg, size_t msglen);
void sign_request_clear(struct sign_request *req);

struct signer;
/* Opens sign.sock and starts its threads (io, one per backend, journal). */
int signer_start(struct svc *d, struct tlog *tl, struct signer **ret, char *err, size_t errlen);
void signer_stop(struct signer **s);
/* The custody state changed: cached client policies are read again. */
void signer_invalidate(struct signer *s);
/* The configuration was (re)loaded: lifetimes and rate limits. */
void signer_configure(struct signer *s, const struct cimd_config *cfg);
/* Requests answered so far (to tell when metrics moved). */
uint64_t signer_answers(struct signer *s);
/* Client name changed: its cached policy is read again at its next request. */
void signer_invalidate_client(struct signer *s, const char *name);
/* Nothing is published (no listen, no export_dir): every key may sign.
 * Otherwise a key signs only once a JWKS naming it was recorded as handed on
 * (keys.published, publish.c), so that no assertion is handed out that its
 * verifier cannot check yet (a replacement activated at once by a revocation). */
void signer_publish_nothing(struct signer *s);
/* Appends the signer's Prometheus metrics to f. */
int signer_metrics(struct signer *s, FILE *f);

/* ---- /metrics (metrics.c) ---- */

/* The custody process's part of /metrics from its four inputs (tl and sg may
 * be NULL): keys by state, journal size, the latest checkpoint, each
 * backend's health and failures, the signer's counters.  malloc'd. */
char *metrics_render(struct store *st, struct custody *c, struct tlog *tl, struct signer *sg);

/* ---- listening Unix sockets (unixsock.c) ---- */

/* Binds and listens on path (non-blocking, close-on-exec) with mode and group
 * (gid -1: the daemon's own); a stale socket is replaced, a live one refused. */
int unix_listen(const char *path, mode_t mode, long gid, int backlog, int *ret_fd, char *err,
		size_t errlen);

/* ---- bounded line server (lineserv.c): admin.sock and sign.sock ---- */

/* One connection of a line server: who the kernel says the peer is, its
 * input (at most max + 1 bytes: a line and its newline, or proof that the line
 * is too long) and its answers not yet written.  Written by the thread that
 * serves the socket only. */
struct ls_conn {
	int fd; /* -1: a free slot */
	struct ucred cred;
	char *in;
	size_t in_len;
	char *out;
	size_t out_len, out_off;
	time_t last;	   /* the last request line or read */
	time_t line_start; /* when the unfinished line in `in` began */
	int closing;	   /* close once out is written */
};
/* Open connections per uid, for a cap per uid (sorted, by binary search). */
struct ls_uids {
	struct ls_uid_count {
		uid_t uid;
		unsigned n;
	} * v;
	size_t n, cap;
};

/* Room for cap different uids (a socket's connection limit). */
int ls_uids_init(struct ls_uids *u, size_t cap);
void ls_uids_free(struct ls_uids *u);
/* Connections uid holds. */
unsigned ls_uids_count(const struct ls_uids *u, uid_t uid);
/* Counts one more connection of uid: 1, or 0 when uid holds max already. */
int ls_uids_take(struct ls_uids *u, uid_t uid, unsigned max);
void ls_uids_release(struct ls_uids *u, uid_t uid);
/* Refused connections, logged at most once per interval: a connect loop
 * must not write a log line per connection (issue 15: 846,196 lines in 8 s).
 * The first refusal after a quiet interval is logged as it happens; those
 * that follow are counted and said in one line per interval. */
struct ls_refusals {
	time_t since;	 /* when the last line was logged */
	unsigned long n; /* refusals counted since, not logged */
	uid_t last_uid;	 /* the latest refused peer's uid */
};
/* A refusal of uid at now: 1 when it is to be logged now, 0 when counted. */
int ls_refusal_note(struct ls_refusals *r, uid_t uid, time_t now, long interval);
/* 1 and *ret_n (the count, then reset) when refusals were counted and the
 * interval since the last line is over: the caller logs one line. */
int ls_refusal_due(struct ls_refusals *r, time_t now, long interval, unsigned long *ret_n);
/* One waiting connection, non-blocking and close-on-exec, with the peer's
 * credentials (SO_PEERCRED).  -EAGAIN when none waits, -ENOTCONN when one was
 * taken and closed without its credentials (accept(2) never says ENOTCONN),
 * accept(2)'s own code otherwise. */
int ls_accept(int lfd, int *ret_fd, struct ucred *ret_cred);
/* c (free) takes fd. */
void ls_conn_open(struct ls_conn *c, int fd, const struct ucred *cred, time_t now);
/* Closes fd, frees the buffers and leaves c a free slot (fd -1). */
void ls_conn_close(struct ls_conn *c);
/* One read(2) into what is left of max + 1 bytes: the bytes read, -EAGAIN or
 * -EINTR (try later, or again), or another negative code: the peer is gone
 * (-ECONNRESET at its end of file). */
int ls_conn_read(struct ls_conn *c, size_t max, time_t now);
/* The first complete line (without its newline), or NULL. */
const char *ls_conn_line(const struct ls_conn *c, size_t *ret_len);
/* Drops the first line (len bytes and the newline). */
void ls_conn_consume(struct ls_conn *c, size_t len, time_t now);
/* More than max bytes and no newline: a line over the cap. */
int ls_conn_overlong(const struct ls_conn *c, size_t max);
/* A line begun and not finished within line_sec, or nothing for idle_sec. */
int ls_conn_stalled(const struct ls_conn *c, time_t now, long line_sec, long idle_sec);
/* Queues n bytes of answer. */
int ls_conn_send(struct ls_conn *c, const char *text, size_t n);
/* Writes what is queued until done or the peer must read first: 1 when
 * something was written, 0 when nothing was, -EPIPE when the peer is gone. */
int ls_conn_flush(struct ls_conn *c);

/* ---- admin socket (admin.c) and its wire handlers (admin_ops.c) ---- */

/* The admin socket's error names: a subset of the protocol's (proto_err.c);
 * admin_ops.c maps the domain functions' codes to them. */
enum admin_err {
	AE_OK = PE_OK,
	AE_BAD_REQUEST = PE_BAD_REQUEST,
	AE_FORBIDDEN = PE_FORBIDDEN,
	AE_UNKNOWN_CLIENT = PE_UNKNOWN_CLIENT,
	AE_NOT_FOUND = PE_NOT_FOUND,
	AE_CONFLICT = PE_CONFLICT,
	AE_INVALID_DOCUMENT = PE_INVALID_DOCUMENT,
	AE_BACKEND_UNAVAILABLE = PE_UNAVAILABLE,
	AE_INTERNAL = PE_INTERNAL,
};
const char *admin_err_name(enum admin_err e);

struct admin_req {
	struct svc *d;
	struct tlog *tlog; /* proofs and the audit bundle */
	const struct cimd_operator *op;
	const json_t *args;
	json_t *result; /* set by the handler on success */
	char msg[512];	/* set by the handler on failure (and may be on success) */
};

/* The wire handlers (admin_ops.c): each decodes the request's members, calls
 * its domain function and encodes the answer; admin.c's table names them. */
enum admin_err admin_op_status(struct admin_req *q);
enum admin_err admin_op_client_add(struct admin_req *q);
enum admin_err admin_op_client_list(struct admin_req *q);
enum admin_err admin_op_client_show(struct admin_req *q);
enum admin_err admin_op_client_allow(struct admin_req *q);
enum admin_err admin_op_client_audience(struct admin_req *q);
enum admin_err admin_op_client_policy(struct admin_req *q);
enum admin_err admin_op_change_list(struct admin_req *q);
enum admin_err admin_op_change_approve(struct admin_req *q);
enum admin_err admin_op_change_reject(struct admin_req *q);
enum admin_err admin_op_attest_show(struct admin_req *q);
enum admin_err admin_op_attest_key_rotate(struct admin_req *q);
enum admin_err admin_op_doc_submit(struct admin_req *q);
enum admin_err admin_op_doc_approve(struct admin_req *q);
enum admin_err admin_op_doc_show(struct admin_req *q);
enum admin_err admin_op_key_list(struct admin_req *q);
enum admin_err admin_op_key_rotate(struct admin_req *q);
enum admin_err admin_op_key_activate(struct admin_req *q);
enum admin_err admin_op_key_revoke(struct admin_req *q);
enum admin_err admin_op_node_list(struct admin_req *q);
enum admin_err admin_op_node_revoke(struct admin_req *q);
enum admin_err admin_op_journal_show(struct admin_req *q);
enum admin_err admin_op_journal_verify(struct admin_req *q);
enum admin_err admin_op_journal_prove(struct admin_req *q);
enum admin_err admin_op_journal_consistency(struct admin_req *q);
enum admin_err admin_op_audit_export(struct admin_req *q);

struct admin_server;
int admin_server_new(struct svc *d, struct tlog *tl, struct admin_server **ret_srv, char *errbuf,
		     size_t errlen);
void admin_server_free(struct admin_server **srv);
/* poll(2) set: fills at most max entries, returns how many. */
size_t admin_server_pollfds(struct admin_server *srv, struct pollfd *fds, size_t max);
/* Whether a complete request waits to be answered (poll without sleeping). */
int admin_server_busy(const struct admin_server *srv);
/* Handles what the poll said; closes idle connections. */
void admin_server_dispatch(struct admin_server *srv, const struct pollfd *fds, size_t n);

#endif /* CIMD_SERVICE_H */
