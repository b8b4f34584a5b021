/*
 * attest.c — signed attestations (docs/attestation.md): each approved CIMD
 * document tied to its owner, its approvers and the custody of every key its
 * JWKS publishes; a signed record of every revocation; the appliance's
 * attestation keys.
 *
 * An attestation is an in-toto Statement v1 in a DSSE envelope, signed by the
 * attestation key of the client's backend: on a TPM that key is an AK, which
 * also certifies every client key (TPM2_Certify) with qualifyingData bound to
 * the client_id, the document digest and the kid; on PKCS#11 the token's own
 * account of itself and of each key is carried, marked self-reported.
 *
 * Attestations are issued here, before each publication, when what they state
 * changed (attest_client, for each client marked changed); publish.c serves the stored envelope
 * only while its subject digests equal the bytes being served, so the CIMD document, the JWKS and
 * the attestation served together always agree.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "service.h"

#define PREDICATE_CUSTODY "https://cimdd.dev/attestation/custody/v1"
#define PREDICATE_REVOCATION "https://cimdd.dev/attestation/revocation/v1"
#define STATEMENT_TYPE "https://in-toto.io/Statement/v1"
#define PAYLOAD_TYPE "application/vnd.in-toto+json"

/* ---- attestation keys ---- */

/* Makes a new attestation key on backend and records it active (the previous
 * one, if any, retiring), in one transaction with its journal record. */
static int new_attest_key(struct svc *d, const char *backend, const char *actor,
			  char ret_kid[CIMD_KID_LEN + 1])
{
	char tag[CIMD_TAG_MAX + 1], *jwks = NULL;
	struct ks_key *key = NULL;
	uint8_t *pub = NULL;
	size_t pub_len = 0, ref_len;
	const uint8_t *ref;
	json_t *jwk = NULL, *f = NULL;
	int r;

	if ((r = keys_generate_attest(d, backend, tag, &key)) < 0)
		return r;
	ks_key_ref(key, &ref, &ref_len);
	if (ks_key_tpm_public(key, &pub, &pub_len) < 0)
		pub = NULL;
	jwk = ks_key_jwk(key);
	if (jwk == NULL || (jwks = json_dumps(jwk, JSON_COMPACT)) == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	f = json_pack("{sssssbss}", "backend", backend, "kid", ks_key_kid(key), "restricted",
		      ks_key_restricted(key), "node", d->cfg->node);
	if (f == NULL || store_begin(d->st) < 0) {
		r = f == NULL ? -ENOMEM : -EIO;
		goto fail;
	}
	if (store_exec(d->st,
		       "UPDATE attest_keys SET state = 'retiring' WHERE node = ? AND backend = ? "
		       "AND state = 'active'",
		       "ss", d->cfg->node, backend) < 0 ||
	    store_exec(d->st,
		       "INSERT INTO attest_keys (kid, backend, ref, jwk, tpm_public, state, "
		       "created, node) VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
		       "ssbsbis", ks_key_kid(key), backend, ref, ref_len, jwks, pub,
		       pub ? pub_len : 0, (int64_t)time(NULL), d->cfg->node) != 1 ||
	    store_exec(d->st, "DELETE FROM key_intents WHERE tag = ?", "s", tag) < 0 ||
	    journal_append(d->st, "attest.key", actor, f, NULL) < 0 || store_commit(d->st) < 0) {
		store_rollback(d->st);
		r = -EIO;
		goto fail;
	}
	snprintf(ret_kid, CIMD_KID_LEN + 1, "%s", ks_key_kid(key));
	log_info("attestation key %s created on %s", ks_key_kid(key), backend);
	r = 0;
	goto out;
fail:
	/* Not recorded: the key must not stay behind in the hardware. */
	key_store_destroy(custody_store(d->custody, backend), &key);
	keys_intent_drop(d, tag);
out:
	ks_key_free(&key);
	json_decref(jwk);
	json_decref(f);
	free(jwks);
	free(pub);
	return r;
}

int attest_keys_ensure(struct svc *d)
{
	char kid[CIMD_KID_LEN + 1];
	struct ks_key *key = NULL;
	size_t i;
	int r, made = 0;

	for (i = 0; i < d->cfg->n_backends; i++) {
		if (custody_at(d->custody, i) == NULL)
			continue;
		r = keys_attest_active(d, d->cfg->backends[i].name, kid, &key);
		ks_key_free(&key);
		if (r == -ENOENT) {
			if ((r = new_attest_key(d, d->cfg->backends[i].name, "cimdd", kid)) < 0)
				log_err("backend %s: cannot create an attestation key: %s (%s)",
					d->cfg->backends[i].name, cimd_strerror(r),
					key_store_errmsg(custody_at(d->custody, i)));
			else
				made++;
		}
	}
	return made;
}

int attest_key_rotate(struct svc *d, const char *actor, const char *backend,
		      const char **ret_backend, char ret_kid[CIMD_KID_LEN + 1], char *err,
		      size_t errlen)
{
	char kid[CIMD_KID_LEN + 1];
	int r;

	if (backend == NULL)
		backend = d->cfg->default_backend;
	if (config_backend(d->cfg, backend) == NULL)
		return cimd_fail(err, errlen, -EINVAL, "no backend %.32s is configured", backend);
	if (custody_store(d->custody, backend) == NULL)
		return cimd_fail(err, errlen, -CIMD_EUNAVAILABLE, "backend %s is not open",
				 backend);
	if ((r = new_attest_key(d, backend, actor, kid)) < 0)
		return cimd_fail(err, errlen, r == -CIMD_EUNAVAILABLE ? r : -EIO, "%s: %s", backend,
				 cimd_strerror(r));
	*ret_backend = backend;
	memcpy(ret_kid, kid, sizeof(kid));
	return 0;
}

/* ---- statements ---- */

static void sha256_hex(const void *p, size_t n, char out[65])
{
	uint8_t md[SHA256_DIGEST_LENGTH];

	SHA256(p, n, md);
	hex_encode(md, sizeof(md), out);
}

/* One client key's hardware evidence. */
static int evidence(struct key_store *ks, struct ks_key *ak, const char *alg, const uint8_t *ref,
		    size_t ref_len, const char *client_id, const char *cimd_hex, const char *kid,
		    json_t **ret)
{
	struct ks_p11_evidence ev;
	struct ks_certify cert = {0};
	struct ks_key *key = NULL;
	uint8_t bind[32];
	char *a = NULL, *sg = NULL, *pb = NULL;
	int r;

	if ((r = key_store_load(ks, cimd_alg_from_name(alg), ref, ref_len, &key)) < 0)
		return r;
	if (strcmp(key_store_backend(ks), "tpm2") == 0) {
		if ((r = attest_binding(client_id, cimd_hex, kid, bind)) < 0 ||
		    (r = key_store_certify(ks, ak, key, bind, sizeof(bind), &cert)) < 0)
			goto out;
		if (b64url_encode_alloc(cert.attest, cert.attest_len, &a) < 0 ||
		    b64url_encode_alloc(cert.sig, cert.sig_len, &sg) < 0 ||
		    b64url_encode_alloc(cert.pub, cert.pub_len, &pb) < 0) {
			r = -ENOMEM;
			goto out;
		}
		*ret = json_pack("{ssssssssss}", "type", "tpm2-certify", "attest", a, "signature",
				 sg, "public", pb, "signer", ks_key_kid(ak));
	} else {
		if ((r = key_store_p11_evidence(ks, key, &ev)) < 0)
			goto out;
		*ret = json_pack(
		    "{sssbs{ssssssss}s{soso soso so}}", "type", "pkcs11-attributes",
		    "self_reported", 1, "token", "manufacturer", ev.manufacturer, "model", ev.model,
		    "serial", ev.serial, "label", ev.label, "attributes", "CKA_SENSITIVE",
		    ev.sensitive < 0 ? json_null() : json_boolean(ev.sensitive),
		    "CKA_ALWAYS_SENSITIVE",
		    ev.always_sensitive < 0 ? json_null() : json_boolean(ev.always_sensitive),
		    "CKA_EXTRACTABLE",
		    ev.extractable < 0 ? json_null() : json_boolean(ev.extractable),
		    "CKA_NEVER_EXTRACTABLE",
		    ev.never_extractable < 0 ? json_null() : json_boolean(ev.never_extractable),
		    "CKA_LOCAL", ev.local < 0 ? json_null() : json_boolean(ev.local));
	}
	r = *ret != NULL ? 0 : -ENOMEM;
out:
	ks_certify_clear(&cert);
	ks_key_free(&key);
	free(a);
	free(sg);
	free(pb);
	return r;
}

/* What a client's attestation would state now, evidence aside: the document,
 * its people, the keys and their states.  Also the served bytes' digests. */
struct facts {
	char name[CIMD_NAME_MAX + 1];
	char client_id[CIMD_URL_MAX], jwks_uri[CIMD_URL_MAX + 16];
	char backend[16];
	char cimd_hex[65], jwks_hex[65];
	json_t *doc;  /* {owner, version, submitter, submitted, approver, approved} */
	json_t *keys; /* [{kid, thumbprint, alg, state, backend}] + ref (not stated) */
	int64_t all;  /* the keys of the JWKS, this node's and the other nodes' */
	uint8_t inputs[32];
};

static void facts_clear(struct facts *f)
{
	json_decref(f->doc);
	json_decref(f->keys);
	memset(f, 0, sizeof(*f));
}

static int facts_load(struct svc *d, const char *name, const char *attest_kid, struct facts *ret)
{
	struct facts f = {0};
	struct store_rows *s = NULL;
	char *jwks = NULL, *canon = NULL;
	json_t *in = NULL;
	int r = -EIO;

	snprintf(f.name, sizeof(f.name), "%s", name);
	reg_client_id(d->cfg, name, f.client_id, sizeof(f.client_id));
	snprintf(f.jwks_uri, sizeof(f.jwks_uri), "%s/jwks.json", f.client_id);
	if (store_query(d->st, &s,
			"SELECT c.owner, c.backend, d.version, d.submitter, d.submitted, "
			"d.approver, d.approved, d.bytes FROM clients c JOIN documents d ON "
			"d.client = c.name AND d.state = 'approved' WHERE c.name = ?",
			"s", name) < 0)
		goto out;
	if (store_next(s) <= 0) {
		r = -ENOENT;
		goto out;
	}
	snprintf(f.backend, sizeof(f.backend), "%s", keys_node_backend(d, store_text(s, 1)));
	sha256_hex(store_blob(s, 7), store_len(s, 7), f.cimd_hex);
	f.doc = json_pack(
	    "{sssIsssIsssI}", "owner", store_text(s, 0), "version", (json_int_t)store_int(s, 2),
	    "submitter", store_text(s, 3), "submitted", (json_int_t)store_int(s, 4), "approver",
	    store_text(s, 5) ? store_text(s, 5) : "", "approved", (json_int_t)store_int(s, 6));
	store_done(d->st, s);
	s = NULL;
	if (f.doc == NULL || (jwks = jwks_client(d->st, name)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	sha256_hex(jwks, strlen(jwks), f.jwks_hex);
	/* The keys in the JWKS, in its order (publish.c). */
	if ((f.keys = json_array()) == NULL ||
	    store_query(d->st, &s,
			"SELECT kid, alg, state, backend FROM keys WHERE client = ? AND node = ? "
			"AND state IN ('next', 'active', 'retiring') AND jwk IS NOT NULL ORDER BY "
			"created, kid",
			"ss", name, d->cfg->node) < 0)
		goto out;
	while (store_next(s) > 0)
		json_array_append_new(f.keys, json_pack("{ssssssssss}", "kid", store_text(s, 0),
							"thumbprint", store_text(s, 0), "alg",
							store_text(s, 1), "state", store_text(s, 2),
							"backend", store_text(s, 3)));
	store_done(d->st, s);
	s = NULL;
	if (store_query(d->st, &s,
			"SELECT count(*) FROM keys WHERE client = ? AND state IN ('next', "
			"'active', 'retiring') AND jwk IS NOT NULL",
			"s", name) < 0 ||
	    store_next(s) <= 0)
		goto out;
	f.all = store_int(s, 0);
	store_done(d->st, s);
	s = NULL;
	/* What the statement says, but for evidence and times: when this changes,
	 * the attestation is issued again. */
	in = json_pack("{sssssssOsOss}", "client_id", f.client_id, "cimd", f.cimd_hex, "jwks",
		       f.jwks_hex, "document", f.doc, "keys", f.keys, "attest_kid", attest_kid);
	if (in == NULL || (canon = json_dumps(in, JSON_COMPACT | JSON_SORT_KEYS)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	SHA256((const uint8_t *)canon, strlen(canon), f.inputs);
	*ret = f;
	memset(&f, 0, sizeof(f));
	r = 0;
out:
	store_done(d->st, s);
	json_decref(in);
	free(canon);
	free(jwks);
	facts_clear(&f);
	return r;
}

/* Signs a statement with the attestation key; the envelope's compact JSON. */
static int seal(struct key_store *ks, struct ks_key *ak, json_t *statement, char **ret_env)
{
	char *body = NULL;
	json_t *env = NULL;
	int r;

	if ((body = json_dumps(statement, JSON_COMPACT)) == NULL)
		return -ENOMEM;
	if ((r = dsse_sign(ks, ak, PAYLOAD_TYPE, (const uint8_t *)body, strlen(body), &env)) < 0)
		goto out;
	if ((*ret_env = json_dumps(env, JSON_COMPACT)) == NULL)
		r = -ENOMEM;
out:
	free(body);
	json_decref(env);
	return r;
}

/* Issues the attestation of one client from its facts. */
static int issue(struct svc *d, struct facts *f, struct ks_key *ak, const char *attest_kid)
{
	struct key_store *ks = custody_store(d->custody, f->backend);
	json_t *keys = NULL, *st = NULL, *k, *ev = NULL, *rec = NULL;
	struct store_rows *s = NULL;
	char head[65], env_hex[65], *env = NULL;
	int64_t seq = 0, jseq;
	size_t i;
	int r = -EIO;

	if (ks == NULL)
		return -CIMD_EUNAVAILABLE;
	if ((keys = json_deep_copy(f->keys)) == NULL)
		return -ENOMEM;
	json_array_foreach(keys, i, k)
	{
		const char *kid = json_string_value(json_object_get(k, "kid"));

		if (store_query(d->st, &s, "SELECT ref FROM keys WHERE kid = ?", "s", kid) < 0 ||
		    store_next(s) <= 0)
			goto out;
		r = evidence(ks, ak, json_string_value(json_object_get(k, "alg")), store_blob(s, 0),
			     store_len(s, 0), f->client_id, f->cimd_hex, kid, &ev);
		store_done(d->st, s);
		s = NULL;
		if (r < 0)
			goto out;
		json_object_set_new(k, "evidence", ev);
		r = -EIO;
	}
	if (journal_head(d->st, &seq, head) < 0)
		goto out;
	st = json_pack("{sss[{sss{ss}}{sss{ss}}]sss{sssOsOs{sIss}sIs{ssssss}}}", "_type",
		       STATEMENT_TYPE, "subject", "name", f->client_id, "digest", "sha256",
		       f->cimd_hex, "name", f->jwks_uri, "digest", "sha256", f->jwks_hex,
		       "predicateType", PREDICATE_CUSTODY, "predicate", "client_id", f->client_id,
		       "document", f->doc, "keys", keys, "journal", "seq", (json_int_t)seq, "hash",
		       head, "issued", (json_int_t)time(NULL), "appliance", "base_url",
		       d->cfg->base_url, "attestation_key", attest_kid, "node", d->cfg->node);
	if (st == NULL) {
		r = -ENOMEM;
		goto out;
	}
	/* Other nodes' keys are in the JWKS too: this statement is this node's
	 * part of the client's attestation (attest_envelope). */
	if ((int64_t)json_array_size(keys) < f->all)
		json_object_set_new(json_object_get(st, "predicate"), "scope", json_string("node"));
	if ((r = seal(ks, ak, st, &env)) < 0)
		goto out;
	sha256_hex(env, strlen(env), env_hex);
	rec = json_pack("{sssssssssssI}", "client", f->name, "attest_kid", attest_kid,
			"cimd_sha256", f->cimd_hex, "jwks_sha256", f->jwks_hex, "envelope_sha256",
			env_hex, "at_seq", (json_int_t)seq);
	if (rec == NULL || store_begin(d->st) < 0) {
		r = rec == NULL ? -ENOMEM : -EIO;
		goto out;
	}
	if (journal_append(d->st, "attest.issue", "cimdd", rec, &jseq) < 0 ||
	    store_exec(d->st,
		       "INSERT INTO attestations (client, inputs, cimd_sha256, jwks_sha256, "
		       "attest_kid, envelope, seq, created, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
		       "?)",
		       "sbssssiis", f->name, f->inputs, sizeof(f->inputs), f->cimd_hex, f->jwks_hex,
		       attest_kid, env, jseq, (int64_t)time(NULL), d->cfg->node) != 1 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		r = -EIO;
		goto out;
	}
	r = 0;
out:
	store_done(d->st, s);
	json_decref(keys);
	json_decref(st);
	json_decref(rec);
	free(env);
	return r;
}

/* The signed record of one revocation. */
static int issue_revocation(struct svc *d, const char *kid, struct key_store *ks, struct ks_key *ak,
			    const char *attest_kid)
{
	char client_id[CIMD_URL_MAX], juri[CIMD_URL_MAX + 80], digest[65], *env = NULL;
	uint8_t *tp = NULL;
	size_t tp_len = 0;
	struct store_rows *s = NULL;
	json_t *st = NULL, *rec = NULL;
	char client[CIMD_NAME_MAX + 1];
	int64_t jseq = 0;
	int r = -EIO;

	if (store_query(d->st, &s,
			"SELECT client, alg, revoke_reason, revoked_by, revoked FROM keys "
			"WHERE kid = ?",
			"s", kid) < 0 ||
	    store_next(s) <= 0)
		goto out;
	snprintf(client, sizeof(client), "%s", store_text(s, 0));
	reg_client_id(d->cfg, client, client_id, sizeof(client_id));
	snprintf(juri, sizeof(juri), "%s/jwks.json#%s", client_id, kid);
	/* The RFC 7638 thumbprint is a SHA-256 digest: the subject's digest. */
	if (b64url_decode(kid, strlen(kid), &tp, &tp_len) < 0 || tp_len != 32)
		goto out;
	hex_encode(tp, tp_len, digest);
	st = json_pack("{sss[{sss{ss}}]sss{sssssssssssssIsI}}", "_type", STATEMENT_TYPE, "subject",
		       "name", juri, "digest", "sha256", digest, "predicateType",
		       PREDICATE_REVOCATION, "predicate", "client_id", client_id, "kid", kid,
		       "thumbprint", kid, "alg", store_text(s, 1), "reason",
		       store_text(s, 2) ? store_text(s, 2) : "", "operator",
		       store_text(s, 3) ? store_text(s, 3) : "", "revoked",
		       (json_int_t)store_int(s, 4), "issued", (json_int_t)time(NULL));
	store_done(d->st, s);
	s = NULL;
	if (st == NULL || (r = seal(ks, ak, st, &env)) < 0)
		goto out;
	r = -EIO;
	rec = json_pack("{ssssss}", "client", client, "kid", kid, "attest_kid", attest_kid);
	if (rec == NULL || store_begin(d->st) < 0)
		goto out;
	if (journal_append(d->st, "attest.revocation", "cimdd", rec, &jseq) < 0 ||
	    store_exec(d->st,
		       "INSERT INTO revocations (kid, client, attest_kid, envelope, created, seq) "
		       "VALUES (?, ?, ?, ?, ?, ?)",
		       "ssssii", kid, client, attest_kid, env, (int64_t)time(NULL), jseq) != 1 ||
	    store_commit(d->st) < 0) {
		store_rollback(d->st);
		goto out;
	}
	r = 0;
out:
	store_done(d->st, s);
	json_decref(st);
	json_decref(rec);
	free(env);
	free(tp);
	return r;
}

/* Retires attestation keys that no current attestation or revocation record
 * names any more: they leave attestation-keys.json.  Only while a retiring key
 * exists (after an attestation key rotation) does this look further. */
void attest_retire_unused(struct svc *d)
{
	struct store_rows *s = NULL;
	int retiring = 0;

	if (store_query(d->st, &s,
			"SELECT 1 FROM attest_keys WHERE state = 'retiring' AND node = ? LIMIT 1",
			"s", d->cfg->node) == 0)
		retiring = store_next(s) > 0;
	store_done(d->st, s);
	if (!retiring || store_begin(d->st) < 0)
		return;
	if (store_exec(
		d->st,
		"UPDATE attest_keys SET state = 'retired', retired = ? WHERE state = 'retiring' "
		"AND node = ? AND kid NOT IN (SELECT a.attest_kid FROM attestations a WHERE "
		"a.id = (SELECT max(id) FROM attestations b WHERE b.client = a.client AND "
		"b.node = a.node)) "
		"AND kid NOT IN (SELECT r.attest_kid FROM revocations r WHERE r.id = "
		"(SELECT max(id) FROM revocations q WHERE q.kid = r.kid))",
		"is", (int64_t)time(NULL), d->cfg->node) > 0 &&
	    journal_append(d->st, "attest.key_retired", "cimdd", NULL, NULL) < 0) {
		store_rollback(d->st);
		return;
	}
	if (store_commit(d->st) < 0)
		store_rollback(d->st);
}

void attest_batch_end(struct attest_batch *b)
{
	size_t i;

	for (i = 0; i < CIMD_BACKENDS_MAX; i++)
		ks_key_free(&b->ak[i].key);
	memset(b, 0, sizeof(*b));
}

/* The active attestation key of backend b, loaded once per batch. */
static int batch_key(struct svc *d, struct attest_batch *bt, size_t b)
{
	if (bt->ak[b].state == 0)
		bt->ak[b].state = keys_attest_active(d, d->cfg->backends[b].name, bt->ak[b].kid,
						     &bt->ak[b].key) == 0
				      ? 1
				      : -1;
	return bt->ak[b].state > 0 ? 0 : -CIMD_EUNAVAILABLE;
}

int attest_client(struct svc *d, struct attest_batch *bt, const char *name)
{
	static time_t last_complaint;
	char backend[16] = "", kid[CIMD_KID_LEN + 1];
	uint8_t inputs[32];
	struct store_rows *s = NULL;
	struct facts f;
	size_t b;
	int has_inputs = 0, approved = 0, r;

	/* The client's backend, and its latest attestation's inputs. */
	if (store_query(
		d->st, &s,
		"SELECT c.backend, (SELECT 1 FROM documents d WHERE d.client = c.name AND "
		"d.state = 'approved'), (SELECT inputs FROM attestations a WHERE a.client = "
		"c.name AND a.node = ?2 ORDER BY id DESC LIMIT 1) FROM clients c WHERE c.name = "
		"?1",
		"ss", name, d->cfg->node) < 0)
		return -EIO;
	if (store_next(s) > 0) {
		/* The hardware this node keeps the client's keys in. */
		snprintf(backend, sizeof(backend), "%s", keys_node_backend(d, store_text(s, 0)));
		approved = !store_null(s, 1);
		if (store_len(s, 2) == 32) {
			memcpy(inputs, store_blob(s, 2), 32);
			has_inputs = 1;
		}
	}
	store_done(d->st, s);
	for (b = 0; b < d->cfg->n_backends; b++)
		if (strcmp(d->cfg->backends[b].name, backend) == 0)
			break;
	if (b == d->cfg->n_backends)
		return 0; /* no such client, or its backend is no longer configured */
	if (approved) {
		if ((r = batch_key(d, bt, b)) < 0)
			return r;
		if ((r = facts_load(d, name, bt->ak[b].kid, &f)) < 0)
			return r == -ENOENT ? 0 : r;
		r = 0;
		/* A node without a key of the client in its JWKS (yet) has nothing
		 * to attest while other nodes' keys are there. */
		if ((!has_inputs || memcmp(inputs, f.inputs, 32) != 0) &&
		    (json_array_size(f.keys) > 0 || f.all == 0))
			r = issue(d, &f, bt->ak[b].key, bt->ak[b].kid);
		facts_clear(&f);
		if (r < 0)
			goto fail;
	}
	/* Its revoked keys without a record signed by an active attestation key:
	 * signed by the active key of the key's own backend, or, where this node
	 * has not that hardware (another node's key, in a cluster), of this
	 * node's (keys_node_backend). */
	for (;;) {
		if (store_query(
			d->st, &s,
			"SELECT k.kid, k.backend FROM keys k WHERE k.client = ? AND k.state = "
			"'revoked' AND NOT EXISTS (SELECT 1 FROM revocations r JOIN "
			"attest_keys t ON t.kid = r.attest_kid AND t.state = 'active' "
			"WHERE r.kid = k.kid) ORDER BY k.revoked LIMIT 1",
			"s", name) < 0)
			return -EIO;
		r = store_next(s) > 0;
		if (r) {
			snprintf(kid, sizeof(kid), "%s", store_text(s, 0));
			snprintf(backend, sizeof(backend), "%s",
				 keys_node_backend(d, store_text(s, 1)));
		}
		store_done(d->st, s);
		if (!r)
			break;
		for (b = 0; b < d->cfg->n_backends; b++)
			if (strcmp(d->cfg->backends[b].name, backend) == 0)
				break;
		if (b == d->cfg->n_backends)
			break; /* its backend is no longer configured */
		if ((r = batch_key(d, bt, b)) < 0 ||
		    (r = issue_revocation(d, kid, custody_at(d->custody, b), bt->ak[b].key,
					  bt->ak[b].kid)) < 0)
			goto fail;
	}
	return 0;
fail:
	/* Retried every second while it fails: said once a minute. */
	if (time(NULL) - last_complaint >= 60) {
		log_err("attestation of %s: %s (%s); retrying", name, cimd_strerror(r),
			custody_at(d->custody, b) ? key_store_errmsg(custody_at(d->custody, b))
						  : "backend not open");
		last_complaint = time(NULL);
	}
	return r;
}

/* ---- health ---- */

/* ---- what publish.c serves ---- */

/* The client's latest statement, if it names these bytes: a client without a
 * key in its JWKS (every one revoked) still has its document attested. */
static char *latest_envelope(struct svc *d, const char *name, const char *cimd_hex,
			     const char *jwks_hex)
{
	struct store_rows *s = NULL;
	char *out = NULL;

	if (store_query(
		d->st, &s,
		"SELECT envelope, cimd_sha256, jwks_sha256 FROM attestations WHERE client = "
		"? ORDER BY id DESC LIMIT 1",
		"s", name) == 0 &&
	    store_next(s) > 0 && strcmp(store_text(s, 1), cimd_hex) == 0 &&
	    strcmp(store_text(s, 2), jwks_hex) == 0)
		out = strdup(store_text(s, 0));
	store_done(d->st, s);
	return out;
}

/*
 * What /clients/NAME/attestation.json serves: for each node with keys in the
 * client's JWKS, that node's latest statement, if it names exactly these
 * document and JWKS bytes.  One node: its envelope, as a single appliance
 * has always served.  Several: {"attestations": [...]} by node name, each
 * statement attesting its own node's keys (docs/attestation.md, "A
 * cluster").  NULL while a node's statement for these bytes is missing.
 */
char *attest_envelope(struct svc *d, const char *name, const char *cimd_hex, const char *jwks_hex)
{
	struct store_rows *s = NULL;
	json_t *set = json_array(), *e, *o;
	char *out = NULL, *one = NULL;
	int complete = 1, rc;

	if (set == NULL ||
	    store_query(
		d->st, &s,
		"SELECT n.node, (SELECT a.envelope FROM attestations a WHERE a.client = ?1 AND "
		"a.node = n.node AND a.id = (SELECT max(id) FROM attestations b WHERE b.client = "
		"?1 AND b.node = n.node) AND a.cimd_sha256 = ?2 AND a.jwks_sha256 = ?3) FROM "
		"(SELECT DISTINCT node FROM keys WHERE client = ?1 AND state IN ('next', "
		"'active', 'retiring') AND jwk IS NOT NULL) n ORDER BY n.node",
		"sss", name, cimd_hex, jwks_hex) < 0) {
		json_decref(set);
		return NULL;
	}
	while (complete && (rc = store_next(s)) > 0) {
		if (store_null(s, 1) ||
		    (e = json_loads(store_text(s, 1), JSON_REJECT_DUPLICATES, NULL)) == NULL) {
			complete = 0;
		} else {
			json_array_append_new(set, e);
			free(one);
			one = strdup(store_text(s, 1)); /* one node: its bytes as stored */
		}
	}
	store_done(d->st, s);
	if (complete && json_array_size(set) == 1) {
		out = one;
		one = NULL;
	} else if (complete && json_array_size(set) > 1 &&
		   (o = json_pack("{sO}", "attestations", set)) != NULL) {
		out = json_dumps(o, JSON_COMPACT);
		json_decref(o);
	} else if (complete) {
		out = latest_envelope(d, name, cimd_hex, jwks_hex);
	}
	free(one);
	json_decref(set);
	return out;
}

char *attest_revocations(struct svc *d, const char *name)
{
	struct store_rows *s = NULL;
	json_t *arr = json_array(), *o = NULL, *e;
	char *out = NULL;

	if (arr == NULL ||
	    store_query(d->st, &s,
			"SELECT r.envelope FROM revocations r WHERE r.client = ? AND r.id = "
			"(SELECT max(id) FROM revocations q WHERE q.kid = r.kid) ORDER BY r.id",
			"s", name) < 0) {
		json_decref(arr);
		return NULL;
	}
	while (store_next(s) > 0)
		if ((e = json_loads(store_text(s, 0), 0, NULL)) != NULL)
			json_array_append_new(arr, e);
	store_done(d->st, s);
	if ((o = json_pack("{so}", "revocations", arr)) != NULL)
		out = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return out;
}

char *attest_keys_jwks(struct svc *d)
{
	struct store_rows *s = NULL;
	json_t *arr = json_array(), *o = NULL, *k;
	char *out = NULL, *pub = NULL;

	if (arr == NULL ||
	    store_query(d->st, &s,
			"SELECT jwk, backend, tpm_public, state, created FROM attest_keys WHERE "
			"state IN ('active', 'retiring') ORDER BY created, kid",
			"") < 0) {
		json_decref(arr);
		return NULL;
	}
	while (store_next(s) > 0) {
		if ((k = json_loads(store_text(s, 0), 0, NULL)) == NULL)
			continue;
		json_object_set_new(k, "backend", json_string(store_text(s, 1)));
		json_object_set_new(k, "state", json_string(store_text(s, 3)));
		json_object_set_new(k, "created", json_integer(store_int(s, 4)));
		/* A TPM AK with its TPMT_PUBLIC, so a verifier can check that it is a
		 * restricted, fixedTPM key and that the JWK is its public key. */
		if (store_len(s, 2) > 0 &&
		    b64url_encode_alloc(store_blob(s, 2), store_len(s, 2), &pub) == 0) {
			json_object_set_new(k, "tpm2_public", json_string(pub));
			free(pub);
			pub = NULL;
		}
		json_array_append_new(arr, k);
	}
	store_done(d->st, s);
	if ((o = json_pack("{so}", "keys", arr)) != NULL)
		out = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return out;
}

int attest_show(struct svc *d, const char *name, json_t **ret_envelope, int64_t *ret_seq,
		int64_t *ret_issued, char *err, size_t errlen)
{
	struct store_rows *s = NULL;
	json_t *env = NULL;

	if (name == NULL || !cimd_valid_name(name))
		return cimd_fail(err, errlen, -EINVAL, "name must be a client name");
	if (store_query(d->st, &s,
			"SELECT envelope, seq, created FROM attestations WHERE client = ? ORDER BY "
			"id DESC LIMIT 1",
			"s", name) < 0)
		return cimd_fail(err, errlen, -EIO, "database error");
	if (store_next(s) > 0)
		env = json_loads(store_text(s, 0), 0, NULL);
	if (env == NULL) {
		store_done(d->st, s);
		return cimd_fail(err, errlen, -ENOENT,
				 "%s has no attestation (no approved document, or its "
				 "hardware has not been available since)",
				 name);
	}
	*ret_envelope = env;
	*ret_seq = store_int(s, 1);
	*ret_issued = store_int(s, 2);
	store_done(d->st, s);
	return 0;
}
