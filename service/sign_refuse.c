/*
 * sign_refuse.c — forbidden requests on the signing socket, counted and
 * journaled in sums (signer_int.h; docs/reliability.md, "Hostile callers on
 * the signing socket").
 *
 * One assertion.refuse record per refusal let any local user write the
 * journal as fast as it could ask (19 MB/s).  So refusals are counted per
 * (uid, client, reason): the first of a key not counted yet is journaled at
 * once, before it is answered, so that an operator sees it promptly; the
 * others are answered at once and journaled as one record with their count,
 * first and last time, every SIGN_REFUSE_INTERVAL seconds and when the signer
 * stops.  A key quiet for a whole interval is forgotten.  A crash loses at
 * most one interval's counts.
 *
 * What one uid can make the journal hold is bounded too: clients that do not
 * exist are never named (a stranger's probes would otherwise be the journal's
 * keys), and at most SIGN_REFUSE_NAMED_PER_UID clients are named per uid;
 * beyond them its refusals are counted unnamed.  Its refusals themselves are
 * bad lines, slowed down by sign_fair.c.
 *
 * Everything here runs on the io thread; records go to the journal thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "signer_int.h"

#define MASK (SIGN_REFUSE_CAP - 1)

static size_t key_hash(uid_t uid, const char *client, enum proto_err e)
{
	uint64_t h =
	    sign_hash_name(client) ^ ((uint64_t)uid * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)e << 40);

	return (size_t)(h ^ (h >> 29)) & MASK;
}

int sign_refuse_init(struct signer *s)
{
	struct sign_refusals *r = &s->io.refusals;

	r->v = calloc(SIGN_REFUSE_CAP, sizeof(*r->v));
	r->spare = calloc(SIGN_REFUSE_CAP, sizeof(*r->spare));
	r->flushed = time(NULL);
	r->n = 0;
	return r->v != NULL && r->spare != NULL ? 0 : -ENOMEM;
}

void sign_refuse_free(struct signer *s)
{
	free(s->io.refusals.v);
	free(s->io.refusals.spare);
	s->io.refusals.v = s->io.refusals.spare = NULL;
}

/* The key's entry in v, or the free one where it would go (v is never more
 * than three quarters full, so one is free). */
static struct refuse_ent *find(struct refuse_ent *v, uid_t uid, const char *client,
			       enum proto_err e)
{
	size_t i = key_hash(uid, client, e);

	while (v[i].used && !(v[i].uid == uid && v[i].err == e && strcmp(v[i].client, client) == 0))
		i = (i + 1) & MASK;
	return &v[i];
}

static size_t named_of(const struct sign_refusals *r, uid_t uid)
{
	size_t i, n = 0;

	for (i = 0; i < SIGN_REFUSE_CAP; i++)
		n += r->v[i].used && r->v[i].uid == uid && r->v[i].client[0] != '\0';
	return n;
}

int sign_refuse_note(struct signer *s, uid_t uid, pid_t pid, const char *client, enum proto_err e)
{
	struct sign_refusals *r = &s->io.refusals;
	int64_t now = (int64_t)time(NULL);
	struct refuse_ent *x = find(r->v, uid, client, e);

	if (!x->used && client[0] != '\0' && named_of(r, uid) >= SIGN_REFUSE_NAMED_PER_UID)
		x = find(r->v, uid, client = "", e);
	if (!x->used && r->n >= SIGN_REFUSE_CAP / 4 * 3) {
		r->lost++; /* said in the log at the next flush */
		return 0;
	}
	x->pid = pid;
	if (!x->used) {
		x->used = 1;
		x->uid = uid;
		x->err = e;
		snprintf(x->client, sizeof(x->client), "%s", client);
		x->count = 0;
		r->n++;
		return 1;
	}
	if (x->count++ == 0)
		x->first = now;
	x->last = now;
	return 0;
}

struct job *sign_refuse_job(uid_t uid, pid_t pid, const char *client, enum proto_err e,
			    uint64_t count, int64_t first, int64_t last)
{
	struct job *j;

	if ((j = calloc(1, sizeof(*j))) == NULL)
		return NULL;
	j->slot = SIGN_NONE;
	j->refusal = 1;
	j->err = e;
	j->uid = uid;
	j->pid = pid;
	snprintf(j->client, sizeof(j->client), "%s", client);
	j->count = count;
	j->first = first;
	j->last = last;
	clock_gettime(CLOCK_MONOTONIC, &j->queued);
	return j;
}

void sign_refuse_flush(struct signer *s)
{
	struct sign_refusals *r = &s->io.refusals;
	struct refuse_ent *x, *tmp;
	struct job *j;
	size_t i;

	memset(r->spare, 0, SIGN_REFUSE_CAP * sizeof(*r->spare));
	r->n = 0;
	for (i = 0; i < SIGN_REFUSE_CAP; i++) {
		x = &r->v[i];
		if (!x->used || x->count == 0)
			continue; /* quiet for an interval: forgotten */
		if ((j = sign_refuse_job(x->uid, x->pid, x->client, x->err, x->count, x->first,
					 x->last)) == NULL)
			r->lost += x->count;
		else
			signq_push(&s->jr.q, j);
		x->count = 0;
		*find(r->spare, x->uid, x->client, x->err) = *x;
		r->n++;
	}
	if (r->lost > 0)
		log_warn("sign socket: %llu refusals were answered but not counted (%d keys at "
			 "once at most)",
			 (unsigned long long)r->lost, SIGN_REFUSE_CAP / 4 * 3);
	r->lost = 0;
	tmp = r->v;
	r->v = r->spare;
	r->spare = tmp;
	r->flushed = time(NULL);
}
