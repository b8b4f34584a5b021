/*
 * custody.c — the key stores: which backends are configured, opening them
 * (at start-up and again every second while one is missing), whether each
 * answers (the health probe), and how many hardware calls failed.
 *
 * The one module that holds the key stores (issue 14).  Everything else asks
 * it for a backend's store, by index or name, and gets NULL while that store
 * is not open.  The main thread opens, probes and frees; the signer's backend
 * threads read a store through custody_at, which is why a store is installed
 * with an atomic release and read with an acquire (a store, once installed,
 * stays until custody_free, after the signer has stopped).
 *
 * Opening can take a second (SoftHSM2's C_Initialize reads every object file
 * of the token: 1.2 s at 20,000 objects, docs/scaling.md).  At start-up the
 * stores other than the TPM open in a thread of their own while the daemon
 * publishes what the database holds; the TPM opens first, on the caller's
 * thread, because the journal's rollback check needs it.  One thread opens
 * the others in order, as custody_open_missing does, since two may load the
 * same module.  The thread writes only its own results; custody_open_join
 * installs them on the main thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

struct custody {
	size_t n;
	struct backend {
		char name[32];
		char *conf;
		struct key_store *ks; /* written by the main thread (atomic), read by any */
		int health;	      /* 1 answers, 0 does not, -1 not probed yet */
	} b[CIMD_BACKENDS_MAX];
	unsigned long failures; /* atomic: hardware calls that failed, for /metrics */
	int tpm;		/* the index of the TPM backend (the rollback counter), or -1 */
	/* The start-up opening thread and what it opened. */
	struct {
		pthread_t t;
		int running, started;
		struct key_store *ks[CIMD_BACKENDS_MAX];
		int r[CIMD_BACKENDS_MAX];
		char err[CIMD_BACKENDS_MAX][256];
	} opening;
};

int custody_new(const struct cimd_config *cfg, struct custody **ret)
{
	struct custody *c;
	size_t i;

	if (cfg->n_backends > CIMD_BACKENDS_MAX)
		return -E2BIG;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return -ENOMEM;
	c->tpm = -1;
	for (i = 0; i < cfg->n_backends; i++) {
		snprintf(c->b[i].name, sizeof(c->b[i].name), "%s", cfg->backends[i].name);
		c->b[i].health = -1;
		if ((c->b[i].conf = strdup(cfg->backends[i].conf)) == NULL) {
			c->n = i;
			custody_free(&c);
			return -ENOMEM;
		}
		if (strcmp(c->b[i].name, "tpm2") == 0 && c->tpm < 0)
			c->tpm = (int)i;
	}
	c->n = cfg->n_backends;
	*ret = c;
	return 0;
}

void custody_free(struct custody **pc)
{
	struct custody *c = *pc;
	size_t i;

	if (c == NULL)
		return;
	custody_open_join(c); /* a failed start: what the thread opened is freed below */
	for (i = 0; i < c->n; i++) {
		key_store_free(&c->b[i].ks);
		free(c->b[i].conf);
	}
	free(c);
	*pc = NULL;
}

size_t custody_count(const struct custody *c)
{
	return c->n;
}

const char *custody_name(const struct custody *c, size_t i)
{
	return i < c->n ? c->b[i].name : NULL;
}

int custody_index(const struct custody *c, const char *backend)
{
	size_t i;

	for (i = 0; backend != NULL && i < c->n; i++)
		if (strcmp(c->b[i].name, backend) == 0)
			return (int)i;
	return -1;
}

int custody_tpm(const struct custody *c)
{
	return c->tpm;
}

struct key_store *custody_at(struct custody *c, size_t i)
{
	return i < c->n ? __atomic_load_n(&c->b[i].ks, __ATOMIC_ACQUIRE) : NULL;
}

struct key_store *custody_store(struct custody *c, const char *backend)
{
	int i = custody_index(c, backend);

	return i < 0 ? NULL : custody_at(c, (size_t)i);
}

/* A store opened (r 0) or not: installed, or the failure logged. */
static int install(struct custody *c, size_t i, int r, struct key_store *ks, const char *err,
		   int quiet)
{
	if (r == 0) {
		__atomic_store_n(&c->b[i].ks, ks, __ATOMIC_RELEASE);
		log_info("backend %s: open, %d session%s", c->b[i].name, key_store_sessions(ks),
			 key_store_sessions(ks) == 1 ? "" : "s");
		return 1;
	}
	if (!quiet)
		log_err("backend %s: %s (%s); retrying every second", c->b[i].name,
			cimd_strerror(r), err);
	return 0;
}

static int open_one(struct custody *c, size_t i, int quiet)
{
	struct key_store *ks = NULL;
	char err[256] = "";
	int r;

	r = key_store_open(c->b[i].conf, &ks, err, sizeof(err));
	return install(c, i, r, ks, err, quiet);
}

int custody_open_missing(struct custody *c)
{
	size_t i;
	int n = 0;

	if (c->opening.running)
		return 0; /* the start-up thread has them */
	for (i = 0; i < c->n; i++)
		if (c->b[i].ks == NULL)
			n += open_one(c, i, 1);
	return n > 0;
}

static void *opening_run(void *arg)
{
	struct custody *c = arg;
	size_t i;

	for (i = 0; i < c->n; i++)
		if ((int)i != c->tpm)
			c->opening.r[i] =
			    key_store_open(c->b[i].conf, &c->opening.ks[i], c->opening.err[i],
					   sizeof(c->opening.err[i]));
	return NULL;
}

void custody_open_start(struct custody *c)
{
	memset(&c->opening, 0, sizeof(c->opening));
	c->opening.running = 1;
	if (c->n > (c->tpm >= 0 ? 1u : 0u) &&
	    !(c->opening.started = pthread_create(&c->opening.t, NULL, opening_run, c) == 0))
		opening_run(c); /* no thread: in order, here */
	if (c->tpm >= 0)
		open_one(c, (size_t)c->tpm, 0);
}

void custody_open_join(struct custody *c)
{
	size_t i;

	if (!c->opening.running)
		return;
	if (c->opening.started)
		pthread_join(c->opening.t, NULL);
	for (i = 0; i < c->n; i++)
		if ((int)i != c->tpm && c->b[i].ks == NULL)
			install(c, i, c->opening.r[i], c->opening.ks[i], c->opening.err[i], 0);
	memset(&c->opening, 0, sizeof(c->opening));
}

int custody_health(const struct custody *c, size_t i)
{
	return i < c->n ? c->b[i].health : 0;
}

int custody_probe(struct custody *c, custody_key_fn key_of, void *arg)
{
	static const uint8_t msg[] = "cimdd health probe";
	uint8_t sig[CIMD_SIG_MAX];
	struct key_store *ks;
	struct ks_key *key;
	size_t i, sl;
	int ok, changed = 0, r;

	for (i = 0; i < c->n; i++) {
		ks = custody_at(c, i);
		key = NULL;
		/* A real signature: it exercises everything a client needs.  No
		 * key to sign with yet (-ENOENT): the store is open, and
		 * attest_keys_ensure says why there is none. */
		if (ks == NULL)
			ok = 0;
		else if ((r = key_of(arg, i, ks, &key)) == -EAGAIN)
			continue; /* no key to probe with for now: nothing learnt */
		else if (r == -ENOENT)
			ok = 1;
		else
			ok = r == 0 && key_store_sign(ks, key, msg, sizeof(msg) - 1, sig, &sl) == 0;
		ks_key_free(&key);
		if (ok == c->b[i].health)
			continue;
		if (ok)
			log_info("backend %s: the hardware answers", c->b[i].name);
		else if (ks != NULL)
			log_err("backend %s: the hardware does not answer (%s)", c->b[i].name,
				key_store_errmsg(ks));
		c->b[i].health = ok;
		changed = 1;
	}
	return changed;
}

void custody_failed(struct custody *c)
{
	__atomic_add_fetch(&c->failures, 1, __ATOMIC_RELAXED);
}

unsigned long custody_failures(const struct custody *c)
{
	return __atomic_load_n(&c->failures, __ATOMIC_RELAXED);
}
