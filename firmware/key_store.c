/*
 * key_store.c — the backend-neutral key store.
 *
 * Parses the configuration string, dispatches to a backend (ks_pkcs11.c,
 * ks_tpm2.c), keeps the last error's details, and builds each key's public JWK
 * and kid once, when the key is generated or loaded.
 *
 * Threads and deadlines.  Neither libp11 0.4.12 nor an ESAPI context may be used
 * by two threads at once, and hardware can hang: tcti-swtpm in tpm2-tss 3.2
 * ignores ESAPI timeouts, a network HSM can stall.  So each key store owns one
 * worker thread, the only thread that ever calls its backend after open.  A
 * caller hands the worker a job (with its own copies of the inputs) and waits
 * at most the job's deadline: `timeout-ms` (default 1500) for load, sign,
 * destroy and the counter, 60 s for key generation and for a listing.  A job that misses its
 * deadline is abandoned to the worker, which frees it when the hardware finally
 * answers; until then every call fails at once with CIMD_EUNAVAILABLE, and
 * afterwards the store works again by itself.  Callers are serialised by ks->lock, within
 * the same deadline: one key store is one serial device, and a process has at
 * most one key store per module or TPM (see the registry below).
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

#include "ks.h"

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

enum ks_op {
	KS_GENERATE,
	KS_LOAD,
	KS_SIGN,
	KS_DESTROY,
	KS_LIST,
	KS_GENERATE_ATTEST,
	KS_CERTIFY,
	KS_P11_EVIDENCE,
	KS_COUNTER_READ,
	KS_COUNTER_INCREMENT,
};

/* One call handed to the worker.  Inputs are the job's own copies, so an
 * abandoned job never points into a caller's stack. */
struct ks_job {
	enum ks_op op;
	enum cimd_alg alg;
	uint8_t *ref; /* in: load, sign, destroy, certify (the AK); out: generate */
	size_t ref_len;
	uint8_t *ref2; /* in: certify (the certified key) */
	size_t ref2_len;
	uint8_t *msg;
	size_t msg_len;
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
	int done;
	int abandoned;
	struct ks_job *more; /* a batch: further signatures run in the same handoff */
};

struct key_store {
	pthread_mutex_t lock; /* serialises callers */
	const struct ks_backend *be_ops;
	void *be;
	int timeout_ms;
	char scratch[KS_ERRMSG_MAX]; /* backend messages outside a job (open) */
	char *be_errmsg;	     /* where ks_fail() writes: the job's buffer, or scratch */
	char exclusive[KS_CONF_MAX]; /* "backend:module-or-tcti", see the registry */
	pthread_t worker;
	int have_worker;
	pthread_mutex_t mu; /* guards job, stop, orphaned */
	pthread_cond_t job_cv;
	pthread_cond_t done_cv;
	struct ks_job *job;
	int stop;
	int orphaned; /* freed while wedged: the worker cleans up */
};

struct ks_key {
	const struct ks_backend *be_ops; /* the backend that made or loaded it */
	enum cimd_alg alg;
	int restricted; /* a TPM AK: signs only digests the TPM computed */
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

int ks_fail(struct key_store *ks, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ks->be_errmsg, KS_ERRMSG_MAX, fmt, ap);
	va_end(ap);
	return r;
}

/* A failure seen by the calling side (never from the worker). */
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
	(void)ks;
	return 1;
}

static void job_free(struct ks_job *job)
{
	struct ks_job *more;

	for (; job != NULL; job = more) {
		more = job->more;
		free(job->ref);
		free(job->ref2);
		ks_certify_clear(&job->cert);
		if (job->msg != NULL)
			OPENSSL_cleanse(job->msg, job->msg_len);
		free(job->msg);
		json_decref(job->jwk);
		ks_refs_free(&job->refs, job->nrefs);
		free(job);
	}
}

static void job_run(struct key_store *ks, struct ks_job *j)
{
	ks->be_errmsg = j->errmsg;
	switch (j->op) {
	case KS_GENERATE:
		j->r = ks->be_ops->generate(ks, ks->be, j->alg, j->tag[0] ? j->tag : NULL, &j->ref,
					    &j->ref_len, &j->jwk);
		break;
	case KS_LOAD:
		j->r = ks->be_ops->load(ks, ks->be, j->alg, j->ref, j->ref_len, &j->jwk);
		break;
	case KS_SIGN:
		for (; j != NULL; j = j->more) {
			ks->be_errmsg = j->errmsg;
			j->r = ks->be_ops->sign(ks, ks->be, j->alg, j->ref, j->ref_len, j->msg,
						j->msg_len, j->sig, &j->sig_len);
		}
		break;
	case KS_DESTROY:
		j->r = ks->be_ops->destroy(ks, ks->be, j->ref, j->ref_len);
		break;
	case KS_LIST:
		j->r = ks->be_ops->list(ks, ks->be, j->msg_len, &j->refs, &j->nrefs);
		break;
	case KS_GENERATE_ATTEST:
		j->r = ks->be_ops->generate_attest(ks, ks->be, j->tag[0] ? j->tag : NULL, &j->ref,
						   &j->ref_len, &j->jwk);
		break;
	case KS_CERTIFY:
		j->r = ks->be_ops->certify(ks, ks->be, j->ref, j->ref_len, j->ref2, j->ref2_len,
					   j->msg, j->msg_len, &j->cert);
		break;
	case KS_P11_EVIDENCE:
		j->r = ks->be_ops->p11_evidence(ks, ks->be, j->ref, j->ref_len, &j->ev);
		break;
	case KS_COUNTER_READ:
	case KS_COUNTER_INCREMENT:
		j->r = ks->be_ops->counter(ks, ks->be, j->op == KS_COUNTER_INCREMENT, &j->counter);
		break;
	}
	ks->be_errmsg = ks->scratch;
}

static void ks_release(struct key_store *ks)
{
	if (ks->be_ops != NULL && ks->be != NULL)
		ks->be_ops->close(ks->be);
	registry_del(ks);
	pthread_cond_destroy(&ks->job_cv);
	pthread_cond_destroy(&ks->done_cv);
	pthread_mutex_destroy(&ks->mu);
	pthread_mutex_destroy(&ks->lock);
	free(ks);
}

static void *ks_worker(void *arg)
{
	struct key_store *ks = arg;
	struct ks_job *job;
	int orphaned;

	pthread_mutex_lock(&ks->mu);
	for (;;) {
		while (ks->job == NULL && !ks->stop)
			pthread_cond_wait(&ks->job_cv, &ks->mu);
		if (ks->job == NULL)
			break;
		job = ks->job;
		pthread_mutex_unlock(&ks->mu);
		job_run(ks, job);
		pthread_mutex_lock(&ks->mu);
		if (job->abandoned && (job->op == KS_GENERATE || job->op == KS_GENERATE_ATTEST) &&
		    job->r == 0) {
			/* Nobody will ever hold this key's reference: remove it rather
			 * than leave an orphan in the hardware. */
			pthread_mutex_unlock(&ks->mu);
			ks->be_errmsg = job->errmsg;
			ks->be_ops->destroy(ks, ks->be, job->ref, job->ref_len);
			ks->be_errmsg = ks->scratch;
			pthread_mutex_lock(&ks->mu);
		}
		ks->job = NULL;
		job->done = 1;
		if (job->abandoned)
			job_free(job);
		pthread_cond_broadcast(&ks->done_cv);
	}
	orphaned = ks->orphaned;
	pthread_mutex_unlock(&ks->mu);
	if (orphaned)
		ks_release(ks);
	return NULL;
}

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

/*
 * Runs *pjob on the worker within timeout_ms of now, waiting for other callers
 * of the store included: the deadline covers the whole call.  On return the
 * job belongs to the caller again; when it does not (abandoned to the worker,
 * or never run), *pjob is set to NULL.
 */
static int ks_run(struct key_store *ks, struct ks_job **pjob, int timeout_ms)
{
	struct ks_job *job = *pjob;
	struct timespec deadline = deadline_in(timeout_ms);
	int r;

	if (pthread_mutex_clocklock(&ks->lock, CLOCK_MONOTONIC, &deadline) != 0) {
		job_free(job);
		*pjob = NULL;
		return caller_fail(-CIMD_EUNAVAILABLE, "%s: busy with other callers for %d ms",
				   ks->be_ops->name, timeout_ms);
	}
	pthread_mutex_lock(&ks->mu);
	if (ks->job != NULL) {
		pthread_mutex_unlock(&ks->mu);
		pthread_mutex_unlock(&ks->lock);
		job_free(job);
		*pjob = NULL;
		return caller_fail(-CIMD_EUNAVAILABLE,
				   "%s: hardware has not yet answered an earlier command",
				   ks->be_ops->name);
	}
	ks->job = job;
	pthread_cond_signal(&ks->job_cv);
	while (!job->done)
		if (pthread_cond_timedwait(&ks->done_cv, &ks->mu, &deadline) == ETIMEDOUT)
			break;
	if (!job->done) {
		job->abandoned = 1; /* the worker frees it */
		*pjob = NULL;
		pthread_mutex_unlock(&ks->mu);
		pthread_mutex_unlock(&ks->lock);
		return caller_fail(-CIMD_EUNAVAILABLE, "%s: no answer from the hardware in %d ms",
				   ks->be_ops->name, timeout_ms);
	}
	pthread_mutex_unlock(&ks->mu);
	pthread_mutex_unlock(&ks->lock);
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

/* Takes the key store's own parameters (timeout-ms) out of the list. */
static int take_own_params(struct key_store *ks, struct ks_param *params, size_t *n)
{
	size_t i, j;
	char *end;
	long v;

	for (i = j = 0; i < *n; i++) {
		if (strcmp(params[i].name, "timeout-ms") != 0) {
			params[j++] = params[i];
			continue;
		}
		errno = 0;
		v = strtol(params[i].value, &end, 10);
		if (errno != 0 || *end != '\0' || v < 1 || v > KS_TIMEOUT_MAX_MS)
			return ks_fail(ks, -CIMD_ECONFIG, "timeout-ms '%s' is not 1..%d",
				       params[i].value, KS_TIMEOUT_MAX_MS);
		ks->timeout_ms = (int)v;
	}
	*n = j;
	return 0;
}

int key_store_open(const char *conf, struct key_store **ret_ks, char *errbuf, size_t errlen)
{
	struct key_store *ks;
	struct ks_param params[KS_MAX_PARAMS];
	pthread_condattr_t ca;
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
	pthread_mutex_init(&ks->lock, NULL);
	pthread_mutex_init(&ks->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ks->done_cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&ks->job_cv, NULL);
	ks->be_errmsg = ks->scratch;
	ks->timeout_ms = KS_TIMEOUT_DEFAULT_MS;
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
	if ((r = ks->be_ops->open(ks, params, n, &ks->be)) < 0)
		goto out;
	if ((r = -pthread_create(&ks->worker, NULL, ks_worker, ks)) < 0) {
		ks_fail(ks, r, "cannot start the key store's worker thread");
		goto out;
	}
	ks->have_worker = 1;
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
		key_store_free(&ks);
	}
	return r;
}

void key_store_free(struct key_store **pks)
{
	struct key_store *ks = *pks;

	if (ks == NULL)
		return;
	*pks = NULL;
	if (!ks->have_worker) {
		ks_release(ks);
		return;
	}
	pthread_mutex_lock(&ks->mu);
	ks->stop = 1;
	if (ks->job != NULL) {
		/* The worker is stuck in the hardware: it frees the store when (if)
		 * the hardware answers.  We do not wait for it. */
		ks->orphaned = 1;
		pthread_mutex_unlock(&ks->mu);
		pthread_detach(ks->worker);
		return;
	}
	pthread_cond_signal(&ks->job_cv);
	pthread_mutex_unlock(&ks->mu);
	pthread_join(ks->worker, NULL);
	ks_release(ks);
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

int key_store_sign(struct key_store *ks, struct ks_key *key, const uint8_t *msg, size_t len,
		   uint8_t *ret_sig, size_t *ret_len)
{
	struct ks_job *j;
	int r;

	if (key == NULL || key->ref == NULL)
		return caller_fail(-CIMD_ENOKEY, "no key");
	if (len > KS_MSG_MAX)
		return caller_fail(-E2BIG, "message of %zu bytes", len);
	if ((j = job_new(KS_SIGN, key->alg, key->ref, key->ref_len, msg, len)) == NULL)
		return -ENOMEM;
	if ((r = ks_run(ks, &j, ks->timeout_ms)) == 0) {
		memcpy(ret_sig, j->sig, j->sig_len);
		*ret_len = j->sig_len;
	}
	job_free(j);
	return r;
}

int key_store_sign_batch(struct key_store *ks, struct ks_sign_req *reqs, size_t n)
{
	struct ks_job *head = NULL, **tail = &head, *j;
	size_t i;
	int r;

	if (n == 0 || n > CIMD_SIGN_BATCH_MAX)
		return caller_fail(-EINVAL, "a batch of %zu signatures", n);
	for (i = 0; i < n; i++) {
		if (reqs[i].key == NULL || reqs[i].key->ref == NULL || reqs[i].len > KS_MSG_MAX) {
			job_free(head);
			return caller_fail(-EINVAL,
					   "signature %zu of the batch: no key or too long", i);
		}
		if ((j = job_new(KS_SIGN, reqs[i].key->alg, reqs[i].key->ref, reqs[i].key->ref_len,
				 reqs[i].msg, reqs[i].len)) == NULL) {
			job_free(head);
			return -ENOMEM;
		}
		*tail = j;
		tail = &j->more;
	}
	if ((r = ks_run(ks, &head, ks->timeout_ms)) < 0 && head == NULL)
		return r; /* not run, or abandoned to the worker */
	last_err[0] = '\0';
	for (i = 0, j = head; i < n && j != NULL; i++, j = j->more) {
		reqs[i].r = j->r;
		if (j->r == 0) {
			memcpy(reqs[i].sig, j->sig, j->sig_len);
			reqs[i].sig_len = j->sig_len;
		} else if (last_err[0] == '\0') {
			caller_fail(j->r, "%s", j->errmsg[0] ? j->errmsg : cimd_strerror(j->r));
		}
	}
	job_free(head);
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
	struct ks_key *key = *pkey;

	if (key == NULL)
		return;
	free(key->ref);
	json_decref(key->jwk);
	free(key);
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
