/*
 * bench_sign.c — ES256 signatures per second, measured side by side in one run:
 *
 *   openssl      EVP_DigestSign on a software P-256 key in this process: the
 *                software limit of this machine, and the reference for ratios
 *   libp11       the same SoftHSM2 key through libp11 and OpenSSL directly, as a
 *                hand-rolled integration would: no worker thread, no deadline
 *   pkcs11       cimdd's key store, PKCS#11 backend, SoftHSM2 token
 *   tpm2         cimdd's key store, TPM 2.0 backend, swtpm
 *
 * each with one thread and with two.  A key store is one serial device (libp11
 * and ESAPI are not thread-safe), so two threads share one store, as the daemon
 * does; the second column shows what contention costs, not parallel hardware.  Every figure signs
 * the same 300-byte JWS signing input and checks the first signature of each thread with OpenSSL,
 * so a backend that fails fast cannot look fast.  CIMD_BENCH_SECONDS sets the time per figure
 * (default 3).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libp11.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "../tests/harness.h"

#define MAX_THREADS 2

static double seconds = 3.0;
static uint8_t msg[300];

struct worker {
	pthread_t th;
	/* one of: */
	EVP_PKEY *soft;
	struct key_store *ks;
	struct ks_key *key;
	const json_t *jwk;     /* with soft: verify with this public key instead */
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

static void row(const char *name, const char *note, double v1, double v2, double ref1, double ref2)
{
	char a[32], b[32];

	if (v1 < 0)
		snprintf(a, sizeof(a), "%12s", "FAILED");
	else
		snprintf(a, sizeof(a), "%9.0f %5.3f", v1, v1 / ref1);
	if (v2 < 0)
		snprintf(b, sizeof(b), "%12s", "FAILED");
	else
		snprintf(b, sizeof(b), "%9.0f %5.3f", v2, v2 / ref2);
	printf("%-8s %s   %s   %s\n", name, a, b, note);
}

int main(void)
{
	struct worker w[MAX_THREADS];
	struct t_softhsm h;
	struct t_swtpm s;
	char err[256];
	double soft1, soft2, p1 = -1, p2 = -1, t1 = -1, t2 = -1, d1 = -1, d2 = -1;
	struct direct dir;
	pthread_mutex_t dlock = PTHREAD_MUTEX_INITIALIZER;
	uint8_t id[64];
	size_t id_len = 0;
	json_t *jwk;
	const uint8_t *ref;
	size_t ref_len;
	int i;

	signal(SIGPIPE, SIG_IGN);
	if (getenv("CIMD_BENCH_SECONDS") != NULL)
		seconds = atof(getenv("CIMD_BENCH_SECONDS"));
	if (seconds <= 0)
		seconds = 3.0;
	memset(msg, 'a', sizeof(msg));

	memset(w, 0, sizeof(w));
	for (i = 0; i < MAX_THREADS; i++)
		w[i].soft = EVP_EC_gen("P-256");
	soft1 = measure(w, 1, run_soft);
	soft2 = measure(w, 2, run_soft);
	for (i = 0; i < MAX_THREADS; i++)
		EVP_PKEY_free(w[i].soft);

	/* PKCS#11 through the key store; two threads share it, as the daemon does. */
	memset(w, 0, sizeof(w));
	jwk = NULL;
	if (t_softhsm_init(&h, "bench", "123456") == 0 &&
	    key_store_open(h.conf, &w[0].ks, err, sizeof(err)) == 0 &&
	    key_store_generate(w[0].ks, CIMD_ALG_ES256, NULL, &w[0].key) == 0) {
		ks_key_ref(w[0].key, &ref, &ref_len);
		memcpy(id, ref, ref_len < sizeof(id) ? ref_len : sizeof(id));
		id_len = ref_len;
		jwk = ks_key_jwk(w[0].key);
		w[1] = w[0];
		p1 = measure(w, 1, run_ks);
		p2 = measure(w, 2, run_ks);
	} else {
		fprintf(stderr, "pkcs11: %s\n", err);
	}
	ks_key_free(&w[0].key);
	key_store_free(&w[0].ks);

	/* The peer: the same key through libp11 directly, one context; libp11 is not
	 * thread-safe, so two threads take turns under a mutex. */
	memset(w, 0, sizeof(w));
	if (jwk != NULL && (w[0].soft = direct_open(&dir, "123456", id, id_len)) != NULL) {
		w[0].jwk = jwk;
		w[0].lock = &dlock;
		w[1] = w[0];
		d1 = measure(w, 1, run_soft);
		d2 = measure(w, 2, run_soft);
	}
	EVP_PKEY_free(w[0].soft);
	direct_close(&dir);
	json_decref(jwk);

	/* TPM: one TPM is one serial device; two threads share the key store. */
	memset(w, 0, sizeof(w));
	if (t_swtpm_start(&s) == 0 && key_store_open(s.conf, &w[0].ks, err, sizeof(err)) == 0 &&
	    key_store_generate(w[0].ks, CIMD_ALG_ES256, NULL, &w[0].key) == 0) {
		w[1].ks = w[0].ks;
		w[1].key = w[0].key;
		t1 = measure(w, 1, run_ks);
		t2 = measure(w, 2, run_ks);
	} else {
		fprintf(stderr, "tpm2: %s\n", err);
	}
	ks_key_free(&w[0].key);
	key_store_free(&w[0].ks);
	t_swtpm_kill(&s);
	t_cleanup();

	printf("ES256 signatures per second, %.1f s per figure; ratio = figure / openssl\n",
	       seconds);
	printf("%-8s %15s   %15s\n", "", "1 thread", "2 threads");
	printf("%-8s %9s %5s   %9s %5s\n", "", "sig/s", "ratio", "sig/s", "ratio");
	row("openssl", "software key in process (the machine's limit)", soft1, soft2, soft1, soft2);
	row("libp11", "libp11 -> SoftHSM2 directly: no worker, no deadline (peer)", d1, d2, soft1,
	    soft2);
	row("pkcs11", "key store -> libp11 -> SoftHSM2 (one shared store)", p1, p2, soft1, soft2);
	row("tpm2", "key store -> ESAPI -> swtpm (one shared store)", t1, t2, soft1, soft2);
	return p1 < 0 || p2 < 0 || d1 < 0 || t1 < 0 || t2 < 0 ? 1 : 0;
}
