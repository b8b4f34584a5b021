/*
 * nodes.c — the nodes of a cluster (docs/scaling.md, "A cluster"): several
 * cimdd sharing one PostgreSQL database, each with its own key store
 * hardware and its own name (`node` in cimdd.conf; "local" for a single
 * appliance, whose database has that one node).
 *
 * A node registers at start (a node.join record the first time), writes a
 * heartbeat every CIMD_NODE_HEARTBEAT_SEC, and holds its own keys of every
 * client (keys.c).  `cimdctl node revoke NAME` is for a stolen or broken
 * host: in one transaction, every key the node holds is revoked (one key.state
 * record each, under one node.revoke record), its attestation keys leave
 * attestation-keys.json, and the node is marked revoked.  A revoked node that
 * still runs sees it at its next heartbeat and stops; it is refused at every
 * later start.  A host that comes back joins under a new name, with new keys.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "service.h"

/* "pkcs11 tpm2": the kinds of hardware the node's configuration names. */
static void hardware_of(const struct cimd_config *c, char *out, size_t len)
{
	size_t i, n = 0;

	out[0] = '\0';
	for (i = 0; i < c->n_backends && n < len; i++)
		n += (size_t)snprintf(out + n, len - n, "%s%s", i ? " " : "", c->backends[i].name);
}

/* Why a revoked node may not run, into err. */
static int refuse_revoked(struct store_rows *s, const char *node, char *err, size_t errlen)
{
	return cimd_fail(err, errlen, -EPERM,
			 "node %s was revoked at %lld by %s (%s): a revoked node signs nothing "
			 "again; start this host under a new node name",
			 node, (long long)store_int(s, 0), store_text(s, 1), store_text(s, 2));
}

int nodes_join(struct svc *d, char *err, size_t errlen)
{
	const struct cimd_config *c = d->cfg;
	struct store_rows *s = NULL;
	char hw[128];
	int64_t now = (int64_t)time(NULL);
	json_t *f = NULL;
	int rc, r = 0;

	hardware_of(c, hw, sizeof(hw));
	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (store_query(d->st, &s,
			"SELECT revoked, revoked_by, revoke_reason FROM nodes WHERE name = ?", "s",
			c->node) < 0) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	if ((rc = store_next(s)) > 0 && !store_null(s, 0))
		r = refuse_revoked(s, c->node, err, errlen);
	store_done(d->st, s);
	if (r < 0 || rc < 0) {
		store_rollback(d->st);
		return r < 0 ? r : cimd_fail(err, errlen, -EIO, "database error");
	}
	if (rc > 0)
		r = store_exec(d->st, "UPDATE nodes SET hardware = ?, heartbeat = ? WHERE name = ?",
			       "sis", hw, now, c->node) == 1
			? 0
			: -EIO;
	else if ((f = json_pack("{ssss}", "node", c->node, "hardware", hw)) == NULL ||
		 store_exec(d->st,
			    "INSERT INTO nodes (name, hardware, joined, heartbeat) VALUES (?, ?, "
			    "?, ?)",
			    "ssii", c->node, hw, now, now) != 1 ||
		 journal_append(d->st, "node.join", "cimdd", f, NULL) < 0)
		r = -EIO;
	json_decref(f);
	if (r < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "registering node %s: database error", c->node);
	}
	return 0;
}

int nodes_heartbeat(struct svc *d, time_t now)
{
	static time_t last;
	struct store_rows *s = NULL;
	char err[512];
	int r = 0;

	if (now - last < CIMD_NODE_HEARTBEAT_SEC)
		return 0;
	last = now;
	if (store_begin(d->st) < 0)
		return 0; /* the database away: said elsewhere, tried again */
	if (store_exec(d->st, "UPDATE nodes SET heartbeat = ? WHERE name = ?", "is", (int64_t)now,
		       d->cfg->node) < 0 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		return 0;
	}
	if (store_query(d->st, &s,
			"SELECT revoked, revoked_by, revoke_reason FROM nodes WHERE name = ? AND "
			"revoked IS NOT NULL",
			"s", d->cfg->node) == 0 &&
	    store_next(s) > 0) {
		r = refuse_revoked(s, d->cfg->node, err, sizeof(err));
		d->node_revoked = 1;
		log_err("%s: stopping", err);
	}
	store_done(d->st, s);
	return r;
}

int nodes_list(struct svc *d, json_t **ret, char *err, size_t errlen)
{
	struct store_rows *s = NULL;
	json_t *arr = json_array(), *o;

	if (arr == NULL ||
	    store_query(d->st, &s,
			"SELECT n.name, n.hardware, n.joined, n.heartbeat, n.revoked, "
			"n.revoke_reason, (SELECT count(*) FROM keys k WHERE k.node = n.name AND "
			"k.state IN ('next', 'active', 'retiring')) FROM nodes n ORDER BY n.name",
			"") < 0) {
		json_decref(arr);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	while (store_next(s) > 0) {
		o = json_pack("{sssssIsIsIsb}", "name", store_text(s, 0), "hardware",
			      store_text(s, 1), "joined", (json_int_t)store_int(s, 2), "heartbeat",
			      (json_int_t)store_int(s, 3), "keys", (json_int_t)store_int(s, 6),
			      "this", strcmp(store_text(s, 0), d->cfg->node) == 0);
		if (o != NULL && !store_null(s, 4)) {
			json_object_set_new(o, "revoked", json_integer(store_int(s, 4)));
			json_object_set_new(o, "revoke_reason", json_string(store_text(s, 5)));
		}
		json_array_append_new(arr, o);
	}
	store_done(d->st, s);
	*ret = arr;
	return 0;
}

/* The node's row, in the open transaction: 0 live, -ENOENT, -EALREADY. */
static int node_state(struct svc *d, const char *name)
{
	struct store_rows *s = NULL;
	int rc, r;

	if (store_query(d->st, &s, "SELECT revoked FROM nodes WHERE name = ?", "s", name) < 0)
		return -EIO;
	rc = store_next(s);
	r = rc < 0 ? -EIO : rc == 0 ? -ENOENT : store_null(s, 0) ? 0 : -EALREADY;
	store_done(d->st, s);
	return r;
}

int nodes_revoke(struct svc *d, const char *actor, const char *name, const char *reason,
		 int64_t *ret_keys, char *err, size_t errlen)
{
	int64_t now = (int64_t)time(NULL), n = 0;
	json_t *f = NULL;
	int r;

	if (name == NULL || !cimd_valid_name(name))
		return cimd_fail(err, errlen, -EINVAL, "a node name is required");
	if (reason == NULL || *reason == '\0' || strlen(reason) > 512)
		return cimd_fail(err, errlen, -EINVAL,
				 "a reason (1 to 512 characters) is required");
	if (strcmp(name, d->cfg->node) == 0)
		return cimd_fail(err, errlen, -EINVAL,
				 "node %s is this one: revoke it from another node", name);
	if (store_begin(d->st) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if ((r = node_state(d, name)) < 0) {
		store_rollback(d->st);
		if (r == -ENOENT)
			return cimd_fail(err, errlen, r, "no node named %s", name);
		if (r == -EALREADY)
			return cimd_fail(err, errlen, r, "node %s is revoked already", name);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	if ((r = keys_revoke_node(d, actor, name, reason, &n)) < 0 ||
	    store_exec(d->st,
		       "UPDATE attest_keys SET state = 'retired', retired = ? WHERE node = ? AND "
		       "state <> 'retired'",
		       "is", now, name) < 0 ||
	    store_exec(d->st,
		       "UPDATE nodes SET revoked = ?, revoked_by = ?, revoke_reason = ? WHERE "
		       "name = ?",
		       "isss", now, actor, reason, name) != 1 ||
	    (f = json_pack("{sssssI}", "node", name, "reason", reason, "keys", (json_int_t)n)) ==
		NULL ||
	    journal_append(d->st, "node.revoke", actor, f, NULL) < 0 || store_commit(d->st) < 0) {
		json_decref(f);
		store_rollback(d->st);
		return cimd_fail(err, errlen, -EIO, "database error: nothing was changed");
	}
	json_decref(f);
	log_warn("node %s revoked by %s (%s): %lld keys revoked", name, actor, reason,
		 (long long)n);
	*ret_keys = n;
	return 0;
}
