/*
 * dev.c — `cimdd --dev DIR`: on first use, a complete development instance in
 * DIR (a SoftHSM2 token, a self-signed TLS certificate, a configuration file
 * naming the caller as the one operator); afterwards it reuses what is there.
 * The configuration is an ordinary cimdd.conf(5) file.  A dev instance has a
 * single operator, so it turns the two-person rule off, and says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "service.h"

#define DEV_TOKEN "cimdd-dev"
#define DEV_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define DEV_PATH_MAX 1024

/* Runs argv with SOFTHSM2_CONF set, its output to DIR/dev-setup.log. */
static int run(const char *dir, char *const argv[])
{
	char log[DEV_PATH_MAX];
	pid_t pid;
	int st, fd;

	snprintf(log, sizeof(log), "%s/dev-setup.log", dir);
	if ((pid = fork()) < 0)
		return -errno;
	if (pid == 0) {
		if ((fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp(argv[0], argv);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) < 0)
		return -errno;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

static int write_secret(const char *path, const char *text)
{
	int fd, r = 0;
	size_t n = strlen(text);

	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0)
		return -errno;
	if (write(fd, text, n) != (ssize_t)n || fsync(fd) < 0)
		r = -EIO;
	close(fd);
	return r;
}

static void random_hex(char *out, size_t bytes)
{
	static const char digits[] = "0123456789abcdef";
	unsigned char b[32];
	size_t i;

	RAND_bytes(b, (int)bytes);
	for (i = 0; i < bytes; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * bytes] = '\0';
}

/* The caller's login as an operator name: lower case, [a-z0-9-]. */
static void operator_name(char *out, size_t len)
{
	struct passwd *pw = getpwuid(getuid());
	const char *src = pw && pw->pw_name ? pw->pw_name : "operator";
	size_t i, n = 0;

	for (i = 0; src[i] && n + 1 < len && n < CIMD_NAME_MAX; i++) {
		char ch = src[i];
		if (ch >= 'A' && ch <= 'Z')
			ch = (char)(ch - 'A' + 'a');
		out[n++] = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ? ch : '-';
	}
	out[n] = '\0';
	if (!cimd_valid_name(out))
		snprintf(out, len, "operator");
}

int dev_prepare(const char *dir_arg, const char *backend, int port, char *ret_conf, size_t len,
		char *err, size_t errlen)
{
	char dir[DEV_PATH_MAX], p[DEV_PATH_MAX + 64], pin[33], sopin[33], name[CIMD_NAME_MAX + 1];
	char conf[4096], portarg[64], san[64];
	struct stat st;
	int n, r;

	if (strcmp(backend, "pkcs11") != 0) {
		snprintf(err, errlen, "--dev with --backend %s is not built yet; use pkcs11",
			 backend);
		return -ENOTSUP;
	}
	if (mkdir(dir_arg, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "%s: %s", dir_arg, strerror(errno));
		return -errno;
	}
	{
		char *rp = realpath(dir_arg, NULL);
		if (rp == NULL || strlen(rp) > DEV_PATH_MAX - 100) {
			snprintf(err, errlen, "%s: %s", dir_arg,
				 rp ? "path too long" : strerror(errno));
			free(rp);
			return -EINVAL;
		}
		snprintf(dir, sizeof(dir), "%s", rp);
		free(rp);
	}
	snprintf(p, sizeof(p), "%s/softhsm2.conf", dir);
	setenv("SOFTHSM2_CONF", p, 1);
	snprintf(ret_conf, len, "%s/cimdd.conf", dir);
	if (stat(ret_conf, &st) == 0)
		return 0; /* made before: use it as it is */

	/* SoftHSM2 token. */
	snprintf(
	    conf, sizeof(conf),
	    "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
	    dir);
	snprintf(p, sizeof(p), "%s/tokens", dir);
	if ((mkdir(p, 0700) < 0 && errno != EEXIST)) {
		snprintf(err, errlen, "%s: %s", p, strerror(errno));
		return -errno;
	}
	snprintf(p, sizeof(p), "%s/softhsm2.conf", dir);
	unlink(p);
	if ((r = write_secret(p, conf)) < 0) {
		snprintf(err, errlen, "%s: %s", p, strerror(-r));
		return r;
	}
	random_hex(pin, 16);
	random_hex(sopin, 16);
	{
		char *argv[] = {
		    "softhsm2-util", "--init-token", "--free", "--label", DEV_TOKEN, "--pin", pin,
		    "--so-pin",	     sopin,	     NULL};
		if ((r = run(dir, argv)) < 0) {
			snprintf(err, errlen,
				 "softhsm2-util --init-token failed (see %s/dev-setup.log)", dir);
			return r;
		}
	}
	snprintf(p, sizeof(p), "%s/token.pin", dir);
	unlink(p);
	if ((r = write_secret(p, pin)) < 0) {
		snprintf(err, errlen, "%s: %s", p, strerror(-r));
		return r;
	}

	/* Self-signed TLS certificate for 127.0.0.1. */
	{
		char crt[DEV_PATH_MAX + 16], key[DEV_PATH_MAX + 16];
		snprintf(crt, sizeof(crt), "%s/tls.crt", dir);
		snprintf(key, sizeof(key), "%s/tls.key", dir);
		snprintf(san, sizeof(san), "subjectAltName=IP:127.0.0.1,DNS:localhost");
		char *argv[] = {"openssl",
				"req",
				"-x509",
				"-newkey",
				"ec",
				"-pkeyopt",
				"ec_paramgen_curve:P-256",
				"-nodes",
				"-keyout",
				key,
				"-out",
				crt,
				"-days",
				"825",
				"-subj",
				"/CN=127.0.0.1",
				"-addext",
				san,
				NULL};
		if ((r = run(dir, argv)) < 0) {
			snprintf(err, errlen, "openssl req failed (see %s/dev-setup.log)", dir);
			return r;
		}
		chmod(key, 0600);
	}

	operator_name(name, sizeof(name));
	snprintf(portarg, sizeof(portarg), "%d", port);
	n = snprintf(conf, sizeof(conf),
		     "# Made by cimdd --dev.  An ordinary cimdd.conf(5): edit it and send SIGHUP.\n"
		     "state_dir = %s\n"
		     "base_url = https://127.0.0.1:%s\n"
		     "listen = 127.0.0.1:%s\n"
		     "tls_cert = %s/tls.crt\n"
		     "tls_key = %s/tls.key\n"
		     "backend = pkcs11:module=%s;token=%s;pin-file=%s/token.pin\n"
		     "admin_socket = %s/admin.sock\n"
		     "sign_socket = %s/sign.sock\n"
		     "# One operator, so no second person to approve: the rule is off here.\n"
		     "two_person_rule = no\n"
		     "# Short durations, so that a whole key lifecycle fits in minutes.\n"
		     "jwks_max_age = 60\n"
		     "cimd_max_age = 60\n"
		     "assertion_max_ttl = 300\n"
		     "clock_skew = 30\n"
		     "destroy_delay = 600\n"
		     "operator = %s uid=%d roles=submit,approve,rotate,revoke,read\n",
		     dir, portarg, portarg, dir, dir, DEV_MODULE, DEV_TOKEN, dir, dir, dir, name,
		     (int)getuid());
	if (n < 0 || (size_t)n >= sizeof(conf)) {
		snprintf(err, errlen, "configuration too long");
		return -E2BIG;
	}
	if ((r = write_secret(ret_conf, conf)) < 0) {
		snprintf(err, errlen, "%s: %s", ret_conf, strerror(-r));
		return r;
	}
	return 0;
}
