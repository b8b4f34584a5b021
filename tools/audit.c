/*
 * audit.c — offline verification of receipts, proofs and audit bundles
 * (docs/audit.md, "Verification").
 *
 * A bundle is what `cimdctl audit export` wrote: the journal (one record's
 * exact bytes per line), every checkpoint, every published document and JWKS,
 * every attestation and revocation record, and every attestation key the
 * appliance ever had.  audit_verify_dir checks, in order:
 *   keys          each attestation key is a P-256 JWK whose kid is its RFC 7638
 *                 thumbprint
 *   journal       records numbered 1..N, each naming the previous one's hash
 *   checkpoints   each signed by a trusted key, its root the RFC 9162 head of
 *                 the first size records, sizes and TPM counters increasing,
 *                 each consistent with the one before (§2.1.4), each the
 *                 note of its own journal record, and every checkpoint record
 *                 of the journal in the bundle
 *   publications  each the bytes its publish record names; each JWKS exactly
 *                 the keys the journal's key records leave next, active or
 *                 retiring at that record, with no private member
 *   attestations  each verified (attest_verify) against the published bytes
 *                 it names, and recorded by an attest.issue record
 *   revocations   each verified
 * and names the first thing that does not hold.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "audit.h"
#include "fmt.h"
#include "replay.h"

#define BUNDLE_FILE_MAX (1024L * 1024 * 1024) /* one file of a bundle */

/* A string member, "" when absent. */
static const char *sget(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s != NULL ? s : "";
}

/* Every member of an item of the bundle is one a check below reads: what
 * nothing checks is not carried (docs/audit.md, "What each field is checked
 * against"). */
static int only_members(const json_t *o, const char *const *allowed, const char *what, size_t i,
			char *err, size_t errlen)
{
	const char *k;
	const json_t *v;
	size_t m;

	json_object_foreach((json_t *)o, k, v)
	{
		for (m = 0; allowed[m] != NULL && strcmp(allowed[m], k) != 0; m++)
			;
		if (allowed[m] == NULL)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "%s %zu: member \"%.40s\" is checked against nothing "
					 "signed or journaled",
					 what, i + 1, k);
	}
	return 0;
}

/* base64 of exactly 32 bytes into out. */
static int hash32(const json_t *v, uint8_t out[32])
{
	const char *s = json_string_value(v);
	uint8_t *b = NULL;
	size_t n = 0;

	if (s == NULL || b64_decode(s, strlen(s), &b, &n) < 0 || n != 32) {
		free(b);
		return -CIMD_EFORMAT;
	}
	memcpy(out, b, 32);
	free(b);
	return 0;
}

static int proof_nodes(const json_t *arr, uint8_t (*out)[32], size_t *ret_n)
{
	const json_t *v;
	size_t i;

	if (!json_is_array(arr) || json_array_size(arr) > MERKLE_PROOF_MAX)
		return -CIMD_EFORMAT;
	json_array_foreach(arr, i, v) if (hash32(v, out[i]) < 0) return -CIMD_EFORMAT;
	*ret_n = json_array_size(arr);
	return 0;
}

/* The checkpoint of a note: verified by trust, or only parsed (trust NULL). */
static int checkpoint_of(const char *note, size_t len, const json_t *trust, struct checkpoint *c,
			 char *err, size_t errlen)
{
	if (trust != NULL)
		return checkpoint_verify(note, len, trust, c, NULL, err, errlen);
	if (checkpoint_parse(note, len, c) < 0)
		return cimd_fail(err, errlen, -CIMD_EFORMAT, "not a checkpoint");
	return 0;
}

int audit_check_inclusion(const json_t *a, const json_t *trust, char *err, size_t errlen)
{
	const char *note = json_string_value(json_object_get(a, "checkpoint"));
	const char *rec = json_string_value(json_object_get(a, "record"));
	json_int_t seq = json_integer_value(json_object_get(a, "seq"));
	json_int_t idx = json_integer_value(json_object_get(a, "leaf_index"));
	json_int_t size = json_integer_value(json_object_get(a, "tree_size"));
	uint8_t proof[MERKLE_PROOF_MAX][32], leaf[32];
	struct checkpoint c;
	json_t *parsed;
	size_t n = 0;
	int r;

	if (note == NULL || rec == NULL || seq < 1 || idx != seq - 1 || size < seq ||
	    proof_nodes(json_object_get(a, "proof"), proof, &n) < 0)
		return cimd_fail(
		    err, errlen, -CIMD_EFORMAT,
		    "not a proof: seq, leaf_index = seq - 1, tree_size, record, proof, "
		    "checkpoint");
	if ((r = checkpoint_of(note, strlen(note), trust, &c, err, errlen)) < 0)
		return r;
	if (c.size != (uint64_t)size)
		return cimd_fail(
		    err, errlen, -CIMD_EVERIFY,
		    "the proof is for a tree of %lld records, the checkpoint's has %" PRIu64,
		    (long long)size, c.size);
	/* The record says which it is: its seq member is the proof's. */
	parsed = json_loads(rec, 0, NULL);
	r = json_integer_value(json_object_get(parsed, "seq")) == seq;
	json_decref(parsed);
	if (!r)
		return cimd_fail(err, errlen, -CIMD_EVERIFY, "the record is not record %lld",
				 (long long)seq);
	merkle_leaf_hash((const uint8_t *)rec, strlen(rec), leaf);
	if (merkle_verify_inclusion((uint64_t)idx, (uint64_t)size, leaf,
				    (const uint8_t(*)[32])proof, n, c.root) < 0)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "record %lld is not in the checkpoint's tree: the inclusion proof "
				 "does not lead to its root",
				 (long long)seq);
	return 0;
}

int audit_check_consistency(const char *old_note, size_t old_len, const json_t *a,
			    const json_t *trust, char *err, size_t errlen)
{
	const char *note = json_string_value(json_object_get(a, "checkpoint"));
	json_int_t old_size = json_integer_value(json_object_get(a, "old_size"));
	uint8_t proof[MERKLE_PROOF_MAX][32];
	struct checkpoint o, c;
	size_t n = 0;
	int r;

	if (note == NULL || proof_nodes(json_object_get(a, "proof"), proof, &n) < 0)
		return cimd_fail(err, errlen, -CIMD_EFORMAT, "not a consistency proof");
	if ((r = checkpoint_of(old_note, old_len, trust, &o, err, errlen)) < 0 ||
	    (r = checkpoint_of(note, strlen(note), trust, &c, err, errlen)) < 0)
		return r;
	if (strcmp(o.origin, c.origin) != 0)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "the checkpoints are of two logs: %s, %s", o.origin, c.origin);
	if (o.size != (uint64_t)old_size ||
	    (uint64_t)json_integer_value(json_object_get(a, "tree_size")) != c.size)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "the proof's sizes are not the checkpoints' (%" PRIu64 ", %" PRIu64
				 ")",
				 o.size, c.size);
	if (merkle_verify_consistency(o.size, c.size, (const uint8_t(*)[32])proof, n, o.root,
				      c.root) < 0)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "the tree of %" PRIu64
				 " records is not a prefix of the tree of %" PRIu64
				 ": the journal was rewritten between the two checkpoints",
				 o.size, c.size);
	return 0;
}

/* ---- bundles ---- */

struct bundle {
	const char *dir;
	char *journal; /* the file; records point into it */
	const char **rec;
	size_t *rec_len, n;
	struct merkle_tree *tree;
	json_t *keys, *checkpoints, *publications, *attestations, *revocations;
	json_t *counters;    /* node -> its TPM counter in the last checkpoint it signed */
	const json_t *trust; /* the attestation keys the auditor pinned */
	uint64_t last_size;  /* the latest checkpoint's size */
	json_t *accepted;    /* "record S: row" of each tables.accepted record */
	size_t assertions, by_gid;
};

static int slurp(const char *dir, const char *name, char **ret, size_t *ret_len, char *err,
		 size_t errlen)
{
	char path[4096], *buf = NULL;
	long n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "rb")) == NULL)
		return cimd_fail(err, errlen, -errno, "%s: %s", name, strerror(errno));
	if (fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || n > BUNDLE_FILE_MAX ||
	    fseek(f, 0, SEEK_SET) < 0 || (buf = malloc((size_t)n + 1)) == NULL ||
	    fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		free(buf);
		return cimd_fail(err, errlen, -EIO, "%s: unreadable or over %ld bytes", name,
				 BUNDLE_FILE_MAX);
	}
	fclose(f);
	buf[n] = '\0';
	*ret = buf;
	*ret_len = (size_t)n;
	return 0;
}

/* A file of one JSON object per line, as an array. */
static int read_lines(const char *dir, const char *name, json_t **ret, char *err, size_t errlen)
{
	char *buf = NULL, *p, *nl;
	size_t len, line = 0;
	json_t *arr, *o;
	int r;

	if ((r = slurp(dir, name, &buf, &len, err, errlen)) < 0)
		return r;
	arr = json_array();
	for (p = buf; arr != NULL && p < buf + len; p = nl + 1) {
		line++;
		if ((nl = memchr(p, '\n', (size_t)(buf + len - p))) == NULL)
			nl = buf + len;
		if ((o = json_loadb(p, (size_t)(nl - p), JSON_REJECT_DUPLICATES, NULL)) == NULL ||
		    !json_is_object(o)) {
			json_decref(o);
			json_decref(arr);
			free(buf);
			return cimd_fail(err, errlen, -CIMD_EFORMAT,
					 "%s line %zu: not a JSON object", name, line);
		}
		json_array_append_new(arr, o);
	}
	free(buf);
	if (arr == NULL)
		return -ENOMEM;
	*ret = arr;
	return 0;
}

static void bundle_free(struct bundle *b)
{
	free(b->journal);
	free(b->rec);
	free(b->rec_len);
	merkle_tree_free(&b->tree);
	json_decref(b->keys);
	json_decref(b->checkpoints);
	json_decref(b->publications);
	json_decref(b->attestations);
	json_decref(b->counters);
	json_decref(b->revocations);
	json_decref(b->accepted);
}

static const char *raw_kind(struct bundle *b, int64_t seq, char *buf, size_t len);

/* journal: journal.jsonl, the hash chain, and the tree of its leaves. */
static int check_journal(struct bundle *b, char *err, size_t errlen)
{
	char prev[65], hex[65];
	uint8_t md[32], (*leaves)[32] = NULL;
	size_t len, cap = 0, i;
	char *p, *nl;
	int r;

	if ((r = slurp(b->dir, "journal.jsonl", &b->journal, &len, err, errlen)) < 0)
		return r;
	for (p = b->journal; p < b->journal + len; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(b->journal + len - p))) == NULL)
			nl = b->journal + len;
		if (b->n == cap) {
			cap = cap ? 2 * cap : 1024;
			const char **nr = realloc(b->rec, cap * sizeof(*nr));
			size_t *nlen = realloc(b->rec_len, cap * sizeof(*nlen));
			if (nr != NULL)
				b->rec = nr;
			if (nlen != NULL)
				b->rec_len = nlen;
			if (nr == NULL || nlen == NULL)
				return -ENOMEM;
		}
		*nl = '\0';
		b->rec[b->n] = p;
		b->rec_len[b->n++] = (size_t)(nl - p);
	}
	if (b->n == 0)
		return cimd_fail(err, errlen, -CIMD_EFORMAT, "journal.jsonl holds no record");
	if ((leaves = malloc(b->n * 32)) == NULL)
		return -ENOMEM;
	memset(prev, '0', 64);
	prev[64] = '\0';
	for (i = 0; i < b->n; i++) {
		json_t *rec = json_loadb(b->rec[i], b->rec_len[i], JSON_REJECT_DUPLICATES, NULL);
		const char *pv = json_string_value(json_object_get(rec, "prev"));
		int ok = rec != NULL &&
			 json_integer_value(json_object_get(rec, "seq")) == (json_int_t)(i + 1);

		char kind[64];

		ok = ok && pv != NULL && strcmp(pv, prev) == 0;
		/* Its kind where the appliance writes it, right after prev: the
		 * steps below find records by those bytes (raw_kind). */
		ok = ok && strcmp(raw_kind(b, (int64_t)i + 1, kind, sizeof(kind)),
				  sget(rec, "kind")) == 0;
		json_decref(rec);
		if (!ok) {
			free(leaves);
			return cimd_fail(
			    err, errlen, -CIMD_EVERIFY, "journal record %zu: %s", i + 1,
			    rec == NULL ? "not JSON"
					: "not numbered in order, or its prev is not the "
					  "previous record's hash (a record was changed, "
					  "removed or inserted before it), or its kind is not "
					  "the member after prev");
		}
		SHA256((const uint8_t *)b->rec[i], b->rec_len[i], md);
		hex_encode(md, 32, hex);
		memcpy(prev, hex, 65);
		merkle_leaf_hash((const uint8_t *)b->rec[i], b->rec_len[i], leaves[i]);
	}
	r = merkle_tree_build((const uint8_t(*)[32])leaves, b->n, &b->tree);
	free(leaves);
	return r;
}

static json_t *record(struct bundle *b, int64_t seq)
{
	if (seq < 1 || (uint64_t)seq > b->n)
		return NULL;
	return json_loadb(b->rec[seq - 1], b->rec_len[seq - 1], 0, NULL);
}

/* The kind of record seq, read from its bytes without parsing them: every
 * record begins {"seq":N,"time":T,"prev":"<64 hex>","kind":" (the chain
 * covers those bytes), so the first '","kind":"' is its own.  "" if none. */
static const char *raw_kind(struct bundle *b, int64_t seq, char *buf, size_t len)
{
	const char *p, *q;

	buf[0] = '\0';
	if (seq < 1 || (uint64_t)seq > b->n ||
	    (p = strstr(b->rec[seq - 1], "\",\"kind\":\"")) == NULL)
		return buf;
	p += 10;
	if ((q = strchr(p, '"')) != NULL && (size_t)(q - p) < len) {
		memcpy(buf, p, (size_t)(q - p));
		buf[q - p] = '\0';
	}
	return buf;
}

static int record_kind_is(struct bundle *b, int64_t seq, const char *kind)
{
	char k[64];

	return strcmp(raw_kind(b, seq, k, sizeof(k)), kind) == 0;
}

/* The attest.key record that made attestation key kid (attest.c): its
 * backend, and whether it is restricted (an AK).  NULL if none. */
static json_t *attest_key_record(struct bundle *b, const char *kid)
{
	json_t *rec;
	size_t i;

	for (i = 0; i < b->n; i++) {
		if (!record_kind_is(b, (int64_t)i + 1, "attest.key"))
			continue;
		rec = record(b, (int64_t)i + 1);
		if (strcmp(sget(rec, "kid"), kid) == 0)
			return rec;
		json_decref(rec);
	}
	return NULL;
}

/* keys: attestation-keys.json, every key a P-256 JWK named by its thumbprint;
 * an AK's TPMT_PUBLIC, when given, a restricted key with that public key; its
 * backend and kind those of the attest.key record that made it. */
static int check_keys(struct bundle *b, char *err, size_t errlen)
{
	static const char *const members[] = {"kty", "crv", "x",       "y",	      "kid",
					      "alg", "use", "backend", "tpm2_public", NULL};
	const json_t *k;
	char tp[CIMD_KID_LEN + 1];
	json_t *rec;
	size_t i;
	int r, ok;

	if (!json_is_object(b->keys) || json_object_size(b->keys) != 1 ||
	    !json_is_array(json_object_get(b->keys, "keys")) ||
	    json_array_size(json_object_get(b->keys, "keys")) == 0)
		return cimd_fail(err, errlen, -CIMD_EFORMAT,
				 "attestation-keys.json is not {\"keys\": [...]} with keys");
	json_array_foreach(json_object_get(b->keys, "keys"), i, k)
	{
		const char *kid = json_string_value(json_object_get(k, "kid"));
		const char *pub = json_string_value(json_object_get(k, "tpm2_public"));

		if ((r = only_members(k, members, "attestation key", i, err, errlen)) < 0)
			return r;
		if (kid == NULL || jwk_thumbprint(k, tp) < 0 || strcmp(tp, kid) != 0 ||
		    strcmp(sget(k, "alg"), "ES256") != 0 || strcmp(sget(k, "use"), "sig") != 0)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "attestation key %zu: its kid is not its RFC 7638 "
					 "thumbprint, or it is not an ES256 signing key",
					 i + 1);
		if (pub != NULL) {
			uint8_t *raw = NULL;
			size_t n = 0;
			json_t *jwk = NULL;
			int restricted = 0;

			ok = b64url_decode(pub, strlen(pub), &raw, &n) == 0 &&
			     tpm2_public_jwk(raw, n, &jwk, &restricted) == 0 && restricted &&
			     jwk_thumbprint(jwk, tp) == 0 && strcmp(tp, kid) == 0;
			free(raw);
			json_decref(jwk);
			if (!ok)
				return cimd_fail(err, errlen, -CIMD_EVERIFY,
						 "attestation key %s: its TPMT_PUBLIC is not a "
						 "restricted key with this public key",
						 kid);
		}
		rec = attest_key_record(b, kid);
		ok = rec != NULL && strcmp(sget(rec, "backend"), sget(k, "backend")) == 0 &&
		     json_is_true(json_object_get(rec, "restricted")) == (pub != NULL);
		json_decref(rec);
		if (!ok)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "attestation key %s: no attest.key record made it on "
					 "backend %s%s",
					 kid, sget(k, "backend"),
					 pub != NULL ? " as a TPM attestation key" : "");
	}
	return 0;
}

/* checkpoints: signatures, roots, order, counters, consistency, records. */
static int check_checkpoints(struct bundle *b, char *err, size_t errlen, size_t *ret_covered)
{
	uint8_t root[32], proof[MERKLE_PROOF_MAX][32], prev_root[32];
	uint64_t prev_size = 0, prev_counter, counter;
	char first_origin[NOTE_NAME_MAX + 1] = "", why[256];
	struct checkpoint c;
	const json_t *cp;
	size_t i, n, records = 0;
	int r;

	if (json_array_size(b->checkpoints) == 0)
		return cimd_fail(err, errlen, -CIMD_EVERIFY, "the bundle holds no checkpoint");
	json_array_foreach(b->checkpoints, i, cp)
	{
		static const char *const members[] = {"size", "counter", "note", "seq", NULL};
		const char *note = json_string_value(json_object_get(cp, "note"));
		int64_t seq = json_integer_value(json_object_get(cp, "seq"));
		json_t *rec;

		if ((r = only_members(cp, members, "checkpoint", i, err, errlen)) < 0)
			return r;
		if (note == NULL)
			return cimd_fail(err, errlen, -CIMD_EFORMAT, "checkpoint %zu: no note",
					 i + 1);
		if ((r = checkpoint_verify(note, strlen(note), b->trust, &c, NULL, why,
					   sizeof(why))) < 0)
			return cimd_fail(err, errlen, r, "checkpoint %zu: %s", i + 1, why);
		if (first_origin[0] == '\0')
			snprintf(first_origin, sizeof(first_origin), "%s", c.origin);
		else if (strcmp(first_origin, c.origin) != 0)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "checkpoint %zu (size %" PRIu64 "): origin %s, not %s",
					 i + 1, c.size, c.origin, first_origin);
		if (c.size > b->n)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "checkpoint %zu signs a tree of %" PRIu64
					 " records but the journal has %zu: records were removed "
					 "from its end",
					 i + 1, c.size, b->n);
		if (c.size <= prev_size)
			return cimd_fail(
			    err, errlen, -CIMD_EVERIFY,
			    "checkpoint %zu (size %" PRIu64 ") does not follow the one before "
			    "(size %" PRIu64 "): an older checkpoint in a newer one's place",
			    i + 1, c.size, prev_size);
		merkle_tree_root(b->tree, c.size, root);
		if (memcmp(root, c.root, 32) != 0)
			return cimd_fail(
			    err, errlen, -CIMD_EVERIFY,
			    "checkpoint %zu (size %" PRIu64
			    "): its signed root is not the head of the journal's first %" PRIu64
			    " records: a record among them was changed",
			    i + 1, c.size, c.size);
		/* §2.1.4: what the tree was at the previous checkpoint is a prefix
		 * of what it is now, by the proof an auditor without the journal
		 * would be given. */
		if (prev_size > 0 &&
		    (merkle_consistency_proof(b->tree, prev_size, c.size, proof, &n) < 0 ||
		     merkle_verify_consistency(prev_size, c.size, (const uint8_t(*)[32])proof, n,
					       prev_root, c.root) < 0))
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "checkpoint %zu is not consistent with checkpoint %zu",
					 i + 1, i);
		/* Its size and counter are the signed note's: nothing else. */
		if (json_integer_value(json_object_get(cp, "size")) != (json_int_t)c.size)
			return cimd_fail(
			    err, errlen, -CIMD_EVERIFY,
			    "checkpoint %zu: its size member is not its note's (%" PRIu64 ")",
			    i + 1, c.size);
		r = checkpoint_extension(note, strlen(note), &c, "nv-counter", &counter);
		if ((r == 0 &&
		     json_integer_value(json_object_get(cp, "counter")) != (json_int_t)counter) ||
		    (r == -ENOENT && !json_is_null(json_object_get(cp, "counter"))))
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "checkpoint %zu: its counter member is not its note's "
					 "nv-counter",
					 i + 1);
		if (r == 0) {
			/* Each node's TPM counts the checkpoints that node signed
			 * (a cluster's leader changes): increasing per node. */
			json_t *crec = record(b, seq);
			const char *node = sget(crec, "node") ? sget(crec, "node") : "local";

			prev_counter =
			    (uint64_t)json_integer_value(json_object_get(b->counters, node));
			json_object_set_new(b->counters, node, json_integer((json_int_t)counter));
			json_decref(crec);
			if (counter <= prev_counter)
				return cimd_fail(err, errlen, -CIMD_EVERIFY,
						 "checkpoint %zu: TPM counter %" PRIu64
						 " after %" PRIu64 " of node %s: not increasing",
						 i + 1, counter, prev_counter, node);
		} else if (r != -ENOENT) {
			return cimd_fail(err, errlen, -CIMD_EFORMAT,
					 "checkpoint %zu: a malformed nv-counter line", i + 1);
		}
		/* Each checkpoint is itself journaled, with its note. */
		rec = record(b, seq);
		r = rec != NULL && strcmp(sget(rec, "kind"), "checkpoint") == 0 &&
		    strcmp(sget(rec, "note"), note) == 0;
		json_decref(rec);
		if (!r)
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "checkpoint %zu is not the one journal record %lld holds",
					 i + 1, (long long)seq);
		prev_size = c.size;
		memcpy(prev_root, c.root, 32);
	}
	/* And every checkpoint the journal records is in the bundle. */
	for (i = 0; i < b->n; i++)
		if (record_kind_is(b, (int64_t)i + 1, "checkpoint"))
			records++;
	if (records != json_array_size(b->checkpoints))
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "the journal records %zu checkpoints, the bundle holds %zu",
				 records, json_array_size(b->checkpoints));
	*ret_covered = (size_t)prev_size;
	b->last_size = prev_size;
	return 0;
}

/* A checkpoint the auditor saved earlier: signed by a trusted key, and its
 * tree a prefix of the bundle's (the bundle is not older, nor another history). */
static int check_saved(struct bundle *b, const char *note, size_t len, char *err, size_t errlen)
{
	struct checkpoint c;
	uint8_t root[32];
	char why[256];
	int r;

	if ((r = checkpoint_verify(note, len, b->trust, &c, NULL, why, sizeof(why))) < 0)
		return cimd_fail(err, errlen, r, "the saved checkpoint: %s", why);
	if (c.size > b->last_size)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "the saved checkpoint covers %" PRIu64
				 " records, the bundle's latest only %" PRIu64
				 ": the bundle is older than what you saw, or cut short",
				 c.size, b->last_size);
	if (merkle_tree_root(b->tree, c.size, root) < 0 || memcmp(root, c.root, 32) != 0)
		return cimd_fail(
		    err, errlen, -CIMD_EVERIFY,
		    "the saved checkpoint's root is not the head of the bundle's first %" PRIu64
		    " records: the journal was rewritten since you saved it",
		    c.size);
	return 0;
}

/* Each record of kind has exactly one entry, in journal order. */
static int check_complete(struct bundle *b, const json_t *list, const char *kind, const char *what,
			  char *err, size_t errlen)
{
	size_t i, records = 0;
	int64_t last = 0, seq;
	const json_t *a;

	json_array_foreach(list, i, a)
	{
		seq = json_integer_value(json_object_get(a, "seq"));
		if (seq <= last || !record_kind_is(b, seq, kind))
			return cimd_fail(err, errlen, -CIMD_EVERIFY,
					 "%s %zu: journal record %lld is not its %s record, or not "
					 "after the one before",
					 what, i + 1, (long long)seq, kind);
		last = seq;
	}
	for (i = 0; i < b->n; i++)
		if (record_kind_is(b, (int64_t)i + 1, kind))
			records++;
	if (records != json_array_size(list))
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "the journal records %zu %s records, the bundle holds %zu %ss",
				 records, kind, json_array_size(list), what);
	return 0;
}

/* The kids a JWKS publishes; -1 when one carries a private member. */
static int jwks_kids(const char *bytes, size_t len, json_t **ret)
{
	static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "k"};
	json_t *j = json_loadb(bytes, len, 0, NULL), *set = json_object(), *k;
	size_t i, m;

	if (j == NULL || set == NULL || !json_is_array(json_object_get(j, "keys"))) {
		json_decref(j);
		json_decref(set);
		return -CIMD_EFORMAT;
	}
	json_array_foreach(json_object_get(j, "keys"), i, k)
	{
		for (m = 0; m < sizeof(priv) / sizeof(priv[0]); m++)
			if (json_object_get(k, priv[m]) != NULL) {
				json_decref(j);
				json_decref(set);
				return -1;
			}
		if (json_is_string(json_object_get(k, "kid")))
			json_object_set_new(set, json_string_value(json_object_get(k, "kid")),
					    json_true());
	}
	json_decref(j);
	*ret = set;
	return 0;
}

/* Applies to rp the records from *next up to (not including) seq: the state
 * the journal says was in force at record seq (firmware/replay.c, the replay
 * cimdd runs at start).  Only the records that change it are parsed. */
static int advance(struct bundle *b, struct replay *rp, size_t *next, int64_t seq)
{
	char kind[64];
	json_t *rec;
	int r = 0;

	for (; r == 0 && *next < b->n && (int64_t)*next + 1 < seq; (*next)++) {
		if (!replay_governs(raw_kind(b, (int64_t)*next + 1, kind, sizeof(kind))))
			continue;
		if ((rec = record(b, (int64_t)*next + 1)) == NULL)
			continue;
		r = replay_apply(rp, rec);
		json_decref(rec);
	}
	return r;
}

static int published_state(const char *s)
{
	return s != NULL &&
	       (strcmp(s, "next") == 0 || strcmp(s, "active") == 0 || strcmp(s, "retiring") == 0);
}

/* Publication i is what publish record seq says was published: the same
 * client and path, and bytes with the SHA-256 the record names (and the
 * publication itself claims). */
static int publication_is_record(struct bundle *b, size_t i, int64_t seq, const char *path,
				 const char *client, const char *hex, const char *bytes, size_t len,
				 char *err, size_t errlen)
{
	uint8_t md[32];
	char mhex[65];
	json_t *rec;
	int ok;

	SHA256((const uint8_t *)bytes, len, md);
	hex_encode(md, 32, mhex);
	rec = record(b, seq);
	ok = rec != NULL && strcmp(sget(rec, "client"), client) == 0 &&
	     strcmp(sget(rec, "kind"), "publish") == 0 && strcmp(sget(rec, "path"), path) == 0 &&
	     strcmp(sget(rec, "sha256"), mhex) == 0 && strcmp(hex, mhex) == 0;
	json_decref(rec);
	if (!ok)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "publication %zu (%s): its bytes are not what journal record %lld "
				 "says was published",
				 i + 1, path, (long long)seq);
	return 0;
}

/* A published JWKS (publication i, record seq) holds exactly the keys of its
 * client that the journal's key states at that record (states) publish, and
 * no private member. */
static int jwks_matches_states(size_t i, int64_t seq, const char *path, const char *client,
			       const char *bytes, size_t len, json_t *states, char *err,
			       size_t errlen)
{
	json_t *kids = NULL, *v;
	const char *kid;
	int r;

	if ((r = jwks_kids(bytes, len, &kids)) < 0) {
		r = cimd_fail(err, errlen, -CIMD_EVERIFY, "publication %zu (%s): %s", i + 1, path,
			      r == -1 ? "a key with a private member" : "not a JWKS");
		goto out;
	}
	json_object_foreach(states, kid, v)
	{
		const char *st = json_string_value(json_object_get(v, "state"));

		if (strcmp(sget(v, "client"), client) != 0)
			continue;
		if (published_state(st) != (json_object_get(kids, kid) != NULL)) {
			r = cimd_fail(err, errlen, -CIMD_EVERIFY,
				      "publication %zu (%s, journal record %lld): key %s is %s "
				      "by the journal but %s in the JWKS",
				      i + 1, path, (long long)seq, kid, st,
				      json_object_get(kids, kid) ? "published" : "missing");
			goto out;
		}
		json_object_del(kids, kid);
	}
	if (json_object_size(kids) > 0) {
		json_object_foreach(kids, kid, v) break;
		r = cimd_fail(err, errlen, -CIMD_EVERIFY,
			      "publication %zu (%s): key %s is published but the journal never "
			      "made it for %s",
			      i + 1, path, kid, client);
		goto out;
	}
	r = 0;
out:
	json_decref(kids);
	return r;
}

/* A published CIMD document (path /clients/NAME) is the version of its
 * client that the journal says was approved at that record: an approved
 * document rewritten in the database is published with its own publish
 * record, and only the replay tells it from the approved one. */
static int document_is_approved(const struct replay *rp, size_t i, int64_t seq, const char *path,
				const char *client, const char *hex, char *err, size_t errlen)
{
	const json_t *docs = json_object_get(
	    json_object_get(json_object_get(replay_state(rp), "clients"), client), "documents");
	const char *v, *approved = "none";
	const json_t *d;

	json_object_foreach((json_t *)docs, v, d)
	{
		if (strcmp(sget(d, "state"), "approved") != 0)
			continue;
		approved = sget(d, "sha256");
		if (strcmp(approved, hex) == 0)
			return 0;
	}
	return cimd_fail(err, errlen, -CIMD_EVERIFY,
			 "publication %zu (%s, journal record %lld): SHA-256 %s is not the "
			 "document the journal approved for %s (%s)",
			 i + 1, path, (long long)seq, hex, client, approved);
}

/* publications: bytes, records, each document the approved one and each JWKS
 * the keys the journal implies at its record. */
static int check_publications(struct bundle *b, char *err, size_t errlen)
{
	static const char *const members[] = {"path", "client", "sha256", "seq", "bytes", NULL};
	struct replay *rp = NULL;
	size_t i, next = 0, publish_records = 0;
	int64_t last_seq = 0;
	const json_t *p;
	char doc_path[300];
	int r = 0;

	if (replay_new(&rp) < 0)
		return -ENOMEM;
	json_array_foreach(b->publications, i, p)
	{
		const char *path = json_string_value(json_object_get(p, "path"));
		const char *client = json_string_value(json_object_get(p, "client"));
		const char *hex = json_string_value(json_object_get(p, "sha256"));
		const char *bytes = json_string_value(json_object_get(p, "bytes"));
		int64_t seq = json_integer_value(json_object_get(p, "seq"));
		size_t len = json_string_length(json_object_get(p, "bytes"));

		if ((r = only_members(p, members, "publication", i, err, errlen)) < 0)
			goto out;
		if (path == NULL || client == NULL || hex == NULL || bytes == NULL) {
			r = cimd_fail(err, errlen, -CIMD_EFORMAT, "publication %zu: malformed",
				      i + 1);
			goto out;
		}
		/* One publication per publish record, in journal order: with the
		 * count below, every record has exactly its own. */
		if (seq <= last_seq) {
			r = cimd_fail(err, errlen, -CIMD_EVERIFY,
				      "publication %zu (journal record %lld) is not after the one "
				      "before (record %lld): publications repeated or out of order",
				      i + 1, (long long)seq, (long long)last_seq);
			goto out;
		}
		last_seq = seq;
		if ((r = publication_is_record(b, i, seq, path, client, hex, bytes, len, err,
					       errlen)) < 0)
			goto out;
		/* The state the journal implies at the publish record. */
		if ((r = advance(b, rp, &next, seq)) < 0)
			goto out;
		snprintf(doc_path, sizeof(doc_path), "/clients/%s", client);
		if (strcmp(path, doc_path) == 0 &&
		    (r = document_is_approved(rp, i, seq, path, client, hex, err, errlen)) < 0)
			goto out;
		if (strlen(path) < 10 || strcmp(path + strlen(path) - 10, "/jwks.json") != 0)
			continue;
		if ((r = jwks_matches_states(i, seq, path, client, bytes, len,
					     json_object_get(replay_state(rp), "keys"), err,
					     errlen)) < 0)
			goto out;
	}
	for (i = 0; i < b->n; i++)
		if (record_kind_is(b, (int64_t)i + 1, "publish"))
			publish_records++;
	if (publish_records != json_array_size(b->publications))
		r = cimd_fail(err, errlen, -CIMD_EVERIFY,
			      "the journal records %zu publications, the bundle holds %zu",
			      publish_records, json_array_size(b->publications));
out:
	replay_free(&rp);
	return r;
}

/* assertions: every assertion.issue record against the policy and key state
 * the journal says were in force at it; and the tables.accepted records,
 * which the report names. */
static int check_assertions(struct bundle *b, char *err, size_t errlen)
{
	struct replay *rp = NULL;
	char kind[64], why[512], line[640];
	size_t next = 0, i;
	json_t *rec;
	int by_gid, r = 0;

	if (replay_new(&rp) < 0 || (b->accepted = json_array()) == NULL) {
		replay_free(&rp);
		return -ENOMEM;
	}
	for (i = 0; r == 0 && i < b->n; i++) {
		raw_kind(b, (int64_t)i + 1, kind, sizeof(kind));
		if (strcmp(kind, "assertion.issue") != 0 && strcmp(kind, "tables.accepted") != 0)
			continue;
		if ((r = advance(b, rp, &next, (int64_t)i + 1)) < 0 ||
		    (rec = record(b, (int64_t)i + 1)) == NULL)
			break;
		if (strcmp(kind, "tables.accepted") == 0) {
			snprintf(line, sizeof(line), "record %zu: %s", i + 1, sget(rec, "row"));
			json_array_append_new(b->accepted, json_string(line));
		} else if (replay_check_assertion(rp, rec, &by_gid, why, sizeof(why)) < 0) {
			r = cimd_fail(err, errlen, -CIMD_EVERIFY,
				      "journal record %zu (assertion.issue, jti %s): %s", i + 1,
				      sget(rec, "jti"), why);
		} else {
			b->assertions++;
			b->by_gid += (size_t)by_gid;
		}
		json_decref(rec);
	}
	replay_free(&rp);
	return r;
}

/* The published bytes whose SHA-256 is hex (from the statement's subject). */
static const json_t *publication_by_digest(struct bundle *b, const char *hex)
{
	const json_t *p;
	size_t i;

	json_array_foreach(b->publications, i, p)
	{
		const char *h = json_string_value(json_object_get(p, "sha256"));
		if (h != NULL && hex != NULL && strcmp(h, hex) == 0)
			return p;
	}
	return NULL;
}

struct first_fail {
	char what[512];
};

static void capture(void *arg, int ok, const char *check, const char *detail)
{
	struct first_fail *f = arg;

	if (!ok && f->what[0] == '\0')
		snprintf(f->what, sizeof(f->what), "%s: %s", check, detail);
}

/* The in-toto statement an envelope carries (its DSSE payload); NULL if none. */
static json_t *statement_of(const json_t *env)
{
	const char *payload = json_string_value(json_object_get(env, "payload"));
	uint8_t *body = NULL;
	size_t blen = 0;
	json_t *st = NULL;

	if (payload != NULL && b64_decode(payload, strlen(payload), &body, &blen) == 0)
		st = json_loadb((const char *)body, blen, 0, NULL);
	free(body);
	return st;
}

static const char *subject_digest(const json_t *st, size_t i)
{
	return sget(json_object_get(json_array_get(json_object_get(st, "subject"), i), "digest"),
		    "sha256");
}

/* Whether client_id is base_url + "/clients/" + client. */
static int names_client(const char *client_id, const char *client)
{
	size_t n = strlen(client_id), m = strlen(client);

	return m > 0 && n > m + 9 && strcmp(client_id + n - m, client) == 0 &&
	       strncmp(client_id + n - m - 9, "/clients/", 9) == 0;
}

/* Envelope i's own members are what its journal record says (attest.c): an
 * attestation's client, the envelope's hash and its subjects' digests; a
 * revocation record's client and kid. */
static int envelope_is_record(struct bundle *b, const json_t *a, const json_t *st, const char *text,
			      int attestations, size_t i, char *err, size_t errlen)
{
	int64_t seq = json_integer_value(json_object_get(a, "seq"));
	const json_t *pred = json_object_get(st, "predicate");
	json_t *rec = record(b, seq);
	uint8_t md[32];
	char hex[65];
	int ok;

	SHA256((const uint8_t *)text, strlen(text), md);
	hex_encode(md, 32, hex);
	if (attestations)
		ok = strcmp(sget(rec, "client"), sget(a, "client")) == 0 &&
		     strcmp(sget(rec, "envelope_sha256"), hex) == 0 &&
		     strcmp(sget(rec, "cimd_sha256"), subject_digest(st, 0)) == 0 &&
		     strcmp(sget(rec, "jwks_sha256"), subject_digest(st, 1)) == 0 &&
		     names_client(sget(pred, "client_id"), sget(rec, "client"));
	else
		ok = strcmp(sget(rec, "kid"), sget(a, "kid")) == 0 &&
		     strcmp(sget(rec, "kid"), sget(pred, "kid")) == 0 &&
		     names_client(sget(pred, "client_id"), sget(rec, "client"));
	json_decref(rec);
	if (!ok)
		return cimd_fail(err, errlen, -CIMD_EVERIFY,
				 "%s %zu (%s): it is not what journal record %lld says was issued "
				 "(%s)",
				 attestations ? "attestation" : "revocation record", i + 1,
				 sget(a, attestations ? "client" : "kid"), (long long)seq,
				 attestations ? "client, envelope hash, subjects" : "client, kid");
	return 0;
}

static int check_envelopes(struct bundle *b, const json_t *list, int attestations, char *err,
			   size_t errlen)
{
	static const char *const att_members[] = {"client", "seq", "envelope", NULL};
	static const char *const rev_members[] = {"kid", "seq", "envelope", NULL};
	const char *what = attestations ? "attestation" : "revocation record";
	const json_t *a;
	size_t i;

	json_array_foreach(list, i, a)
	{
		const json_t *env = json_object_get(a, "envelope");
		const json_t *doc = NULL, *jwks = NULL;
		struct first_fail f = {""};
		char *text = json_dumps(env, JSON_COMPACT);
		json_t *st = statement_of(env);
		int r;

		if ((r = only_members(a, attestations ? att_members : rev_members, what, i, err,
				      errlen)) < 0 ||
		    (text == NULL && (r = cimd_fail(err, errlen, -CIMD_EFORMAT,
						    "%s %zu: no envelope", what, i + 1)) < 0) ||
		    (r = envelope_is_record(b, a, st, text, attestations, i, err, errlen)) < 0)
			goto next;
		if (attestations) {
			/* Its subjects: the document and the JWKS it names, which
			 * must be bytes that were published. */
			doc = publication_by_digest(b, subject_digest(st, 0));
			jwks = publication_by_digest(b, subject_digest(st, 1));
			if (doc == NULL || jwks == NULL) {
				r = cimd_fail(err, errlen, -CIMD_EVERIFY,
					      "%s %zu (%s): it names a %s that was never published",
					      what, i + 1, sget(a, "client"),
					      doc == NULL ? "document" : "JWKS");
				goto next;
			}
		}
		r = attest_verify(
		    text, strlen(text), b->trust,
		    doc ? (const uint8_t *)json_string_value(json_object_get(doc, "bytes")) : NULL,
		    doc ? json_string_length(json_object_get(doc, "bytes")) : 0,
		    jwks ? (const uint8_t *)json_string_value(json_object_get(jwks, "bytes"))
			 : NULL,
		    jwks ? json_string_length(json_object_get(jwks, "bytes")) : 0, capture, &f);
		if (r < 0)
			r = cimd_fail(err, errlen, -CIMD_EVERIFY, "%s %zu: %s", what, i + 1,
				      f.what[0] ? f.what : cimd_strerror(r));
	next:
		free(text);
		json_decref(st);
		if (r < 0)
			return r;
	}
	return 0;
}

/* What the tables step reports: the table differences the operator accepted
 * (cimd --accept-tables), each a journal record, or none. */
static void accepted_detail(struct bundle *b, char *out, size_t len)
{
	const json_t *v;
	size_t i, n = json_array_size(b->accepted), at;

	if (n == 0) {
		snprintf(out, len,
			 "every table as the journal's records made it: no difference "
			 "accepted by an operator");
		return;
	}
	at = (size_t)snprintf(out, len,
			      "%zu table differences the operator accepted (cimdd "
			      "--accept-tables): ",
			      n);
	json_array_foreach(b->accepted, i, v)
	{
		if (at >= len)
			break;
		at += (size_t)snprintf(out + at, len - at, "%s%s", i ? "; " : "",
				       json_string_value(v));
	}
}

int audit_verify_dir(const char *dir, const json_t *trust, const char *saved, size_t saved_len,
		     audit_report_fn report, void *arg)
{
	struct bundle b = {.dir = dir, .trust = trust, .counters = json_object()};
	char err[1024], detail[2048], *keys = NULL;
	size_t keys_len, covered = 0;
	int r;

	err[0] = '\0';
#define STEP(name, call, ...)                                                                      \
	do {                                                                                       \
		if ((r = (call)) < 0) {                                                            \
			report(arg, 0, name, err[0] ? err : cimd_strerror(r));                     \
			goto out;                                                                  \
		}                                                                                  \
		snprintf(detail, sizeof(detail), __VA_ARGS__);                                     \
		report(arg, 1, name, detail);                                                      \
	} while (0)

	if ((r = slurp(dir, "attestation-keys.json", &keys, &keys_len, err, sizeof(err))) == 0 &&
	    (b.keys = json_loadb(keys, keys_len, 0, NULL)) == NULL)
		r = cimd_fail(err, sizeof(err), -CIMD_EFORMAT, "attestation-keys.json is not JSON");
	free(keys);
	if (r == 0)
		r = read_lines(dir, "checkpoints.jsonl", &b.checkpoints, err, sizeof(err));
	if (r == 0)
		r = read_lines(dir, "publications.jsonl", &b.publications, err, sizeof(err));
	if (r == 0)
		r = read_lines(dir, "attestations.jsonl", &b.attestations, err, sizeof(err));
	if (r == 0)
		r = read_lines(dir, "revocations.jsonl", &b.revocations, err, sizeof(err));
	if (r < 0) {
		report(arg, 0, "bundle", err);
		goto out;
	}
	STEP("journal", check_journal(&b, err, sizeof(err)), "%zu records, hash chain intact", b.n);
	STEP("keys", check_keys(&b, err, sizeof(err)),
	     "%zu attestation keys, each its thumbprint, each made by an attest.key record",
	     json_array_size(json_object_get(b.keys, "keys")));
	STEP("checkpoints", check_checkpoints(&b, err, sizeof(err), &covered),
	     "%zu, each signed by a trusted key, each root the journal's, each consistent with "
	     "the one before; the last covers %zu of %zu records",
	     json_array_size(b.checkpoints), covered, b.n);
	if (saved != NULL)
		STEP("saved", check_saved(&b, saved, saved_len, err, sizeof(err)),
		     "the checkpoint you saved is a prefix of this journal");
	STEP("publications", check_publications(&b, err, sizeof(err)),
	     "%zu documents and JWKS, each as journaled, each document the one the journal "
	     "approved, each JWKS the keys the journal implies",
	     json_array_size(b.publications));
	STEP("attestations",
	     check_complete(&b, b.attestations, "attest.issue", "attestation", err, sizeof(err)) < 0
		 ? -CIMD_EVERIFY
		 : check_envelopes(&b, b.attestations, 1, err, sizeof(err)),
	     "%zu, one per attest.issue record and as it says, each verified against published "
	     "bytes",
	     json_array_size(b.attestations));
	STEP("revocations",
	     check_complete(&b, b.revocations, "attest.revocation", "revocation record", err,
			    sizeof(err)) < 0
		 ? -CIMD_EVERIFY
		 : check_envelopes(&b, b.revocations, 0, err, sizeof(err)),
	     "%zu, one per attest.revocation record and as it says, each verified",
	     json_array_size(b.revocations));
	STEP("assertions", check_assertions(&b, err, sizeof(err)),
	     "%zu, each by an allowed caller (%zu through a group the record does not name), "
	     "for an allowed audience, with a key in a state that signs, at its record",
	     b.assertions, b.by_gid);
	accepted_detail(&b, detail, sizeof(detail));
	report(arg, 1, "tables", detail);
#undef STEP
	r = json_array_size(b.accepted) > 0 ? 1 : 0;
out:
	bundle_free(&b);
	return r < 0 ? -CIMD_EVERIFY : r;
}
