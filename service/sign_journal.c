/*
 * sign_journal.c — the signing socket's journal thread (signer_int.h): group
 * commit.  What the backends signed since the last commit is journaled in one
 * transaction; answers leave only after COMMIT (synchronous = FULL), so no
 * workload holds an assertion the journal lacks.  The key's state is read
 * again inside that transaction: an assertion whose key was revoked or retired
 * while it was being signed is never handed out.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "signer_int.h"

/* Whether kid may still sign: active, or retiring (already published to every
 * verifier that honours caching; retired and revoked keys never). */
static int key_signs(struct store *st, const char *kid)
{
	struct store_rows *q = NULL;
	int ok = 0;

	if (store_query(st, &q, "SELECT state FROM keys WHERE kid = ?", "s", kid) == 0 &&
	    store_next(q) > 0) {
		const char *state = store_text(q, 0);
		ok = state != NULL &&
		     (strcmp(state, "active") == 0 || strcmp(state, "retiring") == 0);
	}
	store_done(st, q);
	return ok;
}

/* A refusal record counts the refusals of one (uid, client, reason) from
 * first to last (sign_refuse.c); a client that does not exist is not named. */
static json_t *refusal_fields(const struct job *j)
{
	json_t *f =
	    json_pack("{sssIsIsIsIsI}", "error", proto_err_name(j->err), "uid", (json_int_t)j->uid,
		      "pid", (json_int_t)j->pid, "count", (json_int_t)j->count, "first",
		      (json_int_t)j->first, "last", (json_int_t)j->last);

	if (f != NULL && j->client[0] != '\0' &&
	    json_object_set_new(f, "client", json_string(j->client)) < 0) {
		json_decref(f);
		return NULL;
	}
	return f;
}

static int journal_job(struct store *st, struct job *j)
{
	char actor[32];
	json_t *f;
	int r;

	snprintf(actor, sizeof(actor), "uid:%u", (unsigned)j->uid);
	if (j->refusal)
		f = refusal_fields(j);
	else
		f = json_pack("{sssssssssIsIsIsI}", "client", j->pol->name, "kid", j->pol->kid,
			      "jti", j->jti, "aud", j->aud, "iat", (json_int_t)j->iat, "exp",
			      (json_int_t)j->exp, "uid", (json_int_t)j->uid, "pid",
			      (json_int_t)j->pid);
	if (f != NULL && !j->refusal && j->gid >= 0 &&
	    json_object_set_new(f, "gid", json_integer(j->gid)) < 0) {
		json_decref(f);
		f = NULL;
	}
	if (f == NULL)
		return -ENOMEM;
	r = journal_append(st, j->refusal ? "assertion.refuse" : "assertion.issue", actor, f, NULL);
	json_decref(f);
	return r;
}

void *sign_journal_main(void *arg)
{
	struct signer *s = arg;
	struct job *batch, *j, *next;
	char ok_kid[CIMD_KID_LEN + 1], bad_kid[CIMD_KID_LEN + 1];
	int r, lost;

	/* Until the others are gone and the queue is empty: the io thread's
	 * last refusal counts are journaled on a clean stop. */
	for (;;) {
		if ((batch = signq_take(&s->jr.q, CIMD_JOURNAL_BATCH_MAX, &s->journal_stop)) ==
		    NULL) {
			if (__atomic_load_n(&s->journal_stop, __ATOMIC_ACQUIRE))
				break;
			continue;
		}
		ok_kid[0] = bad_kid[0] = '\0';
		r = store_begin(s->jr.writer);
		for (j = batch; r == 0 && j != NULL; j = j->next) {
			if (!j->refusal && strcmp(j->pol->kid, ok_kid) != 0) {
				if (strcmp(j->pol->kid, bad_kid) == 0 ||
				    !key_signs(s->jr.writer, j->pol->kid)) {
					snprintf(bad_kid, sizeof(bad_kid), "%s", j->pol->kid);
					j->err = PE_NO_ACTIVE_KEY;
					snprintf(j->msg, sizeof(j->msg),
						 "key %s of %s was retired or revoked", j->pol->kid,
						 j->pol->name);
					continue;
				}
				snprintf(ok_kid, sizeof(ok_kid), "%s", j->pol->kid);
			}
			r = journal_job(s->jr.writer, j);
		}
		if (r == 0)
			r = store_commit(s->jr.writer);
		lost = r < 0 && store_lost(s->jr.writer);
		if (r < 0) {
			store_rollback(s->jr.writer);
			/* An outage is said when it begins and when it ends, not
			 * for each batch refused in between. */
			if (!lost || !s->jr.lost)
				log_err("sign socket: journal: %s; %s",
					lost ? "the state database is unreachable" : strerror(-r),
					lost ? "signing refused until it is back"
					     : "assertions of this batch withheld");
		} else if (s->jr.lost) {
			log_info("sign socket: journal: the state database is back");
		}
		s->jr.lost = lost;
		for (j = batch; j != NULL; j = next) {
			next = j->next;
			if (r < 0) {
				/* Fail closed: no record, no assertion. */
				j->err = lost ? PE_UNAVAILABLE : PE_INTERNAL;
				snprintf(j->msg, sizeof(j->msg), "%s",
					 lost ? "the state database is unreachable: nothing was "
						"issued"
					      : "the journal cannot be written");
			}
			sign_done_push(s, j);
		}
	}
	return NULL;
}
