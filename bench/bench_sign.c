/*
 * bench_sign.c — ES256 signatures per second, measured side by side in one run:
 *
 *   openssl      EVP_DigestSign on a software P-256 key in this process: the
 *                software limit of this machine, and the reference for ratios
 *   libp11       a SoftHSM2 key through libp11 and OpenSSL directly, as a
 *                hand-rolled integration would: no worker thread, no deadline
 *                (the peer of the PKCS#11 key store)
 *   pkcs11       cimdd's key store, PKCS#11 backend, on the same key, opened
 *                with sessions=1 and with sessions=<cores>
 *   tpm2         cimdd's key store, TPM 2.0 backend, swtpm
 *   esapi        a raw ESAPI loop in this process on the same swtpm, once the
 *                key store is freed (one connection at a time): a primary and a
 *                P-256 ECDSA key made as ks_tpm2.c makes them, loaded once, then
 *                TPM2_Sign of a SHA-256 digest computed in software with a NULL
 *                hashcheck ticket (the peer of the TPM key store).  In steady
 *                state the key store sends the TPM exactly that one command per
 *                signature: its key stays loaded (ks_tpm2.c, tpm_load_ref), so
 *                what differs is the key store's own path, not the TPM's work
 *
 * each with one calling thread and with two (esapi: one).  Two threads share
 * one store, as the daemon's threads do: with one session the store serialises
 * them, with several it signs on as many sessions at once.  The sessions column
 * is what the store reports (key_store_sessions).  Every figure signs the same
 * 300-byte JWS signing input and checks the first signature of each thread with
 * OpenSSL, so a backend that fails fast cannot look fast.  Printed below the
 * table: each key store over its peer with one thread (issue 16's target: within
 * 10 %).  CIMD_BENCH_SECONDS sets the time per figure (default 3);
 * CIMD_BENCH_OUT, a directory for bench_sign.json (bench/out.h).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libp11.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "../tests/harness.h"
#include "out.h"

#define MAX_THREADS 2

static double seconds = 3.0;
static uint8_t msg[300];

struct esapi;

struct worker {
	pthread_t th;
	/* one of: */
	EVP_PKEY *soft;
	struct key_store *ks;
	struct ks_key *key;
	struct esapi *tpm;
	const json_t *jwk;     /* with soft or tpm: verify with this public key */
	pthread_mutex_t *lock; /* with soft: held around each signature (libp11) */
	/* results */
	long ops;
	int failed;
	int verified;
};

static int verify_raw(const json_t *jwk, const uint8_t *sig)
{
	EVP_PKEY *pk = NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t *der = NULL;
	size_t dn;
	int ok = 0;

	if (jwk_to_evp(jwk, &pk) == 0 && ecdsa_raw_to_der(sig, 32, &der, &dn) == 0 &&
	    EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
	    EVP_DigestVerify(md, der, dn, msg, sizeof(msg)) == 1)
		ok = 1;
	free(der);
	EVP_PKEY_free(pk);
	EVP_MD_CTX_free(md);
	return ok;
}

static void *run_soft(void *arg)
{
	struct worker *w = arg;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t sig[128];
	size_t n;
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < seconds * 1000) {
		int ok;
		n = sizeof(sig);
		if (w->lock != NULL)
			pthread_mutex_lock(w->lock);
		ok = EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, w->soft) == 1 &&
		     EVP_DigestSign(md, sig, &n, msg, sizeof(msg)) == 1;
		if (w->lock != NULL)
			pthread_mutex_unlock(w->lock);
		if (!ok) {
			w->failed = 1;
			break;
		}
		if (w->ops == 0 && w->jwk != NULL) {
			uint8_t raw[64];
			w->verified =
			    ecdsa_der_to_raw(sig, n, 32, raw) == 0 && verify_raw(w->jwk, raw);
		} else if (w->ops == 0) {
			EVP_MD_CTX *v = EVP_MD_CTX_new();
			w->verified =
			    EVP_DigestVerifyInit(v, NULL, EVP_sha256(), NULL, w->soft) == 1 &&
			    EVP_DigestVerify(v, sig, n, msg, sizeof(msg)) == 1;
			EVP_MD_CTX_free(v);
		}
		w->ops++;
	}
	EVP_MD_CTX_free(md);
	return NULL;
}

/* libp11 directly: its own context, session and login, the key found by CKA_ID. */
struct direct {
	PKCS11_CTX *ctx;
	PKCS11_SLOT *slots;
	unsigned int nslots;
};

static EVP_PKEY *direct_open(struct direct *d, const char *pin, const uint8_t *id, size_t id_len)
{
	PKCS11_SLOT *slot;
	PKCS11_KEY *keys;
	unsigned int i, n;

	memset(d, 0, sizeof(*d));
	if ((d->ctx = PKCS11_CTX_new()) == NULL || PKCS11_CTX_load(d->ctx, T_SOFTHSM_MODULE) < 0 ||
	    PKCS11_enumerate_slots(d->ctx, &d->slots, &d->nslots) < 0 ||
	    (slot = PKCS11_find_token(d->ctx, d->slots, d->nslots)) == NULL ||
	    PKCS11_open_session(slot, 0) < 0) {
		fprintf(stderr, "direct open failed\n");
		return NULL;
	}
	PKCS11_login(slot, 0, pin); /* CKR_USER_ALREADY_LOGGED_IN when a key store is open */
	if (PKCS11_enumerate_keys(slot->token, &keys, &n) < 0)
		return NULL;
	for (i = 0; i < n; i++)
		if (keys[i].id_len == id_len && memcmp(keys[i].id, id, id_len) == 0)
			return PKCS11_get_private_key(&keys[i]);
	return NULL;
}

static void direct_close(struct direct *d)
{
	if (d->slots != NULL)
		PKCS11_release_all_slots(d->ctx, d->slots, d->nslots);
	if (d->ctx != NULL)
		PKCS11_CTX_free(d->ctx);
}

static void *run_ks(void *arg)
{
	struct worker *w = arg;
	uint8_t sig[CIMD_SIG_MAX];
	size_t n;
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < seconds * 1000) {
		if (key_store_sign(w->ks, w->key, msg, sizeof(msg), sig, &n) < 0) {
			fprintf(stderr, "sign failed after %ld: %s\n", w->ops,
				key_store_errmsg(w->ks));
			w->failed = 1;
			break;
		}
		if (w->ops == 0) {
			json_t *jwk = ks_key_jwk(w->key);
			w->verified = verify_raw(jwk, sig);
			json_decref(jwk);
		}
		w->ops++;
	}
	return NULL;
}

/* Runs n workers at once; ops per second over all, or -1 on any failure. */
static double measure(struct worker *w, int n, void *(*fn)(void *))
{
	long ops = 0;
	int i, bad = 0;

	for (i = 0; i < n; i++) {
		w[i].ops = 0;
		w[i].failed = 0;
		w[i].verified = 0;
		pthread_create(&w[i].th, NULL, fn, &w[i]);
	}
	for (i = 0; i < n; i++) {
		pthread_join(w[i].th, NULL);
		ops += w[i].ops;
		bad |= w[i].failed || !w[i].verified;
	}
	return bad ? -1 : (double)ops / seconds;
}

/* ---- the TPM's peer: raw ESAPI in this process ---- */

struct esapi {
	TSS2_TCTI_CONTEXT *tcti;
	ESYS_CONTEXT *ectx;
	ESYS_TR primary, key;
	json_t *jwk;
};

/* The SRK and an ES256 client key, as ks_tpm2.c makes them (srk_template,
 * key_template): copied, not shared, so that the peer runs none of the key
 * store's code.  TPM 2.0 Part 2 §8.3 for the attributes. */
static void esapi_templates(TPM2B_PUBLIC *srk, TPM2B_PUBLIC *key)
{
	TPMT_PUBLIC *a = &srk->publicArea, *k = &key->publicArea;

	memset(srk, 0, sizeof(*srk));
	a->type = TPM2_ALG_ECC;
	a->nameAlg = TPM2_ALG_SHA256;
	a->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
			      TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
			      TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
	a->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
	a->parameters.eccDetail.symmetric.keyBits.aes = 128;
	a->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
	a->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
	a->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
	a->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
	a->unique.ecc.x.size = 32;
	a->unique.ecc.y.size = 32;

	memset(key, 0, sizeof(*key));
	k->type = TPM2_ALG_ECC;
	k->nameAlg = TPM2_ALG_SHA256;
	k->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
			      TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
			      TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_NODA;
	k->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
	k->parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
	k->parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
	k->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
	k->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
}

/* TPM2B_ECC_PARAMETERs left-padded to 32 bytes (RFC 7518 §6.2.1.2, §3.4). */
static int esapi_pad(const TPM2B_ECC_PARAMETER *a, const TPM2B_ECC_PARAMETER *b, uint8_t ret[64])
{
	if (a->size > 32 || b->size > 32)
		return -1;
	memset(ret, 0, 64);
	memcpy(ret + 32 - a->size, a->buffer, a->size);
	memcpy(ret + 64 - b->size, b->buffer, b->size);
	return 0;
}

/* Connects to tcti_conf, makes the SRK and a key, loads the key once. */
static int esapi_open(struct esapi *e, const char *tcti_conf)
{
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_PUBLIC srk, tmpl, *pub = NULL;
	TPM2B_PRIVATE *priv = NULL;
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION pcrs = {0};
	uint8_t xy[64];
	const char *what;
	TSS2_RC rc;

	memset(e, 0, sizeof(*e));
	e->primary = e->key = ESYS_TR_NONE;
	esapi_templates(&srk, &tmpl);
	if ((rc = Tss2_TctiLdr_Initialize(tcti_conf, &e->tcti)) != TSS2_RC_SUCCESS) {
		e->tcti = NULL;
		what = "TCTI";
	} else if ((rc = Esys_Initialize(&e->ectx, e->tcti, NULL)) != TSS2_RC_SUCCESS) {
		e->ectx = NULL;
		what = "Esys_Initialize";
	} else if ((rc = Esys_Startup(e->ectx, TPM2_SU_CLEAR)) != TSS2_RC_SUCCESS &&
		   rc != TPM2_RC_INITIALIZE) {
		what = "TPM2_Startup";
	} else if ((rc = Esys_CreatePrimary(e->ectx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD,
					    ESYS_TR_NONE, ESYS_TR_NONE, &sens, &srk, &outside,
					    &pcrs, &e->primary, NULL, NULL, NULL, NULL)) !=
		   TSS2_RC_SUCCESS) {
		e->primary = ESYS_TR_NONE;
		what = "TPM2_CreatePrimary";
	} else if ((rc = Esys_Create(e->ectx, e->primary, ESYS_TR_PASSWORD, ESYS_TR_NONE,
				     ESYS_TR_NONE, &sens, &tmpl, &outside, &pcrs, &priv, &pub, NULL,
				     NULL, NULL)) != TSS2_RC_SUCCESS) {
		what = "TPM2_Create";
	} else if ((rc = Esys_Load(e->ectx, e->primary, ESYS_TR_PASSWORD, ESYS_TR_NONE,
				   ESYS_TR_NONE, priv, pub, &e->key)) != TSS2_RC_SUCCESS) {
		e->key = ESYS_TR_NONE;
		what = "TPM2_Load";
	} else if (esapi_pad(&pub->publicArea.unique.ecc.x, &pub->publicArea.unique.ecc.y, xy) <
		       0 ||
		   jwk_new_ec(CIMD_ALG_ES256, xy, xy + 32, &e->jwk) < 0) {
		what = "public key";
	} else {
		what = NULL;
	}
	Esys_Free(pub);
	Esys_Free(priv);
	if (what != NULL)
		fprintf(stderr, "esapi: %s: %s\n", what, Tss2_RC_Decode(rc));
	return what != NULL ? -1 : 0;
}

static void esapi_close(struct esapi *e)
{
	if (e->ectx != NULL) {
		if (e->key != ESYS_TR_NONE)
			Esys_FlushContext(e->ectx, e->key);
		if (e->primary != ESYS_TR_NONE)
			Esys_FlushContext(e->ectx, e->primary);
		Esys_Finalize(&e->ectx);
	}
	if (e->tcti != NULL)
		Tss2_TctiLdr_Finalize(&e->tcti);
	json_decref(e->jwk);
	memset(e, 0, sizeof(*e));
}

/* What ks_tpm2.c's tpm_sign_once does per signature in steady state: SHA-256
 * in software, then TPM2_Sign with the key's own scheme and a NULL ticket
 * (TPM 2.0 Part 3 §20.2). */
static void *run_esapi(void *arg)
{
	struct worker *w = arg;
	struct esapi *e = w->tpm;
	TPM2B_DIGEST digest = {0};
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL};
	TPMT_TK_HASHCHECK null_ticket = {.tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL};
	TPMT_SIGNATURE *sig;
	uint8_t raw[64];
	unsigned int dlen;
	double t0 = t_now_ms();
	TSS2_RC rc;

	while (t_now_ms() - t0 < seconds * 1000) {
		sig = NULL;
		if (EVP_Digest(msg, sizeof(msg), digest.buffer, &dlen, EVP_sha256(), NULL) != 1) {
			w->failed = 1;
			break;
		}
		digest.size = (UINT16)dlen;
		rc = Esys_Sign(e->ectx, e->key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
			       &digest, &scheme, &null_ticket, &sig);
		if (rc != TSS2_RC_SUCCESS || sig->sigAlg != TPM2_ALG_ECDSA) {
			fprintf(stderr, "esapi: TPM2_Sign after %ld: %s\n", w->ops,
				Tss2_RC_Decode(rc));
			Esys_Free(sig);
			w->failed = 1;
			break;
		}
		if (w->ops == 0)
			w->verified = esapi_pad(&sig->signature.ecdsa.signatureR,
						&sig->signature.ecdsa.signatureS, raw) == 0 &&
				      verify_raw(w->jwk, raw);
		Esys_Free(sig);
		w->ops++;
	}
	return NULL;
}

/* ---- the figures ---- */

#define FAILED -1.0  /* measured, and some signature failed or did not verify */
#define NOT_RUN -2.0 /* not measured */
#define ROUNDS 3     /* rounds of each compared figure, in turn */

struct figure {
	const char *row;
	const char *note;
	int sessions;		  /* asked for, or as the store reports it; 0: none (software) */
	double rate[MAX_THREADS]; /* sig/s with 1 and 2 calling threads */
};

enum { F_OPENSSL, F_LIBP11, F_PKCS11_1, F_PKCS11_N, F_TPM2, F_ESAPI, F_COUNT };

/* Each key store over its peer, one calling thread. */
static const struct peer_ratio {
	int figure, peer;
} peer_ratios[] = {
    {F_PKCS11_1, F_LIBP11},
    {F_PKCS11_N, F_LIBP11},
    {F_TPM2, F_ESAPI},
};
#define PEER_TARGET 0.9 /* issue 16: within 10 % of the peer */

static double ratio(double v, double ref)
{
	return v < 0 || ref <= 0 ? FAILED : v / ref;
}

/*
 * A key store on conf, with ";sessions=N" appended when sessions > 0, and one
 * key: the one whose reference is in id (*id_len bytes) when *id_len > 0, else
 * a new one, whose reference is then kept in id (id_max bytes) and whose public
 * JWK in *ret_jwk (NULL: neither kept).  1 and 2 threads on the one store.
 */
static void store_figure(const char *conf, int sessions, uint8_t *id, size_t id_max, size_t *id_len,
			 json_t **ret_jwk, struct figure *f)
{
	struct worker w[MAX_THREADS];
	char c[1400], err[256] = "";
	const uint8_t *ref;
	size_t ref_len;
	int r;

	memset(w, 0, sizeof(w));
	f->rate[0] = f->rate[1] = FAILED; /* until measured */
	if (sessions > 0)
		snprintf(c, sizeof(c), "%s;sessions=%d", conf, sessions);
	else
		snprintf(c, sizeof(c), "%s", conf);
	if ((r = key_store_open(c, &w[0].ks, err, sizeof(err))) < 0)
		goto out;
	if (id != NULL && *id_len > 0)
		r = key_store_load(w[0].ks, CIMD_ALG_ES256, id, *id_len, &w[0].key);
	else
		r = key_store_generate(w[0].ks, CIMD_ALG_ES256, NULL, &w[0].key);
	if (r < 0) {
		snprintf(err, sizeof(err), "%s", key_store_errmsg(w[0].ks));
		goto out;
	}
	if (id != NULL && *id_len == 0) {
		ks_key_ref(w[0].key, &ref, &ref_len);
		if (ref_len <= id_max) {
			memcpy(id, ref, ref_len);
			*id_len = ref_len;
		}
		*ret_jwk = ks_key_jwk(w[0].key);
	}
	f->sessions = key_store_sessions(w[0].ks);
	w[1] = w[0];
	f->rate[0] = measure(w, 1, run_ks);
	f->rate[1] = measure(w, 2, run_ks);
out:
	if (r < 0)
		fprintf(stderr, "%s: %s: %s\n", f->row, c, err[0] ? err : cimd_strerror(r));
	ks_key_free(&w[0].key);
	key_store_free(&w[0].ks);
}

static void soft_figure(struct figure *f)
{
	struct worker w[MAX_THREADS];
	int i;

	memset(w, 0, sizeof(w));
	for (i = 0; i < MAX_THREADS; i++)
		w[i].soft = EVP_EC_gen("P-256");
	f->rate[0] = measure(w, 1, run_soft);
	f->rate[1] = measure(w, 2, run_soft);
	for (i = 0; i < MAX_THREADS; i++)
		EVP_PKEY_free(w[i].soft);
}

/* The key of id through libp11 directly, one context and session; libp11 is
 * not thread-safe, so two threads take turns under a mutex. */
static void direct_figure(const uint8_t *id, size_t id_len, const json_t *jwk, struct figure *f)
{
	struct worker w[MAX_THREADS];
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	struct direct dir;

	memset(w, 0, sizeof(w));
	if (jwk != NULL && (w[0].soft = direct_open(&dir, "123456", id, id_len)) != NULL) {
		w[0].jwk = jwk;
		w[0].lock = &lock;
		w[1] = w[0];
		f->rate[0] = measure(w, 1, run_soft);
		f->rate[1] = measure(w, 2, run_soft);
	}
	EVP_PKEY_free(w[0].soft);
	direct_close(&dir);
}

/* Adds one round's figure into f, of rounds: each round measures for
 * seconds / rounds, so the sum of the means is the mean rate. */
static void add_round(struct figure *f, const struct figure *r, int rounds)
{
	int k;

	f->sessions = r->sessions;
	for (k = 0; k < 2; k++) {
		if (f->rate[k] == FAILED || r->rate[k] < 0)
			f->rate[k] =
			    r->rate[k] == NOT_RUN && f->rate[k] != FAILED ? NOT_RUN : FAILED;
		else
			f->rate[k] = (f->rate[k] == NOT_RUN ? 0 : f->rate[k]) + r->rate[k] / rounds;
	}
}

/* The key store on swtpm, then, once it is freed, raw ESAPI on the same swtpm. */
static void tpm_figures(struct figure *store, struct figure *raw)
{
	static const char prefix[] = "tpm2:tcti=";
	struct t_swtpm s;
	struct worker w;
	struct esapi e;

	memset(&e, 0, sizeof(e));
	if (t_swtpm_start(&s) < 0)
		return;
	store_figure(s.conf, 0, NULL, 0, NULL, NULL, store);
	memset(&w, 0, sizeof(w));
	if (strncmp(s.conf, prefix, strlen(prefix)) == 0 &&
	    esapi_open(&e, s.conf + strlen(prefix)) == 0) {
		w.tpm = &e;
		w.jwk = e.jwk;
		raw->rate[0] = measure(&w, 1, run_esapi);
	}
	esapi_close(&e);
	t_swtpm_kill(&s);
}

static void print_cell(double v, double ref)
{
	if (v == NOT_RUN)
		printf("   %9s %5s", "-", "-");
	else if (v < 0)
		printf("   %15s", "FAILED");
	else
		printf("   %9.0f %5.3f", v, v / ref);
}

static void print_figures(const struct figure *f, int cores)
{
	size_t i;
	int j, k;

	printf("ES256 signatures per second, %.1f s per figure, %d cores; ratio = figure / "
	       "openssl\n",
	       seconds, cores);
	printf("%-8s %8s   %15s   %15s\n", "", "", "1 thread", "2 threads");
	printf("%-8s %8s   %9s %5s   %9s %5s\n", "", "sessions", "sig/s", "ratio", "sig/s",
	       "ratio");
	for (k = 0; k < F_COUNT; k++) {
		if (f[k].sessions > 0)
			printf("%-8s %8d", f[k].row, f[k].sessions);
		else
			printf("%-8s %8s", f[k].row, "-");
		for (j = 0; j < MAX_THREADS; j++)
			print_cell(f[k].rate[j], f[F_OPENSSL].rate[j]);
		printf("   %s\n", f[k].note);
	}
	printf("\n1 thread, key store / its peer (target >= %.2f):\n", PEER_TARGET);
	for (i = 0; i < sizeof(peer_ratios) / sizeof(peer_ratios[0]); i++) {
		const struct figure *a = &f[peer_ratios[i].figure], *b = &f[peer_ratios[i].peer];
		double r = ratio(a->rate[0], b->rate[0]);
		char name[64];

		snprintf(name, sizeof(name), "%s sessions %d / %s", a->row, a->sessions, b->row);
		if (r < 0)
			printf("  %-32s %8s\n", name, "-");
		else
			printf("  %-32s %8.3f\n", name, r);
	}
}

/* bench_sign.json: a row per figure and calling threads, and the ratios. */
static void write_figures(const struct figure *f, int cores)
{
	json_t *root = json_object(), *rows = json_array(), *ratios = json_array();
	size_t i;
	int j, k;

	for (k = 0; k < F_COUNT; k++)
		for (j = 0; j < MAX_THREADS; j++) {
			if (f[k].rate[j] == NOT_RUN)
				continue;
			json_array_append_new(
			    rows,
			    json_pack("{s:s, s:s, s:o, s:i, s:o, s:o, s:b}", "row", f[k].row,
				      "path", f[k].note, "sessions",
				      f[k].sessions > 0 ? json_integer(f[k].sessions) : json_null(),
				      "threads", j + 1, "sig_per_s", bench_num(f[k].rate[j]),
				      "ratio_to_openssl",
				      bench_num(ratio(f[k].rate[j], f[F_OPENSSL].rate[j])),
				      "failed", f[k].rate[j] == FAILED));
		}
	for (i = 0; i < sizeof(peer_ratios) / sizeof(peer_ratios[0]); i++) {
		const struct figure *a = &f[peer_ratios[i].figure], *b = &f[peer_ratios[i].peer];

		json_array_append_new(ratios, json_pack("{s:s, s:i, s:s, s:i, s:o, s:f}", "row",
							a->row, "sessions", a->sessions, "peer",
							b->row, "threads", 1, "ratio",
							bench_num(ratio(a->rate[0], b->rate[0])),
							"target_min", PEER_TARGET));
	}
	json_object_set_new(root, "seconds_per_figure", json_real(seconds));
	json_object_set_new(root, "cores", json_integer(cores));
	json_object_set_new(root, "message_bytes", json_integer(sizeof(msg)));
	json_object_set_new(root, "figures", rows);
	json_object_set_new(root, "peer_ratios", ratios);
	bench_out_write("bench_sign", root);
}

int main(void)
{
	struct figure f[F_COUNT] = {
	    [F_OPENSSL] = {"openssl", "software key in process (the machine's limit)", 0, {0}},
	    [F_LIBP11] = {"libp11",
			  "libp11 -> SoftHSM2 directly: no worker, no deadline (peer)",
			  0,
			  {0}},
	    [F_PKCS11_1] = {"pkcs11",
			    "key store -> SoftHSM2, sessions=1 (one shared store)",
			    0,
			    {0}},
	    [F_PKCS11_N] = {"pkcs11", "key store -> SoftHSM2, sessions=<cores>", 0, {0}},
	    [F_TPM2] = {"tpm2", "key store -> ESAPI -> swtpm (one shared store)", 0, {0}},
	    [F_ESAPI] = {"esapi", "TPM2_Sign loop in process -> same swtpm (peer)", 0, {0}},
	};
	struct t_softhsm h;
	uint8_t id[64];
	size_t id_len = 0;
	json_t *jwk = NULL;
	int cores = (int)sysconf(_SC_NPROCESSORS_ONLN), k, bad = 0;

	signal(SIGPIPE, SIG_IGN);
	if (getenv("CIMD_BENCH_SECONDS") != NULL)
		seconds = atof(getenv("CIMD_BENCH_SECONDS"));
	if (seconds <= 0)
		seconds = 3.0;
	if (cores < 1)
		cores = 1;
	memset(msg, 'a', sizeof(msg));
	for (k = 0; k < F_COUNT; k++)
		f[k].rate[0] = f[k].rate[1] = NOT_RUN;
	/* The sessions asked for; a key store's row shows what it reports. */
	f[F_LIBP11].sessions = f[F_PKCS11_1].sessions = f[F_TPM2].sessions = 1;
	f[F_ESAPI].sessions = 1;
	f[F_PKCS11_N].sessions = cores;

	soft_figure(&f[F_OPENSSL]);
	/* The figures compared are measured in ROUNDS rounds, each of the
	 * peer's and ours in turn: on a shared machine whose speed drifts
	 * over seconds, a ratio of figures taken minutes apart says more about
	 * the drift than about the code.  One key, made by the first store,
	 * signed with by every PKCS#11 figure; one store or libp11 context on
	 * the token at a time (ks.h: -EBUSY). */
	seconds /= ROUNDS;
	if (t_softhsm_init(&h, "bench", "123456") == 0) {
		for (k = 0; k < ROUNDS; k++) {
			struct figure r = f[F_PKCS11_1];

			store_figure(h.conf, 1, id, sizeof(id), &id_len, jwk ? NULL : &jwk, &r);
			add_round(&f[F_PKCS11_1], &r, ROUNDS);
			if (id_len == 0)
				break;
			r = f[F_PKCS11_N];
			store_figure(h.conf, cores, id, sizeof(id), &id_len, NULL, &r);
			add_round(&f[F_PKCS11_N], &r, ROUNDS);
			r = f[F_LIBP11];
			direct_figure(id, id_len, jwk, &r);
			add_round(&f[F_LIBP11], &r, ROUNDS);
		}
	}
	json_decref(jwk);
	for (k = 0; k < ROUNDS; k++) {
		struct figure st = f[F_TPM2], raw = f[F_ESAPI];

		tpm_figures(&st, &raw);
		add_round(&f[F_TPM2], &st, ROUNDS);
		add_round(&f[F_ESAPI], &raw, ROUNDS);
	}
	seconds *= ROUNDS;
	t_cleanup();

	print_figures(f, cores);
	write_figures(f, cores);
	for (k = 0; k < F_COUNT; k++)
		bad |= f[k].rate[0] < 0 || (f[k].rate[1] < 0 && f[k].rate[1] != NOT_RUN);
	return bad ? 1 : 0;
}
