/*
 * admin_ops.c — the admin operations' wire handlers (STYLE.md 17): each
 * decodes the request's members into C values, calls its domain function
 * (registry.c, keys.c, attest.c, tlog.c, store.c) and encodes the answer.
 * Decoding is reading a member and checking its JSON type; every other rule
 * is the domain function's.  A member of the wrong type is refused here with
 * the words the domain function uses for a value out of range, or handed on
 * as absent when the domain's words for "absent" already cover it (a string
 * member that is not a string: json_string_value gives NULL).
 *
 * admin_code is the one map from a domain function's code to the protocol's
 * error name (docs/protocol.md); the message is the domain function's.
 * admin.c's handler table names these handlers; they depend on the domain's
 * files and never on the server that calls them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "service.h"

/* The one map from a domain function's code to the protocol's error name. */
static enum admin_err admin_code(int r)
{
	switch (r) {
	case 0:
		return AE_OK;
	case -EINVAL:
		return AE_BAD_REQUEST;
	case -EPERM:
		return AE_FORBIDDEN;
	case -CIMD_ENOCLIENT:
		return AE_UNKNOWN_CLIENT;
	case -ENOENT:
	case -EAGAIN:
		return AE_NOT_FOUND;
	case -EEXIST:
	case -EMLINK:
	case -ESTALE:
	case -EBUSY:
	case -EALREADY:
		return AE_CONFLICT;
	case -CIMD_EDOCUMENT:
		return AE_INVALID_DOCUMENT;
	case -CIMD_EUNAVAILABLE:
		return AE_BACKEND_UNAVAILABLE;
	default:
		return AE_INTERNAL;
	}
}

/* A decoding failure: the words, and bad_request. */
static enum admin_err bad_request(struct admin_req *q, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static enum admin_err bad_request(struct admin_req *q, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q->msg, sizeof(q->msg), fmt, ap);
	va_end(ap);
	return AE_BAD_REQUEST;
}

/* A domain function's success as the answer: result (NULL when it could not
 * be built: internal), beside any words the function left (a note). */
static enum admin_err answer(struct admin_req *q, json_t *result)
{
	return (q->result = result) != NULL ? AE_OK : AE_INTERNAL;
}

/* The same, where the answer that could not be built is said so. */
static enum admin_err answer_or_oom(struct admin_req *q, json_t *result)
{
	if (result == NULL)
		snprintf(q->msg, sizeof(q->msg), "out of memory");
	return answer(q, result);
}

static const char *str_arg(const struct admin_req *q, const char *member)
{
	return json_string_value(json_object_get(q->args, member));
}

/* An optional integer member: 0 absent, 1 present (*ret its value), -1 of
 * another type. */
static int int_arg(const struct admin_req *q, const char *member, int64_t *ret)
{
	const json_t *v = json_object_get(q->args, member);

	if (v == NULL)
		return 0;
	if (!json_is_integer(v))
		return -1;
	*ret = json_integer_value(v);
	return 1;
}

/* A record number, version or size that must be given: 0 when it is absent
 * or not an integer, which the domain functions refuse as "none named". */
static int64_t number_arg(const struct admin_req *q, const char *member)
{
	int64_t v = 0;

	return int_arg(q, member, &v) == 1 ? v : 0;
}

/* ---- status and the journal ---- */

enum admin_err admin_op_status(struct admin_req *q)
{
	const struct cimd_config *c = q->d->cfg;
	char head[65], roles[64];
	int64_t seq = 0;
	json_t *be = json_array();
	size_t i;

	for (i = 0; i < c->n_backends; i++) {
		struct key_store *ks = custody_at(q->d->custody, i);

		json_array_append_new(
		    be, json_pack("{sssbsbsi}", "name", c->backends[i].name, "open", ks != NULL,
				  "answers", ks != NULL && custody_health(q->d->custody, i) != 0,
				  "sessions", ks != NULL ? key_store_sessions(ks) : 0));
	}
	journal_head(q->d->st, &seq, head);
	q->result = json_pack(
	    "{sssssssssosbs{sIss}sIsIsIsI}", "version", CIMD_VERSION, "base_url", c->base_url,
	    "operator", q->op->name, "roles", config_roles_str(q->op->roles, roles, sizeof(roles)),
	    "backends", be, "two_person_rule", c->two_person_rule, "journal", "seq",
	    (json_int_t)seq, "head", head, "jwks_max_age", (json_int_t)c->jwks_max_age,
	    "assertion_max_ttl", (json_int_t)c->assertion_max_ttl, "clock_skew",
	    (json_int_t)c->clock_skew, "destroy_delay", (json_int_t)c->destroy_delay);
	if (q->result != NULL) {
		json_object_set_new(q->result, "node", json_string(c->node));
		json_object_set_new(q->result, "store", json_string(store_engine(q->d->st)));
	}
	return q->result ? AE_OK : AE_INTERNAL;
}

enum admin_err admin_op_journal_show(struct admin_req *q)
{
	json_t *recs = NULL;
	int64_t since = 1;

	/* A record number is a whole number on the wire (0 and 1: from the first). */
	if (int_arg(q, "since", &since) < 0 || since < 0)
		return bad_request(q, "since must be a record number");
	if (journal_list(q->d->st, since, CIMD_JOURNAL_SHOW_MAX, CIMD_JOURNAL_SHOW_BYTES,
			 json_is_true(json_object_get(q->args, "raw")), &recs) < 0) {
		snprintf(q->msg, sizeof(q->msg), "database error");
		return AE_INTERNAL;
	}
	q->result = json_pack("{so}", "records", recs);
	return AE_OK;
}

enum admin_err admin_op_journal_verify(struct admin_req *q)
{
	int64_t count = 0, bad = 0;
	int r = journal_verify(q->d->st, &count, &bad);

	/* A broken chain is an answer, not a failure of the request. */
	if (r == -CIMD_EVERIFY) {
		q->result = json_pack("{sbsI}", "intact", 0, "first_bad", (json_int_t)bad);
		snprintf(q->msg, sizeof(q->msg), "the chain breaks at record %lld", (long long)bad);
		return AE_OK;
	}
	if (r < 0) {
		snprintf(q->msg, sizeof(q->msg), "database error");
		return AE_INTERNAL;
	}
	q->result = json_pack("{sbsI}", "intact", 1, "records", (json_int_t)count);
	return AE_OK;
}

enum admin_err admin_op_journal_prove(struct admin_req *q)
{
	json_t *proof = NULL;
	int r = tlog_prove(q->d, q->tlog, number_arg(q, "seq"), &proof, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, proof);
}

enum admin_err admin_op_journal_consistency(struct admin_req *q)
{
	json_t *proof = NULL;
	int r = tlog_prove_consistency(q->d, q->tlog, number_arg(q, "old_size"), &proof, q->msg,
				       sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, proof);
}

enum admin_err admin_op_audit_export(struct admin_req *q)
{
	json_t *items = NULL;
	int64_t after = 0, next = -1;
	int r;

	if (int_arg(q, "after", &after) < 0)
		return bad_request(q, TLOG_AFTER_WORDS);
	if ((r = tlog_export(q->d, str_arg(q, "kind"), after, &items, &next, q->msg,
			     sizeof(q->msg))) < 0)
		return admin_code(r);
	return answer(q, json_pack("{soso}", "items", items, "next",
				   next >= 0 ? json_integer(next) : json_null()));
}

/* ---- clients ---- */

enum admin_err admin_op_client_add(struct admin_req *q)
{
	char kid[CIMD_KID_LEN + 1], cid[CIMD_URL_MAX], juri[CIMD_URL_MAX];
	const char *name = str_arg(q, "name");
	struct reg_doc_result doc;
	int64_t every;
	int has_every, r;

	if ((has_every = int_arg(q, "rotate_every", &every)) < 0)
		return bad_request(q, REG_ROTATE_EVERY_WORDS, q->d->cfg->jwks_max_age,
				   CIMD_DURATION_MAX);
	if ((r = reg_client_add(q->d, q->op->name, name, str_arg(q, "owner"), str_arg(q, "backend"),
				str_arg(q, "alg"), has_every ? &every : NULL,
				json_object_get(q->args, "metadata"), kid, &doc, q->msg,
				sizeof(q->msg))) < 0)
		return admin_code(r);
	return answer(q, json_pack("{sssssssIss}", "client_id",
				   reg_client_id(q->d->cfg, name, cid, sizeof(cid)), "jwks_uri",
				   reg_jwks_uri(q->d->cfg, name, juri, sizeof(juri)), "kid", kid,
				   "version", (json_int_t)doc.version, "state", doc.state));
}

enum admin_err admin_op_client_list(struct admin_req *q)
{
	const json_t *ja = json_object_get(q->args, "after");
	char next[CIMD_NAME_MAX + 1];
	json_t *clients = NULL, *o;
	int64_t limit;
	int has_limit, r;

	if (ja != NULL && !json_is_string(ja))
		return bad_request(q, REG_AFTER_WORDS);
	if ((has_limit = int_arg(q, "limit", &limit)) < 0)
		return bad_request(q, REG_LIMIT_WORDS, CIMD_LIST_PAGE_MAX);
	if ((r = reg_client_page(q->d, json_string_value(ja), has_limit ? &limit : NULL, &clients,
				 next, q->msg, sizeof(q->msg))) < 0)
		return admin_code(r);
	o = next[0] != '\0' ? json_pack("{soss}", "clients", clients, "next", next)
			    : json_pack("{so}", "clients", clients);
	return answer_or_oom(q, o);
}

enum admin_err admin_op_client_show(struct admin_req *q)
{
	json_t *client = NULL;
	int r = reg_client_show(q->d, str_arg(q, "name"), &client, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, json_pack("{so}", "client", client));
}

/* A change to who may sign, made (ok, nothing to add) or, under the
 * two-person rule, proposed: {"change": N, "state": "pending"} and words that
 * say what happens next. */
static enum admin_err made_or_proposed(struct admin_req *q, int r, int64_t change)
{
	if (r < 0 || change == 0)
		return admin_code(r);
	snprintf(q->msg, sizeof(q->msg),
		 "submitted as change %lld; another operator must approve it (two-person rule)",
		 (long long)change);
	return answer_or_oom(q,
			     json_pack("{sIss}", "change", (json_int_t)change, "state", "pending"));
}

enum admin_err admin_op_client_allow(struct admin_req *q)
{
	const json_t *uid = json_object_get(q->args, "uid"), *gid = json_object_get(q->args, "gid");
	const json_t *id = uid != NULL ? uid : gid;
	/* Exactly one of uid and gid, an integer; else none is named. */
	const char *kind = uid != NULL && gid != NULL ? NULL
			   : !json_is_integer(id)     ? NULL
			   : uid != NULL	      ? "uid"
						      : "gid";
	int64_t change = 0;
	int r = reg_client_allow(
	    q->d, q->op->name, str_arg(q, "name"), kind, kind != NULL ? json_integer_value(id) : -1,
	    json_is_true(json_object_get(q->args, "remove")), &change, q->msg, sizeof(q->msg));

	return made_or_proposed(q, r, change);
}

enum admin_err admin_op_client_policy(struct admin_req *q)
{
	int64_t ttl, rate, change = 0;
	int has_ttl, has_rate, r;

	if ((has_ttl = int_arg(q, "ttl", &ttl)) < 0)
		return bad_request(q, REG_TTL_WORDS, q->d->cfg->assertion_default_ttl,
				   q->d->cfg->assertion_max_ttl);
	if ((has_rate = int_arg(q, "rate", &rate)) < 0)
		return bad_request(q, REG_RATE_WORDS, CIMD_RATE_MAX);
	r = reg_client_policy(q->d, q->op->name, str_arg(q, "name"), has_ttl ? &ttl : NULL,
			      has_rate ? &rate : NULL, &change, q->msg, sizeof(q->msg));
	return made_or_proposed(q, r, change);
}

enum admin_err admin_op_client_audience(struct admin_req *q)
{
	int64_t change = 0;
	int r = reg_client_audience(q->d, q->op->name, str_arg(q, "name"), str_arg(q, "add"),
				    str_arg(q, "remove"), &change, q->msg, sizeof(q->msg));

	return made_or_proposed(q, r, change);
}

/* ---- pending changes (the two-person rule) ---- */

enum admin_err admin_op_change_list(struct admin_req *q)
{
	json_t *changes = NULL;
	int r = reg_change_list(q->d, str_arg(q, "name"), &changes, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer_or_oom(q, json_pack("{so}", "changes", changes));
}

enum admin_err admin_op_change_approve(struct admin_req *q)
{
	json_t *change = NULL;
	int r = reg_change_approve(q->d, q->op->name, number_arg(q, "id"), &change, q->msg,
				   sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, change);
}

enum admin_err admin_op_change_reject(struct admin_req *q)
{
	/* Whose change may be rejected is the domain's rule; the role is
	 * what the configuration gave this operator. */
	return admin_code(
	    reg_change_reject(q->d, q->op->name, (q->op->roles & CIMD_ROLE_APPROVE) != 0,
			      number_arg(q, "id"), str_arg(q, "reason"), q->msg, sizeof(q->msg)));
}

/* ---- documents ---- */

static json_t *doc_answer(const struct reg_doc_result *doc)
{
	return json_pack("{sIssss}", "version", (json_int_t)doc->version, "state", doc->state,
			 "sha256", doc->sha256);
}

enum admin_err admin_op_doc_submit(struct admin_req *q)
{
	struct reg_doc_result doc;
	int r = reg_doc_submit(q->d, q->op->name, str_arg(q, "name"),
			       json_object_get(q->args, "metadata"), &doc, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, doc_answer(&doc));
}

enum admin_err admin_op_doc_approve(struct admin_req *q)
{
	struct reg_doc_result doc;
	int r = reg_doc_approve(q->d, q->op->name, str_arg(q, "name"), number_arg(q, "version"),
				&doc, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, doc_answer(&doc));
}

enum admin_err admin_op_doc_show(struct admin_req *q)
{
	json_t *doc = NULL;
	int64_t version;
	int has_version, r;

	if ((has_version = int_arg(q, "version", &version)) < 0)
		return bad_request(q, REG_VERSION_WORDS);
	if ((r = reg_doc_show(q->d, str_arg(q, "name"), has_version ? &version : NULL, &doc, q->msg,
			      sizeof(q->msg))) < 0)
		return admin_code(r);
	return answer_or_oom(q, json_pack("{so}", "document", doc));
}

/* ---- keys ---- */

enum admin_err admin_op_key_list(struct admin_req *q)
{
	json_t *keys = NULL;
	int r = keys_list(q->d, str_arg(q, "name"), &keys, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, json_pack("{so}", "keys", keys));
}

enum admin_err admin_op_key_rotate(struct admin_req *q)
{
	char kid[CIMD_KID_LEN + 1];
	int64_t after;
	int r =
	    keys_rotate(q->d, q->op->name, str_arg(q, "name"), kid, &after, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r)
		     : answer(q, json_pack("{sssssI}", "kid", kid, "state", "next",
					   "activate_after", (json_int_t)after));
}

enum admin_err admin_op_key_activate(struct admin_req *q)
{
	char kid[CIMD_KID_LEN + 1];
	int forced, r;

	r = keys_activate(q->d, q->op->name, str_arg(q, "name"), str_arg(q, "kid"),
			  json_is_true(json_object_get(q->args, "force")), kid, &forced, q->msg,
			  sizeof(q->msg));
	return r < 0 ? admin_code(r)
		     : answer(q, json_pack("{sssssb}", "kid", kid, "state", "active", "forced",
					   forced));
}

enum admin_err admin_op_key_revoke(struct admin_req *q)
{
	const char *kid = str_arg(q, "kid");
	struct keys_revoked rv;
	int r;

	/* On success q->msg may hold a note: the revocation stands, a later step
	 * (destroying, replacing) failed. */
	r = keys_revoke(q->d, q->op->name, str_arg(q, "name"), kid, str_arg(q, "reason"),
			json_is_true(json_object_get(q->args, "replace")), &rv, q->msg,
			sizeof(q->msg));
	return r < 0 ? admin_code(r)
		     : answer(q, json_pack("{sssssssb}", "kid", kid, "state", "revoked",
					   "replacement", rv.replacement, "client_has_active_key",
					   rv.client_has_active_key));
}

/* ---- nodes ---- */

enum admin_err admin_op_node_list(struct admin_req *q)
{
	json_t *nodes = NULL;
	int r = nodes_list(q->d, &nodes, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r) : answer(q, json_pack("{so}", "nodes", nodes));
}

enum admin_err admin_op_node_revoke(struct admin_req *q)
{
	const char *name = str_arg(q, "name");
	int64_t n = 0;
	int r =
	    nodes_revoke(q->d, q->op->name, name, str_arg(q, "reason"), &n, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r)
		     : answer(q, json_pack("{sssssI}", "node", name, "state", "revoked",
					   "keys_revoked", (json_int_t)n));
}

/* ---- attestations ---- */

enum admin_err admin_op_attest_show(struct admin_req *q)
{
	json_t *env = NULL;
	int64_t seq, issued;
	int r = attest_show(q->d, str_arg(q, "name"), &env, &seq, &issued, q->msg, sizeof(q->msg));

	return r < 0 ? admin_code(r)
		     : answer(q, json_pack("{sosIsI}", "envelope", env, "seq", (json_int_t)seq,
					   "issued", (json_int_t)issued));
}

enum admin_err admin_op_attest_key_rotate(struct admin_req *q)
{
	char kid[CIMD_KID_LEN + 1];
	const char *backend = NULL;
	int r = attest_key_rotate(q->d, q->op->name, str_arg(q, "backend"), &backend, kid, q->msg,
				  sizeof(q->msg));

	return r < 0 ? admin_code(r)
		     : answer(q, json_pack("{ssss}", "backend", backend, "kid", kid));
}
