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

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

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
	{
		char conf[400];

		snprintf(conf, sizeof(conf), "%s;sessions=2", s->conf);
		r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
		t_ok(r == -CIMD_ECONFIG && strstr(errbuf, "one serial device"),
		     "sessions=2 on a TPM is refused: %s", errbuf);
		snprintf(conf, sizeof(conf), "%s;sessions=1", s->conf);
		r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
		t_ok(r == 0 && key_store_sessions(ks) == 1, "sessions=1 on a TPM (%s)", errbuf);
		key_store_free(&ks);
	}

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

/* What reconciliation relies on (service/keys.c, docs/custody.md
 * "Reconciliation"): a TPM holds no keys, so its listing is empty and says
 * nothing; a blob is checked without the TPM as load checks it; a blob whose
 * parent changed does not load. */
static void test_reconcile_api(struct t_swtpm *s)
{
	struct key_store *ks = NULL;
	struct ks_key *key = NULL, *ak = NULL, *again = NULL;
	struct ks_ref *refs = NULL;
	uint8_t copy[CIMD_KEYREF_MAX];
	const uint8_t *ref;
	size_t len, n = 7;
	char err[256], cmd[700];
	int r;

	if (!t_ok(key_store_open(s->conf, &ks, err, sizeof(err)) == 0 &&
		      key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0 &&
		      key_store_generate_attest(ks, "ak", &ak) == 0,
		  "reconcile: key store, a key and an AK"))
		goto out;
	t_ok(key_store_holds_keys(ks) == 0, "reconcile: a TPM holds no keys (its listing proves "
					    "nothing)");
	r = key_store_list(ks, 100, &refs, &n);
	t_ok(r == 0 && n == 0, "reconcile: and lists none (%zu)", n);
	ks_key_ref(key, &ref, &len);
	memcpy(copy, ref, len);
	t_ok(key_store_ref_check(ks, CIMD_ALG_ES256, copy, len) == 0,
	     "reconcile: a blob cimdd made checks out without the TPM");
	r = key_store_ref_check(ks, CIMD_ALG_ES256, copy, len - 1);
	t_ok(r == -CIMD_ENOKEY && key_store_load(ks, CIMD_ALG_ES256, copy, len - 1, &again) == r,
	     "reconcile: a truncated blob is malformed, as load says: %s", cimd_strerror(r));
	r = key_store_ref_check(ks, CIMD_ALG_PS256, copy, len);
	t_ok(r == -CIMD_EALG && key_store_load(ks, CIMD_ALG_PS256, copy, len, &again) == r,
	     "reconcile: an ES256 blob checked as PS256 is another algorithm's, as load says: %s",
	     cimd_strerror(r));
	t_ok(key_store_ref_check(ks, (enum cimd_alg)99, copy, len) == -CIMD_EALG,
	     "reconcile: an unknown algorithm");
	ks_key_ref(ak, &ref, &len);
	t_ok(key_store_ref_check(ks, CIMD_ALG_ES256, ref, len) == 0,
	     "reconcile: an AK's blob checks out as ES256");
	ks_key_ref(key, &ref, &len);
	r = key_store_destroy_ref(ks, ref, len);
	t_ok(r == 0, "reconcile: destroy by reference: the blob is flushed, nothing else (%s)",
	     cimd_strerror(r));
	t_ok(key_store_destroy_ref(ks, copy, 3) == -CIMD_ENOKEY,
	     "reconcile: destroy of a malformed reference: no key");
	/* A new owner seed: every blob made before is refused by TPM2_Load, while
	 * the check without the TPM still passes (hence the sample loads). */
	key_store_free(&ks);
	t_swtpm_kill(s);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'/*", s->dir);
	if (!t_ok(system(cmd) == 0 && t_swtpm_restart(s) == 0, "reconcile: the TPM cleared"))
		goto out;
	if (!t_ok(key_store_open(s->conf, &ks, err, sizeof(err)) == 0,
		  "reconcile: key store on the cleared TPM (%s)", err))
		goto out;
	t_ok(key_store_ref_check(ks, CIMD_ALG_ES256, copy, len) == 0,
	     "reconcile: the old blob still checks out without the TPM");
	r = key_store_load(ks, CIMD_ALG_ES256, copy, len, &again);
	t_ok(r == -CIMD_ENOKEY, "reconcile: but the cleared TPM does not load it: %s (%s)",
	     cimd_strerror(r), key_store_errmsg(ks));
out:
	ks_refs_free(&refs, n);
	ks_key_free(&again);
	ks_key_free(&ak);
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

/* Whether tpm2-tools lists an NV index at handle on this TPM. */
static int nv_listed(const struct t_swtpm *s, unsigned handle)
{
	return t_sh("TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_getcap handles-nv-index "
		    "| grep -qix -- '- 0x%x'",
		    s->port, handle) == 0;
}

/* The key store on conf with nv-counter=handle appended (handle 0: the default). */
static int counter_open(const struct t_swtpm *s, unsigned handle, struct key_store **ret_ks)
{
	char conf[300], err[256];
	int r;

	if (handle != 0)
		snprintf(conf, sizeof(conf), "%s;nv-counter=0x%08x", s->conf, handle);
	else
		snprintf(conf, sizeof(conf), "%s", s->conf);
	if ((r = key_store_open(conf, ret_ks, err, sizeof(err))) < 0)
		printf("# key_store_open(%s): %s\n", conf, err);
	return r;
}

/* Reads the counter of nv-counter=handle in a key store of its own. */
static int counter_read_at(const struct t_swtpm *s, unsigned handle, uint64_t *ret_value)
{
	struct key_store *ks = NULL;
	int r;

	if ((r = counter_open(s, handle, &ks)) == 0 &&
	    (r = key_store_counter_read(ks, ret_value)) < 0)
		printf("# counter 0x%08x: %s\n", handle, key_store_errmsg(ks));
	key_store_free(&ks);
	return r;
}

/*
 * The monotonic counter (an NV counter index): defined by the first read,
 * incremented by one, unchanged by reads, by a new key store and by a TPM
 * restart; a second index counts on its own; an ordinary index at the handle is
 * refused and left alone; a hung TPM answers CIMD_EUNAVAILABLE within the
 * deadline, and the counter works again when the TPM does.
 */
static void test_counter(struct t_swtpm *s)
{
	const unsigned nv_a = 0x0100C1DD, nv_b = 0x0100C1DE, nv_ordinary = 0x0100C1E5;
	struct key_store *ks = NULL;
	uint64_t v0 = 0, v1 = 0, v = 0, b0 = 0, b1 = 0, sentinel = 0xdeadbeef;
	char err[256], out[2048];
	double t0, dt;
	int r;

	r = key_store_open("tpm2:tcti=device:/dev/null;nv-counter=0x81000001", &ks, err,
			   sizeof(err));
	t_ok(r == -CIMD_ECONFIG && strstr(err, "nv-counter") != NULL,
	     "counter: a persistent handle as nv-counter is refused: %s", err);
	r = key_store_open("tpm2:tcti=device:/dev/null;nv-counter=0x02000000", &ks, err,
			   sizeof(err));
	t_ok(r == -CIMD_ECONFIG && strstr(err, "nv-counter") != NULL,
	     "counter: a handle outside 0x01000000..0x01FFFFFF is refused: %s", err);
	r = key_store_open("tpm2:tcti=device:/dev/null;nv-counter=0x01C1DD0G", &ks, err,
			   sizeof(err));
	t_ok(r == -CIMD_ECONFIG && strstr(err, "nv-counter") != NULL,
	     "counter: a malformed nv-counter is refused: %s", err);
	key_store_free(&ks);

	t_ok(!nv_listed(s, nv_a), "counter: no NV index at 0x%08x before the first read", nv_a);
	if (!t_ok(counter_open(s, 0, &ks) == 0, "counter: key store with the default nv-counter"))
		goto out;
	r = key_store_counter_read(ks, &v0);
	t_ok(r == 0, "counter: the first read defines the index and gives %llu (%s)",
	     (unsigned long long)v0, r < 0 ? key_store_errmsg(ks) : "ok");
	t_ok(nv_listed(s, nv_a), "counter: tpm2_getcap lists NV index 0x%08x now", nv_a);
	/* Attributes as tpm2-tools reads them (TPMA_NV, Part 2): a counter (nt=0x1)
	 * of 8 bytes, owner read and write, noDA, written by its first increment. */
	r = t_sh_out(out, sizeof(out),
		     "TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_nvreadpublic 0x%x",
		     s->port, nv_a);
	t_ok(r == 0 && strstr(out, "nt=0x1") && strstr(out, "ownerwrite") &&
		 strstr(out, "ownerread") && strstr(out, "authread") && strstr(out, "no_da") &&
		 strstr(out, "written") && strstr(out, "size: 8") && strstr(out, "sha256"),
	     "counter: tpm2_nvreadpublic shows an 8-byte sha256 counter, owner read/write, "
	     "authread, noDA, written");
	r = key_store_counter_increment(ks, &v1);
	t_ok(r == 0 && v1 == v0 + 1, "counter: increment gives %llu = %llu + 1 (%s)",
	     (unsigned long long)v1, (unsigned long long)v0, r < 0 ? key_store_errmsg(ks) : "ok");
	r = key_store_counter_read(ks, &v);
	t_ok(r == 0 && v == v1, "counter: a read gives the incremented value %llu (%llu)",
	     (unsigned long long)v1, (unsigned long long)v);
	r = key_store_counter_read(ks, &v);
	t_ok(r == 0 && v == v1, "counter: a second read does not advance it (%llu)",
	     (unsigned long long)v);

	key_store_free(&ks);
	v = 0;
	r = counter_open(s, 0, &ks) == 0 ? key_store_counter_read(ks, &v) : -1;
	t_ok(r == 0 && v == v1, "counter: a new key store reads %llu (%llu)",
	     (unsigned long long)v1, (unsigned long long)v);

	/* The value is in the TPM's NV: it survives the TPM's power cycle. */
	t_swtpm_kill(s);
	if (!t_ok(t_swtpm_restart(s) == 0, "counter: swtpm restarted on its state"))
		goto out;
	v = 0;
	for (t0 = t_now_ms(); t_now_ms() - t0 < 5000; usleep(50000))
		if ((r = key_store_counter_read(ks, &v)) == 0)
			break;
	t_ok(r == 0 && v == v1,
	     "counter: after the TPM restart the same key store reads %llu (%llu)",
	     (unsigned long long)v1, (unsigned long long)v);
	key_store_free(&ks);

	/* A second index counts on its own. */
	r = counter_open(s, nv_b, &ks) == 0 ? key_store_counter_read(ks, &b0) : -1;
	t_ok(r == 0, "counter: a second index 0x%08x reads %llu (%s)", nv_b, (unsigned long long)b0,
	     r < 0 ? key_store_errmsg(ks) : "ok");
	r = key_store_counter_increment(ks, &b1);
	if (r == 0)
		r = key_store_counter_increment(ks, &b1);
	t_ok(r == 0 && b1 == b0 + 2, "counter: 0x%08x incremented twice gives %llu", nv_b,
	     (unsigned long long)b1);
	key_store_free(&ks);
	v = 0;
	r = counter_read_at(s, nv_a, &v);
	t_ok(r == 0 && v == v1, "counter: 0x%08x is unchanged by them (%llu)", nv_a,
	     (unsigned long long)v);
	r = counter_open(s, nv_a, &ks) == 0 ? key_store_counter_increment(ks, &v) : -1;
	t_ok(r == 0 && v == v1 + 1, "counter: 0x%08x incremented gives %llu", nv_a,
	     (unsigned long long)v);
	v1 = v;
	key_store_free(&ks);
	v = 0;
	r = counter_read_at(s, nv_b, &v);
	t_ok(r == 0 && v == b1, "counter: 0x%08x is unchanged by it (%llu)", nv_b,
	     (unsigned long long)v);

	/* Undefined behind our back (with the owner's authority) and defined again by
	 * the next read: it does not go back (Part 1, NV counters: a counter's first
	 * increment starts it no lower than any counter the TPM has deleted). */
	t_ok(t_sh("TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_nvundefine -C o 0x%x",
		  s->port, nv_a) == 0 &&
		 !nv_listed(s, nv_a),
	     "counter: tpm2_nvundefine removed 0x%08x", nv_a);
	v = 0;
	r = counter_read_at(s, nv_a, &v);
	t_ok(r == 0 && v > v1 && nv_listed(s, nv_a),
	     "counter: defined again, it reads %llu > %llu: undefining does not roll it back",
	     (unsigned long long)v, (unsigned long long)v1);
	v1 = v;

	/* Another party's ordinary index at the handle: refused, and left alone. */
	t_ok(t_sh("TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_nvdefine -C o -s 8 0x%x "
		  ">/dev/null",
		  s->port, nv_ordinary) == 0,
	     "counter: tpm2_nvdefine made an ordinary 8-byte index at 0x%08x", nv_ordinary);
	if (!t_ok(counter_open(s, nv_ordinary, &ks) == 0, "counter: key store on nv-counter=0x%08x",
		  nv_ordinary))
		goto out;
	v = sentinel;
	r = key_store_counter_read(ks, &v);
	t_ok(r == -CIMD_ECONFIG && v == sentinel && strstr(key_store_errmsg(ks), "100c1e5"),
	     "counter: an ordinary index is refused: %s (%s)", cimd_strerror(r),
	     key_store_errmsg(ks));
	r = key_store_counter_increment(ks, &v);
	t_ok(r == -CIMD_ECONFIG && v == sentinel, "counter: and not incremented: %s",
	     cimd_strerror(r));
	r = t_sh_out(out, sizeof(out),
		     "TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_nvreadpublic 0x%x",
		     s->port, nv_ordinary);
	t_ok(r == 0 && strstr(out, "size: 8") && !strstr(out, "nt=") && !strstr(out, "written"),
	     "counter: the ordinary index is still there, unwritten");
	key_store_free(&ks);

	/* A hung TPM: CIMD_EUNAVAILABLE within timeout-ms, then at once. */
	if (!t_ok(counter_open(s, nv_a, &ks) == 0 && key_store_counter_read(ks, &v) == 0 && v == v1,
		  "counter: reads %llu before the TPM hangs", (unsigned long long)v1))
		goto out;
	kill(s->pid, SIGSTOP);
	v = sentinel;
	t0 = t_now_ms();
	r = key_store_counter_read(ks, &v);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 2000 && v == sentinel,
	     "counter: hung TPM: read gives %s after %.0f ms (%s)", cimd_strerror(r), dt,
	     key_store_errmsg(ks));
	t0 = t_now_ms();
	r = key_store_counter_increment(ks, &v);
	dt = t_now_ms() - t0;
	t_ok(r == -CIMD_EUNAVAILABLE && dt < 100 && v == sentinel,
	     "counter: still hung: increment gives %s at once (%.0f ms)", cimd_strerror(r), dt);
	kill(s->pid, SIGCONT);
	for (t0 = t_now_ms(); t_now_ms() - t0 < 5000; usleep(50000))
		if ((r = key_store_counter_read(ks, &v)) == 0)
			break;
	t_ok(r == 0 && v == v1,
	     "counter: TPM answers again: reads %llu, not advanced by the refused increment (%llu)",
	     (unsigned long long)v1, (unsigned long long)v);
out:
	kill(s->pid, SIGCONT);
	key_store_free(&ks);
}

/* ES256 raw r||s over data, checked by OpenSSL itself (not by our verifier). */
static int ossl_verify_es256(const json_t *jwk, const uint8_t *data, size_t len, const uint8_t *sig,
			     size_t sig_len)
{
	EVP_PKEY *pk = NULL;
	EVP_MD_CTX *m = NULL;
	uint8_t *der = NULL;
	size_t dern;
	int ok = 0;

	if (sig_len != 64 || jwk_to_evp(jwk, &pk) < 0 ||
	    ecdsa_raw_to_der(sig, 32, &der, &dern) < 0 || (m = EVP_MD_CTX_new()) == NULL)
		goto out;
	ok = EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, pk) == 1 &&
	     EVP_DigestVerify(m, der, dern, data, len) == 1;
out:
	EVP_MD_CTX_free(m);
	EVP_PKEY_free(pk);
	free(der);
	return ok;
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

/* One client key certified by the AK; every claim of the evidence checked with
 * OpenSSL against what the TPM 2.0 spec says it holds. */
static void certify_one(struct key_store *ks, struct ks_key *ak, enum cimd_alg alg)
{
	static const uint8_t magic_certify[] = {0xff, 0x54, 0x43, 0x47, 0x80, 0x17};
	const char *name = cimd_alg_name(alg);
	struct ks_key *key = NULL;
	struct ks_certify cert = {0};
	json_t *akjwk = ks_key_jwk(ak);
	uint8_t q[32], nm[2 + SHA256_DIGEST_LENGTH], *pub = NULL;
	size_t pub_len = 0;
	int r;

	RAND_bytes(q, sizeof(q));
	r = key_store_generate(ks, alg, NULL, &key);
	if (!t_ok(r == 0 && ks_key_restricted(key) == 0, "certify %s: unrestricted client key",
		  name))
		goto out;
	/* The client key is the loaded one: certify must load the AK beside it. */
	t_ok(sign_verifies(ks, key, (const uint8_t *)"before", 6) == 0, "certify %s: key signs",
	     name);
	r = key_store_certify(ks, ak, key, q, sizeof(q), &cert);
	if (!t_ok(r == 0, "certify %s: TPM2_Certify by the AK (%s)", name,
		  r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	t_ok(cert.sig_len == 64 &&
		 ossl_verify_es256(akjwk, cert.attest, cert.attest_len, cert.sig, cert.sig_len),
	     "certify %s: OpenSSL verifies the AK's signature over SHA-256(TPMS_ATTEST)", name);
	/* Part 2 §10.12.12: magic TPM_GENERATED_VALUE, type TPM_ST_ATTEST_CERTIFY. */
	t_ok(cert.attest_len > sizeof(magic_certify) &&
		 memcmp(cert.attest, magic_certify, sizeof(magic_certify)) == 0,
	     "certify %s: attest begins ff544347 8017", name);
	t_ok(memmem(cert.attest, cert.attest_len, q, sizeof(q)) != NULL,
	     "certify %s: attest holds the qualifying data", name);
	/* Part 1 §16: name = nameAlg || H(TPMT_PUBLIC). */
	nm[0] = 0x00, nm[1] = 0x0b;
	SHA256(cert.pub, cert.pub_len, nm + 2);
	t_ok(cert.pub_len > 8 && memmem(cert.attest, cert.attest_len, nm, sizeof(nm)) != NULL,
	     "certify %s: attest holds the name 000b || SHA-256(TPMT_PUBLIC)", name);
	r = ks_key_tpm_public(key, &pub, &pub_len);
	t_ok(r == 0 && pub_len == cert.pub_len && memcmp(pub, cert.pub, pub_len) == 0,
	     "certify %s: ks_key_tpm_public equals the certified TPMT_PUBLIC", name);
	/* TPMT_PUBLIC: type, nameAlg, then objectAttributes big-endian in bytes
	 * 4..7 (Part 2 §8.3.2): fixedTPM bit 1, restricted bit 16, sign bit 18. */
	t_ok(pub != NULL && (pub[5] & 0x01) == 0 && (pub[7] & 0x02) != 0,
	     "certify %s: the certified key is fixedTPM and not restricted", name);
	t_ok(sign_verifies(ks, key, (const uint8_t *)"after", 5) == 0 &&
		 sign_verifies(ks, ak, (const uint8_t *)"after certify", 13) == 0,
	     "certify %s: key and AK both sign afterwards", name);
	ks_certify_clear(&cert);
	t_ok(cert.attest == NULL && cert.pub == NULL && cert.sig_len == 0,
	     "certify %s: ks_certify_clear empties the result", name);
	ks_certify_clear(&cert);
out:
	free(pub);
	ks_certify_clear(&cert);
	json_decref(akjwk);
	if (key != NULL)
		key_store_destroy(ks, &key);
	ks_key_free(&key);
}

/* Attestation keys: a restricted AK that signs through the TPM's hash sequence,
 * reloads from its reference, refuses TPM_GENERATED_VALUE, and certifies client
 * keys of every algorithm. */
static void test_attest(const struct t_swtpm *s)
{
	static const uint8_t generated[] = {0xff, 0x54, 0x43, 0x47, 0x00, 0x01, 'x'};
	static const char msg[] = "{\"iss\":\"https://keys.example.com/appliance\"}";
	struct key_store *ks = NULL;
	struct ks_key *ak = NULL, *ak2 = NULL, *key = NULL;
	struct ks_certify cert = {0};
	struct ks_p11_evidence ev;
	uint8_t sig[CIMD_SIG_MAX], big[3000], q[65] = {0}, *pub = NULL;
	const uint8_t *ref;
	size_t ref_len, n, pub_len, i;
	char err[256];
	int r;

	if (!t_ok(key_store_open(s->conf, &ks, err, sizeof(err)) == 0, "attest: key store (%s)",
		  err))
		goto out;
	r = key_store_generate_attest(ks, "ak", &ak);
	if (!t_ok(r == 0, "attest: AK generated (%s)", r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	t_ok(ks_key_restricted(ak) == 1 && ks_key_alg(ak) == CIMD_ALG_ES256,
	     "attest: the AK is a restricted ES256 key");
	r = ks_key_tpm_public(ak, &pub, &pub_len);
	t_ok(r == 0 && pub_len > 8 && (pub[5] & 0x01) != 0 && (pub[5] & 0x04) != 0,
	     "attest: the AK's TPMT_PUBLIC has restricted and sign");
	r = sign_verifies(ks, ak, (const uint8_t *)msg, strlen(msg));
	t_ok(r == 0, "attest: the AK signs through a hash sequence and ticket (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	for (i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 1);
	r = sign_verifies(ks, ak, big, sizeof(big));
	t_ok(r == 0, "attest: a %zu-byte message in 1024-byte sequence updates (%s)", sizeof(big),
	     r < 0 ? key_store_errmsg(ks) : "ok");
	r = sign_verifies(ks, ak, big, 2048);
	t_ok(r == 0, "attest: a message of exactly two blocks (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	ks_key_ref(ak, &ref, &ref_len);
	r = key_store_load(ks, CIMD_ALG_ES256, ref, ref_len, &ak2);
	t_ok(r == 0 && ks_key_restricted(ak2) == 1 && strcmp(ks_key_kid(ak), ks_key_kid(ak2)) == 0,
	     "attest: the AK loads again from its reference (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	r = ak2 != NULL ? sign_verifies(ks, ak2, (const uint8_t *)msg, strlen(msg)) : -1;
	t_ok(r == 0, "attest: the reloaded AK signs (%s)", r < 0 ? key_store_errmsg(ks) : "ok");
	r = key_store_load(ks, CIMD_ALG_ES384, ref, ref_len, &key);
	t_ok(r == -CIMD_EALG, "attest: the AK is not an ES384 key: %s", cimd_strerror(r));
	r = key_store_sign(ks, ak, generated, sizeof(generated), sig, &n);
	t_ok(r == -CIMD_EVERIFY, "attest: a message beginning ff544347 is refused: %s (%s)",
	     cimd_strerror(r), key_store_errmsg(ks));
	r = key_store_sign(ks, ak, (const uint8_t *)"abc", 3, sig, &n);
	t_ok(r == -CIMD_EVERIFY, "attest: a message shorter than 4 bytes is refused: %s",
	     cimd_strerror(r));
	t_ok(sign_verifies(ks, ak, (const uint8_t *)"abcd", 4) == 0,
	     "attest: a 4-byte message is signed");

	certify_one(ks, ak, CIMD_ALG_ES256);
	certify_one(ks, ak, CIMD_ALG_ES384);
	certify_one(ks, ak, CIMD_ALG_PS256);

	if (!t_ok(key_store_generate(ks, CIMD_ALG_ES256, NULL, &key) == 0, "attest: a client key"))
		goto out;
	r = key_store_certify(ks, key, ak, q, 32, &cert);
	t_ok(r == -CIMD_EALG, "attest: an unrestricted key does not certify: %s", cimd_strerror(r));
	r = key_store_certify(ks, ak, key, q, sizeof(q), &cert);
	t_ok(r == -EINVAL, "attest: 65 bytes of qualifying data are refused: %s", cimd_strerror(r));
	r = key_store_certify(ks, ak, key, NULL, 0, &cert);
	t_ok(r == 0 && cert.attest_len > 0, "attest: certify without qualifying data (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	ks_certify_clear(&cert);
	r = key_store_certify(ks, ak, ak2, q, 32, &cert);
	t_ok(r == 0, "attest: the AK certifies itself (%s)", r < 0 ? key_store_errmsg(ks) : "ok");
	ks_certify_clear(&cert);
	r = key_store_p11_evidence(ks, key, &ev);
	t_ok(r == -ENOTSUP, "attest: no PKCS#11 evidence on a TPM: %s", cimd_strerror(r));

	/* Our objects flushed behind our back: certify and AK signing reconnect. */
	t_sh("TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_flushcontext -t", s->port);
	r = key_store_certify(ks, ak, key, q, 32, &cert);
	t_ok(r == 0, "attest: certify after a flush of every transient object (%s)",
	     r < 0 ? key_store_errmsg(ks) : "ok");
	ks_certify_clear(&cert);
	t_sh("TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=%d' tpm2_flushcontext -t", s->port);
	r = sign_verifies(ks, ak, (const uint8_t *)msg, strlen(msg));
	t_ok(r == 0, "attest: AK signing after a flush (%s)", r < 0 ? key_store_errmsg(ks) : "ok");
out:
	free(pub);
	ks_certify_clear(&cert);
	if (ks != NULL && key != NULL)
		key_store_destroy(ks, &key);
	ks_key_free(&key);
	ks_key_free(&ak2);
	ks_key_free(&ak);
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
	test_attest(&s);
	test_errors(&s);
	test_stale_handles(&s);
	test_deadline_covers_lock(&s);
	test_counter(&s);
	test_faults(&s);
	test_reconcile_api(&s);
	t_swtpm_kill(&s);
	return t_done();
}
