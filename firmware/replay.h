/*
 * replay.h — the state tables as a function of the journal (docs/audit.md,
 * "The tables and the journal").
 *
 * One implementation, pure (no database, no hardware), used by the daemon's
 * start-up check (service/tables.c) and by `cimdctl audit verify`
 * (tools/audit.c), which both feed it journal records in order.  The records
 * are trusted: the journal's own integrity (chain, tree, checkpoints) is
 * checked elsewhere.  Kinds that change no table, and members a record carries
 * beyond the ones read here (an approved change's "change" and "submitter"),
 * are ignored; so are change.submit and change.reject.
 *
 * The state is a JSON object that both sides compare with what they hold:
 *
 *   {"clients": {NAME: {"owner", "backend", "alg",       client.add
 *                       "ttl": N|null, "rate": N|null,   client.policy
 *                       "degraded": true|false,          reconcile, client.restored
 *                       "callers": {"uid:N"|"gid:N": true},  client.allow/disallow
 *                       "audiences": {AUD: true},        client.audience.add/remove
 *                       "documents": {"V": {"sha256": HEX, "state":
 *                           "submitted"|"approved"|"superseded"}}}},  doc.submit/approve
 *    "keys": {KID: {"client", "backend", "state"}}}     key.create, key.state
 *
 * A `tables.accepted` record (cimdd --accept-tables) carries one difference
 * the operator accepted: {"table", "row", "path": [member, ...], "value"}; the
 * replay sets the member at path to value (null removes it), so that after it
 * the tables stand.  A member absent and a member null are the same.
 */
#ifndef CIMD_REPLAY_H
#define CIMD_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct replay;

int replay_new(struct replay **ret);
void replay_free(struct replay **prp);
/* 1 when records of kind (a record's own "kind") may change the state. */
int replay_governs(const char *kind);
/* Applies one journal record.  0, or -ENOMEM. */
int replay_apply(struct replay *rp, const json_t *rec);
/* The state as the records applied so far leave it (owned by rp). */
const json_t *replay_state(const struct replay *rp);
/* The assertion_max_ttl in force: journaled by the latest config.reload since
 * the latest daemon.start, else 0 (not known: a start reads its configuration
 * without a record). */
int64_t replay_max_ttl(const struct replay *rp);

/*
 * Whether an assertion.issue record agrees with the state in force at it: the
 * client exists, the caller's uid is allowed, or the group the record names
 * ("gid": the group that allowed it) is (a record from before records named
 * the group, whose uid is not allowed while the client allows a gid:
 * *ret_by_gid is then 1 and nothing more can be said), the audience is the client's, the key is the
 * client's and in a state that signs (active or retiring), and 0 < exp - iat <= the
 * assertion_max_ttl in force when it is known.  0, or -CIMD_EVERIFY with the
 * reason in err.
 */
int replay_check_assertion(const struct replay *rp, const json_t *rec, int *ret_by_gid, char *err,
			   size_t errlen);

/*
 * The differences between the state and another of the same shape (what the
 * tables hold), one callback each, with the table and row it names in words
 * ("client_callers: uid 4242 for agent-a is not in the journal"), the path and
 * the value the tables hold there (NULL: absent).  Only "clients" and "keys"
 * are compared.  The number of differences, or -ENOMEM.
 */
typedef int (*replay_diff_fn)(void *arg, const char *table, const char *words, const json_t *path,
			      const json_t *value);
long replay_diff(const struct replay *rp, const json_t *tables, replay_diff_fn fn, void *arg);

#endif
