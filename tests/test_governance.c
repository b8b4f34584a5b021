/*
 * test_governance.c — signing rights under two people (issue 15, item 8),
 * end to end through the real cimdd, cimdctl and cimd-assert on SoftHSM2.
 *
 * An operator who holds the submit role alone once made themselves able to
 * sign as a client: their own uid a caller (client allow), their own
 * authorization server an audience (client audience), a policy (client
 * policy), and then a valid assertion, with no second person involved.  With
 * the two-person rule on, each of those is a proposal (change.submit) that
 * changes nothing until another operator with the approve role approves it;
 * its submitter cannot approve it, even one who holds the approve role.
 *
 * Operators: alice (our uid, every role), mallory (uid 1000, submit and
 * read), bob (uid 1001, approve and read).  Other uids need root (setpriv).
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "service.h"

#define MALLORY 1000
#define BOB 1001
#define EVIL_AS "https://as.evil.example"

static struct t_cimdd cd;
static char assert_bin[700], client_id[256];

/* cimdctl as uid (ourselves: alice, when uid < 0); output, stderr included. */
static int ctl(int uid, char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int ctl(int uid, char *out, size_t len, const char *fmt, ...)
{
	char args[2048], pre[128] = "";
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	if (uid >= 0)
		snprintf(pre, sizeof(pre), "setpriv --reuid=%d --regid=%d --clear-groups ", uid,
			 uid);
	return t_sh_out(out, len, "%s%s -s %s %s", pre, cd.ctl, cd.dm.sock, args);
}

/* cimd-assert as uid for client_id and aud: its exit status, the assertion
 * (or the refusal) in out. */
static int sign_as(int uid, char *out, size_t len)
{
	return t_sh_out(out, len,
			"setpriv --reuid=%d --regid=%d --clear-groups %s -s %s --client-id %s "
			"--aud %s",
			uid, uid, assert_bin, cd.sign_sock, client_id, EVIL_AS);
}

/* The id in "submitted as change N; ...", or 0. */
static int change_id(const char *out)
{
	const char *p = strstr(out, "submitted as change ");
	return p != NULL ? atoi(p + strlen("submitted as change ")) : 0;
}

/* The claims of a compact JWS (a new object), or NULL. */
static json_t *claims_of(const char *jws)
{
	const char *a = strchr(jws, '.'), *b = a ? strchr(a + 1, '.') : NULL;
	uint8_t *buf = NULL;
	size_t n = 0;
	json_t *o = NULL;

	if (b != NULL && b64url_decode(a + 1, (size_t)(b - a - 1), &buf, &n) == 0)
		o = json_loadb((const char *)buf, n, 0, NULL);
	free(buf);
	return o;
}

/* The two-person rule turned on by the operator: the configuration written
 * with it, and a reload (SIGHUP), which status then reports. */
static int rule_on(void)
{
	static const char off[] = "two_person_rule = no\n";
	char text[8192], out[8192], *p;
	FILE *f = fopen(cd.dm.conf, "re");
	size_t n;
	int i;

	if (f == NULL)
		return -1;
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	if ((p = strstr(text, off)) == NULL)
		return -1;
	/* "no\n" becomes "yes": the line's newline moves one on. */
	memmove(p + sizeof(off), p + sizeof(off) - 1, strlen(p + sizeof(off) - 1) + 1);
	memcpy(p, "two_person_rule = yes\n", sizeof(off));
	if (t_write_file(cd.dm.conf, text, strlen(text)) < 0)
		return -1;
	kill(cd.dm.pid, SIGHUP);
	for (i = 0; i < 50; i++, usleep(100000))
		if (t_cimdd_ctl(&cd, out, sizeof(out), "--json status") == 0 &&
		    strstr(out, "\"two_person_rule\": true") != NULL)
			return 0;
	return -1;
}

/* Setup with the rule off, as an operator alone may: agent-g with its
 * document approved and published. */
static int setup(void)
{
	static const char doc[] = "{\"client_name\":\"Agent G\",\"grant_types\":"
				  "[\"client_credentials\"],\"response_types\":[]}\n";
	char path[600], out[8192];
	int i, rc;

	snprintf(path, sizeof(path), "%s/g.json", cd.dir);
	t_write_file(path, doc, strlen(doc));
	rc = t_cimdd_ctl(&cd, out, sizeof(out), "client add agent-g --owner team-g --metadata %s",
			 path);
	if (rc == 0)
		rc = t_cimdd_ctl(&cd, out, sizeof(out), "doc approve agent-g 1");
	if (!t_ok(rc == 0, "agent-g added and approved while the rule is off (%s)", out))
		return -1;
	/* The signer signs only with a key whose JWKS was handed on. */
	for (i = 0; i < 50; i++, usleep(100000))
		if (t_cimdd_get(&cd, "/clients/agent-g/jwks.json", out, sizeof(out)) == 0 &&
		    strstr(out, "\"kid\"") != NULL)
			break;
	if (!t_ok(i < 50, "agent-g's JWKS is served"))
		return -1;
	return t_ok(rule_on() == 0, "the operator turns the two-person rule on (SIGHUP)") ? 0 : -1;
}

/* Mallory, who holds submit alone, proposes every step of taking agent-g's
 * signing identity: nothing is made, and mallory cannot sign. */
static void test_alone(int ids[3])
{
	char out[8192];
	int rc;

	rc = ctl(MALLORY, out, sizeof(out), "client allow agent-g --uid %d", MALLORY);
	ids[0] = change_id(out);
	t_ok(rc == 0 && ids[0] > 0 && strstr(out, "another operator must approve it"),
	     "mallory's client allow of their own uid is a proposal: %s", out);
	rc = ctl(MALLORY, out, sizeof(out), "client audience agent-g --add %s", EVIL_AS);
	ids[1] = change_id(out);
	t_ok(rc == 0 && ids[1] > 0, "mallory's client audience is a proposal: %s", out);
	rc = ctl(MALLORY, out, sizeof(out), "client policy agent-g --ttl 120");
	ids[2] = change_id(out);
	t_ok(rc == 0 && ids[2] > 0, "mallory's client policy is a proposal: %s", out);
	rc = ctl(-1, out, sizeof(out), "--json client show agent-g");
	t_ok(rc == 0 && strstr(out, "\"uids\": []") && strstr(out, "\"audiences\": []") &&
		 !strstr(out, "\"assertion_ttl\": 120"),
	     "nothing of it was made: no caller, no audience, the default policy");
	rc = sign_as(MALLORY, out, sizeof(out));
	t_ok(rc == 1 && strstr(out, "forbidden"), "mallory cannot sign as agent-g (rc %d: %s)", rc,
	     out);
	rc = ctl(MALLORY, out, sizeof(out), "change approve %d", ids[0]);
	t_ok(rc == 1 && strstr(out, "lacks the approve role for change.approve"),
	     "mallory cannot approve their own change: %s", out);
	rc = ctl(-1, out, sizeof(out), "change list agent-g");
	t_ok(rc == 0 && strstr(out, "client.allow") && strstr(out, "client.audience.add") &&
		 strstr(out, "client.policy") && strstr(out, "mallory"),
	     "change list shows the three proposals and their submitter");
}

/* An operator who holds both roles cannot approve what they proposed; an
 * operator who did not propose a change cannot withdraw it without the
 * approve role. */
static void test_own(void)
{
	char out[8192];
	int rc, id;

	rc = ctl(-1, out, sizeof(out), "client allow agent-g --gid 4242");
	id = change_id(out);
	t_ok(rc == 0 && id > 0, "alice proposes gid 4242: %s", out);
	rc = ctl(-1, out, sizeof(out), "change approve %d", id);
	t_ok(rc == 1 && strstr(out, "two-person rule: alice proposed change"),
	     "alice, who holds approve too, cannot approve her own change: %s", out);
	rc = ctl(MALLORY, out, sizeof(out), "change reject %d --reason mine-now", id);
	t_ok(rc == 1 && strstr(out, "needs the approve role"),
	     "mallory cannot reject alice's change: %s", out);
	rc = ctl(-1, out, sizeof(out), "change reject %d", id);
	t_ok(rc == 2 && strstr(out, "--reason is required"), "a rejection needs --reason: %s", out);
	rc = ctl(BOB, out, sizeof(out), "change reject %d --reason 'not needed'", id);
	t_ok(rc == 0 && strstr(out, "rejected"), "bob rejects it: %s", out);
	rc = ctl(MALLORY, out, sizeof(out), "client allow agent-g --gid 5555");
	id = change_id(out);
	rc = ctl(MALLORY, out, sizeof(out), "change reject %d --reason typo", id);
	t_ok(id > 0 && rc == 0, "mallory withdraws a change of their own: %s", out);
	rc = ctl(BOB, out, sizeof(out), "change approve %d", id);
	t_ok(rc == 1 && strstr(out, "is rejected, not pending"),
	     "a withdrawn change cannot be approved: %s", out);
}

/* Bob approves: the changes are made, mallory signs, and the journal says
 * who proposed and who approved each. */
static void test_approved(const int ids[3])
{
	char out[65536], needle[128];
	json_t *claims;
	int i, rc, made = 1;

	for (i = 0; i < 3; i++) {
		rc = ctl(BOB, out, sizeof(out), "change approve %d", ids[i]);
		made = made && rc == 0 && strstr(out, "approved and made") != NULL;
	}
	t_ok(made, "bob approves the three changes");
	/* Each approval marked agent-g changed; the signer reads it again. */
	for (i = 0; i < 50; i++, usleep(100000))
		if ((rc = sign_as(MALLORY, out, sizeof(out))) == 0)
			break;
	claims = claims_of(out);
	t_ok(rc == 0 && claims != NULL &&
		 strcmp(json_string_value(json_object_get(claims, "aud")), EVIL_AS) == 0 &&
		 strcmp(json_string_value(json_object_get(claims, "iss")), client_id) == 0 &&
		 json_integer_value(json_object_get(claims, "exp")) -
			 json_integer_value(json_object_get(claims, "iat")) ==
		     120,
	     "then mallory signs as agent-g for that audience with that policy (rc %d)", rc);
	json_decref(claims);
	rc = ctl(-1, out, sizeof(out), "journal show");
	snprintf(needle, sizeof(needle),
		 "{\"id\":%d,\"op\":\"client.allow\",\"client\":\"agent-g\"", ids[0]);
	t_ok(strstr(out, needle) != NULL, "change.submit names the change and its fields");
	snprintf(needle, sizeof(needle), "\"uid\":%d,\"change\":%d,\"submitter\":\"mallory\"",
		 MALLORY, ids[0]);
	t_ok(strstr(out, needle) != NULL && strstr(out, "client.allow         bob"),
	     "client.allow is recorded by bob with the change and its submitter");
	t_ok(strstr(out, "change.reject") && strstr(out, "\"withdrawn\":true") &&
		 strstr(out, "\"reason\":\"not needed\""),
	     "withdrawals and rejections are recorded with their reasons");
	rc = ctl(-1, out, sizeof(out), "journal verify");
	t_ok(rc == 0 && strstr(out, "journal intact"), "the journal verifies: %s", out);
}

static void test_help(void)
{
	char out[8192];
	int rc;

	rc = ctl(-1, out, sizeof(out), "change approve --help");
	t_ok(rc == 0 && strstr(out, "usage: cimdctl change approve ID"), "change approve --help");
	rc = ctl(-1, out, sizeof(out), "change");
	t_ok(rc == 2 && strstr(out, "change list [NAME]") && strstr(out, "change reject ID"),
	     "change alone lists its commands");
	rc = ctl(-1, out, sizeof(out), "change approve seven");
	t_ok(rc == 2 && strstr(out, "is not a number"), "a change id that is no number: %s", out);
}

int main(void)
{
	static const char extra[] = "admin_socket_mode = 0666\n"
				    "operator = mallory uid=1000 roles=submit,read\n"
				    "operator = bob uid=1001 roles=approve,read\n";
	struct t_softhsm hsm;
	int ids[3] = {0}, rc;

	if (geteuid() != 0) {
		printf("# not root: the operators' uids need setpriv; skipped\n");
		return t_done();
	}
	t_bin("cimd-assert", assert_bin, sizeof(assert_bin));
	if (!t_ok(t_softhsm_init(&hsm, "governance", "135790") == 0, "SoftHSM2 token"))
		return t_done();
	rc = t_cimdd_start(&cd, "gov", hsm.conf, extra);
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc)))
		return t_done();
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-g", cd.base);
	if (setup() == 0) {
		test_alone(ids);
		test_own();
		test_approved(ids);
		test_help();
	}
	/* Its exit status: under ASan, a leak would make it non-zero. */
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stops cleanly");
	return t_done();
}
