/*
 * test_pkcs11.c — the PKCS#11 backend against a real SoftHSM2 token in a fresh
 * directory: the key store contract for every algorithm, then each fault the
 * backend must name (wrong PIN, missing token, missing module, unknown key,
 * unsafe PIN file, bad configuration) and recovery from a lost session; then
 * parallel sessions: signatures from several threads on several sessions,
 * each checked with OpenSSL, and a token that hangs mid-signature
 * (tests/p11hang/, SoftHSM2 with a C_Sign that waits on a file).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <p11-kit/pkcs11.h>

#include "harness.h"

static void test_errors(const struct t_softhsm *h)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	char conf[2048], errbuf[256], pin[700];
	uint8_t ref[16] = {1, 2, 3};
	int r;

	snprintf(pin, sizeof(pin), "%s/wrong-pin", h->dir);
	t_write_file(pin, "0000\n", 5);
	snprintf(conf, sizeof(conf), "pkcs11:module=%s;token=cimd-test;pin-file=%s",
		 T_SOFTHSM_MODULE, pin);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_EPIN && strstr(errbuf, "CKR_PIN_INCORRECT"), "wrong PIN: %s (%s)",
	     cimd_strerror(r), errbuf);
	key_store_free(&ks);

	snprintf(conf, sizeof(conf), "pkcs11:module=%s;token=no-such-token;pin-file=%s",
		 T_SOFTHSM_MODULE, h->pin_file);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ENOTOKEN, "missing token: %s (%s)", cimd_strerror(r), errbuf);
	key_store_free(&ks);

	snprintf(conf, sizeof(conf),
		 "pkcs11:module=/nonexistent/libp11mod.so;token=cimd-test;pin-file=%s",
		 h->pin_file);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ENOMODULE, "missing module: %s (%s)", cimd_strerror(r), errbuf);
	key_store_free(&ks);

	/* A file that exists but is no PKCS#11 module. */
	snprintf(conf, sizeof(conf), "pkcs11:module=%s;token=cimd-test;pin-file=%s", h->pin_file,
		 h->pin_file);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ENOMODULE, "not a module: %s (%s)", cimd_strerror(r), errbuf);
	key_store_free(&ks);

	chmod(pin, 0644);
	snprintf(conf, sizeof(conf), "pkcs11:module=%s;token=cimd-test;pin-file=%s",
		 T_SOFTHSM_MODULE, pin);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_EPIN && strstr(errbuf, "readable only by its owner"),
	     "PIN file readable by others is refused (%s)", errbuf);
	key_store_free(&ks);

	r = key_store_open("pkcs11:module=x;token=y", &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ECONFIG, "missing pin-file: %s (%s)", cimd_strerror(r), errbuf);
	r = key_store_open("pkcs11:module=x;color=blue", &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ECONFIG && strstr(errbuf, "color"), "unknown parameter: %s", errbuf);
	r = key_store_open("hsm:module=x", &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ECONFIG, "unknown backend: %s", errbuf);
	r = key_store_open("pkcs11", &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ECONFIG, "no parameters: %s", errbuf);

	if (key_store_open(h->conf, &ks, errbuf, sizeof(errbuf)) == 0) {
		r = key_store_load(ks, CIMD_ALG_ES256, ref, sizeof(ref), &key);
		t_ok(r == -CIMD_ENOKEY, "unknown key reference: %s (%s)", cimd_strerror(r),
		     key_store_errmsg(ks));
		r = key_store_load(ks, CIMD_ALG_ES256, ref, 5, &key);
		t_ok(r == -CIMD_ENOKEY, "malformed key reference: %s", cimd_strerror(r));
		r = key_store_generate(ks, (enum cimd_alg)99, NULL, &key);
		t_ok(r == -CIMD_EALG, "unknown algorithm: %s", cimd_strerror(r));
	}
	key_store_free(&ks);
}

/* Closes every session on the token behind the key store's back (as a token
 * reset would), through the module instance this process loaded. */
static int close_all_sessions(void)
{
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR fl;
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16, i;
	void *dl = dlopen(T_SOFTHSM_MODULE, RTLD_NOW | RTLD_NOLOAD);

	if (dl == NULL || (get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL ||
	    get(&fl) != CKR_OK || fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		return -1;
	for (i = 0; i < n; i++)
		fl->C_CloseAllSessions(slots[i]);
	dlclose(dl);
	return 0;
}

static void test_session_recovery(const struct t_softhsm *h)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	json_t *jwk = NULL;
	char errbuf[256], *jws = NULL;
	uint8_t *payload = NULL;
	size_t plen;
	int r;

	if (!t_ok(key_store_open(h->conf, &ks, errbuf, sizeof(errbuf)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0,
		  "recovery: key store and key"))
		goto out;
	jwk = ks_key_jwk(key);
	t_ok(close_all_sessions() == 0, "recovery: all sessions on the token closed");
	r = jws_sign(ks, key, NULL, (const uint8_t *)"x", 1, &jws);
	t_ok(r == 0 && jws_verify(jws, jwk, NULL, &payload, &plen) == 0,
	     "recovery: signing reopens the session, logs in and finds the key (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	free(jws);
	jws = NULL;
	free(payload);
	payload = NULL;
	close_all_sessions();
	r = key_store_destroy(ks, &key);
	t_ok(r == 0, "recovery: destroy after a lost session (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
out:
	json_decref(jwk);
	ks_key_free(&key);
	key_store_free(&ks);
}

/* Reads the private key's attributes through the module itself: the token, not
 * our code, must say the key is sensitive and was never extractable. */
static void test_attributes(const struct t_softhsm *h)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR fl;
	CK_SLOT_ID slots[16];
	CK_ULONG nslots = 16, n = 0, i;
	CK_SESSION_HANDLE sess = 0;
	CK_OBJECT_HANDLE obj;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_BBOOL sensitive = 0, extractable = 1, never = 0, local = 0, sign = 0, decrypt = 1;
	CK_ATTRIBUTE attrs[] = {
	    {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
	    {CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
	    {CKA_NEVER_EXTRACTABLE, &never, sizeof(never)},
	    {CKA_LOCAL, &local, sizeof(local)},
	    {CKA_SIGN, &sign, sizeof(sign)},
	    {CKA_DECRYPT, &decrypt, sizeof(decrypt)},
	};
	const uint8_t *ref;
	size_t ref_len;
	char errbuf[256];
	void *dl = NULL;

	if (!t_ok(key_store_open(h->conf, &ks, errbuf, sizeof(errbuf)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0,
		  "attributes: key generated"))
		goto out;
	ks_key_ref(key, &ref, &ref_len);
	{
		CK_ATTRIBUTE tmpl[] = {{CKA_ID, (void *)ref, ref_len},
				       {CKA_CLASS, &cls, sizeof(cls)}};
		dl = dlopen(T_SOFTHSM_MODULE, RTLD_NOW | RTLD_NOLOAD);
		if (!t_ok(dl != NULL &&
			      (get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) !=
				  NULL &&
			      get(&fl) == CKR_OK &&
			      fl->C_GetSlotList(CK_TRUE, slots, &nslots) == CKR_OK,
			  "attributes: module function list"))
			goto out;
		for (i = 0; i < nslots && n == 0; i++) {
			if (fl->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &sess) !=
			    CKR_OK)
				continue;
			/* The key store logged this application in (PKCS#11 §5.6). */
			if (fl->C_FindObjectsInit(sess, tmpl, 2) == CKR_OK) {
				fl->C_FindObjects(sess, &obj, 1, &n);
				fl->C_FindObjectsFinal(sess);
			}
			if (n == 0)
				fl->C_CloseSession(sess);
		}
	}
	if (!t_ok(n == 1, "attributes: the private key is found by its CKA_ID"))
		goto out;
	t_ok(fl->C_GetAttributeValue(sess, obj, attrs, sizeof(attrs) / sizeof(attrs[0])) == CKR_OK,
	     "attributes: C_GetAttributeValue");
	t_ok(sensitive == CK_TRUE && extractable == CK_FALSE,
	     "token reports CKA_SENSITIVE true, CKA_EXTRACTABLE false");
	t_ok(never == CK_TRUE && local == CK_TRUE,
	     "token reports CKA_NEVER_EXTRACTABLE and CKA_LOCAL true (generated on the token)");
	t_ok(sign == CK_TRUE && decrypt == CK_FALSE,
	     "token reports CKA_SIGN true, CKA_DECRYPT false");
	fl->C_CloseSession(sess);
out:
	if (dl != NULL)
		dlclose(dl);
	if (ks != NULL && key != NULL)
		key_store_destroy(ks, &key);
	ks_key_free(&key);
	key_store_free(&ks);
}

/* A second key store on the module in use is refused, and the first one is
 * unharmed: one module instance per process (docs/custody.md). */
static void test_exclusive(const struct t_softhsm *h)
{
	struct key_store *a = NULL, *b = NULL;
	struct ks_key *key = NULL;
	uint8_t sig[CIMD_SIG_MAX];
	size_t n;
	char err[256];
	int r;

	if (!t_ok(key_store_open(h->conf, &a, err, sizeof(err)) == 0 &&
		      key_store_generate(a, CIMD_ALG_ES256, NULL, &key) == 0,
		  "exclusive: first key store"))
		goto out;
	r = key_store_open(h->conf, &b, err, sizeof(err));
	t_ok(r == -EBUSY && strstr(err, "in use by another key store"),
	     "a second key store on the same module is refused: %s", err);
	t_ok(key_store_sign(a, key, (const uint8_t *)"x", 1, sig, &n) == 0,
	     "the first key store still signs");
	key_store_destroy(a, &key);
out:
	ks_key_free(&key);
	key_store_free(&a);
	key_store_free(&b);
}

/* Signs msg with key and verifies the signature against the key's JWK. */
static int sign_verifies(struct key_store *ks, struct ks_key *key, const uint8_t *msg, size_t len)
{
	uint8_t sig[CIMD_SIG_MAX];
	json_t *jwk = ks_key_jwk(key);
	size_t n;
	int r;

	r = key_store_sign(ks, key, msg, len, sig, &n);
	if (r == 0)
		r = jws_verify_signature(jwk, ks_key_alg(key), msg, len, sig, n);
	json_decref(jwk);
	return r;
}

/* Non-empty, and no trailing blank left of a blank-padded token field. */
static int unpadded(const char *s)
{
	return s[0] != '\0' && s[strlen(s) - 1] != ' ';
}

/* The evidence the token gives about a key it generated: self-reported, so the
 * test reads what SoftHSM2 says and checks it says the right thing. */
static void check_evidence(struct key_store *ks, struct ks_key *key, const char *what)
{
	struct ks_p11_evidence ev;
	int r;

	memset(&ev, 0x55, sizeof(ev));
	r = key_store_p11_evidence(ks, key, &ev);
	if (!t_ok(r == 0, "evidence %s: C_GetTokenInfo and C_GetAttributeValue (%s)", what,
		  r < 0 ? key_store_errmsg(ks) : "ok"))
		return;
	t_ok(ev.sensitive == 1 && ev.always_sensitive == 1,
	     "evidence %s: CKA_SENSITIVE and CKA_ALWAYS_SENSITIVE true", what);
	t_ok(ev.extractable == 0 && ev.never_extractable == 1,
	     "evidence %s: CKA_EXTRACTABLE false, CKA_NEVER_EXTRACTABLE true", what);
	t_ok(ev.local == 1, "evidence %s: CKA_LOCAL true (generated on the token)", what);
	t_ok(ev.manufacturer[0] != '\0' && ev.model[0] != '\0' && ev.serial[0] != '\0' &&
		 strcmp(ev.label, "cimd-test") == 0,
	     "evidence %s: token '%s' model '%s' serial '%s' by '%s'", what, ev.label, ev.model,
	     ev.serial, ev.manufacturer);
	t_ok(unpadded(ev.manufacturer) && unpadded(ev.model) && unpadded(ev.serial) &&
		 unpadded(ev.label),
	     "evidence %s: blank padding removed", what);
}

/* An attestation key on a token: an ordinary ES256 key labelled "cimdd:TAG";
 * no TPM2_Certify, but the token's own account of the key. */
static void test_attest(const struct t_softhsm *h)
{
	struct key_store *ks = NULL;
	struct ks_key *ak = NULL, *ak2 = NULL, *key = NULL;
	struct ks_certify cert = {0};
	struct ks_ref *refs = NULL;
	uint8_t q[32] = {1}, *pub = NULL;
	uint64_t counter;
	const uint8_t *ref;
	size_t ref_len, nrefs = 0, i, pub_len;
	char err[256];
	int r, tagged = 0;

	if (!t_ok(key_store_open(h->conf, &ks, err, sizeof(err)) == 0, "attest: key store (%s)",
		  err))
		goto out;
	r = key_store_generate_attest(ks, "ak-1", &ak);
	if (!t_ok(r == 0, "attest: attestation key generated (%s)",
		  r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	t_ok(ks_key_alg(ak) == CIMD_ALG_ES256 && ks_key_restricted(ak) == 0,
	     "attest: an unrestricted ES256 key on a token");
	r = sign_verifies(ks, ak, (const uint8_t *)"statement", 9);
	t_ok(r == 0, "attest: it signs (%s)", r < 0 ? key_store_errmsg(ks) : "ok");
	r = sign_verifies(ks, ak, (const uint8_t *)"\xff\x54\x43\x47xyz", 7);
	t_ok(r == 0, "attest: TPM_GENERATED_VALUE means nothing to a token (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	ks_key_ref(ak, &ref, &ref_len);
	r = key_store_load(ks, CIMD_ALG_ES256, ref, ref_len, &ak2);
	t_ok(r == 0 && strcmp(ks_key_kid(ak), ks_key_kid(ak2)) == 0 &&
		 sign_verifies(ks, ak2, (const uint8_t *)"again", 5) == 0,
	     "attest: it loads again from its reference and signs (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	if (key_store_list(ks, 256, &refs, &nrefs) == 0)
		for (i = 0; i < nrefs; i++)
			if (refs[i].len == ref_len && memcmp(refs[i].ref, ref, ref_len) == 0 &&
			    strcmp(refs[i].tag, "ak-1") == 0)
				tagged = 1;
	t_ok(tagged, "attest: listed with its tag (CKA_LABEL cimdd:ak-1)");
	r = key_store_certify(ks, ak, ak, q, sizeof(q), &cert);
	t_ok(r == -ENOTSUP && cert.attest == NULL, "attest: no TPM2_Certify on a token: %s",
	     cimd_strerror(r));
	r = ks_key_tpm_public(ak, &pub, &pub_len);
	t_ok(r == -ENOTSUP && pub == NULL, "attest: no TPMT_PUBLIC for a token key: %s",
	     cimd_strerror(r));
	counter = 42;
	r = key_store_counter_read(ks, &counter);
	t_ok(r == -ENOTSUP && key_store_counter_increment(ks, &counter) == -ENOTSUP &&
		 counter == 42 && strstr(key_store_errmsg(ks), "monotonic counter") != NULL,
	     "attest: no monotonic counter on a token (read, increment): %s (%s)", cimd_strerror(r),
	     key_store_errmsg(ks));
	check_evidence(ks, ak, "AK");
	if (t_ok(key_store_generate(ks, CIMD_ALG_PS256, NULL, &key) == 0, "attest: a PS256 key"))
		check_evidence(ks, key, "PS256");
	/* A lost session: the evidence call reopens it, as the others do. */
	close_all_sessions();
	check_evidence(ks, ak, "after a lost session");
out:
	free(pub);
	ks_refs_free(&refs, nrefs);
	if (ks != NULL && key != NULL)
		key_store_destroy(ks, &key);
	if (ks != NULL && ak != NULL)
		key_store_destroy(ks, &ak);
	ks_key_free(&key);
	ks_key_free(&ak2);
	ks_key_free(&ak);
	key_store_free(&ks);
}

/* The module's function list and a session of this process (logged in by the
 * key store, PKCS#11 §5.6), for changing objects behind the key store's back. */
static int raw_session(CK_FUNCTION_LIST_PTR *ret_fl, CK_SESSION_HANDLE *ret_sess)
{
	CK_C_GetFunctionList get;
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	void *dl = dlopen(T_SOFTHSM_MODULE, RTLD_NOW | RTLD_NOLOAD);
	int r = -1;

	if (dl != NULL && (get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) != NULL &&
	    get(ret_fl) == CKR_OK && (*ret_fl)->C_GetSlotList(CK_TRUE, slots, &n) == CKR_OK &&
	    n > 0 &&
	    (*ret_fl)->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
				     ret_sess) == CKR_OK)
		r = 0;
	if (dl != NULL)
		dlclose(dl); /* the key store keeps the module loaded */
	return r;
}

/* The one object of class cls with CKA_ID ref, or CK_INVALID_HANDLE. */
static CK_OBJECT_HANDLE raw_find(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE sess,
				 const uint8_t *ref, size_t len, CK_OBJECT_CLASS cls)
{
	CK_ATTRIBUTE tmpl[] = {{CKA_ID, (void *)ref, len}, {CKA_CLASS, &cls, sizeof(cls)}};
	CK_OBJECT_HANDLE obj[2];
	CK_ULONG n = 0;

	if (fl->C_FindObjectsInit(sess, tmpl, 2) != CKR_OK)
		return CK_INVALID_HANDLE;
	fl->C_FindObjects(sess, obj, 2, &n);
	fl->C_FindObjectsFinal(sess);
	return n == 1 ? obj[0] : CK_INVALID_HANDLE;
}

static int listed(const struct ks_ref *refs, size_t n, const uint8_t *ref, size_t len,
		  const char *tag)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (refs[i].len == len && memcmp(refs[i].ref, ref, len) == 0)
			return tag == NULL || strcmp(refs[i].tag, tag) == 0;
	return 0;
}

/*
 * What reconciliation relies on (service/keys.c, docs/custody.md
 * "Reconciliation"): one listing shows every key of ours with its tag, past a
 * batch of handles (1024), and nothing that is not labelled ours; a reference
 * is checked without the token as load checks it; a key is destroyed by its
 * reference, even when half of it is gone.
 */
#define LIST_KEYS 1100
static void test_listing(const struct t_softhsm *h)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL, *foreign = NULL, *longer = NULL, *half = NULL, *again = NULL;
	struct ks_ref *refs = NULL;
	uint8_t first[16], last[16], fref[16], lref[16], href[16];
	CK_FUNCTION_LIST_PTR fl = NULL;
	CK_SESSION_HANDLE sess = 0;
	CK_OBJECT_HANDLE obj;
	CK_RV rv;
	char err[256], tag[CIMD_TAG_MAX + 1];
	char label[] = "cimdd:this-label-is-longer-than-any-tag-cimdd-writes";
	const uint8_t *ref;
	size_t len, n = 0, n0 = 0, i, j;
	double t0;
	int r, made = 0, tagged = 1;

	if (!t_ok(key_store_open(h->conf, &ks, err, sizeof(err)) == 0, "listing: key store (%s)",
		  err))
		goto out;
	t_ok(key_store_holds_keys(ks) == 1, "listing: a token holds its keys");
	if (key_store_list(ks, 1000000, &refs, &n0) == 0)
		ks_refs_free(&refs, n0);
	for (i = 0; i < LIST_KEYS; i++, made++) {
		snprintf(tag, sizeof(tag), "list-%04zu", i);
		if (key_store_generate(ks, CIMD_ALG_ES256, tag, &key) < 0)
			break;
		ks_key_ref(key, &ref, &len);
		if (i == 0)
			memcpy(first, ref, sizeof(first));
		memcpy(last, ref, sizeof(last));
		ks_key_free(&key);
	}
	if (!t_ok(made == LIST_KEYS, "listing: %d keys made with tags", made))
		goto out;
	/* Two more whose private key's label is not ours: another application's
	 * label, and a label too long to be one cimdd writes. */
	if (!t_ok(key_store_generate(ks, CIMD_ALG_ES256, NULL, &foreign) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &longer) == 0 &&
		      raw_session(&fl, &sess) == 0,
		  "listing: two keys to relabel"))
		goto out;
	ks_key_ref(foreign, &ref, &len);
	memcpy(fref, ref, sizeof(fref));
	ks_key_ref(longer, &ref, &len);
	memcpy(lref, ref, sizeof(lref));
	{
		CK_ATTRIBUTE a = {CKA_LABEL, "other-app", 9};
		CK_ATTRIBUTE b = {CKA_LABEL, label, sizeof(label) - 1};
		t_ok((obj = raw_find(fl, sess, fref, 16, CKO_PRIVATE_KEY)) != CK_INVALID_HANDLE &&
			 fl->C_SetAttributeValue(sess, obj, &a, 1) == CKR_OK &&
			 (obj = raw_find(fl, sess, lref, 16, CKO_PRIVATE_KEY)) !=
			     CK_INVALID_HANDLE &&
			 fl->C_SetAttributeValue(sess, obj, &b, 1) == CKR_OK,
		     "listing: relabelled 'other-app' and a %zu-character 'cimdd:...'",
		     sizeof(label) - 1);
	}
	t0 = t_now_ms();
	r = key_store_list(ks, 1000000, &refs, &n);
	printf("# listing %zu keys (%zu objects or more) took %.0f ms\n", n, 2 * n,
	       t_now_ms() - t0);
	t_ok(r == 0 && n == n0 + LIST_KEYS, "listing: one listing shows every key of ours (%zu)",
	     n);
	for (i = 0; i < LIST_KEYS && tagged; i++) {
		snprintf(tag, sizeof(tag), "list-%04zu", i);
		tagged = 0;
		for (j = 0; j < n && !tagged; j++)
			tagged = strcmp(refs[j].tag, tag) == 0 && refs[j].len == 16;
	}
	for (i = 0, j = 0; i < n; i++)
		j += refs[i].whole == 1;
	t_ok(tagged && listed(refs, n, first, 16, "list-0000") &&
		 listed(refs, n, last, 16, "list-1099") && j == n,
	     "listing: each with its CKA_ID and tag, whole (%zu of %zu)", j, n);
	t_ok(!listed(refs, n, fref, 16, NULL) && !listed(refs, n, lref, 16, NULL),
	     "listing: not the keys labelled otherwise");
	ks_refs_free(&refs, n);
	r = key_store_list(ks, 10, &refs, &n);
	t_ok(r == 0 && n == 10, "listing: at most max (%zu)", n);
	ks_refs_free(&refs, n);

	t_ok(key_store_ref_check(ks, CIMD_ALG_ES256, first, 16) == 0 &&
		 key_store_ref_check(ks, CIMD_ALG_PS256, first, 16) == 0,
	     "listing: a 16-byte reference checks out without the token (whatever it holds)");
	t_ok(key_store_ref_check(ks, CIMD_ALG_ES256, first, 5) == -CIMD_ENOKEY &&
		 key_store_load(ks, CIMD_ALG_ES256, first, 5, &again) == -CIMD_ENOKEY,
	     "listing: a 5-byte reference is malformed, as load says");
	t_ok(key_store_ref_check(ks, (enum cimd_alg)99, first, 16) == -CIMD_EALG,
	     "listing: an unknown algorithm");

	r = key_store_destroy_ref(ks, first, 16);
	t_ok(r == 0, "listing: destroyed by its reference (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	/* The raw search first: a load that finds no key reloads the module
	 * (ks_pkcs11.c, p11_reload), which closes every session of this process. */
	obj = raw_find(fl, sess, first, 16, CKO_PUBLIC_KEY);
	t_ok(obj == CK_INVALID_HANDLE &&
		 raw_find(fl, sess, last, 16, CKO_PUBLIC_KEY) != CK_INVALID_HANDLE &&
		 key_store_load(ks, CIMD_ALG_ES256, first, 16, &again) == -CIMD_ENOKEY,
	     "listing: both halves are gone");
	r = key_store_destroy_ref(ks, first, 16);
	t_ok(r == -CIMD_ENOKEY, "listing: destroying it again: %s", cimd_strerror(r));
	/* Half a pair, as a destruction interrupted half way leaves it: load
	 * refuses it, destruction by reference still removes it. */
	if (t_ok(key_store_generate(ks, CIMD_ALG_ES256, "half", &half) == 0 &&
		     raw_session(&fl, &sess) == 0,
		 "listing: a key, and a session of our own again")) {
		ks_key_ref(half, &ref, &len);
		memcpy(href, ref, sizeof(href));
		obj = raw_find(fl, sess, href, 16, CKO_PUBLIC_KEY);
		rv = obj != CK_INVALID_HANDLE ? fl->C_DestroyObject(sess, obj) : CKR_GENERAL_ERROR;
		r = key_store_load(ks, CIMD_ALG_ES256, href, 16, &again);
		t_ok(rv == CKR_OK && r == -CIMD_ENOKEY,
		     "listing: its public half destroyed behind our back (0x%lx): load refuses it "
		     "(%s: %s)",
		     (unsigned long)rv, cimd_strerror(r), key_store_errmsg(ks));
		j = 2;
		if (key_store_list(ks, 1000000, &refs, &n) == 0)
			for (i = 0; i < n; i++)
				if (refs[i].len == 16 && memcmp(refs[i].ref, href, 16) == 0)
					j = (size_t)refs[i].whole;
		ks_refs_free(&refs, n);
		t_ok(j == 0, "listing: it is listed, not whole (%zu)", j);
		r = key_store_destroy_ref(ks, href, 16);
		j = 2;
		if (key_store_list(ks, 1000000, &refs, &n) == 0)
			for (i = 0; i < n; i++)
				if (refs[i].len == 16 && memcmp(refs[i].ref, href, 16) == 0)
					j = (size_t)refs[i].whole;
		ks_refs_free(&refs, n);
		t_ok(r == 0 && j == 2,
		     "listing: destruction by reference removes the private half (%s)",
		     cimd_strerror(r));
	}
out:
	if (fl != NULL)
		fl->C_CloseSession(sess);
	ks_refs_free(&refs, n);
	ks_key_free(&again);
	ks_key_free(&half);
	ks_key_free(&longer);
	ks_key_free(&foreign);
	ks_key_free(&key);
	key_store_free(&ks);
}

/* ---- parallel sessions ---- */

#define PAR_THREADS 4
#define PAR_EACH 150

struct par {
	pthread_t th;
	struct key_store *ks;
	struct ks_key *key;
	json_t *jwk;
	enum cimd_alg alg;
	int id, good, bad;
};

/* Signs PAR_EACH messages of its own, one at a time and in batches of 8,
 * and checks each signature with OpenSSL (jws_verify_signature). */
static void *par_main(void *arg)
{
	struct par *p = arg;
	struct ks_sign_req reqs[8];
	char msgs[8][64];
	uint8_t sig[CIMD_SIG_MAX];
	size_t sl, i, k;

	for (i = 0; i < PAR_EACH; i += 9) {
		snprintf(msgs[0], sizeof(msgs[0]), "thread %d message %zu", p->id, i);
		if (key_store_sign(p->ks, p->key, (const uint8_t *)msgs[0], strlen(msgs[0]), sig,
				   &sl) == 0 &&
		    jws_verify_signature(p->jwk, p->alg, (const uint8_t *)msgs[0], strlen(msgs[0]),
					 sig, sl) == 0)
			p->good++;
		else
			p->bad++;
		for (k = 0; k < 8; k++) {
			snprintf(msgs[k], sizeof(msgs[k]), "thread %d batch %zu.%zu", p->id, i, k);
			reqs[k] = (struct ks_sign_req){
			    .key = p->key, .msg = (const uint8_t *)msgs[k], .len = strlen(msgs[k])};
		}
		if (key_store_sign_batch(p->ks, reqs, 8) < 0) {
			p->bad += 8;
			continue;
		}
		for (k = 0; k < 8; k++) {
			if (reqs[k].r == 0 &&
			    jws_verify_signature(p->jwk, p->alg, reqs[k].msg, reqs[k].len,
						 reqs[k].sig, reqs[k].sig_len) == 0)
				p->good++;
			else
				p->bad++;
		}
	}
	return NULL;
}

static double ms_since(double t0)
{
	return t_now_ms() - t0;
}

/* Signs one message; its result and how long it took. */
static int sign_timed(struct key_store *ks, struct ks_key *key, double *ms)
{
	uint8_t sig[CIMD_SIG_MAX];
	size_t sl;
	double t0 = t_now_ms();
	int r = key_store_sign(ks, key, (const uint8_t *)"hang?", 5, sig, &sl);

	*ms = ms_since(t0);
	return r;
}

/* A batch spread over every session while the token hangs, then after. */
static int sign_batch_all(struct key_store *ks, struct ks_key *key, size_t n)
{
	struct ks_sign_req reqs[CIMD_SIGN_BATCH_MAX];
	size_t i;
	int r;

	for (i = 0; i < n; i++)
		reqs[i] =
		    (struct ks_sign_req){.key = key, .msg = (const uint8_t *)"batch", .len = 5};
	if ((r = key_store_sign_batch(ks, reqs, n)) < 0)
		return r;
	for (i = 0; i < n; i++)
		if (reqs[i].r < 0)
			return reqs[i].r;
	return 0;
}

static void test_hang(const struct t_softhsm *h, const char *shim)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	char conf[2048], err[256], flag[700];
	double ms, t0;
	int r;

	snprintf(flag, sizeof(flag), "%s/p11hang.flag", t_tmpdir());
	setenv("P11HANG_FILE", flag, 1);
	/* A deadline far from "at once", so that neither is mistaken for the
	 * other on a loaded machine. */
	snprintf(conf, sizeof(conf),
		 "pkcs11:module=%s;token=cimd-test;pin-file=%s;sessions=3;"
		 "timeout-ms=1000",
		 shim, h->pin_file);
	if (!t_ok(key_store_open(conf, &ks, err, sizeof(err)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0,
		  "hang: a store of 3 sessions on a module that can hang (%s)", err))
		goto out;
	t_ok(sign_batch_all(ks, key, 12) == 0, "hang: 12 signatures over 3 sessions");
	t_write_file(flag, "", 0);
	r = sign_timed(ks, key, &ms);
	t_ok(r == -CIMD_EUNAVAILABLE && ms >= 950 && ms < 2500,
	     "hang: a signature the token does not answer fails at its deadline (%s after %.0f "
	     "ms, timeout-ms 1000)",
	     cimd_strerror(r), ms);
	r = sign_timed(ks, key, &ms);
	t_ok(r == -CIMD_EUNAVAILABLE && ms < 250 &&
		 strstr(key_store_errmsg(ks), "not yet answered"),
	     "hang: the next fails at once, though two sessions are idle (%s after %.1f ms: %s)",
	     cimd_strerror(r), ms, key_store_errmsg(ks));
	t0 = t_now_ms();
	r = sign_batch_all(ks, key, 12);
	t_ok(r == -CIMD_EUNAVAILABLE && ms_since(t0) < 250, "hang: so does a batch (%.1f ms)",
	     ms_since(t0));
	unlink(flag);
	/* The hung call returns when the token does: the store works again by
	 * itself, every session with it. */
	t0 = t_now_ms();
	while ((r = sign_batch_all(ks, key, 12)) < 0 && ms_since(t0) < 5000)
		usleep(10000);
	t_ok(r == 0, "hang: once the token answers, 12 signatures over 3 sessions again (%.0f ms)",
	     ms_since(t0));
	/* Every session hung at once: a batch spread over all three. */
	t_write_file(flag, "", 0);
	t0 = t_now_ms();
	r = sign_batch_all(ks, key, 12);
	t_ok(r == -CIMD_EUNAVAILABLE && ms_since(t0) >= 950 && ms_since(t0) < 2500,
	     "hang: a batch over 3 hung sessions fails at its deadline (%.0f ms)", ms_since(t0));
	unlink(flag);
	t0 = t_now_ms();
	while ((r = sign_batch_all(ks, key, 12)) < 0 && ms_since(t0) < 5000)
		usleep(10000);
	t_ok(r == 0, "hang: and recovers (%.0f ms)", ms_since(t0));
	/* A store freed while the token hangs does not wait for it. */
	t_write_file(flag, "", 0);
	sign_timed(ks, key, &ms);
	key_store_destroy(ks, &key);
	t0 = t_now_ms();
	key_store_free(&ks);
	t_ok(ms_since(t0) < 250,
	     "hang: freeing the store while a session hangs returns at once "
	     "(%.1f ms)",
	     ms_since(t0));
	unlink(flag);
	/* The hung worker ends when the token answers, and releases the store:
	 * the module is free for a new store then (one store per module). */
	t0 = t_now_ms();
	while (key_store_open(conf, &ks, err, sizeof(err)) == -EBUSY && ms_since(t0) < 5000)
		usleep(5000);
	t_ok(ks != NULL,
	     "hang: the hung worker released the store once the token answered "
	     "(%.0f ms)",
	     ms_since(t0));
out:
	ks_key_free(&key);
	key_store_free(&ks);
	unsetenv("P11HANG_FILE");
}

static void test_sessions(const struct t_softhsm *h)
{
	static const enum cimd_alg algs[] = {CIMD_ALG_ES256, CIMD_ALG_ES384, CIMD_ALG_PS256,
					     CIMD_ALG_ES256};
	struct par par[PAR_THREADS];
	struct key_store *ks = NULL;
	char conf[2048], err[256], shim[700], *slash;
	ssize_t n;
	int i, good = 0, bad = 0, r;
	long cores = sysconf(_SC_NPROCESSORS_ONLN);

	/* The default: one session per core. */
	if (key_store_open(h->conf, &ks, err, sizeof(err)) == 0)
		t_ok(key_store_sessions(ks) == (cores < 64 ? cores : 64),
		     "sessions: one per core by default (%d, %ld cores)", key_store_sessions(ks),
		     cores);
	key_store_free(&ks);
	r = snprintf(conf, sizeof(conf), "%s;sessions=0", h->conf);
	r = key_store_open(conf, &ks, err, sizeof(err));
	t_ok(r == -CIMD_ECONFIG && strstr(err, "sessions"), "sessions=0 is refused (%s)", err);
	snprintf(conf, sizeof(conf), "%s;sessions=65", h->conf);
	r = key_store_open(conf, &ks, err, sizeof(err));
	t_ok(r == -CIMD_ECONFIG && strstr(err, "1..64"), "sessions=65 is refused (%s)", err);
	snprintf(conf, sizeof(conf), "%s;sessions=two", h->conf);
	r = key_store_open(conf, &ks, err, sizeof(err));
	t_ok(r == -CIMD_ECONFIG, "sessions=two is refused (%s)", err);

	snprintf(conf, sizeof(conf), "%s;sessions=3", h->conf);
	memset(par, 0, sizeof(par));
	if (!t_ok(key_store_open(conf, &ks, err, sizeof(err)) == 0 && key_store_sessions(ks) == 3,
		  "sessions=3: open (%s)", err))
		return;
	for (i = 0; i < PAR_THREADS; i++) {
		par[i].ks = ks;
		par[i].id = i;
		par[i].alg = algs[i];
		if (key_store_generate(ks, algs[i], NULL, &par[i].key) < 0)
			goto out;
		par[i].jwk = ks_key_jwk(par[i].key);
	}
	for (i = 0; i < PAR_THREADS; i++)
		pthread_create(&par[i].th, NULL, par_main, &par[i]);
	for (i = 0; i < PAR_THREADS; i++) {
		pthread_join(par[i].th, NULL);
		good += par[i].good;
		bad += par[i].bad;
	}
	t_ok(good >= PAR_THREADS * PAR_EACH && bad == 0,
	     "sessions=3: %d threads, ES256, ES384 and PS256 keys, one at a time and in batches: "
	     "%d signatures, each verifies with OpenSSL (%d did not)",
	     PAR_THREADS, good, bad);
out:
	for (i = 0; i < PAR_THREADS; i++) {
		key_store_destroy(ks, &par[i].key);
		json_decref(par[i].jwk);
	}
	key_store_free(&ks);
	/* The module that hangs, built beside this test. */
	if ((n = readlink("/proc/self/exe", shim, sizeof(shim) - 16)) > 0 &&
	    (shim[n] = '\0', slash = strrchr(shim, '/')) != NULL) {
		strcpy(slash, "/p11hang.so");
		test_hang(h, shim);
	}
}

int main(void)
{
	struct t_softhsm h;

	signal(SIGPIPE, SIG_IGN);
	if (!t_ok(t_softhsm_init(&h, "cimd-test", "123456") == 0, "SoftHSM2 token in %s",
		  t_tmpdir()))
		return t_done();
	t_keystore_roundtrip(h.conf, CIMD_ALG_ES256);
	t_keystore_roundtrip(h.conf, CIMD_ALG_ES384);
	t_keystore_roundtrip(h.conf, CIMD_ALG_PS256);
	t_keystore_batch(h.conf);
	test_attributes(&h);
	test_attest(&h);
	test_errors(&h);
	test_exclusive(&h);
	test_session_recovery(&h);
	test_listing(&h);
	test_sessions(&h);
	return t_done();
}
