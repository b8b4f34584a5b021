/*
 * test_tpm2.c — the TPM 2.0 backend against a real swtpm on fresh ports in a
 * fresh directory: the key store contract for every algorithm, errors, and the
 * faults: a TPM that is killed answers "backend unavailable" within 2 seconds,
 * a TPM that hangs likewise, and signing resumes by itself when it is back.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static void test_errors(const struct t_swtpm *s)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL, *bad = NULL;
	const uint8_t *ref;
	uint8_t copy[CIMD_KEYREF_MAX];
	char errbuf[256];
	size_t len;
	int r;

	r = key_store_open("tpm2:parent=0x81000001", &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_ECONFIG, "tpm2 without tcti: %s", errbuf);
	r = key_store_open("tpm2:tcti=device:/dev/null;parent=0x40000001", &ks, errbuf,
			   sizeof(errbuf));
	t_ok(r == -CIMD_ECONFIG, "parent that is not persistent: %s", errbuf);
	r = key_store_open("tpm2:tcti=swtpm:host=127.0.0.1,port=1", &ks, errbuf, sizeof(errbuf));
	t_ok(r == -CIMD_EUNAVAILABLE, "no TPM at the address: %s (%s)", cimd_strerror(r), errbuf);

	if (!t_ok(key_store_open(s->conf, &ks, errbuf, sizeof(errbuf)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0,
		  "tpm2 key for error tests"))
		goto out;
	ks_key_ref(key, &ref, &len);
	memcpy(copy, ref, len);
	r = key_store_load(ks, CIMD_ALG_ES256, copy, len - 1, &bad);
	t_ok(r == -CIMD_ENOKEY, "truncated reference: %s", cimd_strerror(r));
	/* Flip a byte inside the wrapped private area: the TPM's integrity check
	 * (Part 1 §23.7) must refuse it. */
	copy[len - 10] ^= 0x55;
	r = key_store_load(ks, CIMD_ALG_ES256, copy, len, &bad);
	t_ok(r == -CIMD_ENOKEY, "tampered private blob is refused by the TPM: %s (%s)",
	     cimd_strerror(r), key_store_errmsg(ks));
	copy[len - 10] ^= 0x55;
	r = key_store_load(ks, CIMD_ALG_ES384, copy, len, &bad);
	t_ok(r == -CIMD_EALG, "ES256 key loaded as ES384: %s", cimd_strerror(r));
out:
	ks_key_free(&bad);
	ks_key_free(&key);
	key_store_free(&ks);
}

static void test_faults(struct t_swtpm *s)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	json_t *jwk = NULL;
	char errbuf[256], *jws = NULL;
	uint8_t *payload = NULL, sig[CIMD_SIG_MAX];
	size_t plen, slen;
	double t0, dt;
	int r;

	if (!t_ok(key_store_open(s->conf, &ks, errbuf, sizeof(errbuf)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0,
		  "faults: key store and key"))
		goto out;
	jwk = ks_key_jwk(key);
	t_ok(key_store_sign(ks, key, (const uint8_t *)"a", 1, sig, &slen) == 0, "faults: signs");

	/* Killed TPM. */
	t_swtpm_kill(s);
	t0 = t_now_ms();
	r = key_store_sign(ks, key, (const uint8_t *)"a", 1, sig, &slen);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 2000, "killed TPM: %s after %.0f ms (%s)",
	     cimd_strerror(r), dt, key_store_errmsg(ks));
	t0 = t_now_ms();
	r = key_store_sign(ks, key, (const uint8_t *)"a", 1, sig, &slen);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 2000, "still gone: %s after %.0f ms", cimd_strerror(r),
	     dt);
	if (!t_ok(t_swtpm_restart(s) == 0, "swtpm restarted on port %d with its state", s->port))
		goto out;
	r = jws_sign(ks, key, NULL, (const uint8_t *)"b", 1, &jws);
	t_ok(r == 0 && jws_verify(jws, jwk, NULL, &payload, &plen) == 0,
	     "TPM back: the same key store signs again with the same key (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");

	/* Hung TPM: it accepts the connection but never answers. */
	kill(s->pid, SIGSTOP);
	t0 = t_now_ms();
	r = key_store_sign(ks, key, (const uint8_t *)"c", 1, sig, &slen);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 2000, "hung TPM: %s after %.0f ms (%s)",
	     cimd_strerror(r), dt, key_store_errmsg(ks));
	t0 = t_now_ms();
	r = key_store_sign(ks, key, (const uint8_t *)"c", 1, sig, &slen);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 100, "still hung: %s at once (%.0f ms: %s)",
	     cimd_strerror(r), dt, key_store_errmsg(ks));
	kill(s->pid, SIGCONT);
	/* It recovers by itself: no reopen, no restart of anything of ours. */
	for (t0 = t_now_ms(); t_now_ms() - t0 < 5000; usleep(50000))
		if ((r = key_store_sign(ks, key, (const uint8_t *)"d", 1, sig, &slen)) == 0)
			break;
	t_ok(r == 0, "TPM answers again: signing resumes after %.0f ms (%s)", t_now_ms() - t0,
	     r < 0 ? key_store_errmsg(ks) : "ok");
out:
	free(jws);
	free(payload);
	json_decref(jwk);
	ks_key_free(&key);
	key_store_free(&ks);
}

/* Our transient objects flushed behind our back (as a TPM reset the TCTI did
 * not see would do): the next call reconnects and signs. */
static void test_stale_handles(const struct t_swtpm *s)
{
	struct key_store *ks = NULL, *other = NULL;
	struct ks_key *key = NULL;
	uint8_t sig[CIMD_SIG_MAX];
	char err[256];
	size_t n;
	int r;

	if (!t_ok(key_store_open(s->conf, &ks, err, sizeof(err)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0 &&
		      key_store_sign(ks, key, (const uint8_t *)"a", 1, sig, &n) == 0,
		  "stale: key loaded and signing"))
		goto out;
	r = key_store_open(s->conf, &other, err, sizeof(err));
	t_ok(r == -EBUSY, "a second key store on the same TPM is refused: %s", err);
	t_ok(t_sh("TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_flushcontext -t", s->port) ==
		 0,
	     "tpm2_flushcontext -t flushed every transient object");
	r = key_store_sign(ks, key, (const uint8_t *)"b", 1, sig, &n);
	t_ok(r == 0, "after the flush the key store reconnects and signs (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
out:
	ks_key_free(&key);
	key_store_free(&ks);
	key_store_free(&other);
}

struct gen_arg {
	struct key_store *ks;
	int r;
	double ms;
};

static void *gen_thread(void *p)
{
	struct gen_arg *a = p;
	struct ks_key *k = NULL;
	double t0 = t_now_ms();

	a->r = key_store_generate(a->ks, CIMD_ALG_ES256, NULL, &k);
	a->ms = t_now_ms() - t0;
	ks_key_free(&k);
	return NULL;
}

/* The deadline covers waiting for other callers: while one thread's key
 * generation waits on a hung TPM, another thread's signing still answers
 * within its own timeout-ms. */
static void test_deadline_covers_lock(struct t_swtpm *s)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL;
	struct gen_arg ga = {0};
	pthread_t th;
	uint8_t sig[CIMD_SIG_MAX];
	char conf[300], err[256];
	size_t n;
	double t0, dt;
	int r;

	snprintf(conf, sizeof(conf), "%s;timeout-ms=300", s->conf);
	if (!t_ok(key_store_open(conf, &ks, err, sizeof(err)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0,
		  "deadline: key store with timeout-ms=300 (%s)", err))
		goto out;
	kill(s->pid, SIGSTOP);
	ga.ks = ks;
	pthread_create(&th, NULL, gen_thread, &ga);
	usleep(100000);
	t0 = t_now_ms();
	r = key_store_sign(ks, key, (const uint8_t *)"a", 1, sig, &n);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 1000,
	     "sign during a hung generate: %s after %.0f ms (timeout-ms 300)", cimd_strerror(r),
	     dt);
	kill(s->pid, SIGCONT);
	pthread_join(th, NULL);
	t_ok(ga.r == 0, "the generate finishes once the TPM answers (%.0f ms)", ga.ms);
out:
	ks_key_free(&key);
	key_store_free(&ks);
}

int main(void)
{
	struct t_swtpm s;
	int r;

	signal(SIGPIPE, SIG_IGN);
	r = t_swtpm_start(&s);
	if (!t_ok(r == 0, "swtpm on port %d in %s (%s)", s.port, s.dir, cimd_strerror(r)))
		return t_done();
	t_keystore_roundtrip(s.conf, CIMD_ALG_ES256);
	t_keystore_roundtrip(s.conf, CIMD_ALG_ES384);
	t_keystore_roundtrip(s.conf, CIMD_ALG_PS256);
	t_keystore_batch(s.conf);
	test_errors(&s);
	test_stale_handles(&s);
	test_deadline_covers_lock(&s);
	test_faults(&s);
	t_swtpm_kill(&s);
	return t_done();
}
