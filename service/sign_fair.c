/*
 * sign_fair.c — whose turn it is on the signing socket's io thread
 * (signer_int.h; docs/reliability.md, "Hostile callers on the signing
 * socket").
 *
 * A peer that pipelines lines as fast as it can always has another one
 * waiting; served until it had none, it kept the io thread from everyone
 * else.  So connections with work wait on their uid's list, and uids with work
 * wait in a ring: each round, each uid in the ring serves one of its
 * connections for at most SIGN_LINES_PER_TURN lines.  A uid with many
 * connections gets no more turns than a uid with one.
 *
 * Bad lines (sign_bad_line) cost work and serve no one: each spends a token of
 * its uid's bucket (SIGN_BAD_PER_SEC, up to SIGN_BAD_BURST).  A uid without a
 * token is parked, its connections not read, until it has one: it slows
 * itself down and no one else.  A uid's entry outlives its connections while
 * it owes tokens, so that reconnecting forgives nothing.
 *
 * Everything here runs on the io thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "signer_int.h"

#define HASH_MASK (SIGN_UIDS_HASH - 1)

static uint32_t uid_hash(uid_t uid)
{
	return ((uint32_t)uid * 2654435761u) & HASH_MASK; /* Knuth's multiplicative hash */
}

int sign_fair_init(struct sign_fair *f)
{
	uint32_t i;

	f->ents = calloc(SIGN_UIDS_CAP, sizeof(*f->ents));
	f->index = malloc(SIGN_UIDS_HASH * sizeof(*f->index));
	if (f->ents == NULL || f->index == NULL)
		return -ENOMEM;
	for (i = 0; i < SIGN_UIDS_HASH; i++)
		f->index[i] = SIGN_NONE;
	for (i = 0; i < SIGN_UIDS_CAP; i++)
		f->ents[i].next = i + 1 < SIGN_UIDS_CAP ? i + 1 : SIGN_NONE;
	f->free_head = 0;
	f->ring_head = f->ring_tail = f->parked = SIGN_NONE;
	f->n_ring = 0;
	return 0;
}

void sign_fair_free(struct sign_fair *f)
{
	free(f->ents);
	free(f->index);
	f->ents = NULL;
	f->index = NULL;
}

/* The index cell of uid, or the empty one where it would go (the index is at
 * most SIGN_UIDS_CAP / SIGN_UIDS_HASH full, so one is empty). */
static uint32_t cell(const struct sign_fair *f, uid_t uid)
{
	uint32_t i = uid_hash(uid);

	while (f->index[i] != SIGN_NONE && f->ents[f->index[i]].uid != uid)
		i = (i + 1) & HASH_MASK;
	return i;
}

static void refill(struct sign_uid *u)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	u->tokens += SIGN_BAD_PER_SEC * (double)sign_elapsed_ns(&u->last, &now) / 1e9;
	if (u->tokens > SIGN_BAD_BURST)
		u->tokens = SIGN_BAD_BURST;
	u->last = now;
}

/* Forgets entry e: out of the index (linear probing, entries after it moved
 * back into the gap) and onto the free list. */
static void drop(struct sign_fair *f, uint32_t e)
{
	uint32_t i = cell(f, f->ents[e].uid), j, k;

	f->index[i] = SIGN_NONE;
	for (j = (i + 1) & HASH_MASK; f->index[j] != SIGN_NONE; j = (j + 1) & HASH_MASK) {
		k = uid_hash(f->ents[f->index[j]].uid);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue; /* its home is between the gap and it: it stays */
		f->index[i] = f->index[j];
		f->index[j] = SIGN_NONE;
		i = j;
	}
	f->ents[e] = (struct sign_uid){.next = f->free_head};
	f->free_head = e;
}

static int idle(struct sign_uid *u)
{
	if (!u->used || u->conns > 0 || u->queued)
		return 0;
	refill(u);
	return u->tokens >= SIGN_BAD_BURST;
}

static void maybe_drop(struct sign_fair *f, uint32_t e)
{
	if (idle(&f->ents[e]))
		drop(f, e);
}

void sign_fair_sweep(struct sign_fair *f)
{
	uint32_t e;

	for (e = 0; e < SIGN_UIDS_CAP; e++)
		maybe_drop(f, e);
}

/* No free entry: one without connections is forgotten, debt and all (there
 * is one: no more uids hold connections than there are connections). */
static void reclaim(struct sign_fair *f)
{
	uint32_t e;

	sign_fair_sweep(f);
	for (e = 0; f->free_head == SIGN_NONE && e < SIGN_UIDS_CAP; e++)
		if (f->ents[e].used && f->ents[e].conns == 0 && !f->ents[e].queued)
			drop(f, e);
}

uint32_t sign_fair_take(struct sign_fair *f, uid_t uid, unsigned max)
{
	uint32_t e = f->index[cell(f, uid)];
	struct sign_uid *u;

	if (e != SIGN_NONE) {
		if (f->ents[e].conns >= max)
			return SIGN_NONE;
		f->ents[e].conns++;
		return e;
	}
	if (max == 0)
		return SIGN_NONE;
	if (f->free_head == SIGN_NONE)
		reclaim(f);
	if ((e = f->free_head) == SIGN_NONE)
		return SIGN_NONE;
	u = &f->ents[e];
	f->free_head = u->next;
	*u = (struct sign_uid){.used = 1,
			       .uid = uid,
			       .conns = 1,
			       .head = SIGN_NONE,
			       .tail = SIGN_NONE,
			       .next = SIGN_NONE,
			       .tokens = SIGN_BAD_BURST};
	clock_gettime(CLOCK_MONOTONIC, &u->last);
	f->index[cell(f, uid)] = e;
	return e;
}

void sign_fair_release(struct sign_fair *f, uint32_t e)
{
	if (f->ents[e].conns > 0)
		f->ents[e].conns--;
	maybe_drop(f, e);
}

static void ring_push(struct sign_fair *f, uint32_t e)
{
	f->ents[e].next = SIGN_NONE;
	if (f->ring_tail != SIGN_NONE)
		f->ents[f->ring_tail].next = e;
	else
		f->ring_head = e;
	f->ring_tail = e;
	f->n_ring++;
}

static uint32_t ring_pop(struct sign_fair *f)
{
	uint32_t e = f->ring_head;

	f->ring_head = f->ents[e].next;
	if (f->ring_head == SIGN_NONE)
		f->ring_tail = SIGN_NONE;
	f->n_ring--;
	return e;
}

void sign_fair_bad(struct sign_fair *f, uint32_t e)
{
	refill(&f->ents[e]);
	f->ents[e].tokens -= 1.0;
}

int sign_fair_may(struct sign_fair *f, uint32_t e)
{
	refill(&f->ents[e]);
	return f->ents[e].tokens >= 1.0;
}

/* Entry e has ready connections and is not queued: into the ring, or parked
 * while it has no token. */
static void enqueue(struct sign_fair *f, uint32_t e)
{
	f->ents[e].queued = 1;
	if (sign_fair_may(f, e)) {
		ring_push(f, e);
	} else {
		f->ents[e].next = f->parked;
		f->parked = e;
	}
}

void sign_fair_ready(struct sign_fair *f, struct conn *conns, struct conn *c)
{
	struct sign_uid *u = &f->ents[c->uent];
	uint32_t slot = (uint32_t)(c - conns);

	if (c->ready)
		return;
	c->ready = 1;
	c->rnext = SIGN_NONE;
	c->rprev = u->tail;
	if (u->tail != SIGN_NONE)
		conns[u->tail].rnext = slot;
	else
		u->head = slot;
	u->tail = slot;
	if (!u->queued)
		enqueue(f, c->uent);
}

void sign_fair_unready(struct sign_fair *f, struct conn *conns, struct conn *c)
{
	struct sign_uid *u = &f->ents[c->uent];

	if (!c->ready)
		return;
	if (c->rprev != SIGN_NONE)
		conns[c->rprev].rnext = c->rnext;
	else
		u->head = c->rnext;
	if (c->rnext != SIGN_NONE)
		conns[c->rnext].rprev = c->rprev;
	else
		u->tail = c->rprev;
	c->ready = 0;
}

uint32_t sign_fair_next(struct sign_fair *f, struct conn *conns, uint32_t *ret_u)
{
	uint32_t e, slot;

	while (f->ring_head != SIGN_NONE) {
		e = ring_pop(f);
		if ((slot = f->ents[e].head) == SIGN_NONE) {
			/* Its connections closed while it waited. */
			f->ents[e].queued = 0;
			maybe_drop(f, e);
			continue;
		}
		sign_fair_unready(f, conns, &conns[slot]);
		*ret_u = e; /* queued stays set: it is having its turn */
		return slot;
	}
	return SIGN_NONE;
}

void sign_fair_turn_end(struct sign_fair *f, struct conn *conns, uint32_t e, struct conn *c)
{
	if (c != NULL && c->ls.fd >= 0)
		sign_fair_ready(f, conns, c); /* to the end of its uid's list */
	f->ents[e].queued = 0;
	if (f->ents[e].head != SIGN_NONE)
		enqueue(f, e);
	else
		maybe_drop(f, e);
}

int sign_fair_wake(struct sign_fair *f)
{
	uint32_t *pp = &f->parked, e;
	struct sign_uid *u;
	int ms, best = -1;

	while ((e = *pp) != SIGN_NONE) {
		u = &f->ents[e];
		if (u->head == SIGN_NONE) {
			*pp = u->next;
			u->queued = 0;
			maybe_drop(f, e);
		} else if (sign_fair_may(f, e)) {
			*pp = u->next;
			ring_push(f, e);
		} else {
			ms = (int)((1.0 - u->tokens) * 1000.0 / SIGN_BAD_PER_SEC) + 1;
			if (best < 0 || ms < best)
				best = ms;
			pp = &u->next;
		}
	}
	return best;
}

int sign_bad_line(enum proto_err e)
{
	switch (e) {
	case PE_BAD_REQUEST:
	case PE_TOO_LARGE:
	case PE_UNKNOWN_CLIENT:
	case PE_FORBIDDEN:
	case PE_AUDIENCE:
	case PE_NOT_FOUND:
		return 1;
	default:
		/* Not the caller's doing (hardware, journal, a key not yet
		 * published, a checkpoint not yet made), or already limited
		 * (rate_limited). */
		return 0;
	}
}
