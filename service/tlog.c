/*
 * tlog.c — the journal as a transparency log (docs/audit.md): signed
 * checkpoints, inclusion and consistency proofs, and the rollback check.
 *
 * The journal's records are the leaves of an RFC 9162 Merkle tree whose head
 * store.c keeps with every commit.  Here that head is signed, at least every
 * checkpoint_interval seconds while the journal grows, as a C2SP
 * tlog-checkpoint in a C2SP signed note by each backend's attestation key
 * (firmware/note.c); each checkpoint is itself a journal record.  On a TPM
 * backend the checkpoint also carries the value of an NV counter that is
 * incremented after it commits, so that a database restored from an older copy
 * (whose latest checkpoint carries a smaller value than the TPM now holds) is
 * refused at start.
 *
 * Proofs are answered from a tree up to the latest checkpoint that keeps the
 * subtrees of 256 leaves and more (TREE_BASE), grown at each checkpoint by
 * the leaves it adds (O(new records); memory 0.25 byte per record); the few
 * smaller subtrees a proof needs are hashed from leaf hashes read back.  An
 * inclusion proof's smaller subtrees all lie in the aligned block of 256
 * records that holds its leaf, so they are read as that block, in one
 * statement, and the block read last is kept: a receipt costs the signer's io
 * thread one statement for its record and at most one for the leaves, not
 * one per subtree (eight on a PostgreSQL server are eight round trips, which
 * a flood of receipts would make every other caller wait behind).  The
 * signer's io thread asks for receipts from its own thread, hence the mutex.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "service.h"

/* The proof tree keeps subtrees of 256 leaves and up: 0.25 bytes of memory
 * per record; a proof reads back the leaf hashes of at most two blocks of
 * 256 (one for an inclusion proof), one statement each. */
#define TREE_BASE 8
#define COUNTER_EXT "nv-counter"
#define TIME_EXT "time"
/* A TPM counter behind the database by more than this was not left behind by
 * a crash between a checkpoint's commit and its increment (one each). */
#define COUNTER_LAG_MAX 4

#define BLOCK (1U << TREE_BASE)

struct tlog {
	pthread_mutex_t mu;	  /* everything below; the signer's thread reads it */
	struct merkle_tree *tree; /* over records 1..tree->n, from TREE_BASE up */
	struct store *fetch_st;	  /* where the proof being made reads old leaves */
	char *note;		  /* the latest checkpoint, NULL before the first */
	uint64_t size;		  /* its tree size */
	int64_t record_seq;	  /* its own journal record */
	time_t issued;		  /* when it was issued */
	uint64_t counter;	  /* the counter it carries, 0: none */
	int counter_backend;	  /* index of the TPM backend, -1 none */
	int counter_checked;	  /* the rollback check has passed */
	int accept_rollback;	  /* --accept-rollback: an older database is journaled */
	char origin[NOTE_NAME_MAX + 1];
	time_t complained;
	/* The leaves of the aligned block of BLOCK records that a proof read
	 * last (fetch_leaves): only complete blocks under the tree are read,
	 * and the journal is append-only, so they never change. */
	uint8_t (*block)[32];
	uint64_t block_first; /* its first leaf index (when block is not NULL) */
};

/* The checkpoint origin and key name: base_url without its scheme
 * (tlog-checkpoint: "a schema-less URL"). */
static void origin_of(const char *base_url, char *out, size_t len)
{
	const char *p = strstr(base_url, "://");

	snprintf(out, len, "%s", p != NULL ? p + 3 : base_url);
}

static int grow(struct store *st, struct tlog *tl, uint64_t size);

/* Every attestation key the database knows, as a JWKS: who may have signed
 * a checkpoint it holds. */
static json_t *attest_trust(struct store *st)
{
	struct store_rows *s = NULL;

	if (store_query(st, &s, "SELECT jwk FROM attest_keys", "") < 0)
		return NULL;
	return jwks_rows(st, s);
}

/*
 * The TPM counter the database vouches for: the one in the note of its latest
 * checkpoint journal record, taken only if that note is signed by one of its
 * attestation keys and its root is the head of its own first records.  The
 * checkpoints table is not consulted: it is an unsigned copy, easy to edit.
 * No such record (a new appliance, or one from before checkpoints): not found.
 */
static int signed_counter(struct svc *d, struct tlog *tl, int *ret_found, uint64_t *ret, char *err,
			  size_t errlen)
{
	struct store_rows *s = NULL;
	json_t *rec = NULL, *trust = NULL;
	struct checkpoint c;
	uint8_t root[32];
	uint64_t head;
	const char *note;
	char why[256];
	int r = 0;

	*ret_found = 0;
	/* This node's latest: in a cluster each node's TPM counts the
	 * checkpoints that node signed (a record without a node is the single
	 * appliance's, node local). */
	if (store_query(d->st, &s,
			"SELECT record FROM journal WHERE kind = 'checkpoint' ORDER BY "
			"seq DESC",
			"") < 0)
		return -EIO;
	while (rec == NULL && store_next(s) > 0) {
		const char *node;

		rec = json_loadb(store_blob(s, 0), store_len(s, 0), 0, NULL);
		node = json_string_value(json_object_get(rec, "node"));
		if (rec != NULL &&
		    strcmp(node != NULL ? node : CIMD_NODE_DEFAULT, d->cfg->node) != 0) {
			json_decref(rec);
			rec = NULL;
		}
	}
	store_done(d->st, s);
	if (rec == NULL)
		return 0;
	note = json_string_value(json_object_get(rec, "note"));
	if ((trust = attest_trust(d->st)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (note == NULL ||
	    checkpoint_verify(note, strlen(note), trust, &c, NULL, why, sizeof(why)) < 0) {
		snprintf(err, errlen,
			 "the latest checkpoint in the journal is not signed by an attestation key "
			 "of this database (%s): the database was changed outside cimdd",
			 note == NULL ? "no note" : why);
		r = -CIMD_EVERIFY;
		goto out;
	}
	if ((r = journal_tree_head(d->st, &head, root)) < 0)
		goto out;
	if (c.size > head || (r = grow(d->st, tl, c.size)) < 0 ||
	    (r = merkle_tree_root(tl->tree, c.size, root)) < 0 || memcmp(root, c.root, 32) != 0) {
		snprintf(
		    err, errlen,
		    "the latest checkpoint in the journal signs a tree of %" PRIu64
		    " records that is not this journal's: the database was changed outside cimdd",
		    c.size);
		r = -CIMD_EVERIFY;
		goto out;
	}
	r = checkpoint_extension(note, strlen(note), &c, COUNTER_EXT, ret);
	if (r == 0)
		*ret_found = 1;
	r = r == -ENOENT ? 0 : r;
out:
	json_decref(rec);
	json_decref(trust);
	return r;
}

/*
 * The rollback check (docs/audit.md, "Rollback"): the database's latest
 * checkpoint counter against the TPM's.  TPM ahead: this database is older
 * than the TPM's last checkpoint, refused.  TPM behind by a little: a crash
 * came between a checkpoint's commit and its increment; it catches up.
 */
static int check_counter(struct svc *d, struct tlog *tl, char *err, size_t errlen)
{
	struct key_store *ks = custody_at(d->custody, (size_t)tl->counter_backend);
	uint64_t nv, db;
	int found, r;

	if (ks == NULL)
		return -CIMD_EUNAVAILABLE;
	if ((r = key_store_counter_read(ks, &nv)) < 0) {
		snprintf(err, errlen, "reading the TPM counter: %s (%s)", cimd_strerror(r),
			 key_store_errmsg(ks));
		return r;
	}
	if ((r = signed_counter(d, tl, &found, &db, err, errlen)) < 0) {
		if (r != -CIMD_EVERIFY)
			snprintf(err, errlen, "reading the latest checkpoint: %s",
				 cimd_strerror(r));
		return r;
	}
	if (found && nv > db && tl->accept_rollback) {
		/* The operator restored a backup on purpose: said, journaled, and
		 * the next checkpoint carries the TPM's counter onward. */
		json_t *f = json_pack("{sIsI}", "database_counter", (json_int_t)db, "tpm_counter",
				      (json_int_t)nv);

		if (f == NULL || store_begin(d->st) < 0 ||
		    journal_append(d->st, "rollback.accepted", "cimdd", f, NULL) < 0 ||
		    store_commit(d->st) < 0) {
			store_rollback(d->st);
			json_decref(f);
			snprintf(err, errlen, "journaling the accepted rollback: database error");
			return -EIO;
		}
		json_decref(f);
		log_err("--accept-rollback: running on a state database older than the TPM's "
			"counter (%" PRIu64 " < %" PRIu64 "); journaled as rollback.accepted",
			db, nv);
		tl->counter = nv;
		tl->counter_checked = 1;
		return 0;
	}
	if (found && nv > db) {
		snprintf(
		    err, errlen,
		    "rollback: the state database's latest checkpoint carries TPM counter %" PRIu64
		    " but the TPM's counter is %" PRIu64
		    ": this database is older than the one the TPM last vouched for (restored "
		    "from a backup?); refusing to run on it, unless started with --accept-rollback "
		    "(docs/audit.md, \"Rollback\")",
		    db, nv);
		return -CIMD_EVERIFY;
	}
	if (found && db - nv > COUNTER_LAG_MAX) {
		snprintf(err, errlen,
			 "the TPM's counter (%" PRIu64 ") is %" PRIu64
			 " behind the state database's (%" PRIu64
			 "): another TPM, or its NV index was redefined; refusing to run "
			 "(docs/audit.md, \"Rollback\")",
			 nv, db - nv, db);
		return -CIMD_EVERIFY;
	}
	while (found && nv < db)
		if ((r = key_store_counter_increment(ks, &nv)) < 0) {
			snprintf(err, errlen, "catching the TPM counter up: %s", cimd_strerror(r));
			return r;
		}
	tl->counter = found ? db : 0;
	tl->counter_checked = 1;
	return 0;
}

static int load_latest(struct svc *d, struct tlog *tl)
{
	struct store_rows *s = NULL;
	int r = 0;

	if (store_query(d->st, &s,
			"SELECT size, note, seq, created FROM checkpoints ORDER BY id DESC LIMIT 1",
			"") < 0)
		return -EIO;
	/* What is served and when the next is due; the counter is not read from
	 * this unsigned copy but from the signed note (check_counter). */
	if (store_next(s) > 0) {
		tl->size = (uint64_t)store_int(s, 0);
		tl->record_seq = store_int(s, 2);
		tl->issued = (time_t)store_int(s, 3);
		if ((tl->note = strdup(store_text(s, 1))) == NULL)
			r = -ENOMEM;
	}
	store_done(d->st, s);
	return r;
}

/* The proof tree's fetch callback: leaf i is record i + 1's.  The tree asks
 * for an aligned subtree below its base, which lies in one complete block
 * (merkle.c keeps the last, incomplete one): that block is read whole, once,
 * and kept for the next subtree and the next proof. */
static int fetch_leaves(void *arg, uint64_t first, uint64_t count, uint8_t (*ret)[32])
{
	struct tlog *tl = arg;
	uint64_t b = first / BLOCK * BLOCK;
	uint8_t(*leaves)[32] = NULL;
	int r;

	if (first + count > b + BLOCK || b + BLOCK > tl->tree->n)
		return -EINVAL; /* not what merkle.c asks for */
	if (tl->block == NULL || tl->block_first != b) {
		if ((r = journal_leaves(tl->fetch_st, b + 1, BLOCK, &leaves)) < 0)
			return r;
		free(tl->block);
		tl->block = leaves;
		tl->block_first = b;
	}
	memcpy(ret, tl->block[first - b], count * 32);
	return 0;
}

/* Grows the proof tree to size leaves, reading them a bounded chunk at a time
 * (a first start over millions of records). */
#define GROW_CHUNK 65536
static int grow(struct store *st, struct tlog *tl, uint64_t size)
{
	uint8_t(*leaves)[32] = NULL;
	uint64_t n;
	int r = 0;

	while (r == 0 && tl->tree->n < size) {
		n = size - tl->tree->n < GROW_CHUNK ? size - tl->tree->n : GROW_CHUNK;
		if ((r = journal_leaves(st, tl->tree->n + 1, n, &leaves)) < 0)
			break;
		r = merkle_tree_extend(tl->tree, (const uint8_t(*)[32])leaves, n);
		free(leaves);
		leaves = NULL;
	}
	return r;
}

int tlog_open(struct svc *d, int accept_rollback, struct tlog **ret, char *err, size_t errlen)
{
	struct tlog *tl;
	int r;

	if ((tl = calloc(1, sizeof(*tl))) == NULL)
		return -ENOMEM;
	pthread_mutex_init(&tl->mu, NULL);
	tl->accept_rollback = accept_rollback;
	tl->counter_backend = custody_tpm(d->custody);
	origin_of(d->cfg->base_url, tl->origin, sizeof(tl->origin));
	if ((r = merkle_tree_new(TREE_BASE, &tl->tree)) < 0)
		goto fail;
	merkle_tree_set_fetch(tl->tree, fetch_leaves, tl);
	tl->fetch_st = d->st;
	if ((r = load_latest(d, tl)) < 0 || (r = grow(d->st, tl, tl->size)) < 0) {
		snprintf(err, errlen, "loading the journal's checkpoints: %s", cimd_strerror(r));
		goto fail;
	}
	/* The TPM absent now: checked before the first checkpoint it answers. */
	if (tl->counter_backend >= 0 && (r = check_counter(d, tl, err, errlen)) < 0 &&
	    r != -CIMD_EUNAVAILABLE)
		goto fail;
	*ret = tl;
	return 0;
fail:
	tlog_free(&tl);
	return r;
}

int tlog_check_rollback(struct svc *d, struct tlog *tl)
{
	char err[512] = "";
	int r;

	if (tl->counter_backend < 0 || tl->counter_checked)
		return 0;
	if ((r = check_counter(d, tl, err, sizeof(err))) == -CIMD_EVERIFY)
		log_err("journal: %s", err);
	return r;
}

void tlog_free(struct tlog **ptl)
{
	struct tlog *tl = *ptl;

	if (tl == NULL)
		return;
	merkle_tree_free(&tl->tree);
	free(tl->block);
	free(tl->note);
	pthread_mutex_destroy(&tl->mu);
	free(tl);
	*ptl = NULL;
}

/* The signature lines of every open backend's attestation key over text. */
static int sign_all(struct svc *d, struct tlog *tl, const char *text, char **ret_lines)
{
	char kid[CIMD_KID_LEN + 1], *line = NULL, *all = NULL, *n;
	struct ks_key *ak = NULL;
	size_t i, len = 0;
	int r = -CIMD_EUNAVAILABLE;

	for (i = 0; i < d->cfg->n_backends; i++) {
		if (custody_at(d->custody, i) == NULL ||
		    keys_attest_active(d, d->cfg->backends[i].name, kid, &ak) < 0)
			continue;
		r = note_sign_line(custody_at(d->custody, i), ak, tl->origin, text, strlen(text),
				   &line);
		ks_key_free(&ak);
		if (r < 0)
			continue;
		if ((n = realloc(all, len + strlen(line) + 1)) == NULL) {
			free(line);
			free(all);
			return -ENOMEM;
		}
		all = n;
		memcpy(all + len, line, strlen(line) + 1);
		len += strlen(line);
		free(line);
		line = NULL;
	}
	if (all == NULL)
		return r < 0 ? r : -CIMD_EUNAVAILABLE;
	*ret_lines = all;
	return 0;
}

/*
 * The TPM counter value this checkpoint will carry: the counter checked
 * against the journal (once), read, and caught up with the last checkpoint
 * when an increment failed after its checkpoint committed, so that the TPM
 * never falls further behind.  *ret_counter is one past the counter now.
 */
static int counter_next(struct svc *d, struct tlog *tl, struct key_store *cks,
			uint64_t *ret_counter, char *err, size_t errlen)
{
	uint64_t nv = 0;
	int r;

	if (!tl->counter_checked && (r = check_counter(d, tl, err, errlen)) < 0) {
		if (r == -CIMD_EVERIFY)
			log_err("%s", err);
		else if (err[0] == '\0')
			snprintf(err, errlen, "the TPM is not open yet");
		goto out;
	}
	if ((r = key_store_counter_read(cks, &nv)) < 0) {
		snprintf(err, errlen, "reading the TPM counter: %s (%s)", cimd_strerror(r),
			 key_store_errmsg(cks));
		goto out;
	}
	if (tl->counter > nv + COUNTER_LAG_MAX) {
		snprintf(err, errlen,
			 "the TPM's counter (%" PRIu64 ") is far behind the last checkpoint's "
			 "(%" PRIu64 "): not caught up by hand",
			 nv, tl->counter);
		r = -CIMD_EBACKEND;
		goto out;
	}
	while (nv < tl->counter)
		if ((r = key_store_counter_increment(cks, &nv)) < 0) {
			snprintf(err, errlen, "catching the TPM counter up: %s", cimd_strerror(r));
			goto out;
		}
	*ret_counter = nv + 1;
	r = 0;
out:
	return r;
}

/* The journal record of a checkpoint: its size, root and note, and its
 * counter when there is one. */
/* A checkpoint record's fields; one that carries a TPM counter names the node
 * whose TPM it is (signed_counter). */
static int checkpoint_fields(const char *node, uint64_t size, const uint8_t root[32],
			     const char *note, uint64_t counter, json_t **ret_f)
{
	char hex[65];
	json_t *f;
	int r;

	hex_encode(root, 32, hex);
	f = json_pack("{sIssss}", "size", (json_int_t)size, "root", hex, "note", note);
	if (f == NULL ||
	    (counter > 0 &&
	     (json_object_set_new(f, "counter", json_integer((json_int_t)counter)) < 0 ||
	      json_object_set_new(f, "node", json_string(node)) < 0))) {
		r = -ENOMEM;
		goto out;
	}
	*ret_f = f;
	f = NULL;
	r = 0;
out:
	json_decref(f);
	return r;
}

/* The proof tree grown to size, before the checkpoint is committed: once it
 * is, receipts for it must be answerable. */
static int tree_grow_checked(struct svc *d, struct tlog *tl, uint64_t size, const uint8_t root[32],
			     char *err, size_t errlen)
{
	int r;

	pthread_mutex_lock(&tl->mu);
	if ((r = grow(d->st, tl, size)) == 0) {
		uint8_t mine[32];

		/* The stored tree head must be the head of the stored leaves, or
		 * the appliance would sign what it cannot prove: refused, and the
		 * daemon stops (the database was changed outside cimdd). */
		tl->fetch_st = d->st;
		if ((r = merkle_tree_root(tl->tree, size, mine)) == 0 &&
		    memcmp(mine, root, 32) != 0)
			r = -CIMD_EVERIFY;
	}
	pthread_mutex_unlock(&tl->mu);
	if (r < 0) {
		if (r == -CIMD_EVERIFY)
			log_err("journal: its stored tree head is not the head of its records: the "
				"database was changed outside cimdd; no checkpoint will sign it");
		snprintf(err, errlen, "growing the proof tree: %s", cimd_strerror(r));
	}
	return r;
}

/* The checkpoint's journal record and its row, in one transaction. */
static int checkpoint_store(struct svc *d, uint64_t size, const uint8_t root[32], uint64_t counter,
			    const char *note, const json_t *f, time_t now, int64_t *ret_seq,
			    char *err, size_t errlen)
{
	char cnum[24];
	int64_t seq;
	int r;

	snprintf(cnum, sizeof(cnum), "%" PRIu64, counter);
	if ((r = store_begin(d->st)) < 0 ||
	    (r = journal_append(d->st, "checkpoint", "cimdd", f, &seq)) < 0 ||
	    (r = store_exec(d->st,
			    "INSERT INTO checkpoints (size, root, counter, note, seq, created) "
			    "VALUES (?, ?, CAST(? AS INTEGER), ?, ?, ?)",
			    "ibssii", (int64_t)size, root, (size_t)32, counter > 0 ? cnum : NULL,
			    note, seq, (int64_t)now)) < 0 ||
	    (r = store_commit(d->st)) < 0) {
		store_rollback(d->st);
		snprintf(err, errlen, "recording it: database error");
		goto out;
	}
	*ret_seq = seq;
	r = 0;
out:
	return r;
}

int tlog_tick(struct svc *d, struct tlog *tl, int force)
{
	char err[512] = "", ext[96], *text = NULL, *lines = NULL, *note = NULL;
	uint8_t root[32];
	uint64_t size, counter = 0, after;
	time_t now = time(NULL);
	struct key_store *cks = NULL;
	json_t *f = NULL;
	int64_t seq;
	int r;

	/* One node of a cluster signs the checkpoints, the leader; every node
	 * serves the latest (docs/scaling.md, "A cluster"). */
	tlog_follow(d, tl);
	if (!store_leader(d->st))
		return 0;
	if (!force && tl->note != NULL && now - tl->issued < d->cfg->checkpoint_interval)
		return 0;
	if ((r = journal_tree_head(d->st, &size, root)) < 0)
		return r;
	/* Grown beyond the last checkpoint's own record: otherwise each
	 * checkpoint would call for the next. */
	if (size <= (uint64_t)tl->record_seq)
		return 0;
	if (tl->counter_backend >= 0) {
		cks = custody_at(d->custody, (size_t)tl->counter_backend);
		if ((r = counter_next(d, tl, cks, &counter, err, sizeof(err))) < 0)
			goto fail;
		snprintf(ext, sizeof(ext), TIME_EXT " %lld\n" COUNTER_EXT " %" PRIu64 "\n",
			 (long long)now, counter);
	} else {
		snprintf(ext, sizeof(ext), TIME_EXT " %lld\n", (long long)now);
	}
	if ((r = checkpoint_format(tl->origin, size, root, ext, &text)) < 0) {
		snprintf(err, sizeof(err), "origin %s is not a checkpoint origin (%s)", tl->origin,
			 cimd_strerror(r));
		goto fail;
	}
	if ((r = sign_all(d, tl, text, &lines)) < 0) {
		snprintf(err, sizeof(err), "no attestation key could sign it (%s)",
			 cimd_strerror(r));
		goto fail;
	}
	if (asprintf(&note, "%s\n%s", text, lines) < 0) {
		r = -ENOMEM;
		goto fail;
	}
	if ((r = checkpoint_fields(d->cfg->node, size, root, note, counter, &f)) < 0 ||
	    (r = tree_grow_checked(d, tl, size, root, err, sizeof(err))) < 0 ||
	    (r = checkpoint_store(d, size, root, counter, note, f, now, &seq, err, sizeof(err))) <
		0)
		goto fail;
	/* After the commit: a crash in between leaves the TPM one behind, which
	 * the next start catches up (check_counter). */
	if (cks != NULL && ((r = key_store_counter_increment(cks, &after)) < 0 || after != counter))
		log_err("checkpoint %" PRIu64 ": the TPM counter is %s, not %" PRIu64
			"; it is caught up at the next checkpoint or start",
			size, r < 0 ? cimd_strerror(r) : "elsewhere", counter);
	pthread_mutex_lock(&tl->mu);
	free(tl->note);
	tl->note = note;
	note = NULL;
	tl->size = size;
	tl->record_seq = seq;
	tl->issued = now;
	if (counter > 0)
		tl->counter = counter;
	pthread_mutex_unlock(&tl->mu);
	r = 1;
	goto out;
fail:
	/* Retried every second while it fails: said once a minute. */
	if (r != -CIMD_EVERIFY && now - tl->complained >= 60) {
		log_err("checkpoint of %" PRIu64 " records: %s; retrying", size, err);
		tl->complained = now;
	}
out:
	json_decref(f);
	free(text);
	free(lines);
	free(note);
	return r;
}

void tlog_latest(struct tlog *tl, uint64_t *ret_size, time_t *ret_issued)
{
	pthread_mutex_lock(&tl->mu);
	*ret_size = tl->note != NULL ? tl->size : 0;
	*ret_issued = tl->note != NULL ? tl->issued : 0;
	pthread_mutex_unlock(&tl->mu);
}

void tlog_follow(struct svc *d, struct tlog *tl)
{
	struct store_rows *s = NULL;
	char *note = NULL, err[256];
	uint8_t root[32];
	uint64_t size = 0;
	int64_t seq = 0, issued = 0;

	if (store_query(d->st, &s,
			"SELECT size, note, seq, created, root FROM checkpoints ORDER BY id DESC "
			"LIMIT 1",
			"") < 0)
		return;
	if (store_next(s) > 0 && store_int(s, 2) != tl->record_seq && store_len(s, 4) == 32 &&
	    (note = strdup(store_text(s, 1))) != NULL) {
		size = (uint64_t)store_int(s, 0);
		seq = store_int(s, 2);
		issued = store_int(s, 3);
		memcpy(root, store_blob(s, 4), 32);
	}
	store_done(d->st, s);
	if (note == NULL)
		return;
	/* Receipts prove against it: the proof tree first grows to what it
	 * covers, and its root must be the note's. */
	if (tree_grow_checked(d, tl, size, root, err, sizeof(err)) < 0) {
		free(note);
		return;
	}
	pthread_mutex_lock(&tl->mu);
	free(tl->note);
	tl->note = note;
	tl->size = size;
	tl->record_seq = seq;
	tl->issued = (time_t)issued;
	pthread_mutex_unlock(&tl->mu);
}

char *tlog_checkpoint(struct tlog *tl)
{
	char *out;

	pthread_mutex_lock(&tl->mu);
	out = tl->note != NULL ? strdup(tl->note) : NULL;
	pthread_mutex_unlock(&tl->mu);
	return out;
}

static json_t *proof_array(const uint8_t (*proof)[32], size_t n)
{
	json_t *arr = json_array();
	char *b64;
	size_t i;

	for (i = 0; arr != NULL && i < n; i++) {
		if (b64_encode_alloc(proof[i], 32, &b64) < 0) {
			json_decref(arr);
			return NULL;
		}
		json_array_append_new(arr, json_string(b64));
		free(b64);
	}
	return arr;
}

int tlog_inclusion(struct tlog *tl, struct store *st, int64_t seq, const char *record,
		   size_t record_len, json_t **ret)
{
	uint8_t proof[MERKLE_PROOF_MAX][32];
	char *rec = NULL;
	size_t len, n;
	json_t *o = NULL;
	int r;

	if (seq < 1)
		return -ENOENT;
	/* The caller found the record already (a receipt, by its jti): not read
	 * again. */
	if (record != NULL && (rec = strndup(record, record_len)) == NULL)
		return -ENOMEM;
	if (record == NULL && (r = journal_record(st, seq, &rec, &len)) < 0)
		return r;
	pthread_mutex_lock(&tl->mu);
	if (tl->note == NULL || (uint64_t)seq > tl->size) {
		r = -EAGAIN;
		goto out;
	}
	tl->fetch_st = st;
	if ((r = merkle_inclusion_proof(tl->tree, (uint64_t)seq - 1, tl->size, proof, &n)) < 0)
		goto out;
	o = json_pack("{sIsIsIsssoss}", "seq", (json_int_t)seq, "leaf_index", (json_int_t)(seq - 1),
		      "tree_size", (json_int_t)tl->size, "record", rec, "proof",
		      proof_array((const uint8_t(*)[32])proof, n), "checkpoint", tl->note);
	if (o == NULL) {
		r = -ENOMEM;
		goto out;
	}
	*ret = o;
	r = 0;
out:
	pthread_mutex_unlock(&tl->mu);
	free(rec);
	return r;
}

int tlog_consistency(struct tlog *tl, struct store *st, uint64_t old_size, json_t **ret)
{
	uint8_t proof[MERKLE_PROOF_MAX][32];
	json_t *o = NULL;
	size_t n;
	int r;

	pthread_mutex_lock(&tl->mu);
	if (tl->note == NULL) {
		r = -EAGAIN;
		goto out;
	}
	if (old_size == 0 || old_size > tl->size) {
		r = -EINVAL;
		goto out;
	}
	tl->fetch_st = st;
	if ((r = merkle_consistency_proof(tl->tree, old_size, tl->size, proof, &n)) < 0)
		goto out;
	o = json_pack("{sIsIsoss}", "old_size", (json_int_t)old_size, "tree_size",
		      (json_int_t)tl->size, "proof", proof_array((const uint8_t(*)[32])proof, n),
		      "checkpoint", tl->note);
	if (o == NULL) {
		r = -ENOMEM;
		goto out;
	}
	*ret = o;
	r = 0;
out:
	pthread_mutex_unlock(&tl->mu);
	return r;
}

/* ---- admin: journal.prove, journal.consistency ---- */

int tlog_prove(struct svc *d, struct tlog *tl, int64_t seq, json_t **ret, char *err, size_t errlen)
{
	int r;

	if (seq < 1)
		return cimd_fail(err, errlen, -EINVAL, "seq must be a record number (1 or more)");
	r = tlog_inclusion(tl, d->st, seq, NULL, 0, ret);
	if (r == -ENOENT)
		return cimd_fail(err, errlen, r, "no journal record %lld", (long long)seq);
	if (r == -EAGAIN)
		return cimd_fail(err, errlen, r,
				 "record %lld is not covered by a checkpoint yet (one is issued "
				 "within checkpoint_interval = %ld s)",
				 (long long)seq, d->cfg->checkpoint_interval);
	return r < 0 ? cimd_fail(err, errlen, -EIO, "%s", cimd_strerror(r)) : 0;
}

int tlog_prove_consistency(struct svc *d, struct tlog *tl, int64_t old_size, json_t **ret,
			   char *err, size_t errlen)
{
	int r;

	if (old_size < 1)
		return cimd_fail(err, errlen, -EINVAL, "old_size must be a tree size (1 or more)");
	r = tlog_consistency(tl, d->st, (uint64_t)old_size, ret);
	if (r == -EAGAIN)
		return cimd_fail(err, errlen, r, "no checkpoint has been issued yet");
	if (r == -EINVAL)
		return cimd_fail(err, errlen, r,
				 "old_size %lld is larger than the latest checkpoint's tree",
				 (long long)old_size);
	return r < 0 ? cimd_fail(err, errlen, -EIO, "%s", cimd_strerror(r)) : 0;
}

/* ---- admin: audit.export, one kind of artifact a page at a time ---- */

#define EXPORT_PAGE 256

static json_t *export_row(const char *kind, struct store_rows *s)
{
	const char *t;
	json_t *o, *env;
	char *b64 = NULL;

	if (strcmp(kind, "checkpoints") == 0)
		return json_pack("{sIsIsosssIsI}", "id", (json_int_t)store_int(s, 0), "size",
				 (json_int_t)store_int(s, 1), "counter",
				 store_null(s, 2) ? json_null() : json_integer(store_int(s, 2)),
				 "note", store_text(s, 3), "seq", (json_int_t)store_int(s, 4),
				 "created", (json_int_t)store_int(s, 5));
	if (strcmp(kind, "publications") == 0)
		return json_pack("{sIsssssssIsIss#}", "id", (json_int_t)store_int(s, 0), "path",
				 store_text(s, 1), "client", store_text(s, 2), "sha256",
				 store_text(s, 3), "seq", (json_int_t)store_int(s, 4), "created",
				 (json_int_t)store_int(s, 5), "bytes",
				 (const char *)store_blob(s, 6), store_len(s, 6));
	if (strcmp(kind, "attest_keys") == 0) {
		if ((o = json_loads(store_text(s, 2), 0, NULL)) == NULL)
			return NULL;
		json_object_set_new(o, "backend", json_string(store_text(s, 1)));
		json_object_set_new(o, "state", json_string(store_text(s, 4)));
		json_object_set_new(o, "created", json_integer(store_int(s, 5)));
		if (store_len(s, 3) > 0 &&
		    b64url_encode_alloc(store_blob(s, 3), store_len(s, 3), &b64) == 0) {
			json_object_set_new(o, "tpm2_public", json_string(b64));
			free(b64);
		}
		json_object_set_new(o, "id", json_integer(store_int(s, 0)));
		return o;
	}
	/* attestations and revocations: the envelope as it was served */
	t = store_text(s, 4);
	if ((env = json_loads(t, 0, NULL)) == NULL)
		return NULL;
	return json_pack("{sIsssIsIso}", "id", (json_int_t)store_int(s, 0),
			 strcmp(kind, "attestations") == 0 ? "client" : "kid", store_text(s, 1),
			 "seq", (json_int_t)store_int(s, 2), "created", (json_int_t)store_int(s, 3),
			 "envelope", env);
}

int tlog_export(struct svc *d, const char *kind, int64_t after, json_t **ret_items,
		int64_t *ret_next, char *err, size_t errlen)
{
	static const struct {
		const char *kind, *sql;
	} kinds[] = {
	    {"checkpoints", "SELECT id, size, counter, note, seq, created FROM checkpoints "
			    "WHERE id > ? ORDER BY id LIMIT ?"},
	    {"publications", "SELECT id, path, client, sha256, seq, created, bytes FROM "
			     "publications WHERE id > ? ORDER BY id LIMIT ?"},
	    {"attestations", "SELECT id, client, seq, created, envelope FROM attestations "
			     "WHERE id > ? ORDER BY id LIMIT ?"},
	    {"revocations", "SELECT id, kid, seq, created, envelope FROM revocations WHERE id > "
			    "? ORDER BY id LIMIT ?"},
	    {"attest_keys", "SELECT rowid, backend, jwk, tpm_public, state, created FROM "
			    "attest_keys WHERE rowid > ? ORDER BY rowid LIMIT ?"},
	};
	struct store_rows *s = NULL;
	json_t *items, *o;
	int64_t last = 0;
	size_t i;

	for (i = 0; kind != NULL && i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (strcmp(kind, kinds[i].kind) == 0)
			break;
	if (kind == NULL || i == sizeof(kinds) / sizeof(kinds[0]))
		return cimd_fail(err, errlen, -EINVAL,
				 "kind must be checkpoints, publications, attestations, "
				 "revocations or attest_keys");
	if (after < 0)
		return cimd_fail(err, errlen, -EINVAL, TLOG_AFTER_WORDS);
	if ((items = json_array()) == NULL ||
	    store_query(d->st, &s, kinds[i].sql, "ii", after, (int64_t)EXPORT_PAGE) < 0) {
		json_decref(items);
		return cimd_fail(err, errlen, -EIO, "database error");
	}
	while (store_next(s) > 0) {
		if ((o = export_row(kind, s)) == NULL) {
			store_done(d->st, s);
			json_decref(items);
			return cimd_fail(err, errlen, -EIO, "a stored %s row is unreadable", kind);
		}
		last = store_int(s, 0);
		json_array_append_new(items, o);
	}
	store_done(d->st, s);
	*ret_items = items;
	/* A full page: more may follow, after the last id. */
	*ret_next = json_array_size(items) == EXPORT_PAGE ? last : -1;
	return 0;
}
