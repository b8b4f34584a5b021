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
#include <sys/types.h>

#include <jansson.h>

#include "fw.h"

/* ---- bounds: every resource an outside party controls is capped here ---- */

#define CIMD_CONF_MAX (64 * 1024)    /* configuration file */
#define CIMD_CONF_LINE_MAX 1024	     /* one configuration line */
#define CIMD_OPERATORS_MAX 256	     /* operators in the configuration */
#define CIMD_BACKENDS_MAX 4	     /* key store backends in the configuration */
#define CIMD_NAME_MAX 63	     /* client and operator names */
#define CIMD_URL_MAX 512	     /* base_url and every URL a client may name */
#define CIMD_DURATION_MAX 31536000   /* one year, in seconds */
#define CIMD_JOURNAL_RECORD_MAX 8192 /* one journal record, serialised */

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
	char *sign_socket;
	mode_t sign_socket_mode;
	char *listen; /* host:port of the publisher */
	char *tls_cert;
	char *tls_key;
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
	long clock_skew;
	long destroy_delay;
	long rotate_every; /* 0: no scheduled rotation unless a client sets one */
};

/* Reads and checks a configuration file.  On failure errbuf holds
 * "FILE:LINE: reason" (or "FILE: reason") and nothing is returned. */
int config_load(const char *path, struct cimd_config **ret_cfg, char *errbuf, size_t errlen);
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
void store_free(struct store **st);
int store_schema_version(struct store *st);
/* The raw handle, for the store's own modules (clients, documents, keys). */
struct sqlite3 *store_db(struct store *st);

/* Every state change is one transaction: begin, change, journal, commit. */
int store_begin(struct store *st);
int store_commit(struct store *st);
void store_rollback(struct store *st);

/*
 * Appends a journal record inside the current transaction.  The record is the
 * compact JSON object {"seq","time","prev","kind","actor", ...fields}; prev is the
 * hex SHA-256 of the previous record's bytes (64 zeros for the first), and the
 * record's own hash is SHA-256 of its bytes.  fields may be NULL and must not
 * use those five names.  *ret_seq, if not NULL, gets the new sequence number.
 */
int journal_append(struct store *st, const char *kind, const char *actor, const json_t *fields,
		   int64_t *ret_seq);
/* Recomputes the chain; on the first record that does not hold, *ret_bad_seq
 * is set and -CIMD_EVERIFY returned.  *ret_count gets the number of records. */
int journal_verify(struct store *st, int64_t *ret_count, int64_t *ret_bad_seq);
/* Records with seq >= since, oldest first, as a JSON array of the parsed records. */
int journal_list(struct store *st, int64_t since, size_t max, json_t **ret_records);
/* The latest record's seq and hex hash (seq 0 and 64 zeros when empty). */
int journal_head(struct store *st, int64_t *ret_seq, char ret_hash[65]);

#endif /* CIMD_SERVICE_H */
