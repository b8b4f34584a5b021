/*
 * key_store.c — the backend-neutral key store.
 *
 * Parses the configuration string, dispatches to a backend (ks_pkcs11.c,
 * ks_tpm2.c), keeps the last error's details, and builds each key's public JWK
 * and kid once, when the key is generated or loaded.
 *
 * Threads and deadlines.  Hardware can hang (tcti-swtpm in tpm2-tss 3.2 ignores
 * ESAPI timeouts, a network HSM can stall), so the backend is called only on the
 * store's workers (ks_pool.c), and a caller waits at most its deadline:
 * `timeout-ms` (default 1500) for load, sign, destroy and the counter, 60 s for
 * key generation and for a listing, the wait for a free worker included.  Work
 * that misses its deadline is abandoned to its worker, which cleans up when the
 * hardware finally answers; until then every call fails at once with
 * CIMD_EUNAVAILABLE, and afterwards the store works again by itself.
 *
 * Sessions.  A store has `sessions` workers, each with a session of its own
 * on the hardware (PKCS#11: a session per worker; a TPM is one serial device
 * and has one).  Signatures run on them at once: a batch is spread over the
 * idle workers.  Everything else -- generation, loading, listing, destruction,
 * evidence, the counter, and a signature the backend cannot make shared --
 * has the hardware to itself (the `hw` lock: signatures share it, the rest
 * take it alone), since libp11 0.4.12 and an ESAPI context are not thread-safe
 * and those calls change what the backend remembers.
 *
 * A signature's common path copies nothing but the digest and allocates
 * nothing: the caller hashes the message (on its own core), writes the digest
 * and a reference to the key into its worker's slots, and the worker writes the
 * signature back.  Only a restricted key (a TPM AK, which signs only what the
 * TPM hashed) sends the message itself, as a job with copies like the others.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ks.h"
#include "ks_pool.h"

#define KS_MAX_PARAMS 8
#define KS_CONF_MAX 1024
#define PIN_MAX 256
#define KS_TIMEOUT_DEFAULT_MS 1500 /* "backend unavailable" within 2 s */
#define KS_TIMEOUT_MAX_MS 600000
#define KS_GENERATE_TIMEOUT_MS 60000 /* RSA key generation on a real TPM */
/* A listing reads every object on the token (1 s for 20,000 objects on
 * SoftHSM2's file store; more on a network HSM): a long command, like RSA
 * generation. */
#define KS_LIST_TIMEOUT_MS 60000
#define KS_MSG_MAX (1024 * 1024) /* a message to sign */
#define KS_ERRMSG_MAX 256
#define KS_QUALIFYING_MAX 64 /* TPM2_Certify's qualifyingData: a nonce or a digest */
/* How long a caller polls for a job (not a signature) before it sleeps. */
#define KS_JOB_SPIN_NS 50000
/* A caller polls for its signatures for 5/4 of what they took of late, and
 * at most this long: past it, a sleep's wake-up costs little in proportion. */
#define KS_SIGN_SPIN_MAX_NS 2000000

enum ks_op {
	KS_GENERATE,
	KS_LOAD,
	KS_SIGN, /* a restricted key's: with the message */
	KS_DESTROY,
	KS_LIST,
	KS_GENERATE_ATTEST,
	KS_CERTIFY,
	KS_P11_EVIDENCE,
	KS_COUNTER_READ,
	KS_COUNTER_INCREMENT,
};

/* One call handed to a worker, but for an unrestricted signature.  Inputs
 * are the job's own copies, so an abandoned job never points into a
 * caller's stack. */
struct ks_job {
	enum ks_op op;
	enum cimd_alg alg;
	uint8_t *ref; /* in: load, sign, destroy, certify (the AK); out: generate */
	size_t ref_len;
	uint8_t *ref2; /* in: certify (the certified key) */
	size_t ref2_len;
	uint8_t *msg;
	size_t msg_len;
	uint8_t digest[EVP_MAX_MD_SIZE]; /* in: sign */
	size_t dlen;
	int r;
	json_t *jwk;
	uint8_t sig[CIMD_SIG_MAX];
	size_t sig_len;
	char tag[CIMD_TAG_MAX + 1]; /* in: generate */
	struct ks_ref *refs;	    /* out: list */
	size_t nrefs;
	struct ks_certify cert;	   /* out: certify */
	struct ks_p11_evidence ev; /* out: p11 evidence */
	uint64_t counter;	   /* out: counter read, counter increment */
	char errmsg[KS_ERRMSG_MAX];
};

/* One unrestricted signature in a worker's slots. */
struct ks_slot {
	struct ks_key *key; /* a reference, dropped by the worker */
	uint8_t digest[EVP_MAX_MD_SIZE];
	size_t dlen;
	int r;
	uint8_t sig[CIMD_SIG_MAX];
	size_t sig_len;
	char errmsg[KS_ERRMSG_MAX];
};

/* What belongs to one worker: its session and its slots.  Posted to the
 * worker as its own work, for signatures; a job is posted instead for
 * anything else. */
struct ks_lane {
	void *sess; /* the backend's session_new, or NULL */
	size_t n;   /* slots in use */
	struct ks_slot slots[CIMD_SIGN_BATCH_MAX];
	int64_t ns_per_sig; /* of late, written by the worker: how long callers poll */
	/* key_store_sign_async's: where the results go, and whom to tell. */
	struct ks_sign_req *reqs;
	void (*done)(void *arg);
	void *done_arg;
};

struct key_store {
	const struct ks_backend *be_ops;
	void *be;
	int timeout_ms;
	int sessions; /* asked for; 0: the default */
	struct ks_pool *pool;
	struct ks_lane *lanes; /* one per worker */
	size_t nlanes;
	pthread_rwlock_t hw;	     /* signatures share the hardware, all else has it alone */
	EVP_MD *sha256, *sha384;     /* fetched once: callers hash */
	char scratch[KS_ERRMSG_MAX]; /* backend messages outside a worker (open) */
	char exclusive[KS_CONF_MAX]; /* "backend:module-or-tcti", see the registry */
};

struct ks_key {
	const struct ks_backend *be_ops; /* the backend that made or loaded it */
	enum cimd_alg alg;
	int restricted; /* a TPM AK: signs only digests the TPM computed */
	uint32_t refs;	/* the holder's, and each slot's that names it */
	uint8_t *ref;
	size_t ref_len;
	json_t *jwk;
	char kid[CIMD_KID_LEN + 1];
};

static const struct ks_backend *const backends[] = {
    &ks_pkcs11_backend,
    &ks_tpm2_backend,
};

/* The details of the calling thread's last failed call: a key store may be
 * shared by threads, and each must read its own failure, not another's. */
static _Thread_local char last_err[KS_ERRMSG_MAX];
/* On a worker: where the backend's ks_fail writes (the job's or slot's
 * errmsg); elsewhere NULL, and it writes to the store's scratch. */
static _Thread_local char *worker_err;

int ks_fail(struct key_store *ks, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(worker_err != NULL ? worker_err : ks->scratch, KS_ERRMSG_MAX, fmt, ap);
	va_end(ap);
	return r;
}

/* A failure seen by the calling side (never from a worker). */
static int caller_fail(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int caller_fail(int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_err, sizeof(last_err), fmt, ap);
	va_end(ap);
	return r;
}

const char *key_store_errmsg(const struct key_store *ks)
{
	(void)ks;
	return last_err[0] ? last_err : "no error";
}

/*
 * One key store per module (PKCS#11) or TPM (TCTI) in a process.  A PKCS#11
 * module is one instance per process: closing one libp11 context finalises it
 * (C_Finalize) and closes every session on the slot under any other.  A TPM
 * without a resource manager has its transient objects flushed by each new
 * store.  So a second store on the same hardware is refused rather than allowed
 * to break the first.
 */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct key_store *registry[16];

static int registry_add(struct key_store *ks)
{
	size_t i, free_slot = SIZE_MAX;
	int r = 0;

	pthread_mutex_lock(&registry_lock);
	for (i = 0; i < sizeof(registry) / sizeof(registry[0]); i++) {
		if (registry[i] == NULL) {
			if (free_slot == SIZE_MAX)
				free_slot = i;
		} else if (strcmp(registry[i]->exclusive, ks->exclusive) == 0) {
			r = -EBUSY;
		}
	}
	if (r == 0 && free_slot == SIZE_MAX)
		r = -EMFILE;
	if (r == 0)
		registry[free_slot] = ks;
	pthread_mutex_unlock(&registry_lock);
	return r;
}

static void registry_del(struct key_store *ks)
{
	size_t i;

	pthread_mutex_lock(&registry_lock);
	for (i = 0; i < sizeof(registry) / sizeof(registry[0]); i++)
		if (registry[i] == ks)
			registry[i] = NULL;
	pthread_mutex_unlock(&registry_lock);
}

const char *key_store_backend(const struct key_store *ks)
{
	return ks->be_ops->name;
}

int key_store_sessions(const struct key_store *ks)
{
	return (int)ks->nlanes;
}

static void job_free(struct ks_job *j)
{
	if (j == NULL)
		return;
	free(j->ref);
	free(j->ref2);
	ks_certify_clear(&j->cert);
	if (j->msg != NULL)
		OPENSSL_cleanse(j->msg, j->msg_len);
	free(j->msg);
	json_decref(j->jwk);
	ks_refs_free(&j->refs, j->nrefs);
	free(j);
}

static void key_unref(struct ks_key *key)
{
	if (key == NULL || __atomic_sub_fetch(&key->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	free(key->ref);
	json_decref(key->jwk);
	free(key);
}

/* Runs a job on lane l's worker, the hardware to itself. */
static void job_run(struct key_store *ks, struct ks_lane *l, struct ks_job *j)
{
	const struct ks_backend *be = ks->be_ops;
	struct ks_tbs tbs;

	worker_err = j->errmsg;
	pthread_rwlock_wrlock(&ks->hw);
	switch (j->op) {
	case KS_GENERATE:
		j->r = be->generate(ks, ks->be, j->alg, j->tag[0] ? j->tag : NULL, &j->ref,
				    &j->ref_len, &j->jwk);
		break;
	case KS_LOAD:
		j->r = be->load(ks, ks->be, j->alg, j->ref, j->ref_len, &j->jwk);
		break;
	case KS_SIGN:
		tbs = (struct ks_tbs){j->alg,  j->ref, j->ref_len, j->digest,
				      j->dlen, j->msg, j->msg_len};
		j->r = be->sign(ks, ks->be, l->sess, 0, &tbs, j->sig, &j->sig_len);
		break;
	case KS_DESTROY:
		j->r = be->destroy(ks, ks->be, j->ref, j->ref_len);
		break;
	case KS_LIST:
		j->r = be->list(ks, ks->be, j->msg_len, &j->refs, &j->nrefs);
		break;
	case KS_GENERATE_ATTEST:
		j->r = be->generate_attest(ks, ks->be, j->tag[0] ? j->tag : NULL, &j->ref,
					   &j->ref_len, &j->jwk);
		break;
	case KS_CERTIFY:
		j->r = be->certify(ks, ks->be, j->ref, j->ref_len, j->ref2, j->ref2_len, j->msg,
				   j->msg_len, &j->cert);
		break;
	case KS_P11_EVIDENCE:
		j->r = be->p11_evidence(ks, ks->be, j->ref, j->ref_len, &j->ev);
		break;
	case KS_COUNTER_READ:
	case KS_COUNTER_INCREMENT:
		j->r = be->counter(ks, ks->be, j->op == KS_COUNTER_INCREMENT, &j->counter);
		break;
	}
	pthread_rwlock_unlock(&ks->hw);
	worker_err = NULL;
}

/* Signs lane l's slots on its session, sharing the hardware with the other
 * workers; a signature the backend cannot make so gets it alone. */
static void slots_run(struct key_store *ks, struct ks_lane *l)
{
	int64_t t0 = ks_now_ns(), per;
	struct ks_slot *s;
	struct ks_tbs tbs;
	size_t i;

	pthread_rwlock_rdlock(&ks->hw);
	for (i = 0; i < l->n; i++) {
		s = &l->slots[i];
		tbs = (struct ks_tbs){
		    s->key->alg, s->key->ref, s->key->ref_len, s->digest, s->dlen, NULL, 0};
		s->errmsg[0] = '\0';
		worker_err = s->errmsg;
		s->r = ks->be_ops->sign(ks, ks->be, l->sess, 1, &tbs, s->sig, &s->sig_len);
		if (s->r == KS_ALONE) {
			pthread_rwlock_unlock(&ks->hw);
			pthread_rwlock_wrlock(&ks->hw);
			s->r = ks->be_ops->sign(ks, ks->be, l->sess, 0, &tbs, s->sig, &s->sig_len);
			pthread_rwlock_unlock(&ks->hw);
			pthread_rwlock_rdlock(&ks->hw);
		}
	}
	pthread_rwlock_unlock(&ks->hw);
	worker_err = NULL;
	for (i = 0; i < l->n; i++) {
		key_unref(l->slots[i].key);
		l->slots[i].key = NULL;
	}
	per = l->n ? (ks_now_ns() - t0) / (int64_t)l->n : 0;
	__atomic_store_n(&l->ns_per_sig, l->ns_per_sig ? (7 * l->ns_per_sig + per) / 8 : per,
			 __ATOMIC_RELAXED);
}

static void ks_work(void *arg, size_t idx, void *work)
{
	struct key_store *ks = arg;
	struct ks_lane *l = &ks->lanes[idx];

	if (work == l)
		slots_run(ks, l);
	else
		job_run(ks, l, work);
}

/* Asynchronous signatures have run in time: the results to the caller's
 * requests, and the caller told (on this worker's thread). */
static void ks_completed(void *arg, size_t idx, void *work)
{
	struct ks_lane *l = work;
	size_t i;

	(void)arg, (void)idx;
	for (i = 0; i < l->n; i++) {
		l->reqs[i].r = l->slots[i].r;
		if (l->slots[i].r == 0) {
			memcpy(l->reqs[i].sig, l->slots[i].sig, l->slots[i].sig_len);
			l->reqs[i].sig_len = l->slots[i].sig_len;
		}
	}
	l->n = 0;
	l->done(l->done_arg);
}

/* Work whose caller gave up has run.  Slots dropped their keys already. */
static void ks_abandoned(void *arg, size_t idx, void *work)
{
	struct key_store *ks = arg;
	struct ks_job *j = work;

	if (work == &ks->lanes[idx])
		return;
	if ((j->op == KS_GENERATE || j->op == KS_GENERATE_ATTEST) && j->r == 0) {
		/* Nobody will ever hold this key's reference: remove it rather
		 * than leave an orphan in the hardware. */
		worker_err = j->errmsg;
		pthread_rwlock_wrlock(&ks->hw);
		ks->be_ops->destroy(ks, ks->be, j->ref, j->ref_len);
		pthread_rwlock_unlock(&ks->hw);
		worker_err = NULL;
	}
	job_free(j);
}

/* Frees what key_store_open made, once no worker runs. */
static void ks_release(void *arg)
{
	struct key_store *ks = arg;
	size_t i;

	for (i = 0; i < ks->nlanes; i++)
		if (ks->lanes[i].sess != NULL)
			ks->be_ops->session_free(ks->be, ks->lanes[i].sess);
	if (ks->be_ops != NULL && ks->be != NULL)
		ks->be_ops->close(ks->be);
	registry_del(ks);
	free(ks->lanes);
	EVP_MD_free(ks->sha256);
	EVP_MD_free(ks->sha384);
	pthread_rwlock_destroy(&ks->hw);
	free(ks);
}

static const struct ks_pool_ops ks_pool_ops = {
    .run = ks_work,
    .completed = ks_completed,
    .abandoned = ks_abandoned,
    .gone = ks_release,
};

static struct timespec deadline_in(int timeout_ms)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += timeout_ms / 1000;
	t.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

/* Up to max workers for a call, by the deadline: their number, or
 * -CIMD_EUNAVAILABLE with the reason there was none. */
static int claim(struct key_store *ks, size_t max, size_t *idx, const struct timespec *deadline,
		 int timeout_ms)
{
	int k = ks_pool_claim(ks->pool, max, idx, deadline);

	if (k == -EIO)
		return caller_fail(-CIMD_EUNAVAILABLE,
				   "%s: hardware has not yet answered an earlier command",
				   ks->be_ops->name);
	if (k < 0)
		return caller_fail(-CIMD_EUNAVAILABLE, "%s: busy with other callers for %d ms",
				   ks->be_ops->name, timeout_ms);
	return k;
}

/*
 * Runs *pjob on a worker within timeout_ms of now, the wait for a free one
 * included.  On return the job belongs to the caller again; when it does not
 * (abandoned to the worker, or never run), *pjob is set to NULL.
 */
static int ks_run(struct key_store *ks, struct ks_job **pjob, int timeout_ms)
{
	struct ks_job *job = *pjob;
	struct timespec deadline = deadline_in(timeout_ms);
	size_t idx;
	int r;

	if ((r = claim(ks, 1, &idx, &deadline, timeout_ms)) < 0) {
		job_free(job);
		*pjob = NULL;
		return r;
	}
	ks_pool_post(ks->pool, idx, job);
	if (ks_pool_wait(ks->pool, idx, KS_JOB_SPIN_NS, &deadline) < 0) {
		*pjob = NULL; /* the worker frees it */
		return caller_fail(-CIMD_EUNAVAILABLE, "%s: no answer from the hardware in %d ms",
				   ks->be_ops->name, timeout_ms);
	}
	ks_pool_release(ks->pool, idx);
	r = job->r;
	if (r < 0)
		caller_fail(r, "%s", job->errmsg[0] ? job->errmsg : cimd_strerror(r));
	else
		last_err[0] = '\0';
	return r;
}

/* "name:k=v;k=v": splits buf in place into the backend name and parameters. */
static int parse_conf(char *buf, char **ret_name, struct ks_param *params, size_t *ret_n)
{
	char *colon = strchr(buf, ':'), *p, *next, *eq;
	size_t n = 0;

	if (colon == NULL)
		return -CIMD_ECONFIG;
	*colon = '\0';
	for (p = colon + 1; p != NULL && *p != '\0'; p = next) {
		if ((next = strchr(p, ';')) != NULL)
			*next++ = '\0';
		if ((eq = strchr(p, '=')) == NULL || eq == p || n == KS_MAX_PARAMS)
			return -CIMD_ECONFIG;
		*eq = '\0';
		params[n].name = p;
		params[n].value = eq + 1;
		n++;
	}
	*ret_name = buf;
	*ret_n = n;
	return 0;
}

/* A number parameter of the store's own, lo..hi. */
static int own_number(struct key_store *ks, const struct ks_param *pm, long lo, long hi, int *ret)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(pm->value, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return ks_fail(ks, -CIMD_ECONFIG, "%s '%s' is not %ld..%ld", pm->name, pm->value,
			       lo, hi);
	*ret = (int)v;
	return 0;
}

/* Takes the key store's own parameters (timeout-ms, sessions) out of the list. */
static int take_own_params(struct key_store *ks, struct ks_param *params, size_t *n)
{
	size_t i, j;
	int r;

	for (i = j = 0; i < *n; i++) {
		if (strcmp(params[i].name, "timeout-ms") == 0)
			r = own_number(ks, &params[i], 1, KS_TIMEOUT_MAX_MS, &ks->timeout_ms);
		else if (strcmp(params[i].name, "sessions") == 0)
			r = own_number(ks, &params[i], 1, KS_POOL_MAX, &ks->sessions);
		else {
			params[j++] = params[i];
			continue;
		}
		if (r < 0)
			return r;
	}
	*n = j;
	return 0;
}

/* How many workers: sessions=N when given, else one per core; never more
 * than the hardware allows (a TPM: 1), and N above that is refused rather
 * than quietly lowered. */
static int session_count(struct key_store *ks, size_t *ret)
{
	int max = ks->be_ops->max_sessions(ks->be);
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	size_t n;

	if (ks->sessions > 0 && max > 0 && ks->sessions > max)
		return ks_fail(ks, -CIMD_ECONFIG,
			       "sessions=%d: this %s hardware allows %d at once%s", ks->sessions,
			       ks->be_ops->name, max, max == 1 ? " (one serial device)" : "");
	n = ks->sessions > 0 ? (size_t)ks->sessions : cores > 0 ? (size_t)cores : 1;
	if (n > KS_POOL_MAX)
		n = KS_POOL_MAX;
	if (max > 0 && n > (size_t)max)
		n = (size_t)max;
	*ret = n;
	return 0;
}

/* The backend is open: one lane per worker, each with its session, and the
 * workers. */
static int start_workers(struct key_store *ks)
{
	size_t i, n = 0;
	int r;

	if ((r = session_count(ks, &n)) < 0)
		return r;
	if ((ks->lanes = calloc(n, sizeof(*ks->lanes))) == NULL)
		return -ENOMEM;
	ks->nlanes = n;
	for (i = 0; i < n && ks->be_ops->session_new != NULL; i++)
		if ((ks->lanes[i].sess = ks->be_ops->session_new(ks->be)) == NULL)
			return -ENOMEM;
	if ((r = ks_pool_start(&ks_pool_ops, ks, n, &ks->pool)) < 0)
		return ks_fail(ks, r, "cannot start the key store's worker threads");
	return 0;
}

int key_store_open(const char *conf, struct key_store **ret_ks, char *errbuf, size_t errlen)
{
	struct key_store *ks;
	struct ks_param params[KS_MAX_PARAMS];
	pthread_rwlockattr_t ra;
	char *buf = NULL, *name;
	size_t i, n;
	int r;

	if (errbuf != NULL && errlen > 0)
		errbuf[0] = '\0';
	if (conf == NULL || strnlen(conf, KS_CONF_MAX + 1) > KS_CONF_MAX) {
		if (errbuf != NULL)
			snprintf(errbuf, errlen, "configuration string missing or too long");
		return -CIMD_ECONFIG;
	}
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return -ENOMEM;
	/* A waiting generation or listing goes before signatures that come
	 * after it, or a busy store would never run one. */
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&ks->hw, &ra);
	pthread_rwlockattr_destroy(&ra);
	ks->timeout_ms = KS_TIMEOUT_DEFAULT_MS;
	ks->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
	ks->sha384 = EVP_MD_fetch(NULL, "SHA2-384", NULL);
	if (ks->sha256 == NULL || ks->sha384 == NULL) {
		r = ks_fail(ks, -CIMD_ECRYPTO, "no SHA-2 in this OpenSSL");
		goto out;
	}
	if ((buf = strdup(conf)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = parse_conf(buf, &name, params, &n)) < 0) {
		ks_fail(ks, r, "expected BACKEND:key=value;key=value");
		goto out;
	}
	if ((r = take_own_params(ks, params, &n)) < 0)
		goto out;
	for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(name, backends[i]->name) == 0)
			ks->be_ops = backends[i];
	if (ks->be_ops == NULL) {
		r = ks_fail(ks, -CIMD_ECONFIG, "unknown backend '%s' (pkcs11 or tpm2)", name);
		goto out;
	}
	snprintf(ks->exclusive, sizeof(ks->exclusive), "%s:", name);
	for (i = 0; i < n; i++)
		if (strcmp(params[i].name, ks->be_ops->exclusive_param) == 0)
			snprintf(ks->exclusive, sizeof(ks->exclusive), "%s:%s", name,
				 params[i].value);
	if ((r = registry_add(ks)) < 0) {
		ks_fail(ks, r, "%s is in use by another key store in this process", ks->exclusive);
		goto out;
	}
	if ((r = ks->be_ops->open(ks, params, n, &ks->be)) < 0 || (r = start_workers(ks)) < 0)
		goto out;
	*ret_ks = ks;
	ks = NULL;
	r = 0;
out:
	if (buf != NULL)
		OPENSSL_cleanse(buf, strlen(conf));
	free(buf);
	if (ks != NULL) {
		if (errbuf != NULL)
			snprintf(errbuf, errlen, "%s", ks->scratch);
		ks_release(ks);
	}
	return r;
}

void key_store_free(struct key_store **pks)
{
	struct key_store *ks = *pks;

	if (ks == NULL)
		return;
	*pks = NULL;
	/* Workers the hardware holds end when it answers; the last one out
	 * releases the store (ks_release). */
	ks_pool_stop(ks->pool);
}

/* Builds the handle: the public JWK gets kid = RFC 7638 thumbprint, alg, use. */
static int key_new(const struct ks_backend *be_ops, enum cimd_alg alg, uint8_t *ref, size_t ref_len,
		   json_t *jwk, struct ks_key **ret_key)
{
	struct ks_key *k;
	int r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return -ENOMEM;
	if ((r = jwk_thumbprint(jwk, k->kid)) < 0) {
		free(k);
		return r;
	}
	if (json_object_set_new(jwk, "kid", json_string(k->kid)) < 0 ||
	    json_object_set_new(jwk, "alg", json_string(cimd_alg_name(alg))) < 0 ||
	    json_object_set_new(jwk, "use", json_string("sig")) < 0) {
		free(k);
		return -ENOMEM;
	}
	k->be_ops = be_ops;
	k->refs = 1;
	k->alg = alg;
	k->restricted = be_ops->ref_restricted(ref, ref_len) == 1;
	k->ref = ref;
	k->ref_len = ref_len;
	k->jwk = jwk;
	*ret_key = k;
	return 0;
}

static struct ks_job *job_new(enum ks_op op, enum cimd_alg alg, const uint8_t *ref, size_t ref_len,
			      const uint8_t *msg, size_t msg_len)
{
	struct ks_job *j;

	if ((j = calloc(1, sizeof(*j))) == NULL)
		return NULL;
	j->op = op;
	j->alg = alg;
	if (ref != NULL) {
		if ((j->ref = malloc(ref_len)) == NULL)
			goto fail;
		memcpy(j->ref, ref, ref_len);
		j->ref_len = ref_len;
	}
	if (msg != NULL) {
		if ((j->msg = malloc(msg_len ? msg_len : 1)) == NULL)
			goto fail;
		memcpy(j->msg, msg, msg_len);
		j->msg_len = msg_len;
	}
	return j;
fail:
	job_free(j);
	return NULL;
}

/* Runs a job whose result is a key (generate, load) and builds the handle. */
static int run_key_job(struct key_store *ks, struct ks_job *j, int timeout_ms,
		       struct ks_key **ret_key)
{
	int r;

	if (j == NULL)
		return -ENOMEM;
	if ((r = ks_run(ks, &j, timeout_ms)) == 0 &&
	    (r = key_new(ks->be_ops, j->alg, j->ref, j->ref_len, j->jwk, ret_key)) == 0)
		j->ref = NULL, j->jwk = NULL; /* moved into the handle */
	job_free(j);
	return r;
}

/* A generation job (generate, generate_attest) with its checked tag. */
static int run_generate(struct key_store *ks, enum ks_op op, enum cimd_alg alg, const char *tag,
			struct ks_key **ret_key)
{
	struct ks_job *j;
	size_t i;

	for (i = 0; tag != NULL && tag[i] != '\0'; i++)
		if (i == CIMD_TAG_MAX ||
		    !((tag[i] >= 'a' && tag[i] <= 'z') || (tag[i] >= 'A' && tag[i] <= 'Z') ||
		      (tag[i] >= '0' && tag[i] <= '9') || tag[i] == '-'))
			return caller_fail(-EINVAL, "tag: up to %d of [A-Za-z0-9-]", CIMD_TAG_MAX);
	if ((j = job_new(op, alg, NULL, 0, NULL, 0)) == NULL)
		return -ENOMEM;
	if (tag != NULL)
		memcpy(j->tag, tag, strlen(tag) + 1);
	return run_key_job(ks, j,
			   KS_GENERATE_TIMEOUT_MS > ks->timeout_ms ? KS_GENERATE_TIMEOUT_MS
								   : ks->timeout_ms,
			   ret_key);
}

int key_store_generate(struct key_store *ks, enum cimd_alg alg, const char *tag,
		       struct ks_key **ret_key)
{
	if (cimd_alg_name(alg) == NULL)
		return caller_fail(-CIMD_EALG, "unknown algorithm %d", (int)alg);
	return run_generate(ks, KS_GENERATE, alg, tag, ret_key);
}

int key_store_load(struct key_store *ks, enum cimd_alg alg, const uint8_t *ref, size_t ref_len,
		   struct ks_key **ret_key)
{
	if (cimd_alg_name(alg) == NULL)
		return caller_fail(-CIMD_EALG, "unknown algorithm %d", (int)alg);
	if (ref_len == 0 || ref_len > CIMD_KEYREF_MAX)
		return caller_fail(-CIMD_ENOKEY, "key reference of %zu bytes", ref_len);
	return run_key_job(ks, job_new(KS_LOAD, alg, ref, ref_len, NULL, 0), ks->timeout_ms,
			   ret_key);
}

/* A batch as the caller gave it: 1..CIMD_SIGN_BATCH_MAX requests, each
 * with a key (an AK only when restricted is allowed) and a message not too
 * long; each request's r unavailable until it is signed. */
static int reqs_check(struct ks_sign_req *reqs, size_t n, int restricted)
{
	size_t i;

	if (n == 0 || n > CIMD_SIGN_BATCH_MAX)
		return caller_fail(-EINVAL, "a batch of %zu signatures", n);
	for (i = 0; i < n; i++) {
		if (reqs[i].key == NULL || reqs[i].key->ref == NULL || reqs[i].len > KS_MSG_MAX ||
		    (reqs[i].key->restricted && !restricted))
			return caller_fail(-EINVAL, "signature %zu: no key, %stoo long", i,
					   restricted ? "or " : "an attestation key, or ");
		reqs[i].r = -CIMD_EUNAVAILABLE;
	}
	return 0;
}

static int ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* The digest a signature of alg signs (RFC 7518 §3.4, §3.5): SHA-256 but
 * for ES384. */
static int digest(struct key_store *ks, enum cimd_alg alg, const uint8_t *msg, size_t len,
		  uint8_t *out, size_t *ret_len)
{
	unsigned int n = 0;

	if (EVP_Digest(msg, len, out, &n, alg == CIMD_ALG_ES384 ? ks->sha384 : ks->sha256, NULL) !=
	    1)
		return caller_fail(-CIMD_ECRYPTO, "%s: cannot hash the message", ks->be_ops->name);
	*ret_len = n;
	return 0;
}

/* A restricted key's signature: a job with the message. */
static int sign_restricted(struct key_store *ks, struct ks_sign_req *req)
{
	struct ks_job *j;
	int r;

	if ((j = job_new(KS_SIGN, req->key->alg, req->key->ref, req->key->ref_len, req->msg,
			 req->len)) == NULL)
		return -ENOMEM;
	if ((r = digest(ks, j->alg, req->msg, req->len, j->digest, &j->dlen)) == 0 &&
	    (r = ks_run(ks, &j, ks->timeout_ms)) == 0) {
		memcpy(req->sig, j->sig, j->sig_len);
		req->sig_len = j->sig_len;
	}
	job_free(j);
	return req->r = r;
}

/* Lane l's slots for reqs[0..n), hashed here. */
static int slots_fill(struct key_store *ks, struct ks_lane *l, struct ks_sign_req *reqs, size_t n)
{
	size_t i;
	int r;

	for (i = 0; i < n; i++) {
		struct ks_slot *s = &l->slots[i];

		if ((r = digest(ks, reqs[i].key->alg, reqs[i].msg, reqs[i].len, s->digest,
				&s->dlen)) < 0) {
			l->n = i;
			return r;
		}
		__atomic_add_fetch(&reqs[i].key->refs, 1, __ATOMIC_RELAXED);
		s->key = reqs[i].key;
	}
	l->n = n;
	return 0;
}

/* Drops the references of slots a worker never ran. */
static void slots_drop(struct ks_lane *l)
{
	size_t i;

	for (i = 0; i < l->n; i++) {
		key_unref(l->slots[i].key);
		l->slots[i].key = NULL;
	}
	l->n = 0;
}

/* How long a caller may poll for k signatures on lane l (ks_pool_wait
 * polls only on a core that is free). */
static int64_t sign_spin(const struct ks_lane *l, size_t k)
{
	int64_t t = __atomic_load_n(&l->ns_per_sig, __ATOMIC_RELAXED) * (int64_t)k * 5 / 4;

	return t < KS_SIGN_SPIN_MAX_NS ? t + 20000 : KS_SIGN_SPIN_MAX_NS;
}

/*
 * Unrestricted signatures: reqs spread over the idle workers, up to one per
 * signature, in runs of n / k.  Each run is posted as soon as it is hashed,
 * so the first worker signs while the caller hashes the next run.  0 when
 * every run finished (each req->r its own result), -CIMD_EUNAVAILABLE when
 * one did not by the deadline.
 */
static int sign_spread(struct key_store *ks, struct ks_sign_req *reqs, size_t n)
{
	struct timespec deadline = deadline_in(ks->timeout_ms);
	size_t idx[KS_POOL_MAX], from[KS_POOL_MAX + 1], i, j;
	int k, late = 0, r = 0;

	if ((k = claim(ks, n < ks->nlanes ? n : ks->nlanes, idx, &deadline, ks->timeout_ms)) < 0)
		return k;
	for (i = 0; i <= (size_t)k; i++)
		from[i] = n * i / (size_t)k;
	for (i = 0; i < (size_t)k; i++) {
		if (r == 0 && (r = slots_fill(ks, &ks->lanes[idx[i]], reqs + from[i],
					      from[i + 1] - from[i])) == 0) {
			ks_pool_post(ks->pool, idx[i], &ks->lanes[idx[i]]);
			continue;
		}
		slots_drop(&ks->lanes[idx[i]]);
		ks_pool_release(ks->pool, idx[i]);
		idx[i] = SIZE_MAX; /* not posted */
	}
	for (i = 0; i < (size_t)k; i++) {
		struct ks_lane *l = &ks->lanes[idx[i]];

		if (idx[i] == SIZE_MAX)
			continue;
		if (ks_pool_wait(ks->pool, idx[i], sign_spin(l, l->n), &deadline) < 0) {
			late = 1; /* the worker drops its slots' keys */
			continue;
		}
		for (j = 0; j < l->n; j++) {
			struct ks_sign_req *q = &reqs[from[i] + j];

			q->r = l->slots[j].r;
			if (q->r == 0) {
				memcpy(q->sig, l->slots[j].sig, l->slots[j].sig_len);
				q->sig_len = l->slots[j].sig_len;
			} else if (last_err[0] == '\0') {
				caller_fail(q->r, "%s",
					    l->slots[j].errmsg[0] ? l->slots[j].errmsg
								  : cimd_strerror(q->r));
			}
		}
		l->n = 0;
		ks_pool_release(ks->pool, idx[i]);
	}
	if (late)
		return caller_fail(-CIMD_EUNAVAILABLE, "%s: no answer from the hardware in %d ms",
				   ks->be_ops->name, ks->timeout_ms);
	return r;
}

int key_store_sign_async(struct key_store *ks, struct ks_sign_req *reqs, size_t n,
			 const struct timespec *until, void (*done)(void *arg), void *arg,
			 struct ks_pending *ret)
{
	struct timespec deadline = deadline_in(ks->timeout_ms);
	struct ks_lane *l;
	size_t idx;
	int r;

	if ((r = reqs_check(reqs, n, 0)) < 0)
		return r;
	last_err[0] = '\0';
	/* The caller's own time, when sooner: it may try again after. */
	if (until != NULL && ts_before(until, &deadline)) {
		if ((r = ks_pool_claim(ks->pool, 1, &idx, until)) == -ETIMEDOUT)
			return -ETIMEDOUT;
		if (r < 0 && (r = claim(ks, 1, &idx, &deadline, ks->timeout_ms)) < 0)
			return r;
	} else if ((r = claim(ks, 1, &idx, &deadline, ks->timeout_ms)) < 0) {
		return r;
	}
	l = &ks->lanes[idx];
	if ((r = slots_fill(ks, l, reqs, n)) < 0) {
		slots_drop(l);
		ks_pool_release(ks->pool, idx);
		return r;
	}
	l->reqs = reqs;
	l->done = done;
	l->done_arg = arg;
	ret->deadline = deadline;
	ret->idx = idx;
	ret->turn = ks_pool_post_async(ks->pool, idx, l);
	return 0;
}

int key_store_sign_expire(struct key_store *ks, const struct ks_pending *p)
{
	return ks_pool_expire(ks->pool, p->idx, p->turn);
}

int key_store_sign(struct key_store *ks, struct ks_key *key, const uint8_t *msg, size_t len,
		   uint8_t *ret_sig, size_t *ret_len)
{
	struct ks_sign_req req = {.key = key, .msg = msg, .len = len};
	int r;

	if (key == NULL || key->ref == NULL)
		return caller_fail(-CIMD_ENOKEY, "no key");
	if (len > KS_MSG_MAX)
		return caller_fail(-E2BIG, "message of %zu bytes", len);
	last_err[0] = '\0';
	if (key->restricted)
		r = sign_restricted(ks, &req);
	else if ((r = sign_spread(ks, &req, 1)) == 0)
		r = req.r;
	if (r == 0) {
		memcpy(ret_sig, req.sig, req.sig_len);
		*ret_len = req.sig_len;
	}
	return r;
}

int key_store_sign_batch(struct key_store *ks, struct ks_sign_req *reqs, size_t n)
{
	size_t i;
	int r;

	if ((r = reqs_check(reqs, n, 1)) < 0)
		return r;
	last_err[0] = '\0';
	for (i = 0; i < n; i++)
		if (reqs[i].key->restricted)
			break;
	if (i == n)
		return sign_spread(ks, reqs, n);
	/* An AK among them (not how the signer uses a batch): one at a time. */
	for (i = 0; i < n; i++)
		if ((reqs[i].r = key_store_sign(ks, reqs[i].key, reqs[i].msg, reqs[i].len,
						reqs[i].sig, &reqs[i].sig_len)) ==
		    -CIMD_EUNAVAILABLE)
			return reqs[i].r;
	return 0;
}

int key_store_destroy(struct key_store *ks, struct ks_key **pkey)
{
	struct ks_key *key = *pkey;
	struct ks_job *j;
	int r;

	if (key == NULL)
		return 0;
	if ((j = job_new(KS_DESTROY, key->alg, key->ref, key->ref_len, NULL, 0)) == NULL)
		return -ENOMEM;
	r = ks_run(ks, &j, ks->timeout_ms);
	job_free(j);
	if (r < 0)
		return r;
	ks_key_free(pkey);
	return 0;
}

int key_store_list(struct key_store *ks, size_t max, struct ks_ref **ret_refs, size_t *ret_n)
{
	struct ks_job *j;
	int r;

	if ((j = job_new(KS_LIST, CIMD_ALG_NONE, NULL, 0, NULL, 0)) == NULL)
		return -ENOMEM;
	j->msg_len = max; /* the cap travels in the job */
	if ((r = ks_run(ks, &j,
			KS_LIST_TIMEOUT_MS > ks->timeout_ms ? KS_LIST_TIMEOUT_MS
							    : ks->timeout_ms)) == 0) {
		*ret_refs = j->refs;
		*ret_n = j->nrefs;
		j->refs = NULL;
		j->nrefs = 0;
	}
	job_free(j);
	return r;
}

int key_store_holds_keys(const struct key_store *ks)
{
	return ks->be_ops->holds_keys;
}

int key_store_ref_check(const struct key_store *ks, enum cimd_alg alg, const uint8_t *ref,
			size_t ref_len)
{
	/* In the order key_store_load checks, so that both say the same. */
	if (cimd_alg_name(alg) == NULL)
		return -CIMD_EALG;
	if (ref == NULL || ref_len == 0 || ref_len > CIMD_KEYREF_MAX)
		return -CIMD_ENOKEY;
	return ks->be_ops->ref_check(alg, ref, ref_len);
}

int key_store_destroy_ref(struct key_store *ks, const uint8_t *ref, size_t ref_len)
{
	struct ks_job *j;
	int r;

	if (ref == NULL || ref_len == 0 || ref_len > CIMD_KEYREF_MAX)
		return caller_fail(-CIMD_ENOKEY, "key reference of %zu bytes", ref_len);
	if ((j = job_new(KS_DESTROY, CIMD_ALG_NONE, ref, ref_len, NULL, 0)) == NULL)
		return -ENOMEM;
	r = ks_run(ks, &j, ks->timeout_ms);
	job_free(j);
	return r;
}

/* ---- attestation keys and hardware evidence ---- */

int key_store_generate_attest(struct key_store *ks, const char *tag, struct ks_key **ret_key)
{
	/* An AK is P-256 with ECDSA-SHA256 on either backend (TPM 2.0 Part 1
	 * §25.2.3 on a TPM), so it signs and loads as an ES256 key. */
	return run_generate(ks, KS_GENERATE_ATTEST, CIMD_ALG_ES256, tag, ret_key);
}

int ks_key_restricted(const struct ks_key *key)
{
	return key->restricted;
}

/* A key made or loaded by this store's backend. */
static int key_of_store(const struct key_store *ks, const struct ks_key *key)
{
	return key != NULL && key->ref != NULL && key->be_ops == ks->be_ops;
}

int key_store_certify(struct key_store *ks, struct ks_key *ak, struct ks_key *key,
		      const uint8_t *qualifying, size_t qlen, struct ks_certify *ret)
{
	struct ks_job *j;
	int r;

	if (!key_of_store(ks, ak) || !key_of_store(ks, key))
		return caller_fail(-CIMD_ENOKEY, "certify: no key, or a key of another backend");
	if ((qualifying == NULL && qlen > 0) || qlen > KS_QUALIFYING_MAX)
		return caller_fail(-EINVAL, "certify: qualifying data of %zu bytes", qlen);
	if ((j = job_new(KS_CERTIFY, ak->alg, ak->ref, ak->ref_len, qualifying, qlen)) == NULL)
		return -ENOMEM;
	if ((j->ref2 = malloc(key->ref_len)) == NULL) {
		job_free(j);
		return -ENOMEM;
	}
	memcpy(j->ref2, key->ref, key->ref_len);
	j->ref2_len = key->ref_len;
	if ((r = ks_run(ks, &j, ks->timeout_ms)) == 0) {
		*ret = j->cert;
		memset(&j->cert, 0, sizeof(j->cert)); /* moved to the caller */
	}
	job_free(j);
	return r;
}

void ks_certify_clear(struct ks_certify *c)
{
	if (c == NULL)
		return;
	free(c->attest);
	free(c->pub);
	memset(c, 0, sizeof(*c));
}

int ks_key_tpm_public(const struct ks_key *key, uint8_t **ret_pub, size_t *ret_len)
{
	int r;

	if (key == NULL || key->ref == NULL)
		return caller_fail(-CIMD_ENOKEY, "no key");
	if ((r = key->be_ops->tpm_public(key->ref, key->ref_len, ret_pub, ret_len)) < 0)
		return caller_fail(r, "%s: no TPM public area for this key (%s)", key->be_ops->name,
				   cimd_strerror(r));
	return 0;
}

int key_store_p11_evidence(struct key_store *ks, struct ks_key *key, struct ks_p11_evidence *ret)
{
	struct ks_job *j;
	int r;

	if (!key_of_store(ks, key))
		return caller_fail(-CIMD_ENOKEY, "evidence: no key, or a key of another backend");
	if ((j = job_new(KS_P11_EVIDENCE, key->alg, key->ref, key->ref_len, NULL, 0)) == NULL)
		return -ENOMEM;
	if ((r = ks_run(ks, &j, ks->timeout_ms)) == 0)
		*ret = j->ev;
	job_free(j);
	return r;
}

/* ---- the monotonic counter ---- */

/* A counter job, within the store's timeout-ms like a signature: a hung TPM
 * makes it -CIMD_EUNAVAILABLE, never a hang of the caller. */
static int run_counter(struct key_store *ks, enum ks_op op, uint64_t *ret_value)
{
	struct ks_job *j;
	int r;

	if ((j = job_new(op, CIMD_ALG_NONE, NULL, 0, NULL, 0)) == NULL)
		return -ENOMEM;
	if ((r = ks_run(ks, &j, ks->timeout_ms)) == 0)
		*ret_value = j->counter;
	job_free(j);
	return r;
}

int key_store_counter_read(struct key_store *ks, uint64_t *ret_value)
{
	return run_counter(ks, KS_COUNTER_READ, ret_value);
}

int key_store_counter_increment(struct key_store *ks, uint64_t *ret_value)
{
	return run_counter(ks, KS_COUNTER_INCREMENT, ret_value);
}

void ks_refs_free(struct ks_ref **prefs, size_t n)
{
	struct ks_ref *refs = *prefs;
	size_t i;

	if (refs == NULL)
		return;
	for (i = 0; i < n; i++)
		free(refs[i].ref);
	free(refs);
	*prefs = NULL;
}

void ks_key_free(struct ks_key **pkey)
{
	key_unref(*pkey);
	*pkey = NULL;
}

void ks_key_ref(const struct ks_key *key, const uint8_t **ret_ref, size_t *ret_len)
{
	*ret_ref = key->ref;
	*ret_len = key->ref_len;
}

enum cimd_alg ks_key_alg(const struct ks_key *key)
{
	return key->alg;
}

const char *ks_key_kid(const struct ks_key *key)
{
	return key->kid;
}

json_t *ks_key_jwk(const struct ks_key *key)
{
	return json_incref(key->jwk);
}

int secret_read_file(const char *path, char **ret_secret)
{
	struct stat st;
	char *buf = NULL;
	ssize_t n;
	int fd, r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out;
	}
	/* A PIN that others can read, or that another user owns (and so may
	 * change), is no secret of ours: refuse rather than assume. */
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0 || st.st_uid != geteuid()) {
		r = -EPERM;
		goto out;
	}
	if ((buf = calloc(1, PIN_MAX + 1)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((n = read(fd, buf, PIN_MAX + 1)) < 0) {
		r = -errno;
		goto out;
	}
	if (n > PIN_MAX) {
		r = -E2BIG;
		goto out;
	}
	buf[n] = '\0';
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	if (n == 0 || strlen(buf) != (size_t)n) {
		r = -EINVAL;
		goto out;
	}
	*ret_secret = buf;
	buf = NULL;
	r = 0;
out:
	secret_free(&buf);
	close(fd);
	return r;
}

void secret_free(char **secret)
{
	if (*secret == NULL)
		return;
	OPENSSL_cleanse(*secret, PIN_MAX + 1);
	free(*secret);
	*secret = NULL;
}
