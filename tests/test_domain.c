/*
 * test_domain.c — the admin operations' domain functions called directly,
 * without the admin socket (STYLE.md 17, issue 14): a store and a SoftHSM2
 * key store through custody, as the daemon opens them.  Each refusal is the
 * code the wire handler maps (admin_ops.c), with its words, and changes
 * nothing; each change leaves its journal record.  Then the wire handlers
 * themselves on the same daemon: a code becomes the protocol's error name,
 * a member of the wrong type is refused before any domain function runs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "service.h"

static struct t_softhsm hsm;
static struct svc d;

static json_t *doc_ok(void)
{
	return json_pack("{sss[s]s[]}", "client_name", "Agent", "grant_types", "client_credentials",
			 "response_types");
}

/* How many journal records of kind name client (NULL: any) by actor. */
static int records(const char *kind, const char *client, const char *actor)
{
	json_t *recs = NULL, *rec;
	size_t i;
	int n = 0;

	if (journal_list(d.st, 1, CIMD_JOURNAL_SHOW_MAX, CIMD_JOURNAL_SHOW_BYTES, 0, &recs) < 0)
		return -1;
	json_array_foreach(recs, i, rec)
	{
		const char *k = json_string_value(json_object_get(rec, "kind"));
		const char *c = json_string_value(json_object_get(rec, "client"));
		const char *a = json_string_value(json_object_get(rec, "actor"));
		if (k != NULL && strcmp(k, kind) == 0 && a != NULL && strcmp(a, actor) == 0 &&
		    (client == NULL || (c != NULL && strcmp(c, client) == 0)))
			n++;
	}
	json_decref(recs);
	return n;
}

static int64_t journal_size(void)
{
	int64_t seq = -1;
	char head[65];

	journal_head(d.st, &seq, head);
	return seq;
}

static int open_daemon(void)
{
	char path[600], db[600], text[2048], err[512];

	if (!t_ok(t_softhsm_init(&hsm, "domain", "123456") == 0, "SoftHSM2 token"))
		return -1;
	snprintf(path, sizeof(path), "%s/domain.conf", t_tmpdir());
	snprintf(text, sizeof(text),
		 "state_dir = %s\n"
		 "base_url = https://keys.example.com\n"
		 "backend = %s\n"
		 "two_person_rule = yes\n"
		 "jwks_max_age = 600\n"
		 "operator = alice uid=%d roles=submit,approve,rotate,revoke,read\n"
		 "operator = bob uid=%d roles=approve,read\n",
		 t_tmpdir(), hsm.conf, (int)getuid(), (int)getuid() + 1);
	/* The store on the engine of the mode (make check STORE=postgresql: a
	 * cluster of its own): the domain's SQL must read alike on both. */
	snprintf(db, sizeof(db), "%s/domain.db", t_tmpdir());
	if (!t_ok(t_write_file(path, text, strlen(text)) == 0 &&
		      config_load(path, &d.cfg, err, sizeof(err)) == 0,
		  "configuration: %s", err) ||
	    !t_ok(t_db_create(db) == 0 && t_db_open(db, &d.st, err, sizeof(err)) == 0, "store: %s",
		  err) ||
	    !t_ok(custody_new(d.cfg, &d.custody) == 0, "custody"))
		return -1;
	custody_open_start(d.custody);
	custody_open_join(d.custody);
	return t_ok(custody_store(d.custody, "pkcs11") != NULL, "the SoftHSM2 key store is open")
		   ? 0
		   : -1;
}

static void test_clients(void)
{
	char kid[CIMD_KID_LEN + 1] = "", err[512] = "";
	struct reg_doc_result doc = {0};
	json_t *md = doc_ok(), *bad = doc_ok(), *o = NULL;
	int64_t n, every = 5;
	int r;

	r = reg_client_add(&d, "alice", "agent-a", "Team A", NULL, NULL, NULL, md, kid, &doc, err,
			   sizeof(err));
	t_ok(r == 0 && strlen(kid) == CIMD_KID_LEN && doc.version == 1 &&
		 strcmp(doc.state, "submitted") == 0 && strlen(doc.sha256) == 64,
	     "client.add: 0, a kid, version 1 submitted (%d %s)", r, err);
	t_ok(records("client.add", "agent-a", "alice") == 1 &&
		 records("key.create", "agent-a", "alice") == 1,
	     "the journal holds client.add and key.create by alice");
	n = journal_size();

	err[0] = '\0';
	r = reg_client_add(&d, "alice", "agent-a", "Team A", NULL, NULL, NULL, md, kid, &doc, err,
			   sizeof(err));
	t_ok(r == -EEXIST && strcmp(err, "a client named agent-a exists already") == 0,
	     "a second agent-a: -EEXIST, %s", err);
	err[0] = '\0';
	r = reg_client_add(&d, "alice", "agent-b", "Team B", "hsm9", NULL, NULL, md, kid, &doc, err,
			   sizeof(err));
	t_ok(r == -EINVAL && strcmp(err, "backend 'hsm9' is not configured") == 0,
	     "an unknown backend: -EINVAL, %s", err);
	err[0] = '\0';
	r = reg_client_add(&d, "alice", "agent-b", "Team B", NULL, "ES512", NULL, md, kid, &doc,
			   err, sizeof(err));
	t_ok(r == -EINVAL && strstr(err, "ES512") != NULL, "an unknown algorithm: -EINVAL, %s",
	     err);
	err[0] = '\0';
	r = reg_client_add(&d, "alice", "agent-b", "Team B", NULL, NULL, &every, md, kid, &doc, err,
			   sizeof(err));
	t_ok(r == -EINVAL && strstr(err, "rotate_every must be") != NULL,
	     "rotate_every not above jwks_max_age: -EINVAL, %s", err);
	json_object_set_new(bad, "client_secret", json_string("s3cret"));
	err[0] = '\0';
	r = reg_client_add(&d, "alice", "agent-b", "Team B", NULL, NULL, NULL, bad, kid, &doc, err,
			   sizeof(err));
	t_ok(r == -CIMD_EDOCUMENT && strstr(err, "client_secret: not allowed") != NULL,
	     "a document with client_secret: -CIMD_EDOCUMENT, %s", err);
	err[0] = '\0';
	r = reg_client_add(&d, "alice", NULL, "Team B", NULL, NULL, NULL, md, kid, &doc, err,
			   sizeof(err));
	t_ok(r == -EINVAL && strcmp(err, "missing client name") == 0, "no name: -EINVAL, %s", err);
	err[0] = '\0';
	r = reg_client_add(&d, "alice", "Agent_B", "Team B", NULL, NULL, NULL, md, kid, &doc, err,
			   sizeof(err));
	t_ok(r == -EINVAL && strstr(err, "must match") != NULL, "a bad name: -EINVAL, %s", err);
	t_ok(journal_size() == n, "no refusal wrote a journal record");
	err[0] = '\0';
	r = reg_client_show(&d, "agent-b", &o, err, sizeof(err));
	t_ok(r == -CIMD_ENOCLIENT && strcmp(err, "no client named agent-b") == 0,
	     "agent-b was never made: -CIMD_ENOCLIENT, %s", err);
	r = reg_client_show(&d, "agent-a", &o, err, sizeof(err));
	t_ok(r == 0 && strcmp(json_string_value(json_object_get(o, "client_id")),
			      "https://keys.example.com/clients/agent-a") == 0,
	     "client.show: agent-a with its client_id");
	json_decref(o);

	json_decref(md);
	json_decref(bad);
}

/* The latest journal record of kind (a new reference), or NULL. */
static json_t *last_record(const char *kind)
{
	json_t *recs = NULL, *rec, *last = NULL;
	size_t i;

	if (journal_list(d.st, 1, CIMD_JOURNAL_SHOW_MAX, CIMD_JOURNAL_SHOW_BYTES, 0, &recs) < 0)
		return NULL;
	json_array_foreach(recs, i, rec)
	{
		const char *k = json_string_value(json_object_get(rec, "kind"));
		if (k != NULL && strcmp(k, kind) == 0)
			last = rec;
	}
	json_incref(last);
	json_decref(recs);
	return last;
}

/* How many uids may sign for client, as client.show says. */
static int callers(const char *client)
{
	char err[512];
	json_t *o = NULL;
	int n = -1;

	if (reg_client_show(&d, client, &o, err, sizeof(err)) == 0)
		n = (int)json_array_size(json_object_get(o, "uids"));
	json_decref(o);
	return n;
}

/* Callers under the two-person rule (on here): alice proposes, bob makes;
 * the trial at proposal refuses what could not be made, and every refusal
 * changes nothing and journals nothing. */
static void test_callers(void)
{
	char err[512] = "";
	int64_t ch = 0, ch2 = 0, n;
	json_t *o = NULL, *rec;
	int r;

	r = reg_client_allow(&d, "alice", "agent-a", "uid", 1000, 0, &ch, err, sizeof(err));
	rec = last_record("change.submit");
	t_ok(r == 0 && ch > 0 && callers("agent-a") == 0 &&
		 records("client.allow", "agent-a", "alice") == 0 &&
		 json_integer_value(json_object_get(rec, "id")) == ch &&
		 strcmp(json_string_value(json_object_get(rec, "op")), "client.allow") == 0 &&
		 json_integer_value(json_object_get(rec, "uid")) == 1000,
	     "client.allow under the rule: proposed as change %lld, not made; change.submit "
	     "names it, with the operation's fields (%d %s)",
	     (long long)ch, r, err);
	json_decref(rec);
	n = journal_size();
	r = reg_client_allow(&d, "alice", "agent-a", "uid", 1000, 0, &ch2, err, sizeof(err));
	t_ok(r == -EEXIST && strstr(err, "already proposes this") != NULL,
	     "the same change proposed twice: -EEXIST, %s", err);
	r = reg_change_approve(&d, "alice", ch, &o, err, sizeof(err));
	t_ok(r == -EPERM && strstr(err, "two-person rule: alice proposed change") != NULL,
	     "its submitter may not approve it: -EPERM, %s", err);
	r = reg_change_approve(&d, "bob", 0, &o, err, sizeof(err));
	t_ok(r == -EINVAL, "no change id: -EINVAL, %s", err);
	r = reg_change_approve(&d, "bob", 9999, &o, err, sizeof(err));
	t_ok(r == -ENOENT && strcmp(err, "there is no change 9999") == 0,
	     "an unknown change: -ENOENT, %s", err);
	t_ok(journal_size() == n && callers("agent-a") == 0,
	     "no refusal changed or journaled anything");
	r = reg_change_approve(&d, "bob", ch, &o, err, sizeof(err));
	rec = last_record("client.allow");
	t_ok(r == 0 && callers("agent-a") == 1 && records("client.allow", "agent-a", "bob") == 1 &&
		 json_integer_value(json_object_get(rec, "change")) == ch &&
		 strcmp(json_string_value(json_object_get(rec, "submitter")), "alice") == 0 &&
		 json_integer_value(json_object_get(rec, "uid")) == 1000,
	     "bob approves: uid 1000 may sign; client.allow by bob with change and submitter "
	     "(%d %s)",
	     r, err);
	json_decref(rec);
	json_decref(o);
	r = reg_change_approve(&d, "bob", ch, &o, err, sizeof(err));
	t_ok(r == -EBUSY && strstr(err, "is approved, not pending") != NULL,
	     "approved twice: a conflict, %s", err);
	n = journal_size();
	t_ok(reg_client_allow(&d, "alice", "agent-a", "uid", 1000, 0, &ch2, err, sizeof(err)) ==
		     -EEXIST &&
		 strstr(err, "already allowed") != NULL,
	     "allowing an allowed uid is refused when proposed: -EEXIST, %s", err);
	t_ok(reg_client_allow(&d, "alice", "agent-a", "gid", 7, 1, &ch2, err, sizeof(err)) ==
		 -ENOENT,
	     "removing a gid never allowed: -ENOENT, %s", err);
	t_ok(reg_client_allow(&d, "alice", "agent-a", NULL, -1, 0, &ch2, err, sizeof(err)) ==
		 -EINVAL,
	     "neither uid nor gid: -EINVAL, %s", err);
	t_ok(reg_client_allow(&d, "alice", "ghost", "uid", 1, 0, &ch2, err, sizeof(err)) ==
		 -CIMD_ENOCLIENT,
	     "an unknown client: -CIMD_ENOCLIENT, %s", err);
	t_ok(reg_client_audience(&d, "alice", "agent-a", "http://as.example", NULL, &ch2, err,
				 sizeof(err)) == -EINVAL,
	     "an http audience: -EINVAL, %s", err);
	t_ok(journal_size() == n, "no refused proposal journaled anything");

	/* Withdrawn by its submitter; rejected by an approver, not by another
	 * submitter. */
	r = reg_client_audience(&d, "alice", "agent-a", "https://as.example", NULL, &ch, err,
				sizeof(err));
	t_ok(r == 0 && ch > 0, "client.audience proposed as change %lld", (long long)ch);
	r = reg_change_reject(&d, "alice", 0, ch, "", err, sizeof(err));
	t_ok(r == -EINVAL, "a rejection without a reason: -EINVAL, %s", err);
	r = reg_change_reject(&d, "alice", 0, ch, "typo", err, sizeof(err));
	rec = last_record("change.reject");
	t_ok(r == 0 && json_is_true(json_object_get(rec, "withdrawn")) &&
		 json_integer_value(json_object_get(rec, "id")) == ch,
	     "its submitter withdraws it: change.reject, withdrawn (%d %s)", r, err);
	json_decref(rec);
	r = reg_change_approve(&d, "bob", ch, &o, err, sizeof(err));
	t_ok(r == -EBUSY && strstr(err, "is rejected") != NULL,
	     "a withdrawn change cannot be approved: %s", err);
	r = reg_client_policy(&d, "alice", "agent-a", (int64_t[]){1}, NULL, &ch, err, sizeof(err));
	t_ok(r == 0 && ch > 0, "client.policy proposed as change %lld", (long long)ch);
	r = reg_change_list(&d, NULL, &o, err, sizeof(err));
	t_ok(r == 0 && json_array_size(o) == 1 &&
		 json_integer_value(json_object_get(json_array_get(o, 0), "id")) == ch,
	     "change.list: the one pending change");
	json_decref(o);
	r = reg_change_reject(&d, "carol", 0, ch, "no", err, sizeof(err));
	t_ok(r == -EPERM && strstr(err, "needs the approve role") != NULL,
	     "another operator without the approve role cannot reject it: -EPERM, %s", err);
	r = reg_change_reject(&d, "bob", 1, ch, "not now", err, sizeof(err));
	t_ok(r == 0 && records("change.reject", "agent-a", "bob") == 1,
	     "an approver rejects it (%d %s)", r, err);

	/* With the rule off, the records of before: no proposal. */
	d.cfg->two_person_rule = 0;
	n = journal_size();
	r = reg_client_allow(&d, "alice", "agent-a", "gid", 7, 0, &ch, err, sizeof(err));
	rec = last_record("client.allow");
	t_ok(r == 0 && ch == 0 && journal_size() == n + 1 &&
		 json_object_get(rec, "change") == NULL &&
		 json_object_get(rec, "submitter") == NULL &&
		 strcmp(json_string_value(json_object_get(rec, "actor")), "alice") == 0,
	     "rule off: client.allow made at once, one client.allow record as before (%d %s)", r,
	     err);
	json_decref(rec);
	d.cfg->two_person_rule = 1;
}

static void test_documents(void)
{
	struct reg_doc_result doc = {0};
	json_t *md = doc_ok(), *o = NULL;
	char err[512] = "";
	int r;

	json_object_set_new(md, "client_name", json_string("Agent v2"));
	r = reg_doc_submit(&d, "alice", "agent-a", md, &doc, err, sizeof(err));
	t_ok(r == 0 && doc.version == 2 && strcmp(doc.state, "submitted") == 0,
	     "doc.submit: version 2 (%d %s)", r, err);
	err[0] = '\0';
	r = reg_doc_approve(&d, "alice", "agent-a", 2, &doc, err, sizeof(err));
	t_ok(r == -EPERM && strstr(err, "two-person rule") != NULL,
	     "its submitter may not approve it: -EPERM, %s", err);
	r = reg_doc_approve(&d, "bob", "agent-a", 2, &doc, err, sizeof(err));
	t_ok(r == 0 && doc.version == 2 && strcmp(doc.state, "approved") == 0 &&
		 records("doc.approve", "agent-a", "bob") == 1,
	     "bob approves version 2, journaled (%d %s)", r, err);
	err[0] = '\0';
	r = reg_doc_approve(&d, "bob", "agent-a", 2, &doc, err, sizeof(err));
	t_ok(r == -EBUSY && strstr(err, "not awaiting approval") != NULL,
	     "approved twice: a conflict, %s", err);
	r = reg_doc_approve(&d, "bob", "agent-a", 1, &doc, err, sizeof(err));
	t_ok(r == -ESTALE && strstr(err, "older than the approved version 2") != NULL,
	     "version 1 after 2: a conflict, %s", err);
	r = reg_doc_approve(&d, "bob", "agent-a", 9, &doc, err, sizeof(err));
	t_ok(r == -ENOENT && strcmp(err, "agent-a has no document version 9") == 0,
	     "version 9: -ENOENT, %s", err);
	r = reg_doc_approve(&d, "bob", "agent-a", 0, &doc, err, sizeof(err));
	t_ok(r == -EINVAL, "no version: -EINVAL, %s", err);
	r = reg_doc_show(&d, "agent-a", NULL, &o, err, sizeof(err));
	t_ok(r == 0 && json_integer_value(json_object_get(o, "version")) == 2,
	     "doc.show: the approved version 2");
	json_decref(o);
	json_decref(md);
}

static void test_keys(void)
{
	char kid[CIMD_KID_LEN + 1] = "", active[CIMD_KID_LEN + 1] = "", err[512] = "";
	struct keys_revoked rv;
	json_t *keys = NULL;
	int64_t after = 0;
	int forced = 0, r;

	r = keys_rotate(&d, "alice", "agent-a", kid, &after, err, sizeof(err));
	t_ok(r == 0 && strlen(kid) == CIMD_KID_LEN && after > 0, "key.rotate: a next key (%s)",
	     err);
	r = keys_rotate(&d, "alice", "agent-a", active, &after, err, sizeof(err));
	t_ok(r == -EEXIST, "a second next key: -EEXIST, %s", err);
	r = keys_activate(&d, "alice", "agent-a", NULL, 0, active, &forced, err, sizeof(err));
	t_ok(r == -EBUSY && strstr(err, "jwks_max_age is 600s") != NULL,
	     "activated before jwks_max_age: a conflict, %s", err);
	r = keys_activate(&d, "alice", "agent-a", "nokid", 1, active, &forced, err, sizeof(err));
	t_ok(r == -ENOENT, "another kid than the next key: -ENOENT, %s", err);
	r = keys_activate(&d, "alice", "agent-a", kid, 1, active, &forced, err, sizeof(err));
	t_ok(r == 0 && forced == 1 && strcmp(active, kid) == 0 &&
		 records("key.state", "agent-a", "alice") == 2,
	     "forced: active, and two key.state records (%s)", err);
	r = keys_revoke(&d, "alice", "agent-a", "nokid", "lost", 0, &rv, err, sizeof(err));
	t_ok(r == -ENOENT, "revoking an unknown kid: -ENOENT, %s", err);
	r = keys_revoke(&d, "alice", "agent-a", kid, "", 0, &rv, err, sizeof(err));
	t_ok(r == -EINVAL, "without a reason: -EINVAL, %s", err);
	err[0] = '\0';
	r = keys_revoke(&d, "alice", "agent-a", kid, "lost", 1, &rv, err, sizeof(err));
	t_ok(r == 0 && strlen(rv.replacement) == CIMD_KID_LEN && rv.client_has_active_key &&
		 err[0] == '\0',
	     "key.revoke --replace: revoked, a replacement active (%s)", err);
	r = keys_revoke(&d, "alice", "agent-a", kid, "lost", 0, &rv, err, sizeof(err));
	t_ok(r == -EALREADY && strstr(err, "revoked already") != NULL,
	     "revoked twice: a conflict, %s", err);
	r = keys_list(&d, "agent-a", &keys, err, sizeof(err));
	t_ok(r == 0 && json_array_size(keys) == 3, "key.list: three keys (%zu)",
	     json_array_size(keys));
	json_decref(keys);
	r = keys_list(&d, "ghost", &keys, err, sizeof(err));
	t_ok(r == -CIMD_ENOCLIENT, "key.list of an unknown client: -CIMD_ENOCLIENT, %s", err);
}

/* The wire handlers over the same daemon: decode, call, encode. */
static enum admin_err wire(enum admin_err (*fn)(struct admin_req *), const char *json,
			   struct admin_req *q)
{
	static const struct cimd_operator alice = {.name = "alice", .roles = 0x1f};
	json_t *args = json_loads(json, 0, NULL);
	enum admin_err e;

	json_decref(q->result);
	*q = (struct admin_req){.d = &d, .op = &alice, .args = args};
	e = fn(q);
	json_decref(args);
	return e;
}

static void test_wire(void)
{
	struct admin_req q = {0};
	enum admin_err e;
	int64_t n = journal_size();

	e = wire(admin_op_client_add,
		 "{\"name\":\"agent-a\",\"owner\":\"A\",\"metadata\":{\"client_name\":\"A\","
		 "\"grant_types\":[\"client_credentials\"],\"response_types\":[]}}",
		 &q);
	t_ok(e == AE_CONFLICT && strcmp(admin_err_name(e), "conflict") == 0 &&
		 strcmp(q.msg, "a client named agent-a exists already") == 0,
	     "client.add of agent-a: conflict, %s", q.msg);
	e = wire(admin_op_client_add,
		 "{\"name\":\"agent-c\",\"owner\":\"C\",\"rotate_every\":\"daily\"}", &q);
	t_ok(e == AE_BAD_REQUEST &&
		 strcmp(q.msg, "rotate_every must be 0 (never) or more than jwks_max_age (600) "
			       "seconds, up to 31536000") == 0,
	     "rotate_every a string: bad_request before anything is asked, %s", q.msg);
	e = wire(admin_op_client_add, "{\"name\":\"agent-c\",\"owner\":\"C\",\"metadata\":7}", &q);
	t_ok(e == AE_INVALID_DOCUMENT, "metadata not an object: invalid_document, %s", q.msg);
	e = wire(admin_op_key_list, "{\"name\":\"ghost\"}", &q);
	t_ok(e == AE_UNKNOWN_CLIENT && strcmp(q.msg, "no client named ghost") == 0,
	     "key.list of ghost: unknown_client, %s", q.msg);
	e = wire(admin_op_doc_approve, "{\"name\":\"agent-a\",\"version\":\"2\"}", &q);
	t_ok(e == AE_BAD_REQUEST &&
		 strcmp(q.msg, "a document version (1, 2, ...) is required") == 0,
	     "doc.approve version a string: bad_request, %s", q.msg);
	e = wire(admin_op_doc_show, "{\"name\":\"agent-a\",\"version\":1}", &q);
	t_ok(e == AE_OK && json_integer_value(json_object_get(json_object_get(q.result, "document"),
							      "version")) == 1,
	     "doc.show version 1: ok, the document");
	e = wire(admin_op_client_list, "{\"limit\":1}", &q);
	t_ok(e == AE_OK && json_array_size(json_object_get(q.result, "clients")) == 1 &&
		 json_object_get(q.result, "next") == NULL,
	     "client.list limit 1: one client, no next");
	e = wire(admin_op_audit_export, "{\"kind\":\"receipts\"}", &q);
	t_ok(e == AE_BAD_REQUEST && strstr(q.msg, "kind must be") != NULL,
	     "audit.export of an unknown kind: bad_request, %s", q.msg);
	e = wire(admin_op_journal_verify, "{}", &q);
	t_ok(e == AE_OK && json_is_true(json_object_get(q.result, "intact")),
	     "journal.verify: intact");
	t_ok(journal_size() == n, "no refusal through the wire wrote a record");
	e = wire(admin_op_client_allow, "{\"name\":\"agent-a\",\"uid\":4242}", &q);
	t_ok(e == AE_OK && json_integer_value(json_object_get(q.result, "change")) > 0 &&
		 strstr(q.msg, "another operator must approve it") != NULL,
	     "client.allow under the rule: ok, the change's id and what happens next (%s)", q.msg);
	e = wire(admin_op_change_reject, "{\"id\":\"1\",\"reason\":\"x\"}", &q);
	t_ok(e == AE_BAD_REQUEST && strstr(q.msg, "a change id") != NULL,
	     "change.reject with an id that is a string: bad_request, %s", q.msg);
	json_decref(q.result);
}

int main(void)
{
	if (open_daemon() == 0) {
		test_clients();
		test_callers();
		test_documents();
		test_keys();
		test_wire();
	}
	custody_free(&d.custody);
	store_free(&d.st);
	config_free(&d.cfg);
	return t_done();
}
