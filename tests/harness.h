/*
 * harness.h — the test harness: TAP-style results, temporary directories,
 * SoftHSM2 tokens and swtpm simulators that each test starts and stops itself.
 *
 * Every test binary prints "ok N - ..." / "not ok N - ..." lines and a last line
 * "# N passed, N failed"; tests/run.sh adds them up.
 */
#ifndef CIMD_TEST_HARNESS_H
#define CIMD_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#include "fw.h"

/* Records one check; returns cond so a test can stop early. */
int t_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A text put before every following result ("tpm2: "), or NULL. */
void t_set_prefix(const char *prefix);
/* Prints the totals; the exit status of main. */
int t_done(void);
/* Monotonic milliseconds. */
double t_now_ms(void);

/* A fresh directory under $TMPDIR (or /tmp); removed by t_cleanup(). */
const char *t_tmpdir(void);
void t_cleanup(void);
/* Writes a file (mode 0600); 0 or -errno. */
int t_write_file(const char *path, const void *buf, size_t len);
/* Runs a shell command, its output to stdout prefixed "# "; its exit status. */
int t_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Like t_sh, and the output (at most len - 1 bytes) into out. */
int t_sh_out(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* build/bin/NAME of the build this test binary belongs to, into buf. */
const char *t_bin(const char *name, char *buf, size_t len);

/* A daemon under test: cimdd -c conf -f, stderr to log. */
struct t_daemon {
	pid_t pid;
	char conf[600];
	char log[600];
	char sock[600];
};
int t_daemon_start(struct t_daemon *d);
/* Sends sig and waits; the exit status (or 128 + signal). */
int t_daemon_stop(struct t_daemon *d, int sig);
/* Counts lines of the daemon's log that contain needle. */
int t_log_count(const struct t_daemon *d, const char *needle);

/* A SoftHSM2 token in a fresh directory, with its own SOFTHSM2_CONF. */
struct t_softhsm {
	char dir[512];
	char conf[1024]; /* key store configuration string */
	char pin_file[600];
};
#define T_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
int t_softhsm_init(struct t_softhsm *h, const char *label, const char *pin);

/* swtpm on a fresh pair of loopback ports, its state in a fresh directory. */
struct t_swtpm {
	pid_t pid;
	int port; /* the TPM command port; port + 1 is the control port */
	char dir[512];
	char conf[256]; /* key store configuration string */
};
int t_swtpm_start(struct t_swtpm *s);
/* Starts it again on the same port and state, after t_swtpm_kill(). */
int t_swtpm_restart(struct t_swtpm *s);
void t_swtpm_kill(struct t_swtpm *s);

/*
 * The key store contract on one backend and algorithm: generate; the JWK has
 * only public members and kid = RFC 7638 thumbprint; JWS verified by our
 * verifier, by the openssl CLI and by node's jose; reload from the stored
 * reference in a fresh key store and sign again; destroy, then signing fails.
 */
void t_keystore_roundtrip(const char *conf, enum cimd_alg alg);
/* key_store_sign_batch: mixed algorithms in one call, each verified; a failing
 * request fails alone; empty and oversized batches refused. */
void t_keystore_batch(const char *conf);

#endif
