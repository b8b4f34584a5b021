/*
 * test_dbdown.c — the appliance on PostgreSQL when the database goes away
 * (issue 17, "Failure behaviour"; docs/scaling.md).
 *
 * A real cimdd on SoftHSM2 with store = postgresql on a throwaway cluster,
 * four clients signing through libcimd.  The cluster is killed (a crash, not
 * a clean stop) while they sign and started again two seconds later:
 *
 * - while it is down, signing is refused (backend_unavailable, naming the
 *   database) and no request waits long for it; the publisher keeps serving
 *   the JWKS it has; an admin request answers with an error;
 * - when it is back, signing resumes with no operator;
 * - every assertion a client received is in the journal, and the journal
 *   verifies.
 *
 * And a second cimdd under the same node name on the same database is refused
 * at its start (test_cluster runs two nodes under two names).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cimd.h"
#include "harness.h"

#define CLIENTS 4
#define JTI_MAX 200000

static struct t_cimdd cd;
static struct t_pg pg;
static char client_id[256];
static const char aud[] = "https://as.example.com/token";

/* What the clients saw, by phase: 0 before the kill, 1 while down, 2 after
 * the restart; a request that began in one phase and ended in the next is
 * judged by none (straddled), but its assertion must still be journaled. */
static struct {
	pthread_mutex_t mu;
	int phase, stop;
	long ok[3], refused[3], other[3], straddled;
	double slowest_ms[3];
	char refusal[256];
	char (*jti)[64];
	size_t n_jti;
} seen = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *signer(void *arg)
{
	struct cimd_info info;
	struct cimd *c = NULL;
	char *jwt = NULL;
	double t0, ms;
	int r, phase;

	(void)arg;
	while (!__atomic_load_n(&seen.stop, __ATOMIC_ACQUIRE)) {
		phase = __atomic_load_n(&seen.phase, __ATOMIC_ACQUIRE);
		t0 = t_now_ms();
		if ((r = cimd_open(cd.sign_sock, &c)) == CIMD_OK)
			r = cimd_assert(c, client_id, aud, 0, &jwt, &info);
		ms = t_now_ms() - t0;
		pthread_mutex_lock(&seen.mu);
		if (r == CIMD_OK && seen.n_jti < JTI_MAX)
			snprintf(seen.jti[seen.n_jti++], 64, "%s", info.jti);
		if (phase != __atomic_load_n(&seen.phase, __ATOMIC_ACQUIRE)) {
			seen.straddled++;
		} else if (r == CIMD_OK) {
			seen.ok[phase]++;
		} else if (r == CIMD_BACKEND_UNAVAILABLE) {
			seen.refused[phase]++;
			snprintf(seen.refusal, sizeof(seen.refusal), "%s", cimd_message(c));
		} else {
			seen.other[phase]++;
			if (seen.other[phase] == 1)
				printf("# phase %d: status %d: %s\n", phase, r, cimd_message(c));
		}
		if (phase == __atomic_load_n(&seen.phase, __ATOMIC_ACQUIRE) &&
		    ms > seen.slowest_ms[phase])
			seen.slowest_ms[phase] = ms;
		pthread_mutex_unlock(&seen.mu);
		free(jwt);
		jwt = NULL;
		cimd_close(&c);
	}
	return NULL;
}

/* How many of the jti clients received the journal holds, counted in
 * batches of one query each. */
static long journaled(void)
{
	char q[200 * 70 + 200], out[32];
	long n = 0;
	size_t i, k, off;

	for (i = 0; i < seen.n_jti; i += 200) {
		off = (size_t)snprintf(q, sizeof(q), "SELECT count(*) FROM journal WHERE jti IN (");
		for (k = i; k < seen.n_jti && k < i + 200; k++)
			off += (size_t)snprintf(q + off, sizeof(q) - off, "%s'%s'",
						k > i ? "," : "", seen.jti[k]);
		snprintf(q + off, sizeof(q) - off, ")");
		if (t_pg_sql(&pg, out, sizeof(out), "%s", q) < 0)
			return -1;
		n += atol(out);
	}
	return n;
}

static void phase_to(int phase)
{
	__atomic_store_n(&seen.phase, phase, __ATOMIC_RELEASE);
}

int main(void)
{
	struct t_softhsm hsm;
	pthread_t th[CLIENTS];
	char extra[900], cifile[600], jwks[8192], during[8192], out[4096];
	double t0;
	long n;
	int i, rc;

	if ((seen.jti = calloc(JTI_MAX, sizeof(*seen.jti))) == NULL)
		return 1;
	if (!t_ok(t_softhsm_init(&hsm, "dbdown", "246810") == 0, "SoftHSM2 token") ||
	    !t_ok(t_pg_start(&pg) == 0, "a PostgreSQL cluster"))
		return t_done();
	/* The first through a conninfo_file (as one with a password would be),
	 * the second below through conninfo. */
	snprintf(cifile, sizeof(cifile), "%s/db.conninfo", t_tmpdir());
	snprintf(extra, sizeof(extra), "%s\n", pg.conninfo);
	t_write_file(cifile, extra, strlen(extra));
	chmod(cifile, 0600);
	snprintf(extra, sizeof(extra), "store = postgresql\nconninfo_file = %s\n", cifile);
	if (!t_ok(t_cimdd_start(&cd, "a", hsm.conf, extra) == 0, "cimdd on PostgreSQL") ||
	    !t_ok(t_cimdd_client(&cd, "agent-a", aud) == 0, "a client that may sign"))
		return t_done();
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", cd.base);
	{
		struct t_cimdd other;
		struct t_softhsm hsm2;

		snprintf(extra, sizeof(extra), "store = postgresql\nconninfo = %s\n", pg.conninfo);
		rc = t_softhsm_init(&hsm2, "dbdown2", "246810") == 0
			 ? t_cimdd_start(&other, "b", hsm2.conf, extra)
			 : -1;
		t_ok(rc == -ECHILD &&
			 t_log_count(&other.dm, "another cimdd runs as node local on this "
						"database") == 1,
		     "a second cimdd under the same node name does not start, and says why");
		if (rc == 0)
			t_daemon_stop(&other.dm, SIGTERM);
	}
	t_ok(t_cimdd_get(&cd, "/clients/agent-a/jwks.json", jwks, sizeof(jwks)) == 0 &&
		 strstr(jwks, "\"keys\"") != NULL,
	     "the JWKS is served");

	for (i = 0; i < CLIENTS; i++)
		pthread_create(&th[i], NULL, signer, NULL);
	usleep(1500000);
	phase_to(1);
	t_pg_kill(&pg);
	usleep(300000); /* what was in flight has been answered */
	t0 = t_now_ms();
	rc = t_cimdd_get(&cd, "/clients/agent-a/jwks.json", during, sizeof(during));
	t_ok(rc == 0 && strcmp(during, jwks) == 0,
	     "while the database is down the publisher serves the same JWKS");
	rc = t_cimdd_ctl(&cd, out, sizeof(out), "client list");
	t_ok(rc != 0 && t_now_ms() - t0 < 10000,
	     "an admin request while it is down answers an error (%s)", strtok(out, "\n"));
	usleep(1500000);
	phase_to(2);
	if (!t_ok(t_pg_restart(&pg) == 0, "the cluster starts again (crash recovery)"))
		seen.stop = 1;
	for (t0 = t_now_ms(); t_now_ms() - t0 < 15000; usleep(100000)) {
		pthread_mutex_lock(&seen.mu);
		n = seen.ok[2];
		pthread_mutex_unlock(&seen.mu);
		if (n >= 50)
			break;
	}
	usleep(500000);
	__atomic_store_n(&seen.stop, 1, __ATOMIC_RELEASE);
	for (i = 0; i < CLIENTS; i++)
		pthread_join(th[i], NULL);

	printf("# before: %ld ok; down: %ld ok, %ld refused, %ld other, slowest %.0f ms; "
	       "after: %ld ok, %ld refused, %ld other; %ld across a change\n",
	       seen.ok[0], seen.ok[1], seen.refused[1], seen.other[1], seen.slowest_ms[1],
	       seen.ok[2], seen.refused[2], seen.other[2], seen.straddled);
	t_ok(seen.ok[0] > 0 && seen.refused[0] == 0 && seen.other[0] == 0,
	     "before the crash every request is signed (%ld)", seen.ok[0]);
	t_ok(seen.refused[1] > 0 && seen.other[1] == 0,
	     "while the database is down signing is refused as backend_unavailable (%ld)",
	     seen.refused[1]);
	t_ok(strstr(seen.refusal, "database") != NULL, "and the refusal names the database: %s",
	     seen.refusal);
	t_ok(seen.slowest_ms[1] < 3000, "no request waits long for it (slowest %.0f ms)",
	     seen.slowest_ms[1]);
	t_ok(seen.ok[2] >= 50, "after the restart signing resumes with no operator (%ld signed)",
	     seen.ok[2]);
	n = journaled();
	t_ok(n == (long)seen.n_jti,
	     "every one of the %zu assertions clients received is in the "
	     "journal (%ld)",
	     seen.n_jti, n);
	rc = t_cimdd_ctl(&cd, out, sizeof(out), "journal verify");
	t_ok(rc == 0 && strstr(out, "intact") != NULL, "the journal verifies: %s",
	     strtok(out, "\n"));
	t_ok(t_daemon_stop(&cd.dm, SIGTERM) == 0, "cimdd stops cleanly after all of it");
	t_ok(t_pg_stop(&pg) == 0, "the cluster stops");
	free(seen.jti);
	return t_done();
}
