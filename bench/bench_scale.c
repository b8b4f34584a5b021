/*
 * bench_scale.c — the appliance at 1 client and at N clients, in one run
 * (issue 13).
 *
 * One cimdd on SoftHSM2 (tests/harness.c: TLS, a fresh port) holds one client,
 * then grows to each N of CIMD_BENCH_SCALE_N (or the arguments; default "1000
 * 10000"), adding and approving clients through the admin socket with the
 * small client of tests/test_scale.c.  At 1 client and at each N it measures:
 *
 *   add+approve   client.add and doc.approve of one client, p50 and p99 over
 *                 the last W operations before the size (W = 100, or half the
 *                 smallest N); at "1 client", the W operations after the first
 *   key rotate    key.rotate of 12 clients spread over the set (at 1 client,
 *                 12 times the same), each activated afterwards (untimed)
 *   restart       SIGTERM, start again, until GET of the last client's JWKS
 *                 answers 200 (at most 300 s; a longer one is printed as a
 *                 lower bound), and until an assertion is signed: the key
 *                 stores open and reconciled with the database
 *   RSS           VmRSS and VmHWM of cimdd and of its publisher after the
 *                 loads, and SoftHSM2's share of cimdd's (module_mb)
 *   JWKS          wrk -t2 -c64 keep-alive over TLS, each request for a client
 *                 drawn at random: requests/s and p99
 *   assertions    8 libcimd connections asking in a loop, for 8 clients spread
 *                 over the set (at 1 client, all for it): assertions/s and p99
 *
 * and prints them beside the 1-client figures with ratios and the issue's
 * targets.  Before measuring at N it checks that every client's document and
 * JWKS are served.  Benchmarks are not tests: nothing fails on speed.
 * CIMD_BENCH_SECONDS sets the time of each load (default 5);
 * CIMD_BENCH_SCALE_BUDGET the seconds that growing may take in all (default
 * 3600), after which the sizes not reached are left out; CIMD_BENCH_OUT, a
 * directory for bench_scale.json, the table's figures (bench/out.h).
 */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <p11-kit/pkcs11.h>

#include "cimd.h"
#include "out.h"

#define SCALE_NO_MAIN
#include "../tests/test_scale.c"

#define SIZES_MAX 8
#define ROTATIONS 12	       /* per size; one client holds at most 16 published keys */
#define SIGNERS 8	       /* assertion connections */
#define LAT_MAX 200000	       /* latencies kept per assertion connection */
#define RESTART_WAIT_MS 300000 /* a longer restart is reported, not measured */

static const char aud[] = "https://as.example.com/token";

static struct t_softhsm hsm;
static struct t_cimdd cd;
static struct scale_admin adm = {.fd = -1};
static struct scale_https https = {.fd = -1};
static struct scale_client cl[CIMD_CLIENTS_MAX];
static double add_ms[CIMD_CLIENTS_MAX];
static char signer_ready[CIMD_CLIENTS_MAX];
static int n_clients;
static double seconds = 5;

struct figures {
	int n;		  /* clients when measured; 0: not reached */
	int served;	  /* every client's document and JWKS served */
	int died;	  /* publisher deaths in the daemon's log so far */
	int restart_over; /* not served within RESTART_WAIT_MS: restart_ms is a lower bound */
	long as_fail, jwks_bad;
	double add_p50, add_p99, rot_p50, rot_max, restart_ms, restart_sign_ms;
	double rss_cimdd, hwm_cimdd, rss_pub, hwm_pub; /* MB */
	double module, own;			       /* MB: SoftHSM2's share, the rest */
	double jwks_rps, jwks_p99, as_rps, as_p99;
};

/* The table: each figure, and the target for it. */
enum target { T_NONE, T_AT_MOST, T_RATIO_AT_MOST, T_RATIO_AT_LEAST };

static const struct row {
	const char *key; /* in bench_scale.json, its unit last (bench/out.h) */
	const char *label;
	size_t off;
	enum target kind;
	double bound;
} rows[] = {
    {"add_approve_p50_ms", "add+approve p50 ms", offsetof(struct figures, add_p50), T_NONE, 0},
    {"add_approve_p99_ms", "add+approve p99 ms", offsetof(struct figures, add_p99), T_AT_MOST, 20},
    {"key_rotate_p50_ms", "key rotate p50 ms", offsetof(struct figures, rot_p50), T_NONE, 0},
    {"key_rotate_max_ms", "key rotate max of 12 ms", offsetof(struct figures, rot_max), T_AT_MOST,
     20},
    {"restart_to_jwks_ms", "restart to JWKS ms", offsetof(struct figures, restart_ms), T_AT_MOST,
     2000},
    {"restart_to_signing_ms", "restart to signing ms", offsetof(struct figures, restart_sign_ms),
     T_AT_MOST, 2000},
    {"cimdd_rss_mb", "cimdd RSS MB", offsetof(struct figures, rss_cimdd), T_NONE, 0},
    {"cimdd_peak_rss_mb", "cimdd peak RSS MB", offsetof(struct figures, hwm_cimdd), T_AT_MOST, 100},
    {"softhsm2_mb", "  of it SoftHSM2 MB", offsetof(struct figures, module), T_NONE, 0},
    {"cimdd_own_mb", "  cimdd's own MB", offsetof(struct figures, own), T_NONE, 0},
    {"publisher_rss_mb", "publisher RSS MB", offsetof(struct figures, rss_pub), T_NONE, 0},
    {"publisher_peak_rss_mb", "publisher peak RSS MB", offsetof(struct figures, hwm_pub), T_AT_MOST,
     100},
    {"jwks_req_per_s", "JWKS req/s", offsetof(struct figures, jwks_rps), T_RATIO_AT_LEAST, 1 / 1.2},
    {"jwks_p99_ms", "JWKS p99 ms", offsetof(struct figures, jwks_p99), T_RATIO_AT_MOST, 1.2},
    {"assertions_per_s", "assertions/s", offsetof(struct figures, as_rps), T_RATIO_AT_LEAST,
     1 / 1.2},
    {"assertion_p99_ms", "assertion p99 ms", offsetof(struct figures, as_p99), T_NONE, 0},
};

/* Every figure unknown (-1) until measured. */
static void figures_init(struct figures *f)
{
	size_t i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		*(double *)((char *)f + rows[i].off) = -1;
}

/* A field of /proc/PID/status in kB ("VmRSS:", "VmHWM:"), or -1. */
static long proc_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (pid <= 0 || (f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, field, strlen(field)) == 0)
			kb = strtol(line + strlen(field), NULL, 10);
	fclose(f);
	return kb;
}

/*
 * What the SoftHSM2 module holds once it has read the token.  cimdd runs the
 * module in its own process, and SoftHSM2's file store keeps every object of
 * the token in memory from C_Initialize on, so part of cimdd's RSS is the
 * token's.  A child initialises the module on the same token, as cimdd does
 * when it opens the store, and reports how much its RSS grew from before the
 * module was loaded.  -1 when it cannot.
 */
static double module_mb(void)
{
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR fl;
	long kb = -1, before;
	int fds[2];
	void *h;
	pid_t pid;

	if (pipe(fds) < 0)
		return -1;
	if ((pid = fork()) == 0) {
		before = proc_kb(getpid(), "VmRSS:");
		if ((h = dlopen(T_SOFTHSM_MODULE, RTLD_NOW)) != NULL &&
		    (get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList")) != NULL &&
		    get(&fl) == CKR_OK && fl->C_Initialize(NULL) == CKR_OK && before >= 0)
			kb = proc_kb(getpid(), "VmRSS:") - before;
		if (write(fds[1], &kb, sizeof(kb)) != (ssize_t)sizeof(kb))
			_exit(1);
		_exit(0);
	}
	close(fds[1]);
	if (pid < 0 || read(fds[0], &kb, sizeof(kb)) != (ssize_t)sizeof(kb))
		kb = -1;
	close(fds[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	return kb < 0 ? -1 : (double)kb / 1024;
}

/* cimdd's publisher: its child whose argv[0] is cimdd-publisher; or -1. */
static pid_t publisher_pid(pid_t parent)
{
	char path[300], buf[512], *p;
	struct dirent *e;
	pid_t found = -1;
	size_t n;
	DIR *dir;
	FILE *f;

	if ((dir = opendir("/proc")) == NULL)
		return -1;
	while (found < 0 && (e = readdir(dir)) != NULL) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		/* pid (comm) state ppid: comm may hold anything, so from its end */
		if ((p = strrchr(buf, ')')) == NULL || atoi(p + 3 + strspn(p + 3, " ")) != parent)
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		if (strcmp(buf, "cimdd-publisher") == 0)
			found = (pid_t)atoi(e->d_name);
	}
	closedir(dir);
	return found;
}

/* cimdd -c CONF -f, its output appended to its log; does not wait. */
static int daemon_spawn(struct t_daemon *d)
{
	char bin[PATH_MAX];
	int fd;

	t_bin("cimdd", bin, sizeof(bin));
	if ((d->pid = fork()) < 0)
		return -errno;
	if (d->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if ((fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(bin, "cimdd", "-c", d->conf, "-f", (char *)NULL);
		_exit(127);
	}
	return 0;
}

/* SIGTERM, then SIGKILL after wait_ms; 0 when it exited by itself with 0. */
static int daemon_stop(struct t_daemon *d, int wait_ms)
{
	double end = t_now_ms() + wait_ms;
	int st = 0;

	if (d->pid <= 0)
		return -ESRCH;
	kill(d->pid, SIGTERM);
	while (waitpid(d->pid, &st, WNOHANG) == 0) {
		if (t_now_ms() > end) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
			d->pid = 0;
			return -ETIMEDOUT;
		}
		usleep(10000);
	}
	d->pid = 0;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -ECHILD;
}

/* Adds clients up to `to`; stops at end_ms (monotonic) or on a failure. */
static int grow(int to, double end_ms, char *err, size_t errlen)
{
	int r;

	while (n_clients < to) {
		if (t_now_ms() > end_ms) {
			snprintf(err, errlen, "the budget (CIMD_BENCH_SCALE_BUDGET) is spent");
			return -ETIMEDOUT;
		}
		if ((r = scale_add(&adm, n_clients, &cl[n_clients], &add_ms[n_clients], err,
				   errlen)) < 0)
			return r;
		n_clients++;
		if (n_clients % 1000 == 0) {
			printf("  %d clients\n", n_clients);
			fflush(stdout);
		}
	}
	return 0;
}

/* p50 and p99 of add_ms[from, from + k). */
static void add_figures(int from, size_t k, struct figures *f)
{
	double w[SCALE_WINDOW_MAX];

	memcpy(w, add_ms + from, k * sizeof(double));
	f->add_p50 = scale_quantile(w, k, 0.5);
	f->add_p99 = scale_quantile(w, k, 0.99);
}

/* Every client's document and JWKS, over one keep-alive connection. */
static int check_served(char *why, size_t whylen)
{
	char name[16], path[64];
	int i, good = 0, r;
	double t0;

	scale_name(n_clients - 1, name);
	snprintf(path, sizeof(path), "/clients/%s/jwks.json", name);
	if (scale_wait_served(&https, path, 120000) < 0) {
		snprintf(why, whylen, "%s not served within 120 s", path);
		return 0;
	}
	t0 = t_now_ms();
	for (i = 0; i < n_clients; i++) {
		if ((r = scale_served(&https, i, &cl[i], why, whylen)) < 0) {
			snprintf(why, whylen, "c%05d: no answer (%s)", i, strerror(-r));
			break;
		}
		good += r;
	}
	printf("  every document and JWKS: %d of %d clients served (%d requests in %.1f s)%s%s\n",
	       good, n_clients, 2 * n_clients, (t_now_ms() - t0) / 1000,
	       good < n_clients ? ": " : "", good < n_clients ? why : "");
	https_drop(&https);
	return good == n_clients;
}

/* ---- JWKS: wrk ---- */

/* A latency of wrk's ("5.15ms", "812.00us", "1.02s") in ms, or -1. */
static double wrk_ms(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s)
		return -1;
	if (strncmp(end, "us", 2) == 0)
		return v / 1000;
	if (strncmp(end, "ms", 2) == 0)
		return v;
	return *end == 's' ? v * 1000 : -1;
}

/* wrk over TLS for `seconds`, each request for one of n clients at random. */
static void jwks_load(int n, struct figures *f)
{
	char script[600], lua[512], out[8192];
	const char *p;
	int len;

	f->jwks_rps = f->jwks_p99 = -1;
	snprintf(script, sizeof(script), "%s/clients-%d.lua", cd.dir, n);
	len = snprintf(lua, sizeof(lua),
		       "local n = %d\n"
		       "request = function()\n"
		       "  return wrk.format(\"GET\", string.format(\"/clients/c%%05d/jwks.json\","
		       " math.random(0, n - 1)))\n"
		       "end\n",
		       n);
	if (t_write_file(script, lua, (size_t)len) < 0)
		return;
	https_drop(&https); /* the publisher allows 64 connections per address: wrk's */
	t_sh_out(out, sizeof(out), "wrk -t2 -c64 -d%.0fs --latency -s %s %s", seconds, script,
		 cd.base);
	if ((p = strstr(out, "Requests/sec:")) != NULL)
		f->jwks_rps = strtod(p + 13, NULL);
	if ((p = strstr(out, "Latency Distribution")) != NULL && (p = strstr(p, " 99% ")) != NULL)
		f->jwks_p99 = wrk_ms(p + 5 + strspn(p + 5, " "));
	if ((p = strstr(out, "Non-2xx or 3xx responses:")) != NULL)
		f->jwks_bad += strtol(p + 25, NULL, 10);
	if ((p = strstr(out, "Socket errors:")) != NULL)
		f->jwks_bad += 1; /* wrk prints the line only when there were some */
	if (f->jwks_rps < 0)
		printf("  wrk: %s\n", out);
}

/* ---- assertions: libcimd ---- */

struct signer {
	pthread_t th;
	char client_id[256];
	double end;
	long ops, fails;
	double *lat;
	size_t n_lat;
};

static void *signer_main(void *arg)
{
	struct signer *s = arg;
	struct cimd *c = NULL;
	char *jwt;
	double t0;

	if ((s->lat = malloc(LAT_MAX * sizeof(double))) == NULL ||
	    cimd_open(cd.sign_sock, &c) != CIMD_OK) {
		s->fails++;
		cimd_close(&c);
		return NULL;
	}
	while ((t0 = t_now_ms()) < s->end) {
		jwt = NULL;
		if (cimd_assert(c, s->client_id, aud, 0, &jwt, NULL) != CIMD_OK) {
			s->fails++;
			continue;
		}
		free(jwt);
		s->ops++;
		if (s->n_lat < LAT_MAX)
			s->lat[s->n_lat++] = t_now_ms() - t0;
	}
	cimd_close(&c);
	return NULL;
}

/* Our uid may sign for client i, for aud. */
static int signer_prepare(int i, char *err, size_t errlen)
{
	char name[16];
	int r;

	if (signer_ready[i])
		return 0;
	scale_name(i, name);
	if ((r = scale_admin_call(
		 &adm,
		 json_pack("{sssssi}", "op", "client.allow", "name", name, "uid", (int)geteuid()),
		 NULL, err, errlen)) < 0 ||
	    (r = scale_admin_call(
		 &adm, json_pack("{ssssss}", "op", "client.audience", "name", name, "add", aud),
		 NULL, err, errlen)) < 0)
		return r;
	signer_ready[i] = 1;
	return 0;
}

static void assert_load(int n, struct figures *f)
{
	struct signer s[SIGNERS];
	double *all = NULL, t0, el;
	char err[512], name[16];
	size_t total = 0, k = 0;
	long ops = 0;
	int i;

	memset(s, 0, sizeof(s));
	f->as_rps = f->as_p99 = -1;
	for (i = 0; i < SIGNERS; i++) {
		int idx = (int)((long)i * n / SIGNERS);

		if (signer_prepare(idx, err, sizeof(err)) < 0) {
			printf("  assertions: client c%05d: %s\n", idx, err);
			return;
		}
		scale_name(idx, name);
		snprintf(s[i].client_id, sizeof(s[i].client_id), "%s/clients/%s", cd.base, name);
	}
	t0 = t_now_ms();
	for (i = 0; i < SIGNERS; i++) {
		s[i].end = t0 + seconds * 1000;
		pthread_create(&s[i].th, NULL, signer_main, &s[i]);
	}
	for (i = 0; i < SIGNERS; i++)
		pthread_join(s[i].th, NULL);
	el = (t_now_ms() - t0) / 1000;
	for (i = 0; i < SIGNERS; i++)
		total += s[i].n_lat;
	if ((all = malloc((total + 1) * sizeof(double))) != NULL)
		for (i = 0; i < SIGNERS; i++) {
			memcpy(all + k, s[i].lat, s[i].n_lat * sizeof(double));
			k += s[i].n_lat;
		}
	for (i = 0; i < SIGNERS; i++) {
		ops += s[i].ops;
		f->as_fail += s[i].fails;
		free(s[i].lat);
	}
	if (all != NULL && total > 0) {
		f->as_rps = (double)ops / el;
		f->as_p99 = scale_quantile(all, total, 0.99);
	}
	free(all);
}

/* ---- key rotation ---- */

static void rotate_load(int n, struct figures *f)
{
	double ms[ROTATIONS], t0;
	char err[512], name[16];
	int j, k = 0;

	for (j = 0; j < ROTATIONS; j++) {
		int idx = n == 1 ? 0 : 1 + (int)((long)j * (n - 1) / ROTATIONS);

		scale_name(idx, name);
		t0 = t_now_ms();
		if (scale_admin_call(&adm, json_pack("{ssss}", "op", "key.rotate", "name", name),
				     NULL, err, sizeof(err)) < 0) {
			printf("  key rotate %s: %s\n", name, err);
			continue;
		}
		ms[k++] = t_now_ms() - t0;
		/* Untimed: the next key becomes active, so the client can rotate again. */
		if (scale_admin_call(
			&adm, json_pack("{sssssb}", "op", "key.activate", "name", name, "force", 1),
			NULL, err, sizeof(err)) < 0)
			printf("  key activate %s: %s\n", name, err);
	}
	f->rot_p50 = scale_quantile(ms, (size_t)k, 0.5);
	f->rot_max = scale_quantile(ms, (size_t)k, 1.0);
}

/* ---- restart ---- */

/* Whether something accepts connections on the publisher's port. */
static int port_open(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cd.port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), r;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return r;
}

/* After a restart: until an assertion is signed for a client our uid may
 * sign for.  The signing socket opens once the hardware is open and
 * reconciled with the database, so this is the whole start-up. */
static void restart_sign(struct figures *f, double t0)
{
	char client_id[256], name[16], *jwt;
	struct cimd *c = NULL;
	double end;
	int i;

	f->restart_sign_ms = -1;
	for (i = 0; i < n_clients && !signer_ready[i]; i++)
		;
	if (i == n_clients)
		return;
	scale_name(i, name);
	snprintf(client_id, sizeof(client_id), "%s/clients/%s", cd.base, name);
	for (end = t0 + RESTART_WAIT_MS; t_now_ms() < end; usleep(2000)) {
		jwt = NULL;
		if ((c != NULL || cimd_open(cd.sign_sock, &c) == CIMD_OK) &&
		    cimd_assert(c, client_id, aud, 0, &jwt, NULL) == CIMD_OK) {
			free(jwt);
			f->restart_sign_ms = t_now_ms() - t0;
			break;
		}
		cimd_close(&c);
	}
	cimd_close(&c);
	if (f->restart_sign_ms < 0)
		printf("  restart: no assertion within %d s\n", RESTART_WAIT_MS / 1000);
	else
		printf("  restart: an assertion signed %.0f ms after cimdd started\n",
		       f->restart_sign_ms);
}

static void restart_load(struct figures *f)
{
	char name[16], path[64], err[256];
	double t0, end;
	int r, st;

	f->restart_ms = -1;
	scale_name(n_clients - 1, name);
	snprintf(path, sizeof(path), "/clients/%s/jwks.json", name);
	scale_admin_close(&adm);
	https_drop(&https);
	if ((r = daemon_stop(&cd.dm, 30000)) < 0)
		printf("  restart: cimdd did not stop cleanly (%s)\n", strerror(-r));
	/* The old publisher must be gone, or it would answer for the new one. */
	for (end = t_now_ms() + 10000; port_open() && t_now_ms() < end;)
		usleep(10000);
	if (port_open()) {
		printf("  restart: port %d still open 10 s after cimdd stopped\n", cd.port);
		return;
	}
	t0 = t_now_ms();
	if ((r = daemon_spawn(&cd.dm)) < 0) {
		printf("  restart: fork: %s\n", strerror(-r));
		return;
	}
	for (end = t0 + RESTART_WAIT_MS; t_now_ms() < end; usleep(2000)) {
		char *body = NULL;
		size_t len;
		int status = 0;

		if (scale_https_get(&https, path, &status, &body, &len) == 0) {
			free(body);
			if (status == 200) {
				f->restart_ms = t_now_ms() - t0;
				break;
			}
		}
		if (waitpid(cd.dm.pid, &st, WNOHANG) == cd.dm.pid) {
			cd.dm.pid = 0;
			printf("  restart: cimdd exited (see %s)\n", cd.dm.log);
			return;
		}
	}
	https_drop(&https);
	if (f->restart_ms < 0) {
		printf("  restart: %s not served within %d s\n", path, RESTART_WAIT_MS / 1000);
		f->restart_ms = RESTART_WAIT_MS;
		f->restart_over = 1;
	} else
		printf("  restart: %s served %.0f ms after cimdd started\n", path, f->restart_ms);
	restart_sign(f, t0);
	if ((r = scale_admin_connect(&adm, 30000)) < 0) {
		snprintf(err, sizeof(err), "%s", strerror(-r));
		printf("  restart: admin socket: %s\n", err);
	}
}

/* ---- one size ---- */

static void measure(struct figures *f)
{
	pid_t pub = publisher_pid(cd.dm.pid);
	int n = n_clients;

	f->n = n;
	printf("measuring at %d client%s\n", n, n == 1 ? "" : "s");
	fflush(stdout);
	jwks_load(n, f);
	assert_load(n, f);
	f->rss_cimdd = (double)proc_kb(cd.dm.pid, "VmRSS:") / 1024;
	f->hwm_cimdd = (double)proc_kb(cd.dm.pid, "VmHWM:") / 1024;
	f->rss_pub = (double)proc_kb(pub, "VmRSS:") / 1024;
	f->hwm_pub = (double)proc_kb(pub, "VmHWM:") / 1024;
	if ((f->module = module_mb()) >= 0 && f->hwm_cimdd >= 0)
		f->own = f->hwm_cimdd - f->module;
	rotate_load(n, f);
	restart_load(f);
	f->died = scale_publisher_died(&cd.dm);
}

/* ---- the table ---- */

static double value(const struct figures *f, const struct row *r)
{
	return *(const double *)((const char *)f + r->off);
}

/* Whether f meets row r's target beside the 1-client figures b; -1 unknown. */
static int meets(const struct figures *b, const struct figures *f, const struct row *r)
{
	double v = value(f, r), v1 = value(b, r);

	if (r->kind == T_NONE || v < 0 || (r->kind != T_AT_MOST && v1 <= 0))
		return -1;
	if (r->kind == T_AT_MOST)
		return v <= r->bound;
	return r->kind == T_RATIO_AT_MOST ? v / v1 <= r->bound : v / v1 >= r->bound;
}

static void print_table(const struct figures *fs, int nf)
{
	const struct figures *b = &fs[0];
	char target[32], miss[1024];
	size_t i, m;
	int j, met, known, k;

	printf("\n%-26s %10s", "", "1 client");
	for (j = 1; j < nf; j++)
		printf(" %10d %6s", fs[j].n, "ratio");
	printf("   target\n");
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		const struct row *r = &rows[i];

		printf("%-26s", r->label);
		for (j = 0; j < nf; j++) {
			double v = value(&fs[j], r), v1 = value(b, r);
			/* ">": a lower bound, what did not end within its wait */
			const char *gt =
			    r->off == offsetof(struct figures, restart_ms) && fs[j].restart_over
				? ">"
				: "";
			char cell[32];

			snprintf(cell, sizeof(cell), "%s%.2f", gt, v);
			printf(" %10s", v < 0 ? "-" : cell);
			snprintf(cell, sizeof(cell), "%s%.2f", gt, v1 > 0 ? v / v1 : 0);
			if (j > 0)
				printf(" %6s", v < 0 || v1 <= 0 ? "-" : cell);
		}
		if (r->kind == T_AT_MOST)
			snprintf(target, sizeof(target), "<= %g", r->bound);
		else if (r->kind == T_RATIO_AT_MOST)
			snprintf(target, sizeof(target), "ratio <= %.2f", r->bound);
		else if (r->kind == T_RATIO_AT_LEAST)
			snprintf(target, sizeof(target), "ratio >= %.2f", r->bound);
		else
			target[0] = '\0';
		printf("%s%s\n", target[0] ? "   " : "", target);
	}
	printf("\n");
	for (j = 0; j < nf; j++) {
		miss[0] = '\0';
		for (i = 0, met = 0, known = 0; j > 0 && i < sizeof(rows) / sizeof(rows[0]); i++) {
			if ((k = meets(b, &fs[j], &rows[i])) < 0)
				continue;
			known++;
			met += k;
			m = strlen(miss);
			if (!k)
				snprintf(miss + m, sizeof(miss) - m, "%s%s", m ? "; " : "",
					 rows[i].label);
		}
		if (j > 0)
			printf("at %d clients: %d of %d targets met%s%s\n", fs[j].n, met, known,
			       miss[0] ? "; missed: " : "", miss);
		printf("at %d client%s: every document and JWKS served: %s; publisher deaths "
		       "in the log: %d; failed assertions: %ld; wrk errors: %ld\n",
		       fs[j].n, fs[j].n == 1 ? "" : "s", fs[j].served ? "yes" : "NO", fs[j].died,
		       fs[j].as_fail, fs[j].jwks_bad);
	}
}

/* One size's figures for bench_scale.json: each row's figure, its ratio to the
 * 1-client figure, and whether it meets its target (null: no target, or unknown). */
static json_t *size_json(const struct figures *b, const struct figures *f)
{
	json_t *o = json_pack("{s:i, s:b, s:i, s:i, s:i, s:b}", "clients", f->n, "served",
			      f->served, "publisher_deaths", f->died, "failed_assertions",
			      (int)f->as_fail, "wrk_errors", (int)f->jwks_bad,
			      "restart_to_jwks_is_lower_bound", f->restart_over);
	json_t *ratios = json_object(), *met = json_object();
	size_t i;
	int k;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		double v = value(f, &rows[i]), v1 = value(b, &rows[i]);

		json_object_set_new(o, rows[i].key, bench_num(v));
		if (f != b)
			json_object_set_new(ratios, rows[i].key,
					    bench_num(v >= 0 && v1 > 0 ? v / v1 : -1));
		if (f != b && rows[i].kind != T_NONE)
			json_object_set_new(met, rows[i].key,
					    (k = meets(b, f, &rows[i])) < 0 ? json_null()
									    : json_boolean(k));
	}
	json_object_set_new(o, "ratio_to_1_client", ratios);
	json_object_set_new(o, "target_met", met);
	return o;
}

/* bench_scale.json: every figure of the table, and the targets. */
static void write_json(const struct figures *fs, int nf, size_t w)
{
	static const char *const kinds[] = {[T_NONE] = "none",
					    [T_AT_MOST] = "at_most",
					    [T_RATIO_AT_MOST] = "ratio_at_most",
					    [T_RATIO_AT_LEAST] = "ratio_at_least"};
	json_t *root = json_object(), *sizes = json_array(), *targets = json_object();
	size_t i;
	int j;

	for (j = 0; j < nf; j++)
		json_array_append_new(sizes, size_json(&fs[0], &fs[j]));
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		if (rows[i].kind != T_NONE)
			json_object_set_new(targets, rows[i].key,
					    json_pack("{s:s, s:f}", "kind", kinds[rows[i].kind],
						      "bound", rows[i].bound));
	json_object_set_new(root, "seconds_per_load", json_real(seconds));
	json_object_set_new(root, "cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
	json_object_set_new(root, "add_approve_window", json_integer((json_int_t)w));
	json_object_set_new(root, "sizes", sizes);
	json_object_set_new(root, "targets", targets);
	bench_out_write("bench_scale", root);
}

/* The sizes: arguments, else CIMD_BENCH_SCALE_N, else "1000 10000"; ascending. */
static int parse_sizes(int argc, char **argv, int ret_sizes[SIZES_MAX])
{
	const char *env = getenv("CIMD_BENCH_SCALE_N");
	char buf[256], *tok, *save = NULL, *end;
	int n = 0, i;
	long v;

	if (argc > 1) {
		buf[0] = '\0';
		for (i = 1; i < argc; i++)
			snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s ", argv[i]);
	} else {
		snprintf(buf, sizeof(buf), "%s", env != NULL && *env ? env : "1000 10000");
	}
	for (tok = strtok_r(buf, " ,", &save); tok != NULL; tok = strtok_r(NULL, " ,", &save)) {
		v = strtol(tok, &end, 10);
		if (*end != '\0' || v < 2 || v > CIMD_CLIENTS_MAX || n == SIZES_MAX ||
		    (n > 0 && v <= ret_sizes[n - 1])) {
			fprintf(
			    stderr,
			    "bench_scale: sizes are up to %d ascending numbers of clients, 2 to "
			    "%d: '%s'\n",
			    SIZES_MAX, CIMD_CLIENTS_MAX, tok);
			return -EINVAL;
		}
		ret_sizes[n++] = (int)v;
	}
	return n > 0 ? n : -EINVAL;
}

int main(int argc, char **argv)
{
	struct figures fs[SIZES_MAX + 1];
	int sizes[SIZES_MAX], ns, j, nf = 1, rc;
	const char *env = getenv("CIMD_BENCH_SECONDS");
	double budget = 3600, start;
	char err[512], why[256];
	size_t w;

	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0); /* progress, also into a file or a pipe */
	if ((ns = parse_sizes(argc, argv, sizes)) < 0)
		return 2;
	if (env != NULL && atof(env) > 0)
		seconds = atof(env);
	if ((env = getenv("CIMD_BENCH_SCALE_BUDGET")) != NULL && atof(env) > 0)
		budget = atof(env);
	w = (size_t)(sizes[0] / 2 < SCALE_WINDOW_MAX ? sizes[0] / 2 : SCALE_WINDOW_MAX);
	if (w < 1)
		w = 1;
	for (j = 0; j <= SIZES_MAX; j++)
		figures_init(&fs[j]);
	printf("scale: ES256 on SoftHSM2, %ld cores; 1 client, then",
	       sysconf(_SC_NPROCESSORS_ONLN));
	for (j = 0; j < ns; j++)
		printf(" %d", sizes[j]);
	printf("; %.0f s per load; ratio = figure at N / figure at 1 client\n", seconds);
	fflush(stdout);
	if (t_softhsm_init(&hsm, "scale", "246810") < 0) {
		printf("bench_scale: no SoftHSM2 token\n");
		goto out;
	}
	if ((rc = t_cimdd_start(&cd, "run", hsm.conf, NULL)) < 0) {
		printf("bench_scale: cimdd did not start (%s)\n", cimd_strerror(rc));
		t_sh("tail -20 %s", cd.dm.log);
		goto out;
	}
	if ((rc = scale_admin_open(&adm, cd.dm.sock)) < 0 ||
	    (rc = scale_https_init(&https, cd.ca, cd.port)) < 0) {
		printf("bench_scale: admin socket or TLS client: %s\n", strerror(-rc));
		goto out;
	}
	start = t_now_ms();
	if (grow(1, start + budget * 1000, err, sizeof(err)) < 0) {
		printf("bench_scale: the first client: %s\n", err);
		goto out;
	}
	fs[0].served = check_served(why, sizeof(why));
	measure(&fs[0]);
	for (j = 0; j < ns && cd.dm.pid > 0; j++) {
		double t0 = t_now_ms();
		int from = n_clients;

		printf("growing to %d clients\n", sizes[j]);
		fflush(stdout);
		rc = grow(sizes[j], start + budget * 1000, err, sizeof(err));
		printf("  %d clients added in %.1f s (%.1f ms each)\n", n_clients - from,
		       (t_now_ms() - t0) / 1000,
		       n_clients > from ? (t_now_ms() - t0) / (n_clients - from) : 0);
		if (rc < 0) {
			printf("bench_scale: stopped at %d clients: %s\n", n_clients, err);
			break;
		}
		if (j == 0)
			add_figures(1, w, &fs[0]); /* the operations after the first */
		add_figures(n_clients - (int)w, w, &fs[nf]);
		fs[nf].served = check_served(why, sizeof(why));
		measure(&fs[nf]);
		nf++;
	}
	print_table(fs, nf);
	write_json(fs, nf, w);
	printf("add+approve: the last %zu operations before each size (at 1 client: the %zu "
	       "after the first)\n",
	       w, w);
out:
	scale_admin_close(&adm);
	scale_https_free(&https);
	if (cd.dm.pid > 0)
		daemon_stop(&cd.dm, 30000);
	t_cleanup();
	return 0;
}
