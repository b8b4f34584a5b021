/*
 * test_pg.c — the harness's throwaway PostgreSQL clusters (t_pg_*), which the
 * PostgreSQL store's tests stand on (issue 17).
 *
 * A cluster starts (as nobody when we are root, on a Unix socket only, fsync
 * on) and libpq reaches it with pg->conninfo; a committed row survives a
 * clean stop and restart, and a crash (t_pg_kill: SIGKILL to the postmaster
 * and its children) and the crash recovery of the next start; two clusters in
 * one test do not disturb each other.  A child test ("test_pg --child MODE")
 * that starts a cluster with a client connected and then exits, crashes or is
 * killed with SIGKILL leaves no process of its cluster behind: each process
 * with its working directory or its command line in the child's directory is
 * counted before (there must be some) and after.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"

/* ---- looking at processes ---- */

/* Whether the live process pid works in, or names, a path under prefix.  A
 * zombie has neither: it is dead. */
static int proc_under(const char *pid, const char *prefix)
{
	char path[64], buf[4096];
	size_t plen = strlen(prefix), i;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%s/cwd", pid);
	if ((n = readlink(path, buf, sizeof(buf) - 1)) > 0) {
		buf[n] = '\0';
		if (strncmp(buf, prefix, plen) == 0)
			return 1;
	}
	snprintf(path, sizeof(path), "/proc/%s/cmdline", pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	for (i = 0; i < (size_t)n; i++)
		if (buf[i] == '\0')
			buf[i] = ' ';
	buf[n] = '\0';
	return strstr(buf, prefix) != NULL;
}

/* The processes working in or naming prefix; their pids into list. */
static int count_under(const char *prefix, char *list, size_t len)
{
	struct dirent *d;
	DIR *dir = opendir("/proc");
	int n = 0;
	size_t off = 0;

	if (len > 0)
		list[0] = '\0';
	if (dir == NULL)
		return -1;
	while ((d = readdir(dir)) != NULL) {
		if (d->d_name[0] < '1' || d->d_name[0] > '9' || atoi(d->d_name) == getpid() ||
		    !proc_under(d->d_name, prefix))
			continue;
		n++;
		if (off + 1 < len)
			off += (size_t)snprintf(list + off, len - off, " %s", d->d_name);
		if (off >= len)
			off = len - 1;
	}
	closedir(dir);
	return n;
}

/* The uid a process runs as, or -1. */
static int proc_uid(pid_t pid)
{
	char path[64], line[256];
	FILE *f;
	int uid = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "re")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "Uid: %d", &uid) == 1)
			break;
	fclose(f);
	return uid;
}

/* Our children that are dead postgres processes, not reaped. */
static int our_zombies(void)
{
	char path[64], buf[512], *p;
	struct dirent *d;
	DIR *dir = opendir("/proc");
	int n = 0, ppid;
	FILE *f;

	while (dir != NULL && (d = readdir(dir)) != NULL) {
		snprintf(path, sizeof(path), "/proc/%.20s/stat", d->d_name);
		if (d->d_name[0] < '1' || d->d_name[0] > '9' || (f = fopen(path, "re")) == NULL)
			continue;
		if (fgets(buf, sizeof(buf), f) != NULL && strstr(buf, "(postgres) Z ") != NULL &&
		    (p = strrchr(buf, ')')) != NULL && sscanf(p + 4, "%d", &ppid) == 1 &&
		    ppid == getpid())
			n++;
		fclose(f);
	}
	if (dir != NULL)
		closedir(dir);
	return n;
}

/* ---- one cluster ---- */

/* What the server says for one query, "" on any error. */
static void query(struct t_pg *pg, char *out, size_t len, const char *q)
{
	if (t_pg_sql(pg, out, len, "%s", q) < 0)
		out[0] = '\0';
}

/* Started, as whom, where it listens, libpq reaches it with pg->conninfo. */
static int check_started(struct t_pg *pg, const char *name)
{
	char out[256], path[700];
	struct stat st;
	PGconn *c;
	int ok;

	snprintf(path, sizeof(path), "%s/.s.PGSQL.5432", pg->dir);
	t_ok(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "%s: its socket is in its directory",
	     name);
	query(pg, out, sizeof(out), "SHOW listen_addresses");
	t_ok(strcmp(out, "") == 0 && t_pg_sql(pg, NULL, 0, "SELECT 1") == 0,
	     "%s: no TCP address (listen_addresses '%s')", name, out);
	query(pg, out, sizeof(out), "SHOW fsync");
	t_ok(strcmp(out, "on") == 0, "%s: fsync is on (%s)", name, out);
	if (geteuid() == 0)
		t_ok(proc_uid(pg->pid) > 0, "%s: as root, the postmaster is not root (uid %d)",
		     name, proc_uid(pg->pid));
	c = PQconnectdb(pg->conninfo);
	ok = PQstatus(c) == CONNECTION_OK;
	t_ok(ok, "%s: libpq connects with pg->conninfo (%s)", name,
	     ok ? pg->conninfo : PQerrorMessage(c));
	if (ok) {
		PGresult *r =
		    PQexec(c, "SELECT current_database() || ' ' || current_user || ' ' || "
			      "pg_encoding_to_char(encoding) || ' ' || datcollate FROM "
			      "pg_database WHERE datname = current_database()");

		t_ok(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
			 strcmp(PQgetvalue(r, 0, 0), "cimdd cimdd UTF8 C") == 0,
		     "%s: database cimdd as cimdd, UTF8, locale C (%s)", name,
		     PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : PQresultErrorMessage(r));
		PQclear(r);
	}
	PQfinish(c);
	return ok;
}

static void test_cluster(void)
{
	char out[256], list[256];
	struct t_pg pg;
	PGconn *busy, *gone;
	double t0;
	int r, n;
	pid_t old, dead;

	t0 = t_now_ms();
	r = t_pg_start(&pg);
	if (!t_ok(r == 0, "a cluster starts (%s, %.0f ms)", cimd_strerror(r), t_now_ms() - t0))
		return;
	check_started(&pg, "cluster");
	r = t_pg_sql(&pg, NULL, 0,
		     "CREATE TABLE t (id integer PRIMARY KEY, v text NOT NULL); "
		     "INSERT INTO t VALUES (1, 'stopped and started')");
	t_ok(r == 0, "a table and a row");
	r = t_pg_sql(&pg, out, sizeof(out), "SELECT nonsense FROM nowhere");
	t_ok(r == -1 && out[0] == '\0', "t_pg_sql: an error is -1 and an empty answer");
	r = t_pg_sql(&pg, out, sizeof(out), "SELECT v FROM t WHERE id = 2");
	t_ok(r == 0 && out[0] == '\0', "t_pg_sql: no row is 0 and an empty answer");

	/* A clean stop: nothing of it left, nothing answers. */
	t0 = t_now_ms();
	r = t_pg_stop(&pg);
	t_ok(r == 0 && pg.pid == 0, "t_pg_stop: a clean shutdown (%s, %.0f ms)", cimd_strerror(r),
	     t_now_ms() - t0);
	n = count_under(pg.data, list, sizeof(list));
	t_ok(n == 0, "t_pg_stop: no process of the cluster left (%d:%s)", n, list);
	t_ok(PQping(pg.conninfo) == PQPING_NO_RESPONSE, "t_pg_stop: nothing answers on its socket");
	t_ok(t_pg_stop(&pg) < 0, "t_pg_stop of a stopped cluster is an error");

	t0 = t_now_ms();
	r = t_pg_restart(&pg);
	t_ok(r == 0 && pg.pid > 0, "t_pg_restart after t_pg_stop (%s, %.0f ms)", cimd_strerror(r),
	     t_now_ms() - t0);
	t_ok(t_pg_restart(&pg) == -EBUSY, "t_pg_restart of a running cluster is refused");
	query(&pg, out, sizeof(out), "SELECT v FROM t WHERE id = 1");
	t_ok(strcmp(out, "stopped and started") == 0, "the row is there after a restart (%s)", out);

	/* A crash: the row committed just before it is there after recovery, the
	 * one of a transaction still running is not.  That backend computes, and
	 * would not notice its postmaster gone: it ends only if killed. */
	r = t_pg_sql(&pg, NULL, 0, "INSERT INTO t VALUES (2, 'committed, then a crash')");
	busy = PQconnectdb(pg.conninfo);
	r |= PQsendQuery(busy, "BEGIN; INSERT INTO t VALUES (3, 'in flight'); "
			       "DO $$BEGIN LOOP END LOOP; END$$") == 1
		 ? 0
		 : -1;
	for (t0 = t_now_ms(); r == 0 && t_now_ms() - t0 < 10000; usleep(10000)) {
		query(&pg, out, sizeof(out),
		      "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
		      "query LIKE 'BEGIN; INSERT%'");
		if (strcmp(out, "1") == 0)
			break;
	}
	n = count_under(pg.data, list, sizeof(list));
	t_ok(r == 0 && strcmp(out, "1") == 0 && n >= 4,
	     "before the crash: a committed row, a transaction running, %d processes of the "
	     "cluster (postmaster and its children)",
	     n);
	/* A backend that ended while its postmaster could not reap it (stopped
	 * here, as by t_pg_kill itself): a zombie, which must not come to us and
	 * stay when the postmaster is gone. */
	gone = PQconnectdb(pg.conninfo);
	dead = PQbackendPID(gone);
	kill(pg.pid, SIGSTOP);
	PQfinish(gone);
	for (t0 = t_now_ms(); t_proc_state(dead) != 'Z' && t_now_ms() - t0 < 10000; usleep(5000))
		;
	t_ok(t_proc_state(dead) == 'Z', "a backend dead before the crash, not reaped (pid %d)",
	     (int)dead);
	old = pg.pid;
	t0 = t_now_ms();
	t_pg_kill(&pg);
	n = count_under(pg.data, list, sizeof(list));
	t_ok(pg.pid == 0 && n == 0 && kill(old, 0) < 0,
	     "t_pg_kill: the postmaster and its children, the busy backend too, are gone when it "
	     "returns (%d:%s, %.0f ms)",
	     n, list, t_now_ms() - t0);
	t_ok(t_proc_state(dead) == 0 && our_zombies() == 0,
	     "t_pg_kill: the backend that was dead already is reaped, no dead postgres left to "
	     "us (%d)",
	     our_zombies());
	PQfinish(busy);
	t0 = t_now_ms();
	r = t_pg_restart(&pg);
	t_ok(r == 0 && pg.pid != old, "t_pg_restart after the crash (%s, %.0f ms)",
	     cimd_strerror(r), t_now_ms() - t0);
	query(&pg, out, sizeof(out), "SELECT string_agg(v, ',' ORDER BY id) FROM t");
	t_ok(strcmp(out, "stopped and started,committed, then a crash") == 0,
	     "after recovery: the rows committed before the crash, not the one in flight (%s)",
	     out);
	/* Or the kill was a clean stop, and this test proves nothing about a crash. */
	t_ok(t_sh("grep -q 'was interrupted\\|not properly shut down' %s", pg.log) == 0,
	     "the server recovered from a crash (its log says so)");
	t_ok(t_pg_stop(&pg) == 0, "stopped");
}

/* Two at once: each its own directory, socket, data and postmaster. */
static void test_two(void)
{
	struct t_pg a, b;
	char out[256];
	int ra, rb;

	ra = t_pg_start(&a);
	rb = t_pg_start(&b);
	if (!t_ok(ra == 0 && rb == 0, "two clusters start (%s, %s)", cimd_strerror(ra),
		  cimd_strerror(rb)))
		goto out;
	t_ok(strcmp(a.dir, b.dir) != 0 && strcmp(a.conninfo, b.conninfo) != 0 && a.pid != b.pid,
	     "two: distinct directories, connection strings and postmasters");
	ra = t_pg_sql(&a, NULL, 0, "CREATE TABLE t (v text); INSERT INTO t VALUES ('a')");
	rb = t_pg_sql(&b, NULL, 0, "CREATE TABLE t (v text); INSERT INTO t VALUES ('b')");
	t_ok(ra == 0 && rb == 0, "two: the same table name in each");
	query(&a, out, sizeof(out), "SELECT string_agg(v, ',') FROM t");
	t_ok(strcmp(out, "a") == 0, "two: the first sees its row alone (%s)", out);
	query(&b, out, sizeof(out), "SELECT string_agg(v, ',') FROM t");
	t_ok(strcmp(out, "b") == 0, "two: the second sees its row alone (%s)", out);
	t_pg_kill(&a);
	query(&b, out, sizeof(out), "SELECT string_agg(v, ',') FROM t");
	t_ok(strcmp(out, "b") == 0 && PQping(a.conninfo) == PQPING_NO_RESPONSE,
	     "two: the second serves while the first is killed (%s)", out);
	ra = t_pg_restart(&a);
	query(&a, out, sizeof(out), "SELECT string_agg(v, ',') FROM t");
	t_ok(ra == 0 && strcmp(out, "a") == 0, "two: the first back, with its row (%s)", out);
	ra = t_pg_stop(&a);
	query(&b, out, sizeof(out), "SELECT string_agg(v, ',') FROM t");
	t_ok(ra == 0 && strcmp(out, "b") == 0, "two: the second serves after the first stopped");
out:
	t_pg_kill(&a);
	t_pg_kill(&b);
}

/* ---- a test that ends without stopping its cluster ---- */

/* Starts a cluster with a client connected, says "ready DATA", waits for a
 * line, then ends as mode says, never stopping the cluster. */
static int child(const char *mode)
{
	PGconn *c;
	char line[16];
	struct t_pg pg;
	int r;

	if (t_pg_start(&pg) < 0)
		return t_done();
	c = PQconnectdb(pg.conninfo); /* a backend too, a session of its own */
	if (!t_ok(PQstatus(c) == CONNECTION_OK, "child: connected"))
		goto out;
	printf("ready %s\n", pg.data);
	fflush(stdout);
	if (fgets(line, sizeof(line), stdin) == NULL)
		goto out;
	if (strcmp(mode, "abort") == 0)
		abort();
	if (strcmp(mode, "fail") == 0) {
		t_ok(0, "child: a failing check, then exit(1) without t_done()");
		exit(1);
	}
	/* "exit": the harness kills the cluster, then the client goes. */
out:
	r = t_done();
	PQfinish(c);
	return r;
}

/* Reads fd until needle or EOF (at most 60 s) into out; whether it came. */
static int read_until(int fd, char *out, size_t len, size_t *off, const char *needle)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	double t0 = t_now_ms();
	ssize_t n;

	/* The child bounds each of its own waits (initdb, the start: T_PG_WAIT_MS
	 * each in the harness): longer than all of them, so that a slow machine
	 * is not read as a child that said nothing. */
	while (*off + 1 < len && (needle == NULL || strstr(out, needle) == NULL)) {
		if (t_now_ms() - t0 > 240000 || poll(&p, 1, 1000) < 0)
			return 0;
		if (p.revents == 0)
			continue;
		if ((n = read(fd, out + *off, len - 1 - *off)) <= 0)
			break;
		*off += (size_t)n;
		out[*off] = '\0';
	}
	return needle == NULL || strstr(out, needle) != NULL;
}

/* Runs "--child mode" in a directory of its own, which it returns in dir. */
static pid_t run_child(const char *mode, char *dir, size_t dlen, int *ret_in, int *ret_out)
{
	int in[2], out[2];
	char exe[PATH_MAX];
	ssize_t n;
	pid_t pid;

	snprintf(dir, dlen, "%s/child-%s", t_tmpdir(), mode);
	chmod(t_tmpdir(), 0711);
	if (mkdir(dir, 0711) < 0 || (n = readlink("/proc/self/exe", exe, sizeof(exe) - 1)) < 0 ||
	    pipe2(in, O_CLOEXEC) < 0)
		return -1;
	exe[n] = '\0';
	if (pipe2(out, O_CLOEXEC) < 0)
		return -1;
	fflush(stdout);
	if ((pid = fork()) == 0) {
		/* As tests/run.sh starts a test: a process group of its own. */
		setpgid(0, 0);
		dup2(in[0], 0);
		dup2(out[1], 1);
		dup2(out[1], 2);
		setenv("TMPDIR", dir, 1);
		execl(exe, "test_pg", "--child", mode, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	*ret_in = in[1];
	*ret_out = out[0];
	return pid;
}

static void test_child(const char *mode)
{
	char dir[600], out[16384], list[256], *p;
	size_t off = 0;
	int in = -1, fd = -1, st = -1, n, ok = 0;
	double t0;
	pid_t pid;

	out[0] = '\0';
	if (!t_ok((pid = run_child(mode, dir, sizeof(dir), &in, &fd)) > 0, "%s: a child test",
		  mode))
		return;
	if (!t_ok(read_until(fd, out, sizeof(out), &off, "\nready "), "%s: its cluster is up",
		  mode)) {
		printf("# the child said:\n%s\n", out);
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		goto out;
	}
	/* The count sees them while they run, or its zero below means nothing. */
	n = count_under(dir, list, sizeof(list));
	t_ok(n >= 4,
	     "%s: %d processes of its cluster while it runs (postmaster, children, a backend)",
	     mode, n);
	if (strcmp(mode, "kill") == 0 || write(in, "go\n", 3) != 3)
		kill(pid, SIGKILL);
	read_until(fd, out, sizeof(out), &off, NULL);
	waitpid(pid, &st, 0);
	n = count_under(dir, list, sizeof(list));
	if (strcmp(mode, "kill") == 0) {
		/* Nothing of the harness ran: the postmaster's death signal, then its
		 * children's own check that it lives. */
		for (t0 = t_now_ms(); n > 0 && t_now_ms() - t0 < 10000; usleep(20000))
			n = count_under(dir, list, sizeof(list));
		ok = t_ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && n == 0,
			  "kill: a test killed with SIGKILL leaves none of its cluster's processes "
			  "(within %.0f ms; left:%s)",
			  t_now_ms() - t0, list);
		goto out;
	}
	ok = t_ok(n == 0, "%s: none of its cluster's processes is left when it has ended (%d:%s)",
		  mode, n, list);
	if (strcmp(mode, "abort") == 0)
		ok &= t_ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT &&
			       strstr(out, "harness: signal 6: killed ") != NULL,
			   "abort: it died of SIGABRT, the harness killed what it started");
	else
		ok &= t_ok(WIFEXITED(st) && WEXITSTATUS(st) == (strcmp(mode, "fail") == 0) &&
			       strstr(out, "# the test left ") != NULL &&
			       strstr(out, " (postgres)") != NULL,
			   "%s: it exited (status %#x), the harness killed postgres and said so",
			   mode, (unsigned)st);
	/* Its processes were its own children (it is a subreaper too): reaped
	 * by it, not left to us, its subreaper, as zombies. */
	if (strcmp(mode, "abort") != 0) {
		n = our_zombies();
		ok &= t_ok(n == 0, "%s: it reaped them: no dead postgres of it came to us (%d)",
			   mode, n);
	}
out:
	close(in);
	close(fd);
	if (!ok)
		for (p = strtok(out, "\n"); p != NULL; p = strtok(NULL, "\n"))
			printf("#   %s\n", p);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "--child") == 0)
		return child(argv[2]);
	test_cluster();
	printf("# DEBUG zombies after cluster %d\n", our_zombies());
	t_sh("ps -o pid,ppid,stat,lstart,cmd --ppid %d", (int)getpid());
	test_two();
	printf("# DEBUG zombies after two %d\n", our_zombies());
	t_sh("ps -o pid,ppid,stat,lstart,cmd --ppid %d", (int)getpid());
	test_child("exit");
	test_child("fail");
	test_child("abort");
	test_child("kill");
	return t_done();
}
