/*
 * test_install.c — `make install`: every file where it belongs with its mode; the
 * systemd unit's hardening, checked by systemd-analyze when it is there; the
 * sysusers.d and tmpfiles.d entries applied to a copy of the user database; libcimd
 * built against through its pkg-config file; and, as root, the installed cimdd run
 * from the installed example configuration as a throwaway unprivileged user, under
 * what the unit imposes that a process can impose on itself (no_new_privs,
 * MemoryDenyWriteExecute through PR_SET_MDWE, the unit's SystemCallFilter= lines
 * expanded by systemd-analyze, UMask, LimitNOFILE, CapabilityBoundingSet= and
 * AmbientCapabilities=), answering `cimdctl status`, with its publisher running as
 * the user of its own that sysusers.d makes for it (USER-publish), holding no
 * capability; and without the capabilities, a cimdd that refuses to start
 * rather than run its publisher as its own user.
 *
 * The test runs `make install-files` (which builds nothing) with the BUILD this
 * binary belongs to, from the repository root.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <seccomp.h>

#include "harness.h"
#include "service.h"

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65 /* Linux 6.3 */
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static char build[1024], dest[1024];

static void build_dir(void)
{
	t_build_dir(build, sizeof(build));
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	long n;

	if (f == NULL)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = calloc(1, (size_t)n + 1)) != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

/* Whether text has exactly this line. */
static int has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	const char *p;

	for (p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
			return 1;
	return 0;
}

static void check_mode(const char *rel, mode_t mode)
{
	char path[PATH_MAX];
	struct stat st;

	snprintf(path, sizeof(path), "%s%s", dest, rel);
	t_ok(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == mode,
	     "%s installed, mode %04o", rel, (unsigned)mode);
}

static void files(void)
{
	static const struct {
		const char *path;
		mode_t mode;
	} want[] = {
	    {"/usr/bin/cimdd", 0755},
	    {"/usr/bin/cimdctl", 0755},
	    {"/usr/bin/cimd-assert", 0755},
	    /* cimdd runs it from ../libexec/cimdd/ beside its bin/ (publish.c). */
	    {"/usr/libexec/cimdd/cimdd-publisher", 0755},
	    {"/usr/include/cimd.h", 0644},
	    {"/usr/lib/libcimd.a", 0644},
	    {"/usr/lib/libcimd.so.0", 0755},
	    {"/usr/lib/pkgconfig/libcimd.pc", 0644},
	    {"/usr/share/man/man1/cimdctl.1", 0644},
	    {"/usr/share/man/man1/cimd-assert.1", 0644},
	    {"/usr/share/man/man5/cimdd.conf.5", 0644},
	    {"/usr/share/man/man8/cimdd.8", 0644},
	    {"/usr/lib/systemd/system/cimdd.service", 0644},
	    {"/usr/lib/sysusers.d/cimdd.conf", 0644},
	    {"/usr/lib/tmpfiles.d/cimdd.conf", 0644},
	    {"/usr/share/doc/cimdd/cimdd.conf.example", 0644},
	};
	char path[PATH_MAX], link[64];
	ssize_t n;
	size_t i;

	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		check_mode(want[i].path, want[i].mode);
	snprintf(path, sizeof(path), "%s/usr/lib/libcimd.so", dest);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = '\0';
	t_ok(strcmp(link, "libcimd.so.0") == 0, "libcimd.so -> libcimd.so.0");
}

static void unit(void)
{
	static const char *const want[] = {
	    "Type=simple",
	    "ExecStart=/usr/bin/cimdd -c /etc/cimdd/cimdd.conf -f",
	    "ExecReload=/bin/kill -HUP $MAINPID",
	    "Restart=on-failure",
	    "User=cimdd",
	    "Group=cimdd",
	    "UMask=0077",
	    "StateDirectory=cimdd",
	    "StateDirectoryMode=0700",
	    "RuntimeDirectory=cimdd",
	    "RuntimeDirectoryMode=0755",
	    "RuntimeDirectoryPreserve=no",
	    "NoNewPrivileges=yes",
	    "CapabilityBoundingSet=CAP_SETUID CAP_SETGID",
	    "AmbientCapabilities=CAP_SETUID CAP_SETGID",
	    "ProtectSystem=strict",
	    "ProtectHome=yes",
	    "PrivateTmp=yes",
	    "PrivateDevices=no",
	    "DevicePolicy=closed",
	    "DeviceAllow=/dev/tpmrm0 rw",
	    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
	    "ProtectKernelTunables=yes",
	    "ProtectKernelModules=yes",
	    "ProtectKernelLogs=yes",
	    "ProtectControlGroups=yes",
	    "RestrictNamespaces=yes",
	    "RestrictRealtime=yes",
	    "RestrictSUIDSGID=yes",
	    "LockPersonality=yes",
	    "MemoryDenyWriteExecute=yes",
	    "SystemCallArchitectures=native",
	    "SystemCallFilter=@system-service seccomp",
	};
	char path[PATH_MAX], *text, *p;
	long nofile = 0;
	size_t i;

	snprintf(path, sizeof(path), "%s/usr/lib/systemd/system/cimdd.service", dest);
	if (!t_ok((text = slurp(path)) != NULL, "unit readable"))
		return;
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		t_ok(has_line(text, want[i]), "unit: %s", want[i]);
	/* The publisher's child calls setresuid (publish.c); cimdd filters it. */
	t_ok(strstr(text, "\nSystemCallFilter=~@setuid") == NULL,
	     "unit: @setuid is not denied (the publisher's child changes its uid)");
	/* The signing socket's connections, the admin socket's and some room
	 * (signer.c raises its soft limit to this; it must fit the hard one). */
	if ((p = strstr(text, "\nLimitNOFILE=")) != NULL)
		nofile = strtol(p + 13, NULL, 10);
	t_ok(nofile >= CIMD_SIGN_CONNS_MAX + CIMD_ADMIN_CONNS_MAX + 256,
	     "unit: LimitNOFILE=%ld holds %d signing connections", nofile, CIMD_SIGN_CONNS_MAX);
	free(text);
}

/* PREFIX=/usr/local: the unit and tmpfiles name the installation's own paths. */
static void other_prefix(void)
{
	char d2[1024], path[PATH_MAX], *text;

	snprintf(d2, sizeof(d2), "%s/dest-local", t_tmpdir());
	if (!t_ok(t_sh("make --no-print-directory install-files DESTDIR='%s' PREFIX=/usr/local "
		       "BUILD='%s' >/dev/null",
		       d2, build) == 0,
		  "make install-files PREFIX=/usr/local"))
		return;
	snprintf(path, sizeof(path), "%s/usr/local/lib/systemd/system/cimdd.service", d2);
	text = slurp(path);
	t_ok(text != NULL &&
		 has_line(text,
			  "ExecStart=/usr/local/bin/cimdd -c /usr/local/etc/cimdd/cimdd.conf -f"),
	     "PREFIX=/usr/local: ExecStart names /usr/local/bin and /usr/local/etc");
	free(text);
	snprintf(path, sizeof(path), "%s/usr/local/libexec/cimdd/cimdd-publisher", d2);
	t_ok(access(path, X_OK) == 0,
	     "PREFIX=/usr/local: the publisher in /usr/local/libexec/cimdd");
	snprintf(path, sizeof(path), "%s/usr/local/lib/tmpfiles.d/cimdd.conf", d2);
	text = slurp(path);
	t_ok(text != NULL && has_line(text, "d /usr/local/etc/cimdd 0750 root cimdd -"),
	     "PREFIX=/usr/local: tmpfiles.d names /usr/local/etc/cimdd");
	free(text);
}

/* systemd's own checks, on an installation whose paths exist (no DESTDIR). */
static void analyze(void)
{
	char pfx[PATH_MAX], out[8192], *p;
	double level = 99;

	if (t_sh("command -v systemd-analyze >/dev/null") != 0 || access("/bin/kill", X_OK) < 0) {
		printf("# systemd-analyze or /bin/kill missing: unit not verified\n");
		return;
	}
	snprintf(pfx, sizeof(pfx), "%s/pfx", t_tmpdir());
	if (!t_ok(t_sh("make --no-print-directory install-files PREFIX='%s' BUILD='%s' >/dev/null",
		       pfx, build) == 0,
		  "make install-files PREFIX=%s", pfx))
		return;
	t_ok(t_sh("systemd-analyze verify --man=no '%s/lib/systemd/system/cimdd.service'", pfx) ==
		 0,
	     "systemd-analyze verify: clean");
	if (t_sh_out(
		out, sizeof(out),
		"systemd-analyze security --offline=true '%s/lib/systemd/system/cimdd.service' "
		"| tail -n 1",
		pfx) != 0 ||
	    (p = strstr(out, "cimdd.service: ")) == NULL) {
		printf("# systemd-analyze security --offline unavailable: exposure not measured\n");
		return;
	}
	level = strtod(p + 15, NULL);
	t_ok(level <= 2.0, "systemd-analyze security: exposure %.1f (at most 2.0)", level);
}

/* libcimd through its pkg-config file, shared and static. */
static void pkgconfig(void)
{
	static const char prog[] = "#include <cimd.h>\n"
				   "#include <stdio.h>\n"
				   "int main(void)\n"
				   "{\n"
				   "\tstruct cimd *c = NULL;\n"
				   "\tint r = cimd_open(\"/nonexistent/sign.sock\", &c);\n"
				   "\tprintf(\"%s\\n\", cimd_status_name(r));\n"
				   "\tcimd_close(&c);\n"
				   "\treturn r == CIMD_UNREACHABLE ? 0 : 1;\n"
				   "}\n";
	char src[PATH_MAX], env[2 * PATH_MAX + 100], out[1024], want[3 * PATH_MAX];
	const char *tmp = t_tmpdir();

	snprintf(src, sizeof(src), "%s/prog.c", tmp);
	if (!t_ok(t_write_file(src, prog, sizeof(prog) - 1) == 0, "write prog.c"))
		return;
	snprintf(env, sizeof(env),
		 "PKG_CONFIG_SYSROOT_DIR='%s' PKG_CONFIG_PATH='%s/usr/lib/pkgconfig'", dest, dest);
	t_sh_out(out, sizeof(out), "%s pkg-config --cflags --libs libcimd", env);
	snprintf(want, sizeof(want), "-I%s/usr/include -L%s/usr/lib -lcimd", dest, dest);
	out[strcspn(out, "\n")] = '\0';
	while (out[0] != '\0' && out[strlen(out) - 1] == ' ')
		out[strlen(out) - 1] = '\0';
	t_ok(strcmp(out, want) == 0, "pkg-config --cflags --libs libcimd: %s", out);
	/* A library built with sanitizers needs them in the program too. */
	const char *san = getenv("CIMD_TEST_SANITIZED") ? "-fsanitize=address,undefined" : "";

	t_ok(t_sh("cc %s -o '%s/prog' '%s' $(%s pkg-config --cflags --libs libcimd)", san, tmp, src,
		  env) == 0,
	     "a program compiles and links against the installed libcimd.so");
	t_ok(t_sh("LD_LIBRARY_PATH='%s/usr/lib' '%s/prog'", dest, tmp) == 0,
	     "it runs on the installed libcimd.so (no daemon: unreachable)");
	t_ok(t_sh("cc %s -o '%s/prog-static' '%s' $(%s pkg-config --cflags libcimd) "
		  "'%s/usr/lib/libcimd.a' $(%s pkg-config --static --libs-only-l libcimd | "
		  "sed 's/-lcimd//') && '%s/prog-static'",
		  san, tmp, src, env, dest, env, tmp) == 0,
	     "and statically against libcimd.a with pkg-config --static");
}

/* sysusers.d and tmpfiles.d applied to a copy of this host's user database. */
static void sysusers(void)
{
	char root[PATH_MAX], path[PATH_MAX + 32], line[512], owner[64];
	struct stat st;
	long uid = -1, gid = -1;
	FILE *f;

	snprintf(root, sizeof(root), "%s/sysroot", t_tmpdir());
	if (t_sh("command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles "
		 ">/dev/null") != 0) {
		printf("# systemd-sysusers or systemd-tmpfiles missing: not applied\n");
		return;
	}
	if (!t_ok(t_sh("mkdir -p '%s/etc' && cp /etc/passwd /etc/group /etc/shadow /etc/gshadow "
		       "'%s/etc/' && systemd-sysusers --root='%s' "
		       "'%s/usr/lib/sysusers.d/cimdd.conf'",
		       root, root, root, dest) == 0,
		  "systemd-sysusers applies sysusers.d/cimdd.conf"))
		return;
	snprintf(path, sizeof(path), "%s/etc/passwd", root);
	if ((f = fopen(path, "re")) != NULL) {
		while (fgets(line, sizeof(line), f) != NULL)
			if (strncmp(line, "cimdd:", 6) == 0)
				sscanf(line, "cimdd:%*[^:]:%ld:%ld:", &uid, &gid);
		fclose(f);
	}
	t_ok(uid > 0 && uid < 1000 && gid > 0, "system user cimdd (uid %ld, gid %ld)", uid, gid);
	t_ok(t_sh("grep -Eq '^tss:[^:]*:[0-9]+:(.*,)?cimdd(,|$)' '%s/etc/group'", root) == 0,
	     "cimdd is a member of tss");
	t_ok(t_sh("grep -Eq '^cimdd-admin:[^:]*:[0-9]+:(.*,)?cimdd(,|$)' '%s/etc/group'", root) ==
		 0,
	     "cimdd is a member of cimdd-admin (it gives the admin socket that group)");
	{
		long puid = -1, pgid = -1;

		snprintf(path, sizeof(path), "%s/etc/passwd", root);
		if ((f = fopen(path, "re")) != NULL) {
			while (fgets(line, sizeof(line), f) != NULL)
				if (strncmp(line, "cimdd-publish:", 14) == 0)
					sscanf(line, "cimdd-publish:%*[^:]:%ld:%ld:", &puid, &pgid);
			fclose(f);
		}
		t_ok(puid > 0 && puid < 1000 && puid != uid && pgid > 0 && pgid != gid,
		     "system user cimdd-publish (uid %ld, gid %ld), not cimdd's", puid, pgid);
		t_ok(t_sh("! grep -Eq ':(.*,)?cimdd-publish(,|$)' '%s/etc/group'", root) == 0,
		     "cimdd-publish is in no other group (not tss, not cimdd-admin)");
	}
	if (!t_ok(t_sh("systemd-tmpfiles --root='%s' --create '%s/usr/lib/tmpfiles.d/cimdd.conf'",
		       root, dest) == 0,
		  "systemd-tmpfiles applies tmpfiles.d/cimdd.conf"))
		return;
	snprintf(path, sizeof(path), "%s/var/lib/cimdd", root);
	t_ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0700 && (long)st.st_uid == uid,
	     "/var/lib/cimdd 0700 cimdd");
	snprintf(path, sizeof(path), "%s/run/cimdd", root);
	t_ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0755 && (long)st.st_uid == uid,
	     "/run/cimdd 0755 cimdd");
	snprintf(path, sizeof(path), "%s/etc/cimdd", root);
	snprintf(owner, sizeof(owner), "root:%ld", gid);
	t_ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0750 && st.st_uid == 0 &&
		 (long)st.st_gid == gid,
	     "/etc/cimdd 0750 %s", owner);
}

/* ---- the installed daemon as an unprivileged user (root only) ---- */

/* The installed example, made to run here: the changes are only paths, the
 * backend, the port and alice's uid (root, who runs cimdctl below). */
static int make_config(const char *base, const struct t_softhsm *hsm, const char *adm, int port,
		       const char *conf)
{
	static const char *const keys[] = {
	    "state_dir =",	    "#backend = pkcs11:", "admin_socket =",
	    "admin_socket_group =", "sign_socket =",	  "listen =",
	    "tls_cert =",	    "tls_key =",	  "operator = alice "};
	char path[PATH_MAX], line[1024], out[2200];
	FILE *in, *o;
	unsigned seen = 0, i;
	int r = -1;

	snprintf(path, sizeof(path), "%s/usr/share/doc/cimdd/cimdd.conf.example", dest);
	if ((in = fopen(path, "re")) == NULL)
		return -1;
	if ((o = fopen(conf, "we")) == NULL) {
		fclose(in);
		return -1;
	}
	while (fgets(line, sizeof(line), in) != NULL) {
		for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (strncmp(line, keys[i], strlen(keys[i])) == 0)
				break;
		switch (i) {
		case 0:
			snprintf(out, sizeof(out), "state_dir = %s/state\n", base);
			break;
		case 1:
			snprintf(out, sizeof(out), "backend = %s\n", hsm->conf);
			break;
		case 2:
			snprintf(out, sizeof(out), "admin_socket = %s/run/admin.sock\n", base);
			break;
		case 3:
			snprintf(out, sizeof(out), "admin_socket_group = %s\n", adm);
			break;
		case 4:
			snprintf(out, sizeof(out), "sign_socket = %s/run/sign.sock\n", base);
			break;
		case 5:
			snprintf(out, sizeof(out), "listen = 127.0.0.1:%d\n", port);
			break;
		case 6:
			snprintf(out, sizeof(out), "tls_cert = %s/tls.crt\n", base);
			break;
		case 7:
			snprintf(out, sizeof(out), "tls_key = %s/tls.key\n", base);
			break;
		case 8:
			snprintf(out, sizeof(out), "operator = alice uid=0 roles=submit,read\n");
			break;
		default:
			snprintf(out, sizeof(out), "%s", line);
		}
		if (i < sizeof(keys) / sizeof(keys[0]))
			seen |= 1u << i;
		fputs(out, o);
	}
	if (seen == (1u << (sizeof(keys) / sizeof(keys[0]))) - 1)
		r = 0;
	fclose(in);
	if (fclose(o) != 0)
		r = -1;
	return r;
}

/* The unit's SystemCallFilter= lines, expanded by systemd-analyze into one
 * allow list (allowed groups minus denied ones), one name per line. */
static int allow_list(const char *unitpath, const char *out)
{
	return t_sh("exp() { for x in \"$@\"; do case $x in @*) systemd-analyze syscall-filter "
		    "\"$x\" 2>/dev/null | tail -n +2 | sed 's/#.*//' | awk 'NF{print $1}' | while "
		    "read s; do "
		    "exp \"$s\"; done;; *) echo \"$x\";; esac; done; }; "
		    "a=$(sed -n 's/^SystemCallFilter=\\([^~].*\\)/\\1/p' '%s'); "
		    "d=$(sed -n 's/^SystemCallFilter=~//p' '%s'); "
		    "exp $a | sort -u > '%s.a' && exp $d | sort -u > '%s.d' && "
		    "comm -23 '%s.a' '%s.d' > '%s' && test -s '%s'",
		    unitpath, unitpath, out, out, out, out, out, out);
}

/* CapabilityBoundingSet=CAP_SETUID CAP_SETGID, and (caps) AmbientCapabilities= the
 * same, as systemd applies them: the bounding set now, as root; keep the permitted
 * set across the change of uid; then inheritable and ambient.  0, or -1. */
static int unit_caps_before(void)
{
	int c;

	for (c = 0; c <= CAP_LAST_CAP; c++)
		if (c != CAP_SETUID && c != CAP_SETGID && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
			return -1;
	return prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
}

static int unit_caps_after(int caps)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	uint32_t set = caps ? (1u << CAP_SETUID) | (1u << CAP_SETGID) : 0;
	struct __user_cap_data_struct d[2] = {
	    {.permitted = set, .effective = set, .inheritable = set}};

	if (syscall(SYS_capset, &h, d) < 0)
		return -1;
	if (caps && (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SETUID, 0, 0) < 0 ||
		     prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SETGID, 0, 0) < 0))
		return -1;
	return 0;
}

/* In the child, as the unit would start it: user, groups, capabilities (none when
 * caps is 0), umask, descriptor limit, no_new_privs, MDWE, the system call filter;
 * then the daemon. */
static void child(const struct passwd *pw, const char *allow, const char *conf, const char *log,
		  int caps)
{
	struct rlimit rl = {16384, 16384};
	scmp_filter_ctx ctx = NULL;
	char name[128], bin[PATH_MAX];
	FILE *f;
	int fd, s;

	if ((fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0)
		_exit(120);
	dup2(fd, 1);
	dup2(fd, 2);
	if (allow != NULL && (f = fopen(allow, "re")) != NULL) {
		/* Read as root, before the filter: the list is root's file. */
		ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
		while (ctx != NULL && fscanf(f, "%127s", name) == 1)
			if ((s = seccomp_syscall_resolve_name(name)) >= 0)
				seccomp_rule_add(ctx, SCMP_ACT_ALLOW, s, 0);
		fclose(f);
	}
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || unit_caps_before() < 0 ||
	    initgroups(pw->pw_name, pw->pw_gid) < 0 ||
	    setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0 || unit_caps_after(caps) < 0)
		_exit(121);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	umask(077);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		_exit(122);
	if (allow != NULL && prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) < 0)
		fprintf(stderr, "test: PR_SET_MDWE: %s (memory not restricted)\n", strerror(errno));
	if (ctx != NULL && seccomp_load(ctx) < 0)
		_exit(123);
	snprintf(bin, sizeof(bin), "%s/usr/bin/cimdd", dest);
	execl(bin, "cimdd", "-c", conf, "-f", (char *)NULL);
	_exit(127);
}

/* The uid of a process and how many seccomp filters it is under (Linux 5.9), from
 * /proc; and its first child. */
static int proc_ids(pid_t pid, long *ret_uid, int *ret_filters, pid_t *ret_child)
{
	char path[64], line[256];
	FILE *f;
	long u = -1;
	int sc = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "re")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "Uid:", 4) == 0)
			sscanf(line + 4, "%ld", &u);
		if (strncmp(line, "Seccomp_filters:", 16) == 0)
			sscanf(line + 16, "%d", &sc);
	}
	fclose(f);
	*ret_uid = u;
	*ret_filters = sc;
	if (ret_child != NULL) {
		/* The publisher: the one child of the daemon. */
		*ret_child = 0;
		snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
		if ((f = fopen(path, "re")) != NULL) {
			int c;
			if (fscanf(f, "%d", &c) == 1)
				*ret_child = c;
			fclose(f);
		}
	}
	return 0;
}

/* Whether /proc/PID/status has this line (e.g. "CapEff:\t0000000000000000"). */
static int status_has(pid_t pid, const char *line)
{
	char path[64], l[512];
	size_t n = strlen(line);
	int r = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "re")) == NULL) /* its size reads 0: no slurp() */
		return 0;
	while (!r && fgets(l, sizeof(l), f) != NULL)
		r = strncmp(l, line, n) == 0 && l[n] == '\n';
	fclose(f);
	return r;
}

/* The unit without its capabilities, while USER-publish exists: cimdd must not
 * run its publisher as its own user, so it refuses to start, and says why. */
static void run_without_caps(const struct passwd *pw, const char *allow, const char *conf,
			     const char *base, const char *pub)
{
	char log[PATH_MAX], want[256];
	int status = 0, i;
	pid_t pid;

	snprintf(log, sizeof(log), "%s/nocaps.log", base);
	if ((pid = fork()) < 0)
		return;
	if (pid == 0)
		child(pw, allow, conf, log, 0);
	for (i = 0; i < 500 && waitpid(pid, &status, WNOHANG) != pid; i++)
		usleep(20000);
	if (i == 500) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	snprintf(want, sizeof(want), "publisher: it must run as %s, but cimdd holds no CAP_SETUID",
		 pub);
	t_ok(i < 500 && WIFEXITED(status) && WEXITSTATUS(status) != 0 &&
		 t_sh("grep -qF '%s' '%s'", want, log) == 0,
	     "without CAP_SETUID and CAP_SETGID, cimdd refuses to start (its publisher would "
	     "share its uid) and says so");
}

static void run_unprivileged(void)
{
	const char *tmp = t_tmpdir();
	char user[32], pubuser[48], adm[40], base[1024], conf[PATH_MAX], log[PATH_MAX],
	    sock[PATH_MAX], allow[PATH_MAX], unitpath[PATH_MAX], out[4096];
	struct t_softhsm hsm;
	struct passwd *pw = NULL;
	struct group *gr;
	struct stat st;
	long uid, puid, pubuid = -1;
	int port, sc, psc, status, i;
	pid_t pid = 0, pub = 0;
	gid_t admgid;

	snprintf(user, sizeof(user), "cimdt%d", (int)getpid() % 100000);
	snprintf(pubuser, sizeof(pubuser), "%s-publish", user);
	snprintf(adm, sizeof(adm), "%s-adm", user);
	if (!t_ok(t_sh("groupadd -r '%s' && useradd -r -M -d /nonexistent -s /usr/sbin/nologin "
		       "-U -G '%s' '%s'",
		       adm, adm, user) == 0,
		  "throwaway user %s, in group %s", user, adm))
		goto out;
	/* Its publisher's user, as sysusers.d makes cimdd-publish for cimdd. */
	if (!t_ok(t_sh("useradd -r -M -d /nonexistent -s /usr/sbin/nologin -U '%s'", pubuser) ==
			  0 &&
		      (pw = getpwnam(pubuser)) != NULL,
		  "throwaway user %s, for the publisher", pubuser))
		goto out;
	pubuid = (long)pw->pw_uid;
	if ((pw = getpwnam(user)) == NULL || (gr = getgrnam(adm)) == NULL)
		goto out;
	uid = (long)pw->pw_uid;
	admgid = gr->gr_gid;

	/* What tmpfiles.d and the unit make: a state directory only the user enters,
	 * a runtime directory for the sockets. */
	chmod(tmp, 0711);
	snprintf(base, sizeof(base), "%s/live", tmp);
	if (!t_ok(t_sh("install -d -m 0755 '%s' && install -d -o %s -g %s -m 0700 '%s/state' && "
		       "install -d -o %s -g %s -m 0755 '%s/run'",
		       base, user, user, base, user, user, base) == 0,
		  "state and runtime directories"))
		goto out;
	/* A token the user owns; its PIN file is the user's own, 0600. */
	if (!t_ok(t_softhsm_init(&hsm, "install", "123456") == 0 &&
		      t_sh("chown -R %s:%s '%s'", user, user, hsm.dir) == 0,
		  "SoftHSM2 token owned by %s", user))
		goto out;
	if (!t_ok(
		t_sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
		     "-keyout '%s/tls.key' -out '%s/tls.crt' -days 2 -subj /CN=127.0.0.1 "
		     "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 && chown %s '%s/tls.key'",
		     base, base, user, base) == 0,
		"TLS certificate"))
		goto out;
	/* The suite's one allocator (service/dev.c): below the ephemeral range. */
	port = dev_free_port_pair();
	if (!t_ok(port > 0, "a free loopback port for the publisher (%s)", cimd_strerror(port)))
		goto out;
	snprintf(conf, sizeof(conf), "%s/cimdd.conf", base);
	if (!t_ok(make_config(base, &hsm, adm, port, conf) == 0 &&
		      chown(conf, pw->pw_uid, pw->pw_gid) == 0 && chmod(conf, 0600) == 0,
		  "configuration from the installed example, %s's own, mode 0600", user))
		goto out;

	/* The unit's system call filter and MDWE, unless sanitizers need more. */
	snprintf(unitpath, sizeof(unitpath), "%s/usr/lib/systemd/system/cimdd.service", dest);
	snprintf(allow, sizeof(allow), "%s/allow.txt", base);
	if (getenv("CIMD_TEST_SANITIZED") != NULL) {
		printf(
		    "# sanitized build: the unit's system call filter and MDWE are not applied\n");
		allow[0] = '\0';
	} else if (t_sh("command -v systemd-analyze >/dev/null") != 0) {
		printf("# no systemd-analyze: the unit's system call filter is not applied\n");
		allow[0] = '\0';
	} else if (!t_ok(allow_list(unitpath, allow) == 0,
			 "the unit's SystemCallFilter= expanded by systemd-analyze")) {
		goto out;
	}

	run_without_caps(pw, allow[0] ? allow : NULL, conf, base, pubuser);
	snprintf(log, sizeof(log), "%s/cimdd.log", base);
	if ((pid = fork()) < 0)
		goto out;
	if (pid == 0)
		child(pw, allow[0] ? allow : NULL, conf, log, 1);
	snprintf(sock, sizeof(sock), "%s/run/admin.sock", base);
	for (i = 0; i < 500 && !t_unix_up(sock); i++) {
		if (waitpid(pid, &status, WNOHANG) == pid) {
			pid = 0;
			break;
		}
		usleep(20000);
	}
	if (!t_ok(pid > 0 && t_unix_up(sock), "installed cimdd runs as %s%s", user,
		  allow[0] ? " under the unit's filter and MDWE" : "")) {
		t_sh("cat '%s'", log);
		goto out;
	}
	usleep(300000); /* the publisher's start */
	proc_ids(pid, &puid, &sc, &pub);
	t_ok(puid == uid, "cimdd's uid is %ld (not root)", puid);
	/* The unit's capabilities: permitted, never effective nor ambient. */
	t_ok(status_has(pid, "CapPrm:\t00000000000000c0") &&
		 status_has(pid, "CapEff:\t0000000000000000") &&
		 status_has(pid, "CapAmb:\t0000000000000000") &&
		 status_has(pid, "CapBnd:\t00000000000000c0"),
	     "cimdd holds CAP_SETUID and CAP_SETGID permitted only (not effective, not "
	     "ambient)");
	if (allow[0] && sc >= 0)
		t_ok(sc == 2,
		     "cimdd runs under the unit's seccomp filter and its own on set*id "
		     "calls (%d filters)",
		     sc);
	if (t_ok(pub > 0 && proc_ids(pub, &puid, &psc, NULL) == 0, "the publisher runs")) {
		char proc[64], exe[PATH_MAX], want[PATH_MAX], cmd[64] = "";
		ssize_t n;
		FILE *f;

		char ids[64];

		snprintf(ids, sizeof(ids), "Uid:\t%ld\t%ld\t%ld\t%ld", pubuid, pubuid, pubuid,
			 pubuid);
		t_ok(puid == pubuid && status_has(pub, ids),
		     "the publisher runs as %s (uid %ld), not as %s (uid %ld)", pubuser, puid, user,
		     uid);
		t_ok(status_has(pub, "CapPrm:\t0000000000000000") &&
			 status_has(pub, "CapEff:\t0000000000000000") &&
			 status_has(pub, "CapInh:\t0000000000000000") &&
			 status_has(pub, "CapAmb:\t0000000000000000") &&
			 status_has(pub, "NoNewPrivs:\t1") &&
			 (status_has(pub, "Groups:\t") || status_has(pub, "Groups:\t ")),
		     "the publisher holds no capability, no supplementary group, no_new_privs");
		/* The installed program, found from the installed cimdd. */
		snprintf(proc, sizeof(proc), "/proc/%d/exe", (int)pub);
		n = readlink(proc, exe, sizeof(exe) - 1);
		exe[n < 0 ? 0 : n] = '\0';
		snprintf(want, sizeof(want), "%s/usr/libexec/cimdd/cimdd-publisher", dest);
		snprintf(proc, sizeof(proc), "/proc/%d/cmdline", (int)pub);
		if ((f = fopen(proc, "re")) != NULL) {
			n = (ssize_t)fread(cmd, 1, sizeof(cmd) - 1, f);
			cmd[n < 0 ? 0 : n] = '\0';
			fclose(f);
		}
		t_ok(strcmp(exe, want) == 0 && strcmp(cmd, "cimdd-publisher") == 0,
		     "the publisher is %s, argv[0] %s", exe, cmd);
		/* Under ASan the publisher skips its filter (publisher/confine.c: the
		 * sanitizer's own system calls would be refused). */
		if (sc >= 0 && getenv("CIMD_TEST_SANITIZED") == NULL)
			t_ok(psc == sc + 1, "the publisher added its own seccomp filter");
	}
	t_ok(t_sh_out(out, sizeof(out), "'%s/usr/bin/cimdctl' -s '%s' status", dest, sock) == 0 &&
		 strstr(out, "pkcs11: open") != NULL,
	     "installed cimdctl: status answers, the token is open");
	t_ok(stat(sock, &st) == 0 && (st.st_mode & 0777) == 0660 && (long)st.st_uid == uid &&
		 st.st_gid == admgid,
	     "admin.sock: 0660, owned by %s, group %s (a supplementary group)", user, adm);
	snprintf(sock, sizeof(sock), "%s/run/sign.sock", base);
	t_ok(stat(sock, &st) == 0 && (st.st_mode & 0777) == 0666 && (long)st.st_uid == uid,
	     "sign.sock: 0666, owned by %s", user);
	snprintf(sock, sizeof(sock), "%s/state/cimdd.db", base);
	t_ok(stat(sock, &st) == 0 && (st.st_mode & 0777) == 0600 && (long)st.st_uid == uid,
	     "cimdd.db: 0600, owned by %s", user);
	t_ok(t_sh_out(out, sizeof(out),
		      "curl -s --max-time 5 --cacert '%s/tls.crt' "
		      "https://127.0.0.1:%d/healthz",
		      base, port) == 0 &&
		 strncmp(out, "ok", 2) == 0,
	     "the publisher serves /healthz over TLS");
	kill(pid, SIGHUP);
	usleep(300000);
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	pid = 0;
	t_ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "SIGHUP, then SIGTERM: clean exit");
	t_ok(t_sh("grep -q 'reload: ' '%s'", log) == 0, "the reload was logged");
	t_ok(t_sh("! grep -E 'forbidden system call|killed by signal|PR_SET_MDWE' '%s'", log) == 0,
	     "no process was killed on the way");
out:
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	t_sh("userdel '%s' >/dev/null 2>&1; groupdel '%s' >/dev/null 2>&1; userdel '%s' "
	     ">/dev/null 2>&1; true",
	     user, adm, pubuser);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (access("Makefile", R_OK) < 0 || access("dist/systemd/cimdd.service", R_OK) < 0) {
		t_ok(0, "run from the repository root");
		return t_done();
	}
	build_dir();
	snprintf(dest, sizeof(dest), "%s/dest", t_tmpdir());
	if (!t_ok(t_sh("make --no-print-directory install-files DESTDIR='%s' PREFIX=/usr "
		       "BUILD='%s' >/dev/null",
		       dest, build) == 0,
		  "make install-files DESTDIR=... PREFIX=/usr BUILD=%s", build))
		goto out;
	files();
	unit();
	other_prefix();
	analyze();
	pkgconfig();
	if (geteuid() != 0) {
		printf("# not root: sysusers/tmpfiles and the unprivileged run are skipped\n");
		goto out;
	}
	sysusers();
	run_unprivileged();
out:
	t_cleanup();
	return t_done();
}
