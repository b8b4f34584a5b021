/*
 * load.c — libcimd clients asking for assertions in a loop (load.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../tests/harness.h"
#include "cimd.h"
#include "load.h"

#define LAT_MAX 400000 /* latencies kept per client */
#define CLIENTS_MAX 1024

struct client {
	pthread_t th;
	const struct load_spec *spec;
	const char *sock;
	long ops, fails;
	float *lat; /* ms */
	size_t n_lat;
};

static void *client_main(void *arg)
{
	struct client *c = arg;
	const struct load_spec *s = c->spec;
	struct cimd *h = NULL;
	char *jwt;
	double t0, end;

	c->lat = malloc(LAT_MAX * sizeof(float));
	if (cimd_open(c->sock, &h) != CIMD_OK || c->lat == NULL) {
		c->fails++;
		cimd_close(&h);
		return NULL;
	}
	end = t_now_ms() + s->seconds * 1000;
	while ((t0 = t_now_ms()) < end) {
		jwt = NULL;
		if (cimd_assert(h, s->client_id, s->aud, 0, &jwt, NULL) != CIMD_OK) {
			c->fails++;
			continue;
		}
		free(jwt);
		c->ops++;
		if (c->n_lat < LAT_MAX)
			c->lat[c->n_lat++] = (float)(t_now_ms() - t0);
	}
	cimd_close(&h);
	return NULL;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x < y ? -1 : x > y;
}

/* The clients' latencies, sorted, into f's p50 and p99; -1 when none. */
static int percentiles(struct client *cs, int n, struct socket_fig *f)
{
	size_t total = 0, k = 0;
	float *all;
	int i;

	for (i = 0; i < n; i++)
		total += cs[i].n_lat;
	if (total == 0 || (all = malloc(total * sizeof(float))) == NULL)
		return -1;
	for (i = 0; i < n; i++) {
		if (cs[i].n_lat > 0)
			memcpy(all + k, cs[i].lat, cs[i].n_lat * sizeof(float));
		k += cs[i].n_lat;
	}
	qsort(all, total, sizeof(float), cmp_float);
	f->p50 = all[total / 2];
	f->p99 = all[(size_t)((double)total * 0.99)];
	free(all);
	return 0;
}

int socket_run(const struct load_spec *s, int n, struct socket_fig *f)
{
	struct client *cs;
	double t0, el;
	int i, r;

	memset(f, 0, sizeof(*f));
	f->clients = n;
	f->rate = f->p50 = f->p99 = -1;
	if (n < 1 || n > CLIENTS_MAX || s->nsocks < 1 || s->nsocks > LOAD_SOCKS_MAX ||
	    (cs = calloc((size_t)n, sizeof(*cs))) == NULL)
		return -1;
	t0 = t_now_ms();
	for (i = 0; i < n; i++) {
		cs[i].spec = s;
		cs[i].sock = s->socks[i % s->nsocks];
		pthread_create(&cs[i].th, NULL, client_main, &cs[i]);
	}
	for (i = 0; i < n; i++)
		pthread_join(cs[i].th, NULL);
	el = (t_now_ms() - t0) / 1000;
	for (i = 0; i < n; i++) {
		f->ops += cs[i].ops;
		f->fails += cs[i].fails;
		f->sock_rate[i % s->nsocks] += (double)cs[i].ops / el;
	}
	if ((r = f->ops > 0 ? percentiles(cs, n, f) : -1) == 0)
		f->rate = (double)f->ops / el;
	for (i = 0; i < n; i++)
		free(cs[i].lat);
	free(cs);
	return r;
}
