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

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <openssl/rand.h>

#include "service.h"

#define DEV_TOKEN "cimdd-dev"
#define DEV_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define DEV_PATH_MAX 1024

/* In a child before execve: the signals we blocked for our signalfd are
 * unblocked (a mask survives execve), and output goes to log. */
static void child_setup(const char *log)
{
	sigset_t none;
	int fd;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if ((fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) >= 0) {
		dup2(fd, 1);
		dup2(fd, 2);
	}
}

/* Runs argv with SOFTHSM2_CONF set, its output to DIR/dev-setup.log. */
static int run(const char *dir, char *const argv[])
{
	char log[DEV_PATH_MAX];
	pid_t pid;
	int st;

	snprintf(log, sizeof(log), "%s/dev-setup.log", dir);
	if ((pid = fork()) < 0)
		return -errno;
	if (pid == 0) {
		child_setup(log);
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

	if (RAND_bytes(b, (int)bytes) != 1)
		abort(); /* no randomness: no PIN we could trust */
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

/* mkdir -p, each new directory 0700. */
static int mkdir_p(const char *path)
{
	char buf[DEV_PATH_MAX], *p;

	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0700) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Both ports of the pair at p listen on loopback now, with SO_REUSEADDR. */
static int pair_free(int p)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	int s[2], i, one = 1, ok = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (i = 0; i < 2; i++) {
		s[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		a.sin_port = htons((uint16_t)(p + i));
		ok = ok && s[i] >= 0 &&
		     setsockopt(s[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
		     bind(s[i], (struct sockaddr *)&a, sizeof(a)) == 0 && listen(s[i], 1) == 0;
	}
	for (i = 0; i < 2; i++)
		if (s[i] >= 0)
			close(s[i]);
	return ok;
}

/*
 * A pair because swtpm's TCTI uses PORT for commands and PORT + 1 for control.
 * The pairs come from below the kernel's ephemeral range
 * (net.ipv4.ip_local_port_range), from 1024 up: the kernel takes the local
 * port of every connect() and bind(0) from that range, so a port below it is
 * held only by someone who asked for it by number.  Probing with bind(0), as
 * this did before, got an even port from the ephemeral range whose odd
 * neighbour was often the local end of one of the suite's own connections, or
 * its TIME_WAIT (connect() prefers odd ports, bind(0) even ones), and gave up
 * after 50 tries.  Both ports are bound with SO_REUSEADDR, as swtpm, nginx and
 * libmicrohttpd bind theirs: a TIME_WAIT left by an earlier listener on the
 * port does not stop them, so it must not stop us.  The walk starts at a
 * random pair (tests run side by side) and goes through the whole range, so
 * it fails only when every pair in it is taken.
 */
int dev_free_port_pair(void)
{
	unsigned lo = 32768, hi = 60999, first = 1024, n, start, i;
	unsigned char rnd[4];
	FILE *f;

	if ((f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re")) != NULL) {
		if (fscanf(f, "%u %u", &lo, &hi) != 2 || lo > hi || hi > 65535) {
			lo = 32768;
			hi = 60999;
		}
		fclose(f);
	}
	/* n candidates p = first .. first + n - 1, with p + 1 below lo; when the
	 * ephemeral range starts too low, the ports above it instead; when it is
	 * everything, everything (then only less likely to succeed). */
	if (lo >= first + 2) {
		n = lo - 1 - first;
	} else {
		if (hi <= 65533)
			first = hi + 1;
		n = 65535 - first;
	}
	if (RAND_bytes(rnd, sizeof(rnd)) == 1)
		start = (unsigned)rnd[0] << 24 | (unsigned)rnd[1] << 16 | (unsigned)rnd[2] << 8 |
			rnd[3];
	else
		start = (unsigned)getpid() ^ (unsigned)time(NULL);
	for (i = 0; i < n; i++)
		if (pair_free((int)(first + (start + i) % n)))
			return (int)(first + (start + i) % n);
	return -EADDRNOTAVAIL;
}

static int port_open(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	int s, r;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = connect(s, (struct sockaddr *)&a, sizeof(a));
	close(s);
	return r == 0;
}

int dev_swtpm_spawn(const char *state, int port, const char *log, pid_t *ret_pid)
{
	char srv[64], ctl[64], st[DEV_PATH_MAX + 8];
	struct timespec ts = {0, 10000000};
	int status, i;
	pid_t pid;

	snprintf(srv, sizeof(srv), "type=tcp,port=%d,bindaddr=127.0.0.1", port);
	snprintf(ctl, sizeof(ctl), "type=tcp,port=%d,bindaddr=127.0.0.1", port + 1);
	snprintf(st, sizeof(st), "dir=%s", state);
	if ((pid = fork()) < 0)
		return -errno;
	if (pid == 0) {
		/* It dies with us, whatever kills us. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		child_setup(log);
		execlp("swtpm", "swtpm", "socket", "--tpm2", "--server", srv, "--ctrl", ctl,
		       "--tpmstate", st, "--flags", "not-need-init,startup-clear", (char *)NULL);
		_exit(127);
	}
	for (i = 0; i < 500; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return -EADDRINUSE;
		if (port_open(port) && port_open(port + 1)) {
			*ret_pid = pid;
			return 0;
		}
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -ETIMEDOUT;
}

int dev_start(const char *dir_arg, pid_t *ret_swtpm, char *err, size_t errlen)
{
	char dir[DEV_PATH_MAX], state[DEV_PATH_MAX + 16], pf[DEV_PATH_MAX + 16],
	    log[DEV_PATH_MAX + 16];
	char buf[16] = "";
	struct stat st;
	char *rp;
	int fd, port, r;
	ssize_t n;

	*ret_swtpm = 0;
	if ((rp = realpath(dir_arg, NULL)) == NULL || strlen(rp) >= sizeof(dir)) {
		snprintf(err, errlen, "%s: %s", dir_arg, rp ? "path too long" : strerror(errno));
		free(rp);
		return -EINVAL;
	}
	snprintf(dir, sizeof(dir), "%s", rp);
	free(rp);
	snprintf(state, sizeof(state), "%s/swtpm", dir);
	if (stat(state, &st) < 0)
		return 0; /* a pkcs11 instance: nothing to start */
	snprintf(pf, sizeof(pf), "%s/swtpm.port", dir);
	if ((fd = open(pf, O_RDONLY | O_CLOEXEC)) < 0 ||
	    (n = read(fd, buf, sizeof(buf) - 1)) <= 0) {
		snprintf(err, errlen, "%s: cannot read the simulator's port", pf);
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	close(fd);
	buf[n] = '\0';
	port = atoi(buf);
	snprintf(log, sizeof(log), "%s/swtpm.log", dir);
	if ((r = dev_swtpm_spawn(state, port, log, ret_swtpm)) < 0) {
		snprintf(err, errlen,
			 "swtpm on 127.0.0.1:%d and %d: %s (another process holds the ports?)",
			 port, port + 1, strerror(-r));
		return r;
	}
	return 0;
}

/* DIR made if need be, as its real path in ret_dir (room for DEV_PATH_MAX):
 * the instance names the PKCS#11 module we load and who is an operator, so
 * only a directory of the caller's own, that nobody else may write, is
 * trusted. */
static int dev_dir(const char *dir_arg, char *ret_dir, char *err, size_t errlen)
{
	struct stat st;
	char *rp = NULL;
	int r;

	if ((r = mkdir_p(dir_arg)) < 0) {
		snprintf(err, errlen, "%s: %s", dir_arg, strerror(-r));
		goto out;
	}
	rp = realpath(dir_arg, NULL);
	if (rp == NULL || strlen(rp) > DEV_PATH_MAX - 100) {
		snprintf(err, errlen, "%s: %s", dir_arg, rp ? "path too long" : strerror(errno));
		r = -EINVAL;
		goto out;
	}
	if (lstat(rp, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
	    (st.st_mode & 022) != 0) {
		snprintf(err, errlen,
			 "%s must be a directory owned by you and writable by nobody else", rp);
		r = -EPERM;
		goto out;
	}
	snprintf(ret_dir, DEV_PATH_MAX, "%s", rp);
	r = 0;
out:
	free(rp);
	return r;
}

/* DIR/NAME written afresh with text, readable by the caller only. */
static int dev_write(const char *dir, const char *name, const char *text, char *err, size_t errlen)
{
	char p[DEV_PATH_MAX + 64];
	int r;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	unlink(p);
	if ((r = write_secret(p, text)) < 0)
		snprintf(err, errlen, "%s: %s", p, strerror(-r));
	return r;
}

/* A SoftHSM2 token of its own in DIR/tokens, its user PIN in DIR/token.pin;
 * the SO PIN is used once here and kept nowhere. */
static int dev_token(const char *dir, char *err, size_t errlen)
{
	char conf[4096], p[DEV_PATH_MAX + 64], pin[33], sopin[33];
	int r;

	snprintf(
	    conf, sizeof(conf),
	    "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
	    dir);
	snprintf(p, sizeof(p), "%s/tokens", dir);
	if ((mkdir(p, 0700) < 0 && errno != EEXIST)) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", p, strerror(-r));
		goto out;
	}
	if ((r = dev_write(dir, "softhsm2.conf", conf, err, errlen)) < 0)
		goto out;
	random_hex(pin, 16);
	random_hex(sopin, 16);
	{
		char *argv[] = {
		    "softhsm2-util", "--init-token", "--free", "--label", DEV_TOKEN, "--pin", pin,
		    "--so-pin",	     sopin,	     NULL};
		if ((r = run(dir, argv)) < 0) {
			snprintf(err, errlen,
				 "softhsm2-util --init-token failed (see %s/dev-setup.log)", dir);
			goto out;
		}
	}
	r = dev_write(dir, "token.pin", pin, err, errlen);
out:
	return r;
}

/* A self-signed TLS certificate for 127.0.0.1 in DIR/tls.crt, its key in
 * DIR/tls.key. */
static int dev_tls(const char *dir, char *err, size_t errlen)
{
	char crt[DEV_PATH_MAX + 16], key[DEV_PATH_MAX + 16], san[64];
	int r;

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
		goto out;
	}
	chmod(key, 0600);
	r = 0;
out:
	return r;
}

/* The configuration's backend line into ret_be: for tpm2, the simulator's
 * state directory and the ports it will use on every run, chosen now. */
static int dev_backend(const char *dir, const char *backend, char *ret_be, size_t belen, char *err,
		       size_t errlen)
{
	char p[DEV_PATH_MAX + 64], pbuf[16];
	int tport, r;

	if (strcmp(backend, "tpm2") != 0) {
		snprintf(ret_be, belen, "pkcs11:module=%s;token=%s;pin-file=%s/token.pin",
			 DEV_MODULE, DEV_TOKEN, dir);
		r = 0;
		goto out;
	}
	tport = dev_free_port_pair();
	snprintf(p, sizeof(p), "%s/swtpm", dir);
	if (tport < 0 || (mkdir(p, 0700) < 0 && errno != EEXIST)) {
		snprintf(err, errlen, "cannot prepare the swtpm simulator in %s", p);
		r = -EIO;
		goto out;
	}
	snprintf(pbuf, sizeof(pbuf), "%d\n", tport);
	if ((r = dev_write(dir, "swtpm.port", pbuf, err, errlen)) < 0)
		goto out;
	snprintf(ret_be, belen, "tpm2:tcti=swtpm:host=127.0.0.1,port=%d", tport);
	r = 0;
out:
	return r;
}

/* The instance's cimdd.conf(5), written to path: the caller as the one
 * operator, so the two-person rule is off, and says so. */
static int dev_conf(const char *dir, int port, const char *be, const char *path, char *err,
		    size_t errlen)
{
	char conf[4096], portarg[64], name[CIMD_NAME_MAX + 1];
	int n, r;

	operator_name(name, sizeof(name));
	snprintf(portarg, sizeof(portarg), "%d", port);
	n = snprintf(conf, sizeof(conf),
		     "# Made by cimdd --dev.  An ordinary cimdd.conf(5): edit it and send SIGHUP.\n"
		     "state_dir = %s\n"
		     "base_url = https://127.0.0.1:%s\n"
		     "listen = 127.0.0.1:%s\n"
		     "tls_cert = %s/tls.crt\n"
		     "tls_key = %s/tls.key\n"
		     "backend = %s\n"
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
		     dir, portarg, portarg, dir, dir, be, dir, dir, name, (int)getuid());
	if (n < 0 || (size_t)n >= sizeof(conf)) {
		snprintf(err, errlen, "configuration too long");
		r = -E2BIG;
		goto out;
	}
	if ((r = write_secret(path, conf)) < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		goto out;
	}
	r = 0;
out:
	return r;
}

int dev_prepare(const char *dir_arg, const char *backend, int port, char *ret_conf, size_t len,
		char *err, size_t errlen)
{
	char dir[DEV_PATH_MAX], p[DEV_PATH_MAX + 64], be[DEV_PATH_MAX + 128];
	struct stat st;
	int r;

	if (strcmp(backend, "pkcs11") != 0 && strcmp(backend, "tpm2") != 0) {
		snprintf(err, errlen, "--backend %s: not pkcs11 or tpm2", backend);
		r = -EINVAL;
		goto out;
	}
	if ((r = dev_dir(dir_arg, dir, err, errlen)) < 0)
		goto out;
	snprintf(p, sizeof(p), "%s/softhsm2.conf", dir);
	setenv("SOFTHSM2_CONF", p, 1);
	snprintf(ret_conf, len, "%s/cimdd.conf", dir);
	if (lstat(ret_conf, &st) == 0) {
		if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
			snprintf(
			    err, errlen,
			    "%s must be a regular file owned by you and writable by nobody else",
			    ret_conf);
			r = -EPERM;
			goto out;
		}
		r = 0; /* made before: use it as it is */
		goto out;
	}
	if ((r = dev_token(dir, err, errlen)) < 0 || (r = dev_tls(dir, err, errlen)) < 0 ||
	    (r = dev_backend(dir, backend, be, sizeof(be), err, errlen)) < 0 ||
	    (r = dev_conf(dir, port, be, ret_conf, err, errlen)) < 0)
		goto out;
	r = 0;
out:
	return r;
}
