/*
 * test_rotation.c — rotation under load: two clients sign continuously while
 * the scheduler rotates their keys every 2 s (jwks_max_age 1 s) and an operator
 * revokes three active keys; a verifier that caches each JWKS exactly as its
 * Cache-Control allows, and refetches once on an unknown kid, checks every
 * assertion.  Zero may fail, except those signed by a revoked key and checked
 * after the JWKS without it was published — and those must fail.  On SoftHSM2
 * (the TPM's lifecycle is the same code; test_crash.c and test_sign.c cover it).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cimd.h"
#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;
static char dir[400], db[600], base[64], ca[600], sign_sock[600];
static const char aud[] = "https://as.example.com/token";
static const char *const names[2] = {"agent-a", "agent-b"};

#define ROTATIONS 20
#define REVOCATIONS 3

#define ctl(out, len, ...) t_cimdd_ctl(&cd, out, len, __VA_ARGS__)

/* ---- assertions in flight from the signers to the verifier ---- */

/* The keys this test revoked, each with an assertion it signed just before. */
static struct {
	char kid[64];
	char *jwt; /* an assertion it signed before */
} revs[REVOCATIONS];
/* One assertion of agent-a per kid that signed (the signer keeps them). */
#define KIDS_MAX 64
static struct {
	char kid[64];
	char *jwt;
} seen[KIDS_MAX];
static int n_seen;
static int n_revs;
static pthread_mutex_t rev_mu = PTHREAD_MUTEX_INITIALIZER;

struct item {
	struct item *next;
	int client;
	char *jwt;
	char kid[64];
	long long exp;
};

static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cv = PTHREAD_COND_INITIALIZER;
static struct item *q_head, **q_tail = &q_head;
static volatile int stop;
static long signed_n[2];

static void *signer_main(void *arg)
{
	int client = (int)(long)arg;
	char cid[256];
	struct cimd *c = NULL;
	struct cimd_info info;
	struct item *it;
	char *jwt;

	snprintf(cid, sizeof(cid), "%s/clients/%s", base, names[client]);
	while (!stop) {
		if (c == NULL && cimd_open(sign_sock, &c) != CIMD_OK) {
			cimd_close(&c);
			usleep(10000);
			continue;
		}
		jwt = NULL;
		if (cimd_assert(c, cid, aud, 0, &jwt, &info) != CIMD_OK) {
			usleep(1000);
			continue;
		}
		if ((it = calloc(1, sizeof(*it))) == NULL) {
			free(jwt);
			continue;
		}
		it->client = client;
		it->jwt = jwt;
		snprintf(it->kid, sizeof(it->kid), "%s", info.kid);
		it->exp = info.exp;
		signed_n[client]++;
		if (client == 0) {
			int k;

			pthread_mutex_lock(&rev_mu);
			for (k = 0; k < n_seen && strcmp(seen[k].kid, info.kid) != 0; k++)
				;
			if (k == n_seen && n_seen < KIDS_MAX) {
				snprintf(seen[k].kid, sizeof(seen[k].kid), "%s", info.kid);
				seen[k].jwt = strdup(jwt);
				n_seen++;
			}
			pthread_mutex_unlock(&rev_mu);
		}
		pthread_mutex_lock(&q_mu);
		*q_tail = it;
		q_tail = &it->next;
		pthread_cond_signal(&q_cv);
		pthread_mutex_unlock(&q_mu);
		usleep(2000); /* about 500 a second per client: load, not a flood */
	}
	cimd_close(&c);
	return NULL;
}

/* ---- the verifier: an authorization server's JWKS cache ---- */

struct cache {
	json_t *jwks;
	double expires; /* ms, from Cache-Control max-age */
	int fetches;
};

static int fetch_jwks(int client, struct cache *c)
{
	char out[65536], hdr[700], body[700], *p;
	long max_age = 0;
	FILE *f;

	snprintf(hdr, sizeof(hdr), "%s/h-%d.txt", dir, client);
	snprintf(body, sizeof(body), "%s/b-%d.json", dir, client);
	if (t_sh_out(out, sizeof(out),
		     "curl -s --max-time 5 --cacert %s -D %s -o %s %s/clients/%s/jwks.json", ca,
		     hdr, body, base, names[client]) != 0)
		return -1;
	if ((f = fopen(hdr, "r")) != NULL) {
		size_t n = fread(out, 1, sizeof(out) - 1, f);

		out[n] = '\0';
		fclose(f);
		if ((p = strstr(out, "max-age=")) != NULL)
			max_age = strtol(p + 8, NULL, 10);
	}
	json_decref(c->jwks);
	c->jwks = json_load_file(body, 0, NULL);
	c->expires = t_now_ms() + (double)max_age * 1000;
	c->fetches++;
	return c->jwks != NULL ? 0 : -1;
}

static const json_t *find_kid(const json_t *jwks, const char *kid)
{
	const json_t *k;
	size_t i;

	json_array_foreach(json_object_get(jwks, "keys"), i,
			   k) if (strcmp(json_string_value(json_object_get(k, "kid")), kid) ==
				  0) return k;
	return NULL;
}

static int revoked(const char *kid)
{
	char out[32] = "";

	t_db_sql(db, out, sizeof(out),
		 "SELECT count(*) FROM keys WHERE kid = '%s' AND state = 'revoked'", kid);
	return atoi(out) == 1;
}

static long verified, failed_bad, failed_revoked, revoked_ok, revoked_checked, stale;
static char first_bad[256];

static void *verifier_main(void *arg)
{
	struct cache cache[2];
	const json_t *jwk;
	struct item *it;
	uint8_t *payload;
	size_t plen;
	int ok;

	(void)arg;
	memset(cache, 0, sizeof(cache));
	for (;;) {
		pthread_mutex_lock(&q_mu);
		while (q_head == NULL && !stop)
			pthread_cond_wait(&q_cv, &q_mu);
		if ((it = q_head) != NULL && (q_head = it->next) == NULL)
			q_tail = &q_head;
		pthread_mutex_unlock(&q_mu);
		if (it == NULL)
			break;
		struct cache *c = &cache[it->client];
		/* As Cache-Control allows, and once more on an unknown kid. */
		if (c->jwks == NULL || t_now_ms() >= c->expires)
			fetch_jwks(it->client, c);
		if (find_kid(c->jwks, it->kid) == NULL)
			fetch_jwks(it->client, c);
		jwk = find_kid(c->jwks, it->kid);
		payload = NULL;
		ok = jwk != NULL && jws_verify(it->jwt, jwk, NULL, &payload, &plen) == 0;
		free(payload);
		/* An assertion that expired before the verifier reached it (a backlog
		 * on a slow machine) is refused by any AS for its exp alone (RFC 7519
		 * §4.1.4: not on or after exp); its key may rightly have left the JWKS
		 * by then. */
		if (!ok && jwk == NULL && (long long)time(NULL) >= it->exp) {
			stale++;
			free(it->jwt);
			free(it);
			continue;
		}
		if (ok) {
			verified++;
		} else if (revoked(it->kid) && jwk == NULL) {
			failed_revoked++; /* the JWKS without it was published: must fail */
		} else {
			if (!failed_bad++)
				snprintf(first_bad, sizeof(first_bad), "%s kid %s: %s",
					 names[it->client], it->kid,
					 jwk ? "bad signature" : "kid not in the fresh JWKS");
		}
		free(it->jwt);
		free(it);
	}
	printf("# verifier fetched the JWKS %d and %d times\n", cache[0].fetches, cache[1].fetches);
	json_decref(cache[0].jwks);
	json_decref(cache[1].jwks);
	return NULL;
}

int main(void)
{
	char out[8192], kid[64];
	pthread_t sig[2], ver;
	long rotations = 0;
	int rc, i, revocations = 0;
	double t0;

	signal(SIGPIPE, SIG_IGN);
	if (!t_ok(t_softhsm_init(&hsm, "rotation", "654321") == 0, "SoftHSM2 token"))
		return t_done();
	rc = t_cimdd_start(&cd, "run", hsm.conf,
			   "jwks_max_age = 1\ncimd_max_age = 1\nassertion_default_ttl = 1\n"
			   "assertion_max_ttl = 1\nclock_skew = 0\ndestroy_delay = 1\n"
			   "rotate_every = 2\n");
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc)))
		return t_done();
	snprintf(dir, sizeof(dir), "%s", cd.dir);
	snprintf(db, sizeof(db), "%s", cd.db);
	snprintf(base, sizeof(base), "%s", cd.base);
	snprintf(ca, sizeof(ca), "%s", cd.ca);
	snprintf(sign_sock, sizeof(sign_sock), "%s", cd.sign_sock);
	for (i = 0, rc = 0; i < 2 && rc == 0; i++)
		rc = t_cimdd_client(&cd, names[i], aud);
	if (!t_ok(rc == 0, "two clients, allowed, with an audience"))
		return t_done();
	pthread_create(&ver, NULL, verifier_main, NULL);
	pthread_create(&sig[0], NULL, signer_main, (void *)0L);
	pthread_create(&sig[1], NULL, signer_main, (void *)1L);
	/* Until agent-a has been rotated 20 times by the scheduler, revoking its
	 * active key three times along the way. */
	t0 = t_now_ms();
	while (t_now_ms() - t0 < 120000) {
		rotations = t_db_journal_match(db, "key.state", "{ssssss}", "to", "active",
					       "client", "agent-a", "actor", "scheduler");
		if (rotations >= ROTATIONS)
			break;
		if (revocations < REVOCATIONS && rotations >= 4 + 5 * revocations) {
			if (ctl(out, sizeof(out), "key list agent-a") == 0) {
				char *p = strstr(out, " active");

				while (p != NULL && p > out && p[-1] != '\n')
					p--;
				char *jwt = NULL;

				/* Revoked only once the verifier has seen an
				 * assertion by it: that one is checked again at
				 * the end.  A key made active a moment ago may not
				 * have signed one yet (a loaded machine): then the
				 * next look, 200 ms on. */
				if (p != NULL && sscanf(p, "%63s", kid) == 1) {
					pthread_mutex_lock(&rev_mu);
					for (i = 0; i < n_seen; i++)
						if (strcmp(seen[i].kid, kid) == 0 && seen[i].jwt) {
							free(jwt);
							jwt = strdup(seen[i].jwt);
						}
					pthread_mutex_unlock(&rev_mu);
				}
				if (jwt != NULL &&
				    ctl(out, sizeof(out),
					"key revoke agent-a %s --reason rotation-test --replace",
					kid) == 0) {
					pthread_mutex_lock(&rev_mu);
					snprintf(revs[n_revs].kid, sizeof(revs[0].kid), "%s", kid);
					revs[n_revs].jwt = jwt;
					jwt = NULL;
					n_revs++;
					pthread_mutex_unlock(&rev_mu);
					revocations++;
				}
				free(jwt);
			}
		}
		usleep(200 * 1000);
	}
	stop = 1;
	pthread_join(sig[0], NULL);
	pthread_join(sig[1], NULL);
	pthread_mutex_lock(&q_mu);
	pthread_cond_broadcast(&q_cv);
	pthread_mutex_unlock(&q_mu);
	pthread_join(ver, NULL);
	t_ok(rotations >= ROTATIONS, "%ld scheduled rotations of agent-a in %.0f s", rotations,
	     (t_now_ms() - t0) / 1000);
	t_ok(revocations == REVOCATIONS, "%d revocations of its active key along the way",
	     revocations);
	t_ok(signed_n[0] > 1000 && signed_n[1] > 1000, "assertions signed: %ld and %ld",
	     signed_n[0], signed_n[1]);
	t_ok(failed_bad == 0,
	     "every assertion verifies with a JWKS cached as Cache-Control allows: %ld verified, "
	     "%ld failed%s%s",
	     verified, failed_bad, failed_bad ? ": " : "", first_bad);
	printf("# %ld assertions had expired before the verifier reached them (not counted)\n",
	       stale);
	t_ok(stale * 10 < verified, "the verifier kept up with most assertions (%ld stale)", stale);
	/* An assertion each revoked key signed just before its revocation, checked
	 * again now against the JWKS served: none may verify. */
	{
		struct cache now = {NULL, 0, 0};
		const json_t *k;
		uint8_t *payload;
		size_t plen;

		fetch_jwks(0, &now);
		for (i = 0; i < n_revs; i++) {
			if (revs[i].jwt == NULL)
				continue;
			revoked_checked++;
			payload = NULL;
			if ((k = find_kid(now.jwks, revs[i].kid)) != NULL &&
			    jws_verify(revs[i].jwt, k, NULL, &payload, &plen) == 0)
				revoked_ok++;
			free(payload);
			free(revs[i].jwt);
		}
		json_decref(now.jwks);
	}
	for (i = 0; i < n_seen; i++)
		free(seen[i].jwt);
	t_ok(revoked_checked == n_revs && revoked_ok == 0,
	     "no assertion by a revoked key verifies against the JWKS published after its "
	     "revocation (%ld checked, %ld verified; during the run %ld more refused)",
	     revoked_checked, revoked_ok, failed_revoked);
	t_ok(t_db_issued_after_revocation(db, NULL) == 0,
	     "no assertion was issued by a key after its revocation");
	t_ok(t_db_journal_match(db, "key.state", "{ss}", "to", "revoked") == REVOCATIONS,
	     "(the %d revocations are journal records)", REVOCATIONS);
	t_ok(ctl(out, sizeof(out), "journal verify") == 0, "the journal verifies");
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stops cleanly");
	return t_done();
}
