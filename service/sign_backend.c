/*
 * sign_backend.c — the signing socket's backend threads (signer_int.h): one
 * per configured key store, a serial device, signing the jobs of its queue in
 * order and in batches of up to CIMD_SIGN_BATCH (one handoff to the
 * hardware).  When the hardware fails, every job queued before the failure is
 * answered at once rather than waiting its own deadline, so
 * backend_unavailable comes within one key store deadline.  What is signed
 * goes on to the journal thread; what failed goes back to the io thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "signer_int.h"

/* Answers j with the failure r of its backend. */
static void backend_fail(struct signer *s, struct backend_worker *w, struct job *j, int r,
			 const char *detail)
{
	/* A key the database holds that the hardware does not is a hardware
	 * fault (a token away, a module gone stale): the caller may try again. */
	j->err = r == -CIMD_EUNAVAILABLE || r == -CIMD_ENOKEY ? PE_UNAVAILABLE : PE_INTERNAL;
	snprintf(j->msg, sizeof(j->msg), "backend %s: %s", s->d->cfg->backends[w->idx].name,
		 cimd_strerror(r));
	log_err("sign socket: %s, key %s: %s (%s)", j->pol->name, j->pol->kid, cimd_strerror(r),
		detail);
	sign_done_push(s, j);
}

void *sign_backend_main(void *arg)
{
	struct backend_worker *w = arg;
	struct signer *s = w->s;
	struct timespec failed_at = {0, 0};
	struct ks_sign_req *reqs;
	struct job *ready[CIMD_SIGN_BATCH], *j, *next;
	struct key_store *ks;
	size_t n, i;
	int r;

	if ((reqs = calloc(CIMD_SIGN_BATCH, sizeof(*reqs))) == NULL) {
		log_err("sign socket: out of memory");
		return NULL;
	}
	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		/* What is queued, up to a batch: one handoff to the hardware. */
		j = signq_take(&w->q, CIMD_SIGN_BATCH, &s->stop);
		ks = custody_at(s->d->custody, w->idx);
		for (n = 0; j != NULL; j = next) {
			next = j->next;
			if (ks == NULL || sign_elapsed_ns(&j->queued, &failed_at) >= 0) {
				/* Not open, or failed after this job was queued: answer
				 * now rather than wait another deadline. */
				j->err = PE_UNAVAILABLE;
				snprintf(j->msg, sizeof(j->msg), "backend %s is unavailable",
					 s->d->cfg->backends[w->idx].name);
				sign_done_push(s, j);
				continue;
			}
			if (j->pol->key == NULL &&
			    (r = key_store_load(ks, j->pol->alg, j->pol->ref, j->pol->ref_len,
						&j->pol->key)) < 0) {
				if (r == -CIMD_EUNAVAILABLE)
					clock_gettime(CLOCK_MONOTONIC, &failed_at);
				backend_fail(s, w, j, r, key_store_errmsg(ks));
				continue;
			}
			reqs[n] = (struct ks_sign_req){
			    .key = j->pol->key, .msg = (const uint8_t *)j->jws, .len = j->jws_len};
			ready[n++] = j;
		}
		if (n == 0)
			continue;
		if ((r = key_store_sign_batch(ks, reqs, n)) < 0) {
			if (r == -CIMD_EUNAVAILABLE)
				clock_gettime(CLOCK_MONOTONIC, &failed_at);
			for (i = 0; i < n; i++)
				backend_fail(s, w, ready[i], r, key_store_errmsg(ks));
			continue;
		}
		for (i = 0; i < n; i++) {
			j = ready[i];
			if (reqs[i].r < 0) {
				backend_fail(s, w, j, reqs[i].r, "in a batch");
				continue;
			}
			j->jws[j->jws_len++] = '.';
			b64url_encode(reqs[i].sig, reqs[i].sig_len, j->jws + j->jws_len);
			j->jws_len += b64url_encoded_len(reqs[i].sig_len);
			signq_push(&s->jr.q, j);
		}
	}
	free(reqs);
	return NULL;
}
