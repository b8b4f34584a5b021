/*
 * load.h — libcimd clients asking cimdd's signing sockets for assertions in a
 * loop, for the benchmarks of the signing path (bench_assert, bench_cluster).
 *
 * Each client is a thread with one connection, asking for the next assertion
 * as soon as the last one is answered, as a busy workload does; the figure is
 * what they got together: assertions per second, and the latency of each
 * request at the client.
 */
#ifndef CIMD_BENCH_LOAD_H
#define CIMD_BENCH_LOAD_H

#define LOAD_SOCKS_MAX 4 /* signing sockets one load spreads over */

/* Where and what a load asks: client i on socks[i % nsocks], for an
 * assertion of client_id to present to aud, for seconds. */
struct load_spec {
	const char *socks[LOAD_SOCKS_MAX];
	int nsocks;
	const char *client_id;
	const char *aud;
	double seconds;
};

/* One figure: clients, assertions per second (all sockets; and per socket),
 * the p50 and p99 latency in ms, assertions answered, failed requests. */
struct socket_fig {
	int clients;
	double rate, p50, p99;
	double sock_rate[LOAD_SOCKS_MAX];
	long ops, fails;
};

/* n clients (1 to 1024) for s->seconds; f filled.  0, or -1 when no
 * assertion was answered (f's figures then -1). */
int socket_run(const struct load_spec *s, int n, struct socket_fig *f);

#endif /* CIMD_BENCH_LOAD_H */
