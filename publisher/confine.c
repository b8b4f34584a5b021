/*
 * confine.c — the publisher's confinement (publisher.h): its own user (the
 * drop to cimdd-publish or nobody when started as root), no capability,
 * no_new_privs, and the seccomp filter that every thread
 * serves under.
 */
#include <errno.h>
#include <execinfo.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <seccomp.h>

#include "publisher.h"

/*
 * Confinement, once the socket is bound and the certificate read: its own
 * user, no capability, no new privileges, and a seccomp filter that allows
 * what serving needs and kills the process on anything else (the custody
 * process then starts a new one).  What it keeps and why:
 * docs/threat-model.md.
 *
 * Started as root (development, tests), it drops itself: to cimdd-publish
 * when that user exists, else nobody.  Under the shipped unit the custody
 * process has already started it as cimdd-publish, with no capability
 * (service/publish.c).  Either way it refuses to serve as root or with a
 * capability left.
 */
static int drop_root(void)
{
	struct passwd *pw;

	if ((pw = getpwnam("cimdd-publish")) == NULL && (pw = getpwnam("nobody")) == NULL) {
		pub_log_err("publisher: no user cimdd-publish or nobody to run as");
		return -1;
	}
	if (pw->pw_uid == 0 || setgroups(0, NULL) < 0 ||
	    setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) {
		pub_log_err("publisher: cannot drop to %s: %s", pw->pw_name, strerror(errno));
		return -1;
	}
	return 0;
}

/* Whether any capability is left in any set (permitted, effective,
 * inheritable, ambient). */
static int holds_caps(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2] = {{0}};
	int c;

	if (syscall(SYS_capget, &h, d) < 0)
		return 1;
	if (d[0].permitted | d[0].effective | d[0].inheritable | d[1].permitted | d[1].effective |
	    d[1].inheritable)
		return 1;
	for (c = 0; c <= CAP_LAST_CAP; c++)
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
			return 1;
	return 0;
}

int pub_drop_privileges(void)
{
	if (geteuid() == 0 && drop_root() < 0)
		return -1;
	if (getuid() == 0 || geteuid() == 0 || setuid(0) == 0 || holds_caps()) {
		pub_log_err("publisher: privileges were not dropped (root, or a capability "
			    "left): refusing to serve");
		return -1;
	}
	/* A change of credentials clears the parent-death signal: set it again,
	 * so that the publisher still ends with the custody process. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() == 1)
		return -1;
	return 0;
}

/* A system call outside the filter: say which, and end the process (the
 * custody process starts a new one).  Only async-signal-safe calls here. */
static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	char msg[80] = "cimdd-publisher: forbidden system call ";
	char num[16];
	int n = si->si_syscall, i = 0, len;

	(void)sig;
	(void)uc;
	do
		num[i++] = (char)('0' + n % 10);
	while ((n /= 10) > 0 && i < (int)sizeof(num));
	len = (int)strlen(msg);
	while (i > 0 && len < (int)sizeof(msg) - 2)
		msg[len++] = num[--i];
	msg[len++] = '\n';
	if (write(2, msg, (size_t)len) < 0) {
		/* nothing more to do */
	}
	/* Where it came from, for the bug report (backtrace() was warmed up
	 * before the filter, so it loads nothing now). */
	{
		void *frames[32];
		int nf = backtrace(frames, 32);

		backtrace_symbols_fd(frames, nf, 2);
	}
	_exit(3);
}

/* Serving: sockets (accept, read, write, epoll), memory, time, futexes,
 * signals delivered to threads, randomness for TLS, and exit.
 *
 * What glibc would call behind our back is kept out of reach rather than
 * admitted: nothing here sorts (glibc's qsort asks sysinfo(2) for the
 * machine's memory once an array passes 1 KiB, which killed the
 * publisher at 14 clients), tables are hash tables (hmap.c), and large
 * allocations only need mmap, munmap and mremap, allowed below.
 * tests/test_scale.c serves 2,000 clients and test_daemon a JWKS of 16
 * keys through this filter; the harness fails any test whose daemon log
 * says "forbidden system call". */
static const int serve_allow[] = {
    SCMP_SYS(read),
    SCMP_SYS(write),
    SCMP_SYS(readv),
    SCMP_SYS(writev),
    SCMP_SYS(close),
    SCMP_SYS(accept),
    SCMP_SYS(accept4),
    SCMP_SYS(shutdown),
    SCMP_SYS(recvfrom),
    SCMP_SYS(sendto),
    SCMP_SYS(recvmsg),
    SCMP_SYS(sendmsg),
    SCMP_SYS(sendfile),
    SCMP_SYS(setsockopt),
    SCMP_SYS(getsockopt),
    SCMP_SYS(getsockname),
    SCMP_SYS(getpeername),
    SCMP_SYS(epoll_wait),
    SCMP_SYS(epoll_pwait),
    SCMP_SYS(epoll_ctl),
    SCMP_SYS(poll),
    SCMP_SYS(ppoll),
    SCMP_SYS(select),
    SCMP_SYS(pselect6),
    SCMP_SYS(fcntl),
    SCMP_SYS(futex),
    SCMP_SYS(clock_gettime),
    SCMP_SYS(clock_nanosleep),
    SCMP_SYS(nanosleep),
    SCMP_SYS(gettimeofday),
    SCMP_SYS(time),
    SCMP_SYS(mmap),
    SCMP_SYS(munmap),
    SCMP_SYS(mremap),
    SCMP_SYS(brk),
    SCMP_SYS(madvise),
    SCMP_SYS(mprotect),
    SCMP_SYS(rt_sigprocmask),
    SCMP_SYS(rt_sigreturn),
    SCMP_SYS(rt_sigaction),
    SCMP_SYS(getpid),
    SCMP_SYS(gettid),
    SCMP_SYS(tgkill),
    SCMP_SYS(getrandom),
    SCMP_SYS(sched_yield),
    SCMP_SYS(restart_syscall),
    SCMP_SYS(exit),
    SCMP_SYS(exit_group),
    SCMP_SYS(lseek),
    SCMP_SYS(fstat),
    SCMP_SYS(newfstatat),
    SCMP_SYS(eventfd2),
    SCMP_SYS(membarrier),
    SCMP_SYS(rseq),
    SCMP_SYS(set_robust_list),
    SCMP_SYS(getuid),
    SCMP_SYS(geteuid),
    SCMP_SYS(getgid),
    SCMP_SYS(getegid),
};

/* The filter itself: the table above allowed, opening refused, thread
 * naming allowed, on every thread; anything else traps into on_sigsys. */
static int load_filter(void)
{
	scmp_filter_ctx ctx;
	size_t i;
	int r = -1;

	if ((ctx = seccomp_init(SCMP_ACT_TRAP)) == NULL)
		return -1;
	for (i = 0; i < sizeof(serve_allow) / sizeof(serve_allow[0]); i++)
		if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, serve_allow[i], 0) < 0)
			goto out;
	/* Opening a file fails (EACCES) instead of killing the process: glibc's
	 * malloc, shrinking a thread arena under load, reads
	 * /proc/sys/vm/overcommit_memory once (arena.c, check_may_shrink_heap) and
	 * copes with the failure.  Nothing can be opened either way. */
	if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(openat), 0) < 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(open), 0) < 0)
		goto out;
	/* libmicrohttpd's pool threads name themselves as they start, which can
	 * be after the filter is in place: prctl(PR_SET_NAME) only. */
	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
			     SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME, 0)) < 0)
		goto out;
	/* Every thread of libmicrohttpd's pool, not only this one. */
	if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) < 0 || seccomp_load(ctx) < 0)
		goto out;
	r = 0;
out:
	if (r < 0)
		pub_log_err("publisher: cannot install the seccomp filter");
	seccomp_release(ctx);
	return r;
}

int pub_confine(void)
{
	void *warm[1];

	/* backtrace() loads its unwinder on first use: now, not in on_sigsys. */
	backtrace(warm, 1);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		pub_log_err("publisher: no_new_privs: %s", strerror(errno));
		return -1;
	}
#if defined(__SANITIZE_ADDRESS__)
	/* A sanitizer build (make asan) needs system calls of its own (leak
	 * checking stops the world with ptrace): confinement stays off there. */
	return 0;
#endif
	{
		struct sigaction sa = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGSYS, &sa, NULL) < 0)
			return -1;
	}
	return load_filter();
}
