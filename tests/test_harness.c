/*
 * test_harness.c — the harness keeps STYLE.md 21: a test owns what it starts.
 *
 * A test that crashes (abort, SIGSEGV), is killed (SIGTERM) or just exits
 * leaves nothing running: each case runs this binary again as a child test
 * ("test_harness --child MODE", its output in a file) that starts a shell's
 * background process (left in its group), swtpm (its child), a process in a
 * session of its own with a pid file, and nginx as test_daemon starts it
 * (daemonized, pid file), then ends; what it started must be gone after it.
 * A child test's fork that calls exit() kills nothing.  A daemon log that tells
 * of a forbidden system call fails a check at stop and at t_done(), each line
 * once.  The port allocator hands out distinct pairs below the ephemeral range.
 * A failed fetch, and a part of an answer, are status 0 and empty output.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "harness.h"
#include "service.h"

/* ---- the child test ---- */

static pid_t bg_sleep; /* the shell's background process */

/* Starts what a test starts, each kind once, and prints "pid NAME N" lines. */
static void child_start(void)
{
	char out[256], conf[1024], path[700];
	const char *tmp = t_tmpdir();
	struct t_swtpm tpm;
	int port;

	/* A shell's background process: the shell exits, it stays in our group. */
	if (t_sh_out(out, sizeof(out), "sleep 1000 >/dev/null 2>&1 & echo $!") == 0) {
		bg_sleep = (pid_t)atoi(out);
		printf("pid sleep %d\n", (int)bg_sleep);
	}
	if (t_swtpm_start(&tpm) == 0)
		printf("pid swtpm %d\n", (int)tpm.pid);
	/* A session of its own, known only by its pid file. */
	if (t_sh_out(out, sizeof(out),
		     "setsid sleep 1001 >/dev/null 2>&1 & echo $! >%s/sleeper.pid; echo $!",
		     tmp) == 0)
		printf("pid setsid-sleep %d\n", atoi(out));
	/* nginx as test_daemon runs it: daemonized, a pid file in our directory. */
	if (t_sh("command -v nginx >/dev/null") == 0 && (port = dev_free_port_pair()) > 0) {
		snprintf(conf, sizeof(conf),
			 "worker_processes 1; pid %s/nginx.pid; error_log %s/nginx.err;\n"
			 "events { worker_connections 16; }\n"
			 "http { access_log off; server { listen 127.0.0.1:%d; } }\n",
			 tmp, tmp, port);
		snprintf(path, sizeof(path), "%s/nginx.conf", tmp);
		if (t_write_file(path, conf, strlen(conf)) == 0 &&
		    t_sh("nginx -p %s -c %s", tmp, path) == 0 &&
		    t_sh_out(out, sizeof(out), "cat %s/nginx.pid", tmp) == 0) {
			printf("pid nginx %d\n", atoi(out));
			usleep(200000); /* its worker */
			if (t_sh_out(out, sizeof(out), "pgrep -P %d | head -1", atoi(out)) == 0)
				printf("pid nginx-worker %d\n", atoi(out));
		}
	}
	fflush(stdout);
}

static int alive(pid_t pid)
{
	char st = t_proc_state(pid);

	return st != 0 && st != 'Z' && st != 'X';
}

static int child(const char *mode)
{
	/* Not NULL: UBSan would report a null store before any fault. */
	volatile int *volatile nowhere = (volatile int *)(uintptr_t)16;
	struct t_softhsm hsm;
	struct t_cimdd c;
	pid_t pid;
	int st;

	if (strcmp(mode, "forbidden") == 0) {
		/* A real cimdd; its log gets the publisher's line as if it had said it. */
		if (t_softhsm_init(&hsm, "harness", "123456") != 0 ||
		    t_cimdd_start(&c, "fsc", hsm.conf, NULL) != 0) {
			printf("# no cimdd\n");
			return t_done();
		}
		t_sh(
		    "printf 'cimdd-publisher: forbidden system call 999\\ncimdd(+0x1b2c)[0x5f00]\\n"
		    "after\\n' >>%s",
		    c.dm.log);
		t_daemon_stop(&c.dm, SIGTERM);
		if (t_daemon_start(&c.dm) == 0)
			t_sh("echo 'cimdd-publisher: forbidden system call 998' >>%s", c.dm.log);
		return t_done(); /* still running: read at the end */
	}
	child_start();
	if (strcmp(mode, "abort") == 0)
		abort();
	if (strcmp(mode, "segv") == 0)
		*nowhere = 1;
	if (strcmp(mode, "term") == 0) {
		printf("ready\n");
		fflush(stdout);
		for (;;)
			pause();
	}
	/* "exit": a fork of the test that exits kills nothing; the test's exit does. */
	if ((pid = fork()) == 0)
		exit(0);
	waitpid(pid, &st, 0);
	usleep(100000);
	printf("after a fork's exit: %s\n",
	       bg_sleep > 0 && alive(bg_sleep) ? "still running" : "gone");
	return t_done();
}

/* ---- the parent ---- */

/* Runs "--child mode" into TMP/MODE.out; its wait status. For "term", sends
 * SIGTERM once it is ready. */
static int run_child(const char *mode, char *out, size_t len)
{
	char path[700], exe[700];
	double t0;
	pid_t pid;
	int st = -1, fd;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/%s.out", t_tmpdir(), mode);
	if ((n = readlink("/proc/self/exe", exe, sizeof(exe) - 1)) < 0)
		return -1;
	exe[n] = '\0';
	if ((pid = fork()) < 0)
		return -1;
	if (pid == 0) {
		/* As tests/run.sh starts a test: a process group of its own. */
		setpgid(0, 0);
		if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		setenv("TMPDIR", t_tmpdir(), 1);
		execl(exe, "test_harness", "--child", mode, (char *)NULL);
		_exit(127);
	}
	if (strcmp(mode, "term") == 0) {
		for (t0 = t_now_ms(); t_now_ms() - t0 < 30000; usleep(50000)) {
			if (t_sh_out(out, len, "grep -c '^ready$' %s", path) == 0)
				break;
			if (waitpid(pid, &st, WNOHANG) == pid)
				goto read;
		}
		kill(pid, SIGTERM);
	}
	waitpid(pid, &st, 0);
read:
	t_sh_out(out, len, "cat %s", path);
	return st;
}

/* Every "pid NAME N" the child printed is gone (within 3 s). */
static void check_gone(const char *mode, const char *out)
{
	const char *p = out;
	char name[32];
	int pid, n = 0, gone;
	double t0;

	while ((p = strstr(p, "pid ")) != NULL) {
		if ((p == out || p[-1] == '\n') && sscanf(p, "pid %31s %d", name, &pid) == 2 &&
		    pid > 1) {
			for (t0 = t_now_ms(); alive(pid) && t_now_ms() - t0 < 3000; usleep(20000))
				;
			gone = !alive(pid);
			t_ok(gone, "%s: %s (pid %d) the test started is gone", mode, name, pid);
			if (!gone)
				kill(pid, SIGKILL);
			n++;
		}
		p += 4;
	}
	t_ok(n >= 3, "%s: the child test started %d processes (sleep, swtpm, setsid sleep%s)", mode,
	     n, n >= 5 ? ", nginx and its worker" : "");
}

static void test_death(const char *mode, int sig)
{
	char out[16384];
	int st = run_child(mode, out, sizeof(out));

	/* Under ASan the sanitizer's own SIGSEGV report ends the process. */
	if (sig == SIGSEGV && getenv("CIMD_TEST_SANITIZED") != NULL)
		t_ok(st != -1 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0),
		     "%s: the child test died", mode);
	else
		t_ok(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == sig,
		     "%s: the child test died of signal %d, as it would have without the "
		     "harness (status %#x)",
		     mode, sig, (unsigned)st);
	t_ok(strstr(out, "harness: signal ") != NULL ||
		 strstr(out, "harness: sanitizer report: killed") != NULL,
	     "%s: the harness said what it killed", mode);
	check_gone(mode, out);
}

static void test_exit(void)
{
	char out[16384];
	int st = run_child("exit", out, sizeof(out));

	t_ok(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit: the child test passed");
	t_ok(strstr(out, "after a fork's exit: still running") != NULL,
	     "exit: a fork of the test that calls exit() kills nothing");
	t_ok(strstr(out, "# the test left ") != NULL, "exit: the harness reports what it killed");
	check_gone("exit", out);
}

static int count(const char *hay, const char *needle)
{
	int n = 0;

	while ((hay = strstr(hay, needle)) != NULL) {
		n++;
		hay++;
	}
	return n;
}

static void test_forbidden(void)
{
	char out[65536];
	int st = run_child("forbidden", out, sizeof(out));

	if (strstr(out, "# no cimdd") != NULL) {
		t_ok(0, "forbidden: the child test started cimdd");
		t_sh("sed 's/^/#     /' %s/forbidden.out", t_tmpdir());
		return;
	}
	t_ok(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "forbidden: the child test failed");
	t_ok(count(out, "not ok") == 2 &&
		 count(out, "- no forbidden system call in cimdd's log (the publisher's seccomp "
			    "filter)") == 2,
	     "forbidden: one failed check when cimdd stopped, one at the end");
	t_ok(count(out, "#   cimdd-publisher: forbidden system call 999") == 1 &&
		 count(out, "#   cimdd(+0x1b2c)[0x5f00]") == 1 &&
		 count(out, "#   cimdd-publisher: forbidden system call 998") == 1 &&
		 count(out, "#   after") == 0,
	     "forbidden: each line printed once, with its backtrace");
	if (count(out, "not ok") != 2)
		t_sh("sed 's/^/#     /' %s/forbidden.out", t_tmpdir());
}

static void test_ports(void)
{
	int lo = 32768, hi = 60999, held[64][2], ports[64], i, j, ok = 1, distinct = 1;
	int one = 1;
	struct sockaddr_in a = {.sin_family = AF_INET};
	FILE *f;

	if ((f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re")) != NULL) {
		if (fscanf(f, "%d %d", &lo, &hi) != 2)
			lo = 32768;
		fclose(f);
	}
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* Each pair held while the next is asked for: none may come twice. */
	for (i = 0; i < 64; i++) {
		ports[i] = dev_free_port_pair();
		held[i][0] = held[i][1] = -1;
		if (ports[i] < 1024 || (lo > 1026 && ports[i] + 1 >= lo)) {
			ok = 0;
			continue;
		}
		for (j = 0; j < 2; j++) {
			held[i][j] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			a.sin_port = htons((uint16_t)(ports[i] + j));
			if (setsockopt(held[i][j], SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) <
				0 ||
			    bind(held[i][j], (struct sockaddr *)&a, sizeof(a)) < 0 ||
			    listen(held[i][j], 1) < 0)
				ok = 0;
		}
		for (j = 0; j < i; j++)
			if (ports[j] == ports[i] || ports[j] == ports[i] + 1 ||
			    ports[j] + 1 == ports[i])
				distinct = 0;
	}
	t_ok(ok, "64 port pairs, each below the ephemeral range (%d-%d) and free to listen on", lo,
	     hi);
	t_ok(distinct, "no pair handed out while a pair it overlaps is held");
	for (i = 0; i < 64; i++)
		for (j = 0; j < 2; j++)
			if (held[i][j] >= 0)
				close(held[i][j]);
}

/* A server that answers once with a part of a response, then closes. */
static pid_t partial_server(int *ret_port)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	static const char part[] = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"keys\":[";
	char buf[4096];
	int s = -1, c, one = 1, port = dev_free_port_pair(), n;
	pid_t pid;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	if (port < 0 || (s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 4) < 0) {
		if (s >= 0)
			close(s);
		return -1;
	}
	if ((pid = fork()) == 0) {
		for (n = 0; n < 2 && (c = accept(s, NULL, NULL)) >= 0; n++) {
			if (read(c, buf, sizeof(buf)) > 0 && write(c, part, strlen(part)) < 0)
				_exit(1);
			close(c);
		}
		_exit(0);
	}
	close(s);
	*ret_port = port;
	return pid;
}

static void test_fetch(void)
{
	struct t_cimdd c;
	char path[700], out[256];
	struct stat st;
	int port, rc;
	pid_t srv;

	memset(&c, 0, sizeof(c));
	snprintf(c.dir, sizeof(c.dir), "%s", t_tmpdir());
	snprintf(c.ca, sizeof(c.ca), "/dev/null");
	port = dev_free_port_pair();
	if (!t_ok(port > 0, "a free port (%s)", cimd_strerror(port)))
		return;
	/* Nothing listens there. */
	snprintf(c.base, sizeof(c.base), "https://127.0.0.1:%d", port);
	snprintf(path, sizeof(path), "%s/stale.json", c.dir);
	t_write_file(path, "stale", 5);
	rc = t_cimdd_fetch(&c, "/clients/a/jwks.json", "stale.json");
	t_ok(rc == 0 && stat(path, &st) == 0 && st.st_size == 0,
	     "t_cimdd_fetch with no answer: status 0 and an empty file, not an earlier answer "
	     "(%d)",
	     rc);
	snprintf(out, sizeof(out), "garbage");
	rc = t_cimdd_get(&c, "/clients/a/jwks.json", out, sizeof(out));
	t_ok(rc != 0 && out[0] == '\0', "t_cimdd_get with no answer: curl's failure, empty output");
	/* A part of an answer: a status line, then the connection closes. */
	if (!t_ok((srv = partial_server(&port)) > 0, "a server that answers with a part"))
		return;
	snprintf(c.base, sizeof(c.base), "http://127.0.0.1:%d", port);
	rc = t_cimdd_fetch(&c, "/clients/a/jwks.json", "stale.json");
	t_ok(rc == 0 && stat(path, &st) == 0 && st.st_size == 0,
	     "t_cimdd_fetch of a part of an answer: status 0 and an empty file (%d)", rc);
	rc = t_cimdd_get(&c, "/clients/a/jwks.json", out, sizeof(out));
	t_ok(rc != 0 && out[0] == '\0', "t_cimdd_get of a part of an answer: empty output (%d)",
	     rc);
	kill(srv, SIGKILL);
	waitpid(srv, NULL, 0);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "--child") == 0)
		return child(argv[2]);
	test_ports();
	test_fetch();
	test_death("abort", SIGABRT);
	test_death("segv", SIGSEGV);
	test_death("term", SIGTERM);
	test_exit();
	test_forbidden();
	return t_done();
}
