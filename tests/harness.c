/* harness.c — see harness.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/pem.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "harness.h"
#include "lineio.h"
#include "service.h"

/* Under a sanitizer its report, not our handler, ends the process (make asan). */
#if defined(__SANITIZE_ADDRESS__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifdef T_SANITIZED
#include <dlfcn.h>
#include <sanitizer/common_interface_defs.h>
#endif

static int n_pass, n_fail, n_tests;
static char prefix[64];
static pid_t main_pid; /* the test binary; not the children it forks */

void t_set_prefix(const char *p)
{
	snprintf(prefix, sizeof(prefix), "%s", p ? p : "");
}
static char tmp_root[PATH_MAX];

int t_ok(int cond, const char *fmt, ...)
{
	char msg[2048], *p;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One result, one line: output quoted into a message stays on it. */
	for (p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	printf("%s %d - %s%s\n", cond ? "ok" : "not ok", ++n_tests, prefix, msg);
	fflush(stdout);
	if (cond)
		n_pass++;
	else
		n_fail++;
	return cond;
}

static void logs_check_all(void);
static void kill_and_report(void);
static void stores_stop(void);

int t_done(void)
{
	if (getpid() == main_pid)
		logs_check_all();
	t_cleanup();
	printf("# %d passed, %d failed\n", n_pass, n_fail);
	fflush(stdout);
	return n_fail == 0 ? 0 : 1;
}

char t_proc_state(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	char st = 0;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((f = fopen(path, "re")) == NULL)
		return 0;
	if (fgets(buf, sizeof(buf), f) != NULL && (p = strrchr(buf, ')')) != NULL && p[1] == ' ')
		st = p[2];
	fclose(f);
	return st;
}

double t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

const char *t_tmpdir(void)
{
	const char *base = getenv("TMPDIR");

	if (tmp_root[0] != '\0')
		return tmp_root;
	snprintf(tmp_root, sizeof(tmp_root), "%s/cimdd-test.XXXXXX", base ? base : "/tmp");
	if (mkdtemp(tmp_root) == NULL) {
		perror("mkdtemp");
		exit(2);
	}
	return tmp_root;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 ? -1 : 0;
}

void t_cleanup(void)
{
	/* Nothing the test started outlives it, nor runs in a removed directory;
	 * pid files are read before the directory goes.  The store clusters
	 * are shut down first, as a part of the test that must end cleanly. */
	if (getpid() == main_pid) {
		stores_stop();
		kill_and_report();
	}
	if (tmp_root[0] == '\0' || getenv("CIMD_TEST_KEEP") != NULL)
		return;
	if (nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
		fprintf(stderr, "cannot remove %s\n", tmp_root);
	tmp_root[0] = '\0';
}

int t_write_file(const char *path, const void *buf, size_t len)
{
	int fd, r = 0;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return -errno;
	if (write(fd, buf, len) != (ssize_t)len)
		r = -EIO;
	close(fd);
	return r;
}

int t_sh(const char *fmt, ...)
{
	char cmd[8192], line[1024];
	va_list ap;
	FILE *f;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	if ((f = popen(cmd, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		printf("#   %s", line);
	fflush(stdout); /* before a crash can lose it */
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int t_sh_out(char *out, size_t len, const char *fmt, ...)
{
	char cmd[8192];
	size_t n = 0, k;
	va_list ap;
	FILE *f;
	int st;

	if (len == 0)
		return -1;
	out[0] = '\0'; /* whatever fails below, the output is defined */
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	if ((f = popen(cmd, "r")) == NULL)
		return -1;
	while (n + 1 < len && (k = fread(out + n, 1, len - 1 - n, f)) > 0)
		n += k;
	out[n] = '\0';
	while (fread(cmd, 1, sizeof(cmd), f) > 0)
		; /* drain */
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

const char *t_build_dir(char *buf, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (n < 0)
		n = 0;
	exe[n] = '\0';
	/* BUILD/tests/test_x -> BUILD */
	if ((slash = strrchr(exe, '/')) != NULL)
		*slash = '\0';
	if ((slash = strrchr(exe, '/')) != NULL)
		*slash = '\0';
	snprintf(buf, len, "%s", exe);
	return buf;
}

const char *t_bin(const char *name, char *buf, size_t len)
{
	char build[PATH_MAX];

	snprintf(buf, len, "%s/bin/%s", t_build_dir(build, sizeof(build)), name);
	return buf;
}

/* ---- a test owns what it starts (STYLE.md 21) ----
 *
 * Before main(), t_init() makes the test binary the leader of a process group
 * of its own (tests/run.sh starts each binary as a session of its own
 * already).  What it starts stays in that group: cimdd runs with -f, so it
 * does not call setsid(); the publisher is forked by cimdd and keeps its group;
 * swtpm, curl, openssl, setpriv and the shells of t_sh() are plain children,
 * and a process a shell put in the background stays in the group when the
 * shell is gone.  nginx daemonizes (fork, then setsid() in the child): it is
 * found by the pid file it writes under our temporary directory.
 *
 * At exit, at t_cleanup() and on a fatal signal, kill_leftovers() sends SIGKILL
 * to every process of the group but the test itself, to every descendant that
 * left the group (setsid), and to every process named by a pid file under the
 * temporary directory that started after the test did (with its group, when
 * it leads one: nginx's workers).  It runs in signal handlers, so it makes
 * only async-signal-safe calls: no stdio, no malloc, /proc read with
 * getdents64 and read.
 *
 * Whose group it is decides what of it is ours.  A session of our own
 * (tests/run.sh), or a group we made: all of it.  A group a job-control shell
 * made us the leader of may hold the rest of a pipeline ("test_daemon | tee"):
 * there a member is ours unless it descends from our parent through another
 * of its children.  A test that is one job of a terminal's foreground group
 * (make, by hand) stays in it, so that ^C still reaches it: then only its
 * descendants and the pid files are found.
 */

#define T_PROCS_MAX 16384 /* processes looked at in one sweep of /proc */
#define T_HASH_SIZE 32768 /* pid -> entry, open addressing; a power of 2 > T_PROCS_MAX */
#define T_DEPTH_MAX 64	  /* ancestors followed */
#define T_VICTIMS_MAX 32  /* processes named in the report */

enum t_group {
	T_GROUP_NONE,	/* a job of someone else's group: descendants only */
	T_GROUP_OWN,	/* a session or a group we made: every member is ours */
	T_GROUP_SHARED, /* we lead it, but a job-control shell made it */
};

struct t_proc {
	pid_t pid, ppid, pgrp;
	char state;
	unsigned long long start; /* clock ticks after boot, /proc/PID/stat field 22 */
	char comm[16];
};

static enum t_group group;
static pid_t main_ppid;
static unsigned long long main_start;
static struct sigaction old_act[NSIG];
static char alt_stack[256 * 1024] __attribute__((aligned(16)));
static struct t_proc procs[T_PROCS_MAX];
static int proc_hash[T_HASH_SIZE]; /* index + 1 into procs, 0: free */
static pid_t victims[T_VICTIMS_MAX];
static char victims_comm[T_VICTIMS_MAX][16];
static int n_victims;

static char *put_str(char *p, const char *end, const char *s)
{
	while (*s != '\0' && p < end)
		*p++ = *s++;
	return p;
}

static char *put_num(char *p, const char *end, unsigned long long v)
{
	char d[24];
	int n = 0;

	do
		d[n++] = (char)('0' + v % 10);
	while ((v /= 10) > 0);
	while (n > 0 && p < end)
		*p++ = d[--n];
	return p;
}

static unsigned long long get_num(const char **p)
{
	unsigned long long v = 0;

	while (**p >= '0' && **p <= '9')
		v = v * 10 + (unsigned long long)(*(*p)++ - '0');
	return v;
}

/* A whole small file, NUL-terminated; its length or -1. */
static ssize_t read_small(int dfd, const char *path, char *buf, size_t len)
{
	ssize_t n, got = 0;
	int fd;

	if ((fd = openat(dfd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return -1;
	while ((size_t)got + 1 < len && (n = read(fd, buf + got, len - 1 - (size_t)got)) > 0)
		got += n;
	close(fd);
	buf[got] = '\0';
	return got;
}

/* proc(5): /proc/PID/stat, "pid (comm) state ppid pgrp ..."; comm may hold
 * spaces and parentheses, so the fields start after the last ')'. */
static int proc_read(pid_t pid, struct t_proc *ret)
{
	char path[40], buf[1024], *p = path, *end = path + sizeof(path) - 1;
	const char *q, *c;
	int field;

	p = put_str(p, end, "/proc/");
	p = put_num(p, end, (unsigned long long)pid);
	p = put_str(p, end, "/stat");
	*p = '\0';
	if (read_small(AT_FDCWD, path, buf, sizeof(buf)) <= 0 || (c = strchr(buf, '(')) == NULL ||
	    (q = strrchr(buf, ')')) == NULL || q[1] != ' ' || q[2] == '\0')
		return -1;
	memset(ret, 0, sizeof(*ret));
	ret->pid = pid;
	memcpy(ret->comm, c + 1, (size_t)(q - c - 1) < 15 ? (size_t)(q - c - 1) : 15);
	ret->state = q[2];
	for (q += 3, field = 4; field <= 22; field++) {
		if (*q++ != ' ')
			return -1;
		if (*q == '-') /* only tty_nr and the like, never a field read here */
			q++;
		if (field == 4)
			ret->ppid = (pid_t)get_num(&q);
		else if (field == 5)
			ret->pgrp = (pid_t)get_num(&q);
		else if (field == 22)
			ret->start = get_num(&q);
		else
			get_num(&q);
	}
	return 0;
}

static void kill_one(const struct t_proc *p, pid_t target)
{
	int i;

	kill(target, SIGKILL);
	for (i = 0; i < n_victims && i < T_VICTIMS_MAX; i++)
		if (victims[i] == p->pid)
			return;
	if (n_victims < T_VICTIMS_MAX) {
		victims[n_victims] = p->pid;
		memcpy(victims_comm[n_victims], p->comm, sizeof(p->comm));
	}
	n_victims++;
}

static const struct t_proc *proc_find(pid_t pid)
{
	unsigned h = (unsigned)pid & (T_HASH_SIZE - 1);

	for (; proc_hash[h] != 0; h = (h + 1) & (T_HASH_SIZE - 1))
		if (procs[proc_hash[h] - 1].pid == pid)
			return &procs[proc_hash[h] - 1];
	return NULL;
}

/* Ours: a descendant of the test, or a member of our group (or a descendant
 * of one) whose line does not lead to our parent by another way. */
static int proc_ours(const struct t_proc *p)
{
	int in_group = group != T_GROUP_NONE && p->pgrp == main_pid, depth;
	pid_t up = p->ppid;

	for (depth = 0; depth < T_DEPTH_MAX && up > 1; depth++) {
		if (up == main_pid)
			return 1;
		if (group == T_GROUP_SHARED && up == main_ppid)
			return 0; /* the rest of the pipeline, and what it started */
		if ((p = proc_find(up)) == NULL)
			break;
		in_group |= group != T_GROUP_NONE && p->pgrp == main_pid;
		up = p->ppid;
	}
	return in_group;
}

/* One look at every process but the test into procs[] and proc_hash; how
 * many.  Zombies are left out unless asked for: dead, and their children went
 * to a reaper. */
static size_t proc_scan(int zombies)
{
	char buf[4096] __attribute__((aligned(8))); /* struct dirent64 records */
	size_t n_procs = 0, i;
	ssize_t n, off;
	unsigned h;
	pid_t pid;
	int dfd;

	if ((dfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return 0;
	while ((n = getdents64(dfd, buf, sizeof(buf))) > 0) {
		for (off = 0; off < n; off += ((struct dirent64 *)(buf + off))->d_reclen) {
			const char *name = ((struct dirent64 *)(buf + off))->d_name;

			if (n_procs < T_PROCS_MAX && (pid = (pid_t)get_num(&name)) > 0 &&
			    *name == '\0' && pid != main_pid &&
			    proc_read(pid, &procs[n_procs]) == 0 &&
			    ((procs[n_procs].state != 'Z' && procs[n_procs].state != 'X') ||
			     zombies))
				n_procs++;
		}
	}
	close(dfd);
	memset(proc_hash, 0, sizeof(proc_hash));
	for (i = 0; i < n_procs; i++) {
		for (h = (unsigned)procs[i].pid & (T_HASH_SIZE - 1); proc_hash[h] != 0;
		     h = (h + 1) & (T_HASH_SIZE - 1))
			;
		proc_hash[h] = (int)i + 1;
	}
	return n_procs;
}

/* One look at every process; those that are ours are killed.  How many. */
static int sweep(void)
{
	size_t n_procs = proc_scan(0), i;
	int killed = 0;

	for (i = 0; i < n_procs; i++)
		if (proc_ours(&procs[i])) {
			kill_one(&procs[i], procs[i].pid);
			killed++;
		}
	return killed;
}

/* Processes named by NAME.pid files under dfd (nginx's pid file), down to
 * depth 4, that started after the test did. */
static int pid_files(int dfd, int depth)
{
	char buf[2048] __attribute__((aligned(8))), txt[32];
	struct t_proc p;
	ssize_t n, off;
	size_t len;
	int fd, killed = 0;
	pid_t pid;

	while ((n = getdents64(dfd, buf, sizeof(buf))) > 0) {
		for (off = 0; off < n; off += ((struct dirent64 *)(buf + off))->d_reclen) {
			const struct dirent64 *d = (const struct dirent64 *)(buf + off);
			const char *q = txt;

			if (d->d_name[0] == '.')
				continue;
			len = strlen(d->d_name);
			if (d->d_type == DT_DIR && depth < 4) {
				fd = openat(dfd, d->d_name,
					    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				if (fd >= 0) {
					killed += pid_files(fd, depth + 1);
					close(fd);
				}
			} else if (d->d_type == DT_REG && len > 4 &&
				   strcmp(d->d_name + len - 4, ".pid") == 0 &&
				   read_small(dfd, d->d_name, txt, sizeof(txt)) > 0 &&
				   (pid = (pid_t)get_num(&q)) > 1 && pid != main_pid &&
				   proc_read(pid, &p) == 0 && p.state != 'Z' && p.state != 'X' &&
				   p.start >= main_start) {
				kill_one(&p, p.pgrp == pid ? -pid : pid);
				killed++;
			}
		}
	}
	return killed;
}

/* Until a look finds none left (at most 3 s: a process in an uninterruptible
 * sleep dies when it wakes).  How many processes were killed. */
static int kill_leftovers(void)
{
	struct timespec ts = {0, 10 * 1000 * 1000};
	int round, n, dfd;

	if (getpid() != main_pid)
		return 0;
	n_victims = 0;
	for (round = 0; round < 300; round++) {
		n = sweep();
		if (tmp_root[0] != '\0' &&
		    (dfd = open(tmp_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
			n += pid_files(dfd, 0);
			close(dfd);
		}
		if (n == 0)
			break;
		nanosleep(&ts, NULL);
	}
	return n_victims;
}

static void kill_and_report(void)
{
	int n = kill_leftovers(), i;

	/* What died and came to us as to a subreaper (t_pg_start) is reaped,
	 * not left as zombies to an init that may be slow to reap them. */
	if (getpid() == main_pid)
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	if (n == 0)
		return;
	printf("# the test left %d process%s running, killed:", n, n == 1 ? "" : "es");
	for (i = 0; i < n && i < T_VICTIMS_MAX; i++)
		printf(" %d (%s)", (int)victims[i], victims_comm[i]);
	printf("\n");
	fflush(stdout);
}

static void on_exit_kill(void)
{
	kill_and_report();
}

/* On the way out of a dying test: kills, and says so on stderr. */
static void kill_dying(const char *why, int sig)
{
	char msg[160], *p = msg, *end = msg + sizeof(msg) - 1;
	int n;

	if (getpid() != main_pid || (n = kill_leftovers()) == 0)
		return;
	p = put_str(p, end, "harness: ");
	p = put_str(p, end, why);
	if (sig > 0)
		p = put_num(p, end, (unsigned long long)sig);
	p = put_str(p, end, ": killed ");
	p = put_num(p, end, (unsigned long long)n);
	p = put_str(p, end, " process(es) the test started\n");
	if (write(2, msg, (size_t)(p - msg)) < 0) {
		/* nothing more to do */
	}
}

#ifdef T_SANITIZED
static void on_sanitizer_death(void)
{
	kill_dying("sanitizer report", 0);
}
#endif

/* The test dies: what it started dies first, then the signal's own action
 * (a sanitizer's report, a core dump) runs as it would have. */
static void on_fatal(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *old = &old_act[sig];
	int saved = errno;

	kill_dying("signal ", sig);
	if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction != NULL)
		old->sa_sigaction(sig, si, uc);
	else if (!(old->sa_flags & SA_SIGINFO) && old->sa_handler != SIG_DFL &&
		 old->sa_handler != SIG_IGN)
		old->sa_handler(sig);
	signal(sig, SIG_DFL);
	raise(sig);
	errno = saved;
}

/* One job of a terminal's foreground process group, not its leader. */
static int in_foreground_job(void)
{
	int fd = open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC), r;

	if (fd < 0)
		return 0;
	r = tcgetpgrp(fd) == getpgrp();
	close(fd);
	return r;
}

__attribute__((constructor)) static void t_init(void)
{
	static const int fatal[] = {SIGSEGV, SIGBUS,  SIGFPE, SIGILL, SIGABRT,
				    SIGSYS,  SIGTERM, SIGINT, SIGHUP, SIGQUIT};
	struct sigaction sa, cur;
	struct t_proc self;
	stack_t ss;
	size_t i;

	main_pid = getpid();
	main_ppid = getppid();
	if (proc_read(main_pid, &self) == 0)
		main_start = self.start;
	if (getsid(0) == main_pid)
		group = T_GROUP_OWN;
	else if (getpgrp() == main_pid)
		group = T_GROUP_SHARED;
	else if (!in_foreground_job() && setpgid(0, 0) == 0)
		group = T_GROUP_OWN;
	/* A stack overflow must still reach the handler. */
	if (sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_DISABLE)) {
		ss.ss_sp = alt_stack;
		ss.ss_size = sizeof(alt_stack);
		ss.ss_flags = 0;
		sigaltstack(&ss, NULL);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fatal;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESETHAND;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
		/* nohup and the like: an interrupt ignored when we started stays so */
		if ((fatal[i] == SIGHUP || fatal[i] == SIGINT || fatal[i] == SIGQUIT) &&
		    sigaction(fatal[i], NULL, &cur) == 0 && cur.sa_handler == SIG_IGN)
			continue;
		sigaction(fatal[i], &sa, &old_act[fatal[i]]);
	}
	atexit(on_exit_kill);
#ifdef T_SANITIZED
	/* The sanitizer may keep SIGSEGV for itself and ends the process with
	 * _exit after its report: no handler of ours, no atexit.  gcc links ASan
	 * and UBSan as two libraries, each with its own callback: both are set. */
	__sanitizer_set_death_callback(on_sanitizer_death);
	{
		void *ubsan = dlopen("libubsan.so.1", RTLD_NOW | RTLD_NOLOAD);
		void (*set)(void (*)(void)) = NULL;

		if (ubsan != NULL)
			*(void **)&set = dlsym(ubsan, "__sanitizer_set_death_callback");
		if (set != NULL && set != __sanitizer_set_death_callback)
			set(on_sanitizer_death);
	}
#endif
}

/* ---- the daemons' logs: the publisher's seccomp filter ----
 *
 * The publisher writes "cimdd-publisher: forbidden system call N" (and its
 * backtrace) to the daemon's stderr, the log, when its filter refuses a call
 * (publisher/confine.c, on_sigsys); cimdd logs "killed by signal 31" if it died of
 * SIGSYS without that.  Either fails a check when the daemon is stopped and at
 * t_done(), whatever the test itself checks: each log is read from where the
 * last look ended. */

#define T_LOGS_MAX 64

static struct t_log {
	char path[600];
	long off;
} logs[T_LOGS_MAX];
static int n_logs, n_forbidden;

static struct t_log *log_entry(const char *path)
{
	int i;

	if (path[0] == '\0')
		return NULL;
	for (i = 0; i < n_logs; i++)
		if (strcmp(logs[i].path, path) == 0)
			return &logs[i];
	if (n_logs == T_LOGS_MAX)
		return NULL;
	snprintf(logs[n_logs].path, sizeof(logs[n_logs].path), "%s", path);
	logs[n_logs].off = 0;
	return &logs[n_logs++];
}

/* The lines about a forbidden system call from *off on, printed when print;
 * *off moves to the end of the last whole line.  Their count. */
static int log_forbidden(const char *path, long *off, int print)
{
	char line[1024], sigsys[32];
	int n = 0, trail = 0;
	struct stat st;
	long pos;
	FILE *f;

	snprintf(sigsys, sizeof(sigsys), "killed by signal %d", SIGSYS);
	if ((f = fopen(path, "re")) == NULL)
		return 0;
	if (fstat(fileno(f), &st) == 0 && st.st_size < *off)
		*off = 0; /* a new log under the same name */
	if (fseek(f, *off, SEEK_SET) < 0) {
		fclose(f);
		return 0;
	}
	for (pos = *off; fgets(line, sizeof(line), f) != NULL; pos = ftell(f)) {
		if (strchr(line, '\n') == NULL && feof(f))
			break; /* a line being written: the next look reads it whole */
		if (strstr(line, "forbidden system call") != NULL || strstr(line, sigsys) != NULL) {
			n++;
			trail = 32; /* its backtrace follows */
		} else if (trail > 0 && strstr(line, "[0x") != NULL) {
			trail--;
		} else {
			trail = 0;
			continue;
		}
		if (print)
			printf("#   %s%s", line, strchr(line, '\n') ? "" : "\n");
	}
	*off = pos;
	fclose(f);
	return n;
}

/* A failed check, with the lines, when the log tells of a forbidden system
 * call since the last look. */
static void log_check(const char *path)
{
	struct t_log *e = log_entry(path);
	long off = e ? e->off : 0, again = off;
	int n;

	if ((n = log_forbidden(path, &off, 0)) > 0) {
		n_forbidden += n;
		t_ok(0,
		     "no forbidden system call in cimdd's log (the publisher's seccomp filter): "
		     "%d in %s",
		     n, path);
		log_forbidden(path, &again, 1);
	}
	if (e != NULL)
		e->off = off;
}

/* At the end of the test: every log, stopped daemon or not, to its end. */
static void logs_check_all(void)
{
	long off[T_LOGS_MAX];
	int i, n = 0, k[T_LOGS_MAX];

	if (n_logs == 0)
		return;
	for (i = 0; i < n_logs; i++) {
		off[i] = logs[i].off;
		n += k[i] = log_forbidden(logs[i].path, &logs[i].off, 0);
	}
	t_ok(n == 0,
	     "no forbidden system call in cimdd's log (the publisher's seccomp filter): the %d "
	     "log%s of this test, to the end%s",
	     n_logs, n_logs == 1 ? "" : "s",
	     n_forbidden > 0 ? " (besides those reported when a daemon stopped)" : "");
	for (i = 0; i < n_logs; i++)
		if (k[i] > 0)
			log_forbidden(logs[i].path, &off[i], 1);
	n_forbidden += n;
}

int t_unix_up(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int s, r;

	if (strlen(path) >= sizeof(sa.sun_path) ||
	    (s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return 0;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	r = connect(s, (struct sockaddr *)&sa, sizeof(sa));
	close(s);
	return r == 0;
}

/*
 * make check STORE=postgresql (CIMD_TEST_STORE=postgresql in the
 * environment): every state directory a daemon is started on gets a cluster
 * of its own (t_pg_start), the same one each time the daemon starts again on
 * it, and the daemon's configuration the lines that select it, unless it
 * names a store itself.  t_db_sql reaches the database of a state directory
 * whichever engine holds it.
 */
#define T_STORES_MAX 16
/* A cluster's socket's name, DIR/.s.PGSQL.PORT: the same in every cluster
 * (each has a directory of its own), and written down, not left to PGPORT. */
#define T_PG_PORT 5432

static int pg_exec(const char *conninfo, char *out, size_t len, const char *q);

static struct t_store {
	char state_dir[600];
	struct t_pg pg;
} stores[T_STORES_MAX];
static int n_stores;

int t_store_pg(void)
{
	const char *e = getenv("CIMD_TEST_STORE");

	return e != NULL && strcmp(e, "postgresql") == 0;
}

static struct t_store *store_of_dir(const char *state_dir)
{
	int i;

	for (i = 0; i < n_stores; i++)
		if (strcmp(stores[i].state_dir, state_dir) == 0)
			return &stores[i];
	return NULL;
}

/* The cluster of a state directory, started when it has none yet. */
static int store_for_dir(const char *dir, struct t_store **ret)
{
	struct t_store *s;
	int r;

	if ((s = store_of_dir(dir)) == NULL) {
		if (n_stores == T_STORES_MAX)
			return -ENOSPC;
		s = &stores[n_stores];
		if ((r = t_pg_start(&s->pg)) < 0)
			return r;
		snprintf(s->state_dir, sizeof(s->state_dir), "%s", dir);
		n_stores++;
	}
	*ret = s;
	return 0;
}

/* The cluster of the state directory in conf, started and written into conf
 * when it is not there yet. */
static int store_for_conf(const char *conf)
{
	char line[1024], dir[600] = "", add[900];
	struct t_store *s;
	int named = 0, r;
	FILE *f;

	if (!t_store_pg() || (f = fopen(conf, "re")) == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, " state_dir = %599s", dir) == 1)
			continue;
		if (strncmp(line, "store", 5) == 0 && strchr(" =\t", line[5]) != NULL)
			named = 1;
	}
	fclose(f);
	if (named || dir[0] == '\0')
		return 0;
	if ((r = store_for_dir(dir, &s)) < 0)
		return r;
	snprintf(add, sizeof(add), "store = postgresql\nconninfo = %s\n", s->pg.conninfo);
	if ((f = fopen(conf, "ae")) == NULL)
		return -errno;
	fputs(add, f);
	return fclose(f) == 0 ? 0 : -EIO;
}

/* The clusters the test's stores were on, shut down as the test ends (what
 * the test started itself it stops itself). */
static void stores_stop(void)
{
	int i;

	for (i = 0; i < n_stores; i++)
		if (stores[i].pg.pid > 0)
			t_ok(t_pg_stop(&stores[i].pg) == 0, "the cluster of %s shuts down cleanly",
			     stores[i].state_dir);
}

/* The directory of db_path (STATE_DIR of STATE_DIR/cimdd.db) into dir. */
static const char *dir_of(const char *db_path, char *dir, size_t len)
{
	char *slash;

	snprintf(dir, len, "%s", db_path);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	return dir;
}

struct t_pg *t_store_cluster(const char *db_path)
{
	char dir[600];
	struct t_store *s = store_of_dir(dir_of(db_path, dir, sizeof(dir)));

	return s != NULL ? &s->pg : NULL;
}

int t_db_create(const char *db_path)
{
	char dir[600];
	struct t_store *s;

	if (!t_store_pg())
		return 0;
	return store_for_dir(dir_of(db_path, dir, sizeof(dir)), &s);
}

int t_db_sql(const char *db_path, char *out, size_t len, const char *fmt, ...)
{
	char q[8192];
	struct t_pg *pg = t_store_cluster(db_path);
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	const char *tail;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	if (out != NULL && len > 0)
		out[0] = '\0';
	if (pg != NULL)
		return t_pg_sql(pg, out, len, "%s", q);
	if ((rc = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL)) != SQLITE_OK)
		goto out;
	sqlite3_busy_timeout(db, 5000);
	/* Each statement in turn; the first column of the first row of the last
	 * one that has rows goes to out. */
	for (tail = q; rc == SQLITE_OK && *tail != '\0';) {
		if ((rc = sqlite3_prepare_v2(db, tail, -1, &s, &tail)) != SQLITE_OK || s == NULL)
			break;
		if ((rc = sqlite3_step(s)) == SQLITE_ROW && out != NULL && len > 0)
			snprintf(out, len, "%s",
				 sqlite3_column_text(s, 0) ? (const char *)sqlite3_column_text(s, 0)
							   : "");
		while (rc == SQLITE_ROW)
			rc = sqlite3_step(s);
		rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
		sqlite3_finalize(s);
		s = NULL;
	}
out:
	if (rc != SQLITE_OK)
		printf("# sql: %s: %s\n", q, db != NULL ? sqlite3_errmsg(db) : "cannot open");
	sqlite3_close(db);
	return rc == SQLITE_OK ? 0 : -1;
}

/* The journal records of kind whose bytes hold needle, however the engine
 * spells "the bytes as text". */
int t_db_journal_count(const char *db_path, const char *kind, const char *needle)
{
	char out[32];

	if (t_db_sql(db_path, out, sizeof(out),
		     t_store_cluster(db_path) != NULL
			 ? "SELECT count(*) FROM journal WHERE kind = '%s' AND "
			   "strpos(convert_from(record, 'UTF8'), '%s') > 0"
			 : "SELECT count(*) FROM journal WHERE kind = '%s' AND "
			   "instr(CAST(record AS TEXT), '%s') > 0",
		     kind, needle) < 0)
		return -1;
	return atoi(out);
}

int t_db_blob(const char *db_path, void *out, size_t cap, size_t *ret_len, const char *fmt, ...)
{
	char q[4096], hex[2 * 4096 + 8] = "";
	struct t_pg *pg = t_store_cluster(db_path);
	size_t n, i;
	unsigned v;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	/* The first column as hex, in each engine's words, then back to bytes. */
	if (t_db_sql(db_path, hex, sizeof(hex),
		     pg != NULL ? "SELECT encode((%s), 'hex')" : "SELECT hex((%s))", q) < 0)
		return -1;
	n = strlen(hex) / 2;
	if (n > cap)
		return -1;
	for (i = 0; i < n; i++) {
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -1;
		((uint8_t *)out)[i] = (uint8_t)v;
	}
	*ret_len = n;
	return 0;
}

int t_db_open(const char *db_path, struct store **ret, char *err, size_t errlen)
{
	struct t_pg *pg = t_store_cluster(db_path);

	return pg != NULL ? store_open_engine("postgresql", pg->conninfo, ret, err, errlen)
			  : store_open(db_path, ret, err, errlen);
}

#define T_DB_COLS 16
#define T_BYTEAOID 17

/* A value of a row handed to t_db_each's callback: its bytes and a NUL. */
static char *value_dup(const void *p, size_t n)
{
	char *v = malloc(n + 1);

	if (v != NULL) {
		memcpy(v, p, n);
		v[n] = '\0';
	}
	return v;
}

static void values_free(char **v, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		free(v[i]);
		v[i] = NULL;
	}
}

/* Row k of a PostgreSQL result into v and len: bytea decoded from its text
 * form. */
static int pg_row(const PGresult *res, int k, char **v, size_t *len)
{
	int n = PQnfields(res) < T_DB_COLS ? PQnfields(res) : T_DB_COLS, i;
	unsigned char *b;

	for (i = 0; i < n; i++) {
		len[i] = 0;
		if (PQgetisnull(res, k, i)) {
			v[i] = NULL;
			continue;
		}
		if (PQftype(res, i) == T_BYTEAOID) {
			b = PQunescapeBytea((const unsigned char *)PQgetvalue(res, k, i), &len[i]);
			v[i] = b != NULL ? value_dup(b, len[i]) : NULL;
			PQfreemem(b);
		} else {
			len[i] = (size_t)PQgetlength(res, k, i);
			v[i] = value_dup(PQgetvalue(res, k, i), len[i]);
		}
	}
	return n;
}

/* The rows one at a time (libpq's single-row mode), not all of them in memory
 * at once: a journal of 100,000 records is read as easily as one.  Of several
 * statements ("SET ...; EXPLAIN ..."), the rows of each. */
static int pg_each(struct t_pg *pg, const char *q, t_db_row_fn *cb, void *arg)
{
	PGconn *c = PQconnectdb(pg->conninfo);
	char *v[T_DB_COLS] = {0}, msg[512] = "";
	size_t len[T_DB_COLS];
	ExecStatusType st;
	PGresult *res;
	int rows = 0, stop = 0, n, k;

	if (PQstatus(c) != CONNECTION_OK || !PQsendQuery(c, q) || !PQsetSingleRowMode(c))
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
	while (msg[0] == '\0' && (res = PQgetResult(c)) != NULL) {
		st = PQresultStatus(res);
		if (st == PGRES_SINGLE_TUPLE || st == PGRES_TUPLES_OK) {
			for (k = 0; k < PQntuples(res) && !stop; k++) {
				n = pg_row(res, k, v, len);
				rows++;
				stop = cb(arg, n, v, len) != 0;
				values_free(v, n);
			}
		} else if (st != PGRES_COMMAND_OK && msg[0] == '\0') {
			snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
		}
		PQclear(res);
	}
	PQfinish(c);
	if (msg[0] == '\0')
		return rows;
	msg[strcspn(msg, "\n")] = '\0';
	printf("# sql: %s: %s\n", q, msg);
	return -1;
}

static int lite_each(const char *path, const char *q, t_db_row_fn *cb, void *arg)
{
	char *v[T_DB_COLS] = {0};
	size_t len[T_DB_COLS];
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	int rows = 0, rc, n, i;

	if ((rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL)) == SQLITE_OK) {
		sqlite3_busy_timeout(db, 5000);
		rc = sqlite3_prepare_v2(db, q, -1, &s, NULL);
	}
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		n = sqlite3_column_count(s) < T_DB_COLS ? sqlite3_column_count(s) : T_DB_COLS;
		for (i = 0; i < n; i++) {
			/* A number as its text, as PostgreSQL hands it over. */
			const void *p = sqlite3_column_blob(s, i);

			len[i] = (size_t)sqlite3_column_bytes(s, i);
			v[i] = sqlite3_column_type(s, i) == SQLITE_NULL
				   ? NULL
				   : value_dup(p ? p : "", len[i]);
		}
		rows++;
		rc = cb(arg, n, v, len) != 0 ? SQLITE_DONE : SQLITE_OK;
		values_free(v, n);
	}
	if (rc != SQLITE_DONE)
		printf("# sql: %s: %s\n", q, db != NULL ? sqlite3_errmsg(db) : "cannot open");
	sqlite3_finalize(s);
	sqlite3_close(db);
	return rc == SQLITE_DONE ? rows : -1;
}

int t_db_each(const char *db_path, t_db_row_fn *cb, void *arg, const char *fmt, ...)
{
	struct t_pg *pg = t_store_cluster(db_path);
	char q[8192];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	return pg != NULL ? pg_each(pg, q, cb, arg) : lite_each(db_path, q, cb, arg);
}

struct journal_each {
	t_db_record_fn *cb;
	void *arg;
	int bad;
};

static int journal_row(void *arg, int n, char **v, size_t *len)
{
	struct journal_each *j = arg;
	json_t *rec = n > 0 && v[0] != NULL ? json_loadb(v[0], len[0], 0, NULL) : NULL;
	int r;

	if (rec == NULL) {
		printf("# a journal record that is not JSON: %.80s\n", n > 0 && v[0] ? v[0] : "");
		j->bad = 1;
		return 1;
	}
	r = j->cb(j->arg, rec);
	json_decref(rec);
	return r;
}

int t_db_journal_each(const char *db_path, const char *kind, t_db_record_fn *cb, void *arg)
{
	struct journal_each j = {cb, arg, 0};
	int n;

	n = kind != NULL
		? t_db_each(db_path, journal_row, &j,
			    "SELECT record FROM journal WHERE kind = '%s' ORDER BY seq", kind)
		: t_db_each(db_path, journal_row, &j, "SELECT record FROM journal ORDER BY seq");
	return j.bad ? -1 : n;
}

struct journal_match {
	const json_t *want;
	int n;
};

static int record_matches(void *arg, json_t *rec)
{
	struct journal_match *m = arg;
	const char *key;
	json_t *v;

	json_object_foreach((json_t *)m->want, key, v)
	{
		if (!json_equal(json_object_get(rec, key), v))
			return 0;
	}
	m->n++;
	return 0;
}

int t_db_journal_match(const char *db_path, const char *kind, const char *fmt, ...)
{
	struct journal_match m = {NULL, 0};
	json_error_t e;
	va_list ap;
	json_t *want;
	int r;

	va_start(ap, fmt);
	want = json_vpack_ex(&e, 0, fmt, ap);
	va_end(ap);
	if (want == NULL || !json_is_object(want)) {
		printf("# t_db_journal_match: %s: %s\n", fmt, want ? "not an object" : e.text);
		json_decref(want);
		return -1;
	}
	m.want = want;
	r = t_db_journal_each(db_path, kind, record_matches, &m);
	json_decref(want);
	return r < 0 ? -1 : m.n;
}

struct revoked {
	const char *kid; /* NULL: every key */
	json_t *revoked; /* kid -> true, from its revocation on */
	int n;
};

static int issued_after(void *arg, json_t *rec)
{
	struct revoked *r = arg;
	const char *kind = json_string_value(json_object_get(rec, "kind"));
	const char *kid = json_string_value(json_object_get(rec, "kid"));
	const char *to = json_string_value(json_object_get(rec, "to"));

	if (kind == NULL || kid == NULL || (r->kid != NULL && strcmp(kid, r->kid) != 0))
		return 0;
	if (strcmp(kind, "key.state") == 0 && to != NULL && strcmp(to, "revoked") == 0)
		json_object_set_new(r->revoked, kid, json_true());
	else if (strcmp(kind, "assertion.issue") == 0 && json_object_get(r->revoked, kid))
		r->n++;
	return 0;
}

int t_db_issued_after_revocation(const char *db_path, const char *kid)
{
	struct revoked r = {kid, json_object(), 0};
	struct journal_each j = {issued_after, &r, 0};
	int n;

	/* One pass in the journal's order: a revocation, then what came after. */
	n = t_db_each(db_path, journal_row, &j,
		      "SELECT record FROM journal WHERE kind IN ('key.state', 'assertion.issue') "
		      "ORDER BY seq");
	json_decref(r.revoked);
	return n < 0 || j.bad ? -1 : r.n;
}

int t_db_replace(const char *db_path, const char *table, const char *column, const char *where,
		 const char *from, const char *to)
{
	if (strchr(from, '\'') != NULL || strchr(to, '\'') != NULL)
		return -1; /* not quoted here */
	/* The bytes as text and back, each engine in its words. */
	if (t_store_cluster(db_path) != NULL)
		return t_db_sql(db_path, NULL, 0,
				"UPDATE %s SET %s = convert_to(replace(convert_from(%s, 'UTF8'), "
				"'%s', '%s'), 'UTF8') WHERE %s",
				table, column, column, from, to, where);
	return t_db_sql(db_path, NULL, 0,
			"UPDATE %s SET %s = CAST(replace(CAST(%s AS TEXT), '%s', '%s') AS BLOB) "
			"WHERE %s",
			table, column, column, from, to, where);
}

/* One statement on the cluster's maintenance database (postgres): CREATE and
 * DROP DATABASE run on no other, and outside a transaction. */
static int pg_admin(struct t_pg *pg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pg_admin(struct t_pg *pg, const char *fmt, ...)
{
	char ci[700], q[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	snprintf(
	    ci, sizeof(ci),
	    "host=%s port=%d dbname=postgres user=cimdd options='-c client_min_messages=warning'",
	    pg->dir, T_PG_PORT);
	return pg_exec(ci, NULL, 0, q);
}

int t_db_save(const char *db_path, const char *name)
{
	struct t_pg *pg = t_store_cluster(db_path);

	if (pg != NULL)
		return pg_admin(pg, "DROP DATABASE IF EXISTS \"%s\"", name) == 0 &&
			       pg_admin(pg, "CREATE DATABASE \"%s\" TEMPLATE cimdd", name) == 0
			   ? 0
			   : -1;
	/* The WAL folded into the file first: the file alone is the database. */
	return t_db_sql(db_path, NULL, 0, "PRAGMA wal_checkpoint(TRUNCATE)") == 0 &&
		       t_sh("cp %s %s.%s", db_path, db_path, name) == 0
		   ? 0
		   : -1;
}

int t_db_restore(const char *db_path, const char *name)
{
	struct t_pg *pg = t_store_cluster(db_path);

	if (pg != NULL)
		return pg_admin(pg, "DROP DATABASE cimdd") == 0 &&
			       pg_admin(pg, "CREATE DATABASE cimdd TEMPLATE \"%s\"", name) == 0
			   ? 0
			   : -1;
	return t_sh("cp %s.%s %s && rm -f %s-wal %s-shm", db_path, name, db_path, db_path,
		    db_path) == 0
		   ? 0
		   : -1;
}

static long long file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

long long t_db_bytes(const char *db_path)
{
	char out[32], wal[700];

	if (t_store_cluster(db_path) != NULL)
		return t_db_sql(db_path, out, sizeof(out),
				"SELECT pg_database_size(current_database())") == 0
			   ? atoll(out)
			   : -1;
	/* The WAL copied into the file and truncated (when no reader holds it
	 * back): the pages written, not a WAL file that keeps its largest size. */
	if (t_db_sql(db_path, NULL, 0, "PRAGMA wal_checkpoint(TRUNCATE)") < 0)
		return -1;
	snprintf(wal, sizeof(wal), "%s-wal", db_path);
	return file_size(db_path) + file_size(wal);
}

int t_daemon_start(struct t_daemon *d)
{
	char bin[PATH_MAX];
	double t0;
	int fd, st;

	if ((st = store_for_conf(d->conf)) < 0) {
		t_ok(0, "a PostgreSQL cluster for %s (%s)", d->conf, cimd_strerror(st));
		return st;
	}
	t_bin("cimdd", bin, sizeof(bin));
	log_entry(d->log); /* read when it stops and at t_done() */
	if ((d->pid = fork()) < 0)
		return -errno;
	if (d->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if ((fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execl(bin, "cimdd", "-c", d->conf, "-f", d->arg, (char *)NULL);
		_exit(127);
	}
	for (t0 = t_now_ms(); t_now_ms() - t0 < 10000; usleep(20000)) {
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			return -ECHILD;
		}
		if (t_unix_up(d->sock))
			return 0;
	}
	return -ETIMEDOUT;
}

int t_daemon_stop(struct t_daemon *d, int sig)
{
	int st = 0, r = -1;

	if (d->pid > 0) {
		kill(d->pid, sig);
		waitpid(d->pid, &st, 0);
		d->pid = 0;
		r = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	}
	/* Also when it had died already: its log says why. */
	log_check(d->log);
	return r;
}

int t_log_count(const struct t_daemon *d, const char *needle)
{
	char line[4096];
	FILE *f = fopen(d->log, "r");
	int n = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strstr(line, needle) != NULL)
			n++;
	fclose(f);
	return n;
}

int t_softhsm_init(struct t_softhsm *h, const char *label, const char *pin)
{
	char path[700], buf[1024];
	int n;

	snprintf(h->dir, sizeof(h->dir), "%s/softhsm-%s", t_tmpdir(), label);
	snprintf(path, sizeof(path), "%s/tokens", h->dir);
	if (mkdir(h->dir, 0700) < 0 || mkdir(path, 0700) < 0)
		return -errno;
	n = snprintf(buf, sizeof(buf),
		     "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
		     path);
	snprintf(path, sizeof(path), "%s/softhsm2.conf", h->dir);
	if (t_write_file(path, buf, (size_t)n) < 0)
		return -EIO;
	/* The module reads SOFTHSM2_CONF when it is first initialised. */
	setenv("SOFTHSM2_CONF", path, 1);
	if (t_sh("softhsm2-util --init-token --free --label '%s' --pin '%s' --so-pin 87654321 "
		 ">/dev/null",
		 label, pin) != 0)
		return -EIO;
	snprintf(h->pin_file, sizeof(h->pin_file), "%s/pin", h->dir);
	n = snprintf(buf, sizeof(buf), "%s\n", pin);
	if (t_write_file(h->pin_file, buf, (size_t)n) < 0)
		return -EIO;
	snprintf(h->conf, sizeof(h->conf), "pkcs11:module=%s;token=%s;pin-file=%s",
		 T_SOFTHSM_MODULE, label, h->pin_file);
	return 0;
}

static int swtpm_spawn(struct t_swtpm *s)
{
	char log[600];

	snprintf(log, sizeof(log), "%s.log", s->dir);
	return dev_swtpm_spawn(s->dir, s->port, log, &s->pid);
}

int t_swtpm_start(struct t_swtpm *s)
{
	int tries, r = -EADDRINUSE;

	/* tpm2-tss logs its errors to stderr unless told otherwise; the tests
	 * check the errors they expect themselves. */
	setenv("TSS2_LOG", "all+none", 0);
	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "%s/swtpm.XXXXXX", t_tmpdir());
	if (mkdtemp(s->dir) == NULL)
		return -errno;
	/* Another process may take the ports between our probe and swtpm's bind:
	 * then swtpm exits and we try other ports. */
	for (tries = 0; tries < 5 && r == -EADDRINUSE; tries++) {
		if ((s->port = dev_free_port_pair()) < 0) {
			t_ok(0, "a free pair of loopback ports for swtpm (%s)",
			     cimd_strerror(s->port));
			return s->port;
		}
		r = swtpm_spawn(s);
	}
	snprintf(s->conf, sizeof(s->conf), "tpm2:tcti=swtpm:host=127.0.0.1,port=%d", s->port);
	return r;
}

int t_swtpm_restart(struct t_swtpm *s)
{
	return swtpm_spawn(s);
}

void t_swtpm_kill(struct t_swtpm *s)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

/* ---- a throwaway PostgreSQL cluster ----
 *
 * The postmaster is the test's own child, started with "postgres -D DATA"
 * rather than by pg_ctl: pg_ctl starts it in a session of its own and exits,
 * which would leave it to init, out of reach of the harness's sweep.  As a
 * child it stays in our group, and what it forks (each backend calls setsid())
 * stays among our descendants.  The test is a child subreaper from the first
 * cluster on, so that the postmaster's children killed with it come back to
 * us, to be reaped and still counted ours while they die.  PostgreSQL refuses
 * to run as root (it would own every file of the cluster): as root, the
 * cluster is nobody's. */

#define T_PG_WAIT_MS 60000 /* initdb, a start (crash recovery included), a shutdown */
#define T_PG_KIDS_MAX 256  /* processes of one cluster, for t_pg_kill */

static char pg_bindir[512];

/* `pg_config --bindir` (/usr/lib/postgresql/15/bin on Debian, not on PATH). */
static const char *pg_bin_dir(void)
{
	if (pg_bindir[0] == '\0' &&
	    t_sh_out(pg_bindir, sizeof(pg_bindir), "pg_config --bindir") != 0)
		pg_bindir[0] = '\0';
	pg_bindir[strcspn(pg_bindir, "\n")] = '\0';
	return pg_bindir[0] == '/' ? pg_bindir : NULL;
}

/* Who runs the cluster: nobody when we are root, else ourselves. */
static int pg_owner(uid_t *ret_uid, gid_t *ret_gid)
{
	struct passwd *pw;

	if (geteuid() != 0) {
		*ret_uid = geteuid();
		*ret_gid = getegid();
		return 0;
	}
	if ((pw = getpwnam("nobody")) == NULL)
		return -ENOENT;
	*ret_uid = pw->pw_uid;
	*ret_gid = pw->pw_gid;
	return 0;
}

/* BINDIR/argv[0] as the cluster's owner, its output appended to pg->log:
 * 0 and *ret_pid, or a negative code. */
static int pg_spawn(struct t_pg *pg, char *const argv[], pid_t *ret_pid)
{
	const char *dir = pg_bin_dir();
	pid_t pid, parent = getpid();
	char bin[PATH_MAX];
	uid_t uid;
	gid_t gid;
	int fd, r;

	if (dir == NULL)
		return -ENOENT;
	if ((r = pg_owner(&uid, &gid)) < 0)
		return r;
	snprintf(bin, sizeof(bin), "%s/%s", dir, argv[0]);
	fflush(stdout); /* not twice, by the child too */
	if ((pid = fork()) < 0)
		return -errno;
	if (pid == 0) {
		if ((fd = open(pg->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0 ||
		    dup2(fd, 1) < 0 || dup2(fd, 2) < 0 ||
		    (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0 || dup2(fd, 0) < 0)
			_exit(126);
		/* Nothing of the test's: a pipe held open by the postmaster would
		 * keep a reader of the test's output waiting. */
		close_range(3, ~0U, 0);
		if (geteuid() == 0 &&
		    (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0))
			_exit(126);
		/* After the change of uid, which clears it: killed with SIGKILL, the
		 * test takes the postmaster with it, and the postmaster's children
		 * end when they see it gone. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(126);
		execv(bin, argv);
		_exit(127);
	}
	*ret_pid = pid;
	return 0;
}

/* Waits at most ms for pid, our child, to exit: 0 and its status, or
 * -ETIMEDOUT. */
static int pg_wait(pid_t pid, int ms, int *ret_st)
{
	double t0 = t_now_ms();
	pid_t r;

	while ((r = waitpid(pid, ret_st, WNOHANG)) == 0) {
		if (t_now_ms() - t0 > ms)
			return -ETIMEDOUT;
		usleep(2000);
	}
	return r == pid ? 0 : -errno;
}

static void pg_log_tail(const struct t_pg *pg)
{
	t_sh("tail -n 15 %s", pg->log);
}

/* One SQL text on a connection of its own: see t_pg_sql(). */
static int pg_exec(const char *conninfo, char *out, size_t len, const char *q)
{
	PGconn *c = PQconnectdb(conninfo);
	PGresult *res = NULL;
	char msg[1024], *p;
	int r = -1;

	if (out != NULL && len > 0)
		out[0] = '\0';
	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
		goto out;
	}
	res = PQexec(c, q);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
		snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
		goto out;
	}
	if (out != NULL && len > 0 && PQntuples(res) > 0 && PQnfields(res) > 0)
		snprintf(out, len, "%s", PQgetvalue(res, 0, 0));
	r = 0;
out:
	if (r < 0) {
		for (p = msg; *p != '\0'; p++)
			if (*p == '\n')
				*p = ' ';
		printf("# sql: %s: %s\n", q, msg);
		fflush(stdout);
	}
	PQclear(res);
	PQfinish(c);
	return r;
}

/* The postmaster on pg->data, until it accepts connections: 0, or a negative
 * code with the log's end printed (and the postmaster gone). */
static int pg_postmaster(struct t_pg *pg)
{
	char *argv[] = {"postgres", "-D", pg->data, NULL};
	PGPing ping_r;
	char ping[700];
	double t0;
	int r, st;

	snprintf(ping, sizeof(ping), "host=%s port=%d dbname=postgres user=cimdd", pg->dir,
		 T_PG_PORT);
	if ((r = pg_spawn(pg, argv, &pg->pid)) < 0)
		return r;
	/* PQPING_REJECT while it starts or recovers, PQPING_NO_RESPONSE before
	 * its socket exists. */
	for (t0 = t_now_ms(); (ping_r = PQping(ping)) != PQPING_OK; usleep(5000)) {
		if (ping_r == PQPING_NO_ATTEMPT) {
			printf("# libpq cannot try %s\n", ping);
			r = -EINVAL;
			break;
		}
		if (waitpid(pg->pid, &st, WNOHANG) == pg->pid) {
			printf("# postgres exited (status %#x) before it accepted connections:\n",
			       (unsigned)st);
			pg->pid = 0; /* reaped: nothing of it to kill */
			r = -ECHILD;
			break;
		}
		if (t_now_ms() - t0 > T_PG_WAIT_MS) {
			printf("# postgres did not accept connections in %d ms:\n", T_PG_WAIT_MS);
			r = -ETIMEDOUT;
			break;
		}
	}
	if (r < 0) {
		pg_log_tail(pg);
		t_pg_kill(pg);
	}
	return r;
}

/* initdb, then the settings: a Unix socket in pg->dir and no TCP (so no port
 * to take or to be taken), fsync on as the later tests check durability, and
 * pg_stat_statements loaded, so that a test can count the statements a daemon
 * sends (test_flood: what a receipt costs). */
static int pg_initdb(struct t_pg *pg)
{
	/* --no-sync: initdb's own flush of the files it wrote, which only an
	 * operating system crash could lose; the server's fsync stays on. */
	char *argv[] = {"initdb", "-D", pg->data, "-U",		"cimdd",     "-A",
			"trust",  "-E", "UTF8",	  "--locale=C", "--no-sync", "--no-instructions",
			NULL};
	char path[700];
	FILE *f;
	pid_t pid;
	int r, st;

	if ((r = pg_spawn(pg, argv, &pid)) < 0)
		return r;
	if ((r = pg_wait(pid, T_PG_WAIT_MS, &st)) < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	} else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		r = -EIO;
	}
	if (r < 0) {
		printf("# initdb failed (%s):\n", cimd_strerror(r));
		pg_log_tail(pg);
		return r;
	}
	snprintf(path, sizeof(path), "%s/postgresql.conf", pg->data);
	if ((f = fopen(path, "ae")) == NULL)
		return -errno;
	fprintf(f,
		"\n# tests/harness.c\nlisten_addresses = ''\nunix_socket_directories = '%s'\n"
		"port = %d\nfsync = on\nshared_preload_libraries = 'pg_stat_statements'\n",
		pg->dir, T_PG_PORT);
	return fclose(f) == 0 ? 0 : -EIO;
}

/* Every test directory (cimdd-test.*) from dir up searchable by others (o+x,
 * not o+r); nothing above them is touched. */
static void pg_traversable(const char *dir)
{
	char path[PATH_MAX], *slash;
	struct stat st;

	snprintf(path, sizeof(path), "%s", dir);
	while ((slash = strrchr(path, '/')) != NULL && strncmp(slash, "/cimdd-test.", 12) == 0 &&
	       stat(path, &st) == 0 && st.st_uid == geteuid() && S_ISDIR(st.st_mode)) {
		if (!(st.st_mode & S_IXOTH))
			chmod(path, (st.st_mode & 07777) | S_IXOTH | S_IXGRP);
		if ((slash = strrchr(path, '/')) == NULL || slash == path)
			break;
		*slash = '\0';
	}
}

int t_pg_start(struct t_pg *pg)
{
	char ping[700];
	uid_t uid;
	gid_t gid;
	int r;

	memset(pg, 0, sizeof(*pg));
	/* The postmaster's children come back to us when it is killed (above). */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	/* nobody reaches its own directory inside: through every directory of
	 * ours above it too (a child test's TMPDIR is its parent's). */
	pg_traversable(t_tmpdir());
	snprintf(pg->dir, sizeof(pg->dir), "%s/pg.XXXXXX", t_tmpdir());
	if (mkdtemp(pg->dir) == NULL || (r = pg_owner(&uid, &gid)) < 0 ||
	    chown(pg->dir, uid, gid) < 0) {
		r = -errno;
		printf("# %s: %s\n", pg->dir, strerror(errno));
		return r;
	}
	/* sockaddr_un's sun_path: 108 bytes on Linux, with the NUL. */
	if (strlen(pg->dir) + sizeof("/.s.PGSQL.NNNN") > 108) {
		printf("# %s: too long a path for a Unix socket in it\n", pg->dir);
		return -ENAMETOOLONG;
	}
	snprintf(pg->data, sizeof(pg->data), "%s/data", pg->dir);
	snprintf(pg->log, sizeof(pg->log), "%s/postgres.log", pg->dir);
	snprintf(pg->conninfo, sizeof(pg->conninfo), "host=%s port=%d dbname=cimdd user=cimdd",
		 pg->dir, T_PG_PORT);
	snprintf(ping, sizeof(ping), "host=%s port=%d dbname=postgres user=cimdd", pg->dir,
		 T_PG_PORT);
	if ((r = pg_initdb(pg)) < 0 || (r = pg_postmaster(pg)) < 0)
		return r;
	if (pg_exec(ping, NULL, 0, "CREATE DATABASE cimdd") < 0) {
		t_pg_kill(pg);
		return -EIO;
	}
	return 0;
}

int t_pg_stop(struct t_pg *pg)
{
	int r, st = 0;

	if (pg->pid <= 0)
		return -ESRCH;
	/* SIGINT is the fast shutdown: sessions end, a checkpoint, then exit
	 * (PostgreSQL 15 §19.5); the postmaster exits after its children. */
	kill(pg->pid, SIGINT);
	if ((r = pg_wait(pg->pid, T_PG_WAIT_MS, &st)) < 0) {
		printf("# postgres did not shut down in %d ms:\n", T_PG_WAIT_MS);
		pg_log_tail(pg);
		t_pg_kill(pg);
		return r;
	}
	pg->pid = 0;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

int t_pg_restart(struct t_pg *pg)
{
	if (pg->pid > 0)
		return -EBUSY;
	return pg_postmaster(pg);
}

/* The descendants of pid, at most max, the dead it has not reaped too: how
 * many. */
static int pg_descendants(pid_t pid, pid_t *ret, int max)
{
	size_t n_procs = proc_scan(1), i;
	const struct t_proc *p;
	int n = 0, depth;

	for (i = 0; i < n_procs && n < max; i++)
		for (p = &procs[i], depth = 0; p != NULL && depth < T_DEPTH_MAX; depth++) {
			if (p->ppid == pid) {
				ret[n++] = procs[i].pid;
				break;
			}
			p = proc_find(p->ppid);
		}
	return n;
}

/* Waits until pid is stopped (SIGSTOP is delivered when it next runs). */
static void pg_stopped(pid_t pid)
{
	struct t_proc p;
	double t0 = t_now_ms();

	while (proc_read(pid, &p) == 0 && p.state != 'T' && p.state != 'Z' &&
	       t_now_ms() - t0 < 5000)
		usleep(1000);
}

void t_pg_kill(struct t_pg *pg)
{
	pid_t kids[T_PG_KIDS_MAX];
	struct t_proc p;
	char path[700];
	double t0;
	pid_t r;
	int n, i;

	if (pg->pid <= 0)
		return;
	/* Stopped, the postmaster forks nothing between the listing and the kill,
	 * and does not reap: its children, those that had died already too (a
	 * backend whose client just left), come to us when it dies. */
	kill(pg->pid, SIGSTOP);
	pg_stopped(pg->pid);
	n = pg_descendants(pg->pid, kids, T_PG_KIDS_MAX);
	for (i = 0; i < n; i++)
		kill(kids[i], SIGKILL);
	kill(pg->pid, SIGKILL);
	waitpid(pg->pid, NULL, 0);
	pg->pid = 0;
	/* Until each is gone: reaped by us (the subreaper), or by another. */
	for (i = 0, t0 = t_now_ms(); i < n && t_now_ms() - t0 < 5000;) {
		r = waitpid(kids[i], NULL, WNOHANG);
		if (r == kids[i] || (r < 0 && proc_read(kids[i], &p) < 0))
			i++;
		else
			usleep(1000);
	}
	/* The pids they name may be any process's now: PostgreSQL would take
	 * one for a running postmaster, the harness for one to kill. */
	snprintf(path, sizeof(path), "%s/postmaster.pid", pg->data);
	unlink(path);
	snprintf(path, sizeof(path), "%s/.s.PGSQL.%d.lock", pg->dir, T_PG_PORT);
	unlink(path);
}

int t_pg_sql(struct t_pg *pg, char *out, size_t len, const char *fmt, ...)
{
	char q[8192];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	return pg_exec(pg->conninfo, out, len, q);
}

/* ---- the key store contract, shared by the PKCS#11 and TPM tests ---- */

static int write_jwk(const char *path, const json_t *jwk)
{
	char *s = json_dumps(jwk, JSON_COMPACT);
	int r;

	if (s == NULL)
		return -ENOMEM;
	r = t_write_file(path, s, strlen(s));
	free(s);
	return r;
}

static int has_private_member(const json_t *jwk)
{
	static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth"};
	size_t i;

	for (i = 0; i < sizeof(priv) / sizeof(priv[0]); i++)
		if (json_object_get(jwk, priv[i]) != NULL)
			return 1;
	return 0;
}

/* The openssl CLI verifies the JWS signing input with the public key as PEM. */
static int openssl_verify(const char *dir, const char *jws, const json_t *jwk, enum cimd_alg alg)
{
	char path[700], pem[700], sig[700];
	const char *d2 = strrchr(jws, '.');
	uint8_t *raw = NULL, *der = NULL;
	size_t rawn, dern;
	EVP_PKEY *pk = NULL;
	FILE *f;
	int r = -1;

	snprintf(path, sizeof(path), "%s/input", dir);
	snprintf(pem, sizeof(pem), "%s/pub.pem", dir);
	snprintf(sig, sizeof(sig), "%s/sig.bin", dir);
	if (t_write_file(path, jws, (size_t)(d2 - jws)) < 0 ||
	    b64url_decode(d2 + 1, strlen(d2 + 1), &raw, &rawn) < 0 || jwk_to_evp(jwk, &pk) < 0)
		goto out;
	if ((f = fopen(pem, "w")) == NULL)
		goto out;
	PEM_write_PUBKEY(f, pk);
	fclose(f);
	if (cimd_alg_ec_size(alg) != 0) {
		if (ecdsa_raw_to_der(raw, cimd_alg_ec_size(alg), &der, &dern) < 0 ||
		    t_write_file(sig, der, dern) < 0)
			goto out;
		r = t_sh("openssl dgst -%s -verify %s -signature %s %s >/dev/null",
			 alg == CIMD_ALG_ES384 ? "sha384" : "sha256", pem, sig, path);
	} else {
		if (t_write_file(sig, raw, rawn) < 0)
			goto out;
		r = t_sh(
		    "openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt "
		    "rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256 -verify %s -signature %s %s "
		    ">/dev/null",
		    pem, sig, path);
	}
out:
	free(raw);
	free(der);
	EVP_PKEY_free(pk);
	return r;
}

static int jose_verify(const char *dir, const char *jws, const json_t *jwk)
{
	char jp[700], sp[700];

	snprintf(jp, sizeof(jp), "%s/jwk.json", dir);
	snprintf(sp, sizeof(sp), "%s/jws.txt", dir);
	if (write_jwk(jp, jwk) < 0 || t_write_file(sp, jws, strlen(jws)) < 0)
		return -1;
	return t_sh("node tests/interop/jws-verify.mjs %s %s", jp, sp);
}

void t_keystore_roundtrip(const char *conf, enum cimd_alg alg)
{
	const char *name = cimd_alg_name(alg);
	struct key_store *ks = NULL;
	struct ks_key *key = NULL, *key2 = NULL, *again = NULL;
	json_t *jwk = NULL, *jwk2 = NULL, *claims = NULL;
	char tp[CIMD_KID_LEN + 1], *jws = NULL, *jws2 = NULL, dir[600], errbuf[256];
	const uint8_t *ref;
	uint8_t *refcopy = NULL, *payload = NULL, sig[CIMD_SIG_MAX];
	size_t ref_len = 0, plen, slen;
	static const char msg[] = "{\"iss\":\"https://keys.example.com/clients/a\"}";
	int r;

	snprintf(dir, sizeof(dir), "%s/%s-%s", t_tmpdir(), conf[0] == 'p' ? "p11" : "tpm", name);
	mkdir(dir, 0700);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	if (!t_ok(r == 0, "%s: open key store (%s)", name, r < 0 ? errbuf : "ok"))
		goto out;
	r = key_store_generate(ks, alg, NULL, &key);
	if (!t_ok(r == 0, "%s: generate (%s)", name, r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	jwk = ks_key_jwk(key);
	t_ok(!has_private_member(jwk), "%s: JWK has no private member", name);
	t_ok(jwk_thumbprint(jwk, tp) == 0 && strcmp(tp, ks_key_kid(key)) == 0 &&
		 strcmp(json_string_value(json_object_get(jwk, "kid")), tp) == 0,
	     "%s: kid is the RFC 7638 thumbprint", name);
	t_ok(strcmp(json_string_value(json_object_get(jwk, "alg")), name) == 0 &&
		 strcmp(json_string_value(json_object_get(jwk, "use")), "sig") == 0,
	     "%s: JWK names alg and use", name);
	claims = json_pack("{s:s}", "typ", "client-authentication+jwt");
	r = jws_sign(ks, key, claims, (const uint8_t *)msg, strlen(msg), &jws);
	if (!t_ok(r == 0, "%s: JWS signed (%s)", name, r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	r = jws_verify(jws, jwk, NULL, &payload, &plen);
	t_ok(r == 0 && plen == strlen(msg) && memcmp(payload, msg, plen) == 0,
	     "%s: JWS verifies with our verifier (%s)", name, cimd_strerror(r));
	t_ok(openssl_verify(dir, jws, jwk, alg) == 0, "%s: JWS verifies with the openssl CLI",
	     name);
	t_ok(jose_verify(dir, jws, jwk) == 0, "%s: JWS verifies with node jose compactVerify",
	     name);

	/* A changed payload or signature must fail the signature check itself, or
	 * the checks above prove nothing. */
	{
		char *pl = strchr(jws, '.') + 2, *sg = strrchr(jws, '.') + 2, keep;
		free(payload);
		payload = NULL;
		keep = *pl;
		*pl = keep == 'A' ? 'B' : 'A';
		r = jws_verify(jws, jwk, NULL, &payload, &plen);
		t_ok(r == -CIMD_EVERIFY, "%s: changed payload fails verification (%s)", name,
		     cimd_strerror(r));
		*pl = keep;
		keep = *sg;
		*sg = keep == 'A' ? 'B' : 'A';
		r = jws_verify(jws, jwk, NULL, &payload, &plen);
		t_ok(r == -CIMD_EVERIFY, "%s: changed signature fails verification (%s)", name,
		     cimd_strerror(r));
		*sg = keep;
	}

	/* Restart: the key store goes away, a fresh one finds the key from its
	 * stored reference. */
	ks_key_ref(key, &ref, &ref_len);
	refcopy = malloc(ref_len);
	memcpy(refcopy, ref, ref_len);
	ks_key_free(&key);
	key_store_free(&ks);
	r = key_store_open(conf, &ks, errbuf, sizeof(errbuf));
	if (!t_ok(r == 0, "%s: key store opens again", name))
		goto out;
	r = key_store_load(ks, alg, refcopy, ref_len, &key2);
	if (!t_ok(r == 0, "%s: load from reference (%s)", name,
		  r < 0 ? key_store_errmsg(ks) : "ok"))
		goto out;
	jwk2 = ks_key_jwk(key2);
	t_ok(json_equal(jwk, jwk2), "%s: reloaded key has the same public JWK", name);
	free(payload);
	payload = NULL;
	r = jws_sign(ks, key2, claims, (const uint8_t *)msg, strlen(msg), &jws2);
	t_ok(r == 0 && jws_verify(jws2, jwk, NULL, &payload, &plen) == 0,
	     "%s: reloaded key signs and verifies", name);
	t_ok(jose_verify(dir, jws2, jwk) == 0, "%s: reloaded key's JWS verifies with jose", name);

	/* A key of another algorithm is refused on load. */
	r = key_store_load(ks, alg == CIMD_ALG_PS256 ? CIMD_ALG_ES256 : CIMD_ALG_PS256, refcopy,
			   ref_len, &again);
	t_ok(r == -CIMD_EALG, "%s: load as another algorithm is refused (%s)", name,
	     cimd_strerror(r));
	ks_key_free(&again);

	/* Destroy through one handle; a second handle to the same key then fails. */
	r = key_store_load(ks, alg, refcopy, ref_len, &again);
	t_ok(r == 0, "%s: a second handle to the key", name);
	r = key_store_destroy(ks, &key2);
	t_ok(r == 0 && key2 == NULL, "%s: destroy (%s)", name, r < 0 ? key_store_errmsg(ks) : "ok");
	if (strncmp(conf, "pkcs11:", 7) == 0 && again != NULL) {
		r = key_store_sign(ks, again, (const uint8_t *)msg, strlen(msg), sig, &slen);
		t_ok(r < 0, "%s: a destroyed key no longer signs (%s)", name, cimd_strerror(r));
		ks_key_free(&again);
		r = key_store_load(ks, alg, refcopy, ref_len, &again);
		t_ok(r == -CIMD_ENOKEY, "%s: a destroyed key no longer loads (%s)", name,
		     cimd_strerror(r));
	}
	ks_key_free(&again);
out:
	free(payload);
	free(refcopy);
	free(jws);
	free(jws2);
	json_decref(jwk);
	json_decref(jwk2);
	json_decref(claims);
	ks_key_free(&key);
	ks_key_free(&key2);
	key_store_free(&ks);
}

void t_keystore_batch(const char *conf)
{
	static const enum cimd_alg algs[] = {CIMD_ALG_ES256, CIMD_ALG_ES384, CIMD_ALG_PS256};
	struct key_store *ks = NULL;
	struct ks_key *keys[3] = {NULL, NULL, NULL}, *gone = NULL;
	struct ks_sign_req *reqs = NULL;
	char msgs[CIMD_SIGN_BATCH_MAX][64], err[256];
	size_t i, n = 9, good = 0;
	json_t *jwk;
	int r;

	err[0] = '\0';
	if (!t_ok(key_store_open(conf, &ks, err, sizeof(err)) == 0, "batch: open %s", err))
		return;
	for (i = 0; i < 3; i++)
		if (key_store_generate(ks, algs[i], NULL, &keys[i]) < 0)
			goto out;
	/* A key destroyed under a handle that is still held: its request fails alone. */
	if (key_store_generate(ks, CIMD_ALG_ES256, NULL, &gone) < 0)
		goto out;
	reqs = calloc(CIMD_SIGN_BATCH_MAX + 1, sizeof(*reqs));
	for (i = 0; reqs != NULL && i < n; i++) {
		snprintf(msgs[i], sizeof(msgs[i]), "header.claims-%zu", i);
		reqs[i] = (struct ks_sign_req){
		    .key = keys[i % 3], .msg = (const uint8_t *)msgs[i], .len = strlen(msgs[i])};
	}
	r = key_store_sign_batch(ks, reqs, n);
	for (i = 0; r == 0 && i < n; i++) {
		jwk = ks_key_jwk(reqs[i].key);
		if (reqs[i].r == 0 &&
		    jws_verify_signature(jwk, algs[i % 3], reqs[i].msg, reqs[i].len, reqs[i].sig,
					 reqs[i].sig_len) == 0)
			good++;
		json_decref(jwk);
	}
	t_ok(r == 0 && good == n,
	     "batch: 9 signatures by ES256, ES384 and PS256 keys in one call, each verifies "
	     "(%zu)",
	     good);
	/* PKCS#11 only: a TPM key is a blob the caller keeps, so "destroyed"
	 * there means forgotten, and the blob would still load. */
	if (strncmp(conf, "pkcs11:", 7) == 0) {
		struct ks_key *twin = NULL;
		const uint8_t *ref;
		size_t ref_len;

		ks_key_ref(gone, &ref, &ref_len);
		key_store_load(ks, CIMD_ALG_ES256, ref, ref_len, &twin);
		key_store_destroy(ks, &twin);
		reqs[1].key = gone;
		r = key_store_sign_batch(ks, reqs, 3);
		t_ok(r == 0 && reqs[0].r == 0 && reqs[1].r < 0 && reqs[2].r == 0,
		     "batch: a destroyed key fails its own request only (%s)",
		     cimd_strerror(reqs[1].r));
	}
	t_ok(key_store_sign_batch(ks, reqs, 0) == -EINVAL &&
		 key_store_sign_batch(ks, reqs, CIMD_SIGN_BATCH_MAX + 1) == -EINVAL,
	     "batch: empty and oversized batches are refused");
out:
	for (i = 0; i < 3; i++)
		key_store_destroy(ks, &keys[i]);
	ks_key_free(&gone);
	free(reqs);
	key_store_free(&ks);
}

int t_cimdd_start(struct t_cimdd *c, const char *name, const char *backend_conf, const char *extra)
{
	return t_cimdd_start_as(c, name, backend_conf, extra, NULL);
}

int t_cimdd_start_as(struct t_cimdd *c, const char *name, const char *backend_conf,
		     const char *extra, const char *base_url)
{
	char conf[4096], run[500];
	int n;

	memset(c, 0, sizeof(*c));
	chmod(t_tmpdir(), 0711);
	snprintf(c->dir, sizeof(c->dir), "%s/%s", t_tmpdir(), name);
	snprintf(run, sizeof(run), "%s/run", c->dir);
	if ((mkdir(c->dir, 0711) < 0 && errno != EEXIST) ||
	    (mkdir(run, 0711) < 0 && errno != EEXIST))
		return -errno;
	snprintf(c->dm.conf, sizeof(c->dm.conf), "%s/cimdd.conf", c->dir);
	snprintf(c->dm.log, sizeof(c->dm.log), "%s/cimdd.log", c->dir);
	snprintf(c->dm.sock, sizeof(c->dm.sock), "%s/admin.sock", run);
	snprintf(c->sign_sock, sizeof(c->sign_sock), "%s/sign.sock", run);
	snprintf(c->db, sizeof(c->db), "%s/state/cimdd.db", c->dir);
	snprintf(c->ca, sizeof(c->ca), "%s/tls.crt", c->dir);
	t_bin("cimdctl", c->ctl, sizeof(c->ctl));
	if ((c->port = dev_free_port_pair()) < 0) {
		t_ok(0, "a free loopback port for cimdd's publisher (%s)", cimd_strerror(c->port));
		return c->port;
	}
	snprintf(c->base, sizeof(c->base), "https://127.0.0.1:%d", c->port);
	if (t_sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
		 "%s/tls.key -out %s/tls.crt -days 2 -subj /CN=127.0.0.1 -addext "
		 "subjectAltName=IP:127.0.0.1 2>/dev/null >/dev/null",
		 c->dir, c->dir) != 0)
		return -EIO;
	n = snprintf(conf, sizeof(conf),
		     "state_dir = %s/state\n"
		     "base_url = %s\n"
		     "backend = %s\n"
		     "admin_socket = %s\n"
		     "sign_socket = %s\n"
		     "listen = %s\n"
		     "tls_cert = %s/tls.crt\n"
		     "tls_key = %s/tls.key\n"
		     "%s"
		     "operator = alice uid=%d roles=submit,approve,rotate,revoke,read\n"
		     "%s",
		     c->dir, base_url ? base_url : c->base, backend_conf, c->dm.sock, c->sign_sock,
		     c->base + 8, c->dir, c->dir,
		     extra && strstr(extra, "two_person_rule") ? "" : "two_person_rule = no\n",
		     (int)geteuid(), extra ? extra : "");
	if (n < 0 || (size_t)n >= sizeof(conf) || t_write_file(c->dm.conf, conf, (size_t)n) < 0)
		return -EIO;
	return t_daemon_start(&c->dm);
}

int t_cimdd_ctl(struct t_cimdd *c, char *out, size_t len, const char *fmt, ...)
{
	char args[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	return t_sh_out(out, len, "%s -s %s %s 2>&1", c->ctl, c->dm.sock, args);
}

int t_cimdd_sql(struct t_cimdd *c, const char *fmt, ...)
{
	char q[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	return t_db_sql(c->db, NULL, 0, "%s", q);
}

int t_cimdd_audit(struct t_cimdd *c, const char *name, char *out, size_t len)
{
	char tmp[4096];

	t_sh("rm -rf %s/%s", c->dir, name);
	if (t_cimdd_ctl(c, tmp, sizeof(tmp), "audit export %s/%s", c->dir, name) != 0) {
		snprintf(out, len, "export failed: %s", tmp);
		return -1;
	}
	return t_cimdd_ctl(c, out, len, "audit verify %s/%s --trust %s/ak.json", c->dir, name,
			   c->dir);
}

int t_cimdd_client(struct t_cimdd *c, const char *name, const char *aud)
{
	static const char doc[] = "{\"client_name\":\"Agent\",\"grant_types\":"
				  "[\"client_credentials\"],\"response_types\":[]}\n";
	char path[600], out[4096];
	int rc;

	snprintf(path, sizeof(path), "%s/%s.json", c->dir, name);
	if (t_write_file(path, doc, strlen(doc)) < 0)
		return -1;
	if ((rc = t_cimdd_ctl(c, out, sizeof(out), "client add %s --owner team-a --metadata %s",
			      name, path)) == 0 &&
	    (rc = t_cimdd_ctl(c, out, sizeof(out), "doc approve %s 1", name)) == 0 &&
	    (rc = t_cimdd_ctl(c, out, sizeof(out), "client allow %s --uid %d", name,
			      (int)geteuid())) == 0)
		rc = t_cimdd_ctl(c, out, sizeof(out), "client audience %s --add %s", name, aud);
	if (rc != 0) {
		printf("# client %s: %s\n", name, out);
		return -1;
	}
	return 0;
}

int t_cimdd_get(struct t_cimdd *c, const char *path, char *out, size_t len)
{
	int rc = t_sh_out(out, len, "curl -s --max-time 5 --cacert %s %s%s", c->ca, c->base, path);

	/* No complete answer: no part of one either. */
	if (rc != 0 && len > 0)
		out[0] = '\0';
	return rc;
}

int t_cimdd_fetch(struct t_cimdd *c, const char *path, const char *file)
{
	char out[64], dst[1100];
	int rc, status = 0, fd;

	snprintf(dst, sizeof(dst), "%s/%s", c->dir, file);
	/* Emptied first: curl leaves the file alone when no answer comes, and a
	 * caller must not read an earlier answer as this one's. */
	if ((fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
		return 0;
	close(fd);
	rc = t_sh_out(out, sizeof(out),
		      "curl -s --max-time 5 --cacert %s -o %s -w '%%{http_code}' %s%s", c->ca, dst,
		      c->base, path);
	if (strlen(out) == 3 && strspn(out, "0123456789") == 3)
		status = atoi(out);
	if (rc != 0 || status < 100) {
		/* No answer, or a part of one (curl's time limit, a reset). */
		if ((fd = open(dst, O_WRONLY | O_TRUNC | O_CLOEXEC)) >= 0)
			close(fd);
		return 0;
	}
	return status;
}

/* ---- cimdd's sockets ---- */

#define T_LINE_MAX (64 * 1024 * 1024) /* an answer line, as cimdctl takes it */

int t_line_connect(const char *path, int *ret_fd)
{
	return lineio_connect(path, ret_fd);
}

int t_line_call(int fd, json_t *req, char *out, size_t len, int timeout_ms)
{
	struct lineio_buf b = {0};
	char *line = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
	size_t n;
	int r = -ENOMEM;

	json_decref(req);
	if (len > 0)
		out[0] = '\0';
	if (line == NULL || len < 2)
		goto out;
	n = strlen(line);
	line[n] = '\n'; /* json_dumps's NUL becomes the line's end */
	if ((r = lineio_send(fd, line, n + 1, timeout_ms)) < 0 ||
	    (r = lineio_read(fd, &b, T_LINE_MAX, timeout_ms, &n)) < 0)
		goto out;
	if (n > len - 1)
		n = len - 1; /* the caller looks at the beginning only */
	memcpy(out, b.buf, n);
	out[n] = '\0';
	r = 0;
out:
	free(line);
	lineio_buf_free(&b);
	return r;
}
