/*
 * test_sign.c — the signing socket end to end: a real cimdd on SoftHSM2 and on
 * swtpm, its publisher over TLS, cimd-assert and libcimd as clients, node's
 * jose as the independent verifier.
 *
 * Per backend: assertions verify against the JWKS fetched over HTTPS; 10,000
 * assertions from 8 threads carry 10,000 distinct jti, each in the journal;
 * every refusal its own error, with the daemon serving on; callers by uid, gid
 * and supplementary group; lifetimes and rate limits; rotation and revocation
 * (every assertion verifies against the JWKS of its time); a thousand idle
 * connections, a stalled half-line and a peer that never reads; a journal that
 * cannot be written fails closed; hardware that stops answers
 * backend_unavailable within 2 s and signing resumes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "cimd.h"
#include "harness.h"
#include "service.h"

static struct t_cimdd cd;
static struct t_softhsm hsm;
static struct t_swtpm tpm;
static char dir[400], db[600], sign_sock[600], base[64], ca[600], assert_bin[700], client_id[256];
static const char aud[] = "https://as.example.com/token";
static int root, on_tpm;

#define ctl(out, len, ...) t_cimdd_ctl(&cd, out, len, __VA_ARGS__)

/* One assertion through libcimd; the status. */
static int sign_once(const char *cid, const char *a, long ttl, char **ret_jwt,
		     struct cimd_info *info)
{
	struct cimd *c = NULL;
	int r;

	if ((r = cimd_open(sign_sock, &c)) == CIMD_OK)
		r = cimd_assert(c, cid, a, ttl, ret_jwt, info);
	cimd_close(&c);
	return r;
}

static int unix_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Sends text on a fresh connection and reads one answer line into out. */
static int raw(const char *text, size_t len, char *out, size_t outlen)
{
	int fd = unix_connect(sign_sock);
	size_t got = 0;
	ssize_t n;

	out[0] = '\0';
	if (fd < 0)
		return -1;
	if (write(fd, text, len) != (ssize_t)len) {
		close(fd);
		return -1;
	}
	while (got + 1 < outlen && (n = read(fd, out + got, outlen - 1 - got)) > 0) {
		got += (size_t)n;
		if (memchr(out, '\n', got))
			break;
	}
	out[got] = '\0';
	close(fd);
	return 0;
}

/* raw() from a child that took uid (root only): a stranger's view. */
static int raw_as(uid_t uid, const char *text, char *out, size_t outlen)
{
	int pfd[2], st = 0;
	ssize_t n, got = 0;
	pid_t pid;

	out[0] = '\0';
	if (pipe(pfd) < 0)
		return -1;
	if ((pid = fork()) == 0) {
		close(pfd[0]);
		if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 ||
		    setresuid(uid, uid, uid) < 0 || raw(text, strlen(text), out, outlen) < 0 ||
		    write(pfd[1], out, strlen(out)) < 0)
			_exit(1);
		_exit(0);
	}
	close(pfd[1]);
	while (pid > 0 && got + 1 < (ssize_t)outlen &&
	       (n = read(pfd[0], out + got, outlen - 1 - (size_t)got)) > 0)
		got += n;
	out[got] = '\0';
	close(pfd[0]);
	if (pid > 0)
		waitpid(pid, &st, 0);
	return pid > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int has_error(const char *answer, const char *code)
{
	char needle[64];

	snprintf(needle, sizeof(needle), "\"error\":\"%s\"", code);
	return strstr(answer, "\"ok\":false") != NULL && strstr(answer, needle) != NULL;
}

/* The node verifier's JSON summary line. */
static int verify(const char *mode_args, long ttl, const char *file, char *out, size_t len)
{
	return t_sh_out(out, len,
			"NODE_EXTRA_CA_CERTS=%s node tests/interop/assert-verify.mjs %s '%s' '%s' "
			"%ld %s",
			ca, mode_args, client_id, aud, ttl, file);
}

/* How many assertions in file (one per line) verify with OpenSSL
 * (firmware/jws.c) against a key of the client's JWKS, fetched over HTTPS. */
static long openssl_verified(const char *file)
{
	char jwks_path[700], line[4096];
	json_t *jwks, *keys;
	uint8_t *payload;
	size_t i, plen;
	long n = 0;
	FILE *f;

	snprintf(jwks_path, sizeof(jwks_path), "%s/jwks-now.json", dir);
	if (t_sh("curl -sf --cacert %s -o %s %s/clients/agent-a/jwks.json", ca, jwks_path, base) !=
		0 ||
	    (jwks = json_load_file(jwks_path, 0, NULL)) == NULL)
		return -1;
	keys = json_object_get(jwks, "keys");
	if ((f = fopen(file, "r")) != NULL) {
		while (fgets(line, sizeof(line), f) != NULL) {
			line[strcspn(line, "\n")] = '\0';
			for (i = 0; i < json_array_size(keys); i++)
				if (jws_verify(line, json_array_get(keys, i), NULL, &payload,
					       &plen) == 0) {
					free(payload);
					n++;
					break;
				}
		}
		fclose(f);
	}
	json_decref(jwks);
	return n;
}

static long json_num(const char *s, const char *member)
{
	char needle[64];
	const char *p;

	snprintf(needle, sizeof(needle), "\"%s\":", member);
	return (p = strstr(s, needle)) ? strtol(p + strlen(needle), NULL, 10) : -1;
}

/* The first column of a one-row query as a number, -1 when none. */
static long db_count(const char *sql)
{
	char out[32] = "";

	return t_db_sql(db, out, sizeof(out), "%s", sql) == 0 && out[0] ? atol(out) : -1;
}

static void test_basics(void)
{
	char out[8192], path[700], args[1024];
	FILE *f;
	int rc;

	/* cimd-assert prints the assertion and nothing else. */
	rc = t_sh_out(out, sizeof(out), "%s -s %s --client-id %s --aud %s", assert_bin, sign_sock,
		      client_id, aud);
	t_ok(rc == 0 && strncmp(out, "eyJ", 3) == 0 && strchr(out, '\n') == out + strlen(out) - 1 &&
		 strchr(out, ' ') == NULL,
	     "cimd-assert prints one assertion line and exits 0");
	snprintf(path, sizeof(path), "%s/one.txt", dir);
	t_write_file(path, out, strlen(out));
	snprintf(args, sizeof(args), "remote %s/clients/agent-a/jwks.json", base);
	verify(args, 60, path, out, sizeof(out));
	t_ok(strstr(out, "\"verified\":1,\"failed\":0") != NULL,
	     "jose verifies it against the JWKS fetched over HTTPS, with every claim and header "
	     "member checked (%s)",
	     out);

	/* ttl: requested, then the client's policy, then capped. */
	snprintf(path, sizeof(path), "%s/ttl.txt", dir);
	rc = t_sh("%s -s %s --client-id %s --aud %s --ttl 17 > %s", assert_bin, sign_sock,
		  client_id, aud, path);
	verify(args, 17, path, out, sizeof(out));
	t_ok(rc == 0 && strstr(out, "\"verified\":1,\"failed\":0"),
	     "--ttl 17 gives exp = iat + 17");
	ctl(out, sizeof(out), "client policy agent-a --ttl 33");
	rc = t_sh("%s -s %s --client-id %s --aud %s > %s", assert_bin, sign_sock, client_id, aud,
		  path);
	verify(args, 33, path, out, sizeof(out));
	t_ok(rc == 0 && strstr(out, "\"verified\":1,\"failed\":0"),
	     "without ttl, the client's policy (33 s) applies");
	ctl(out, sizeof(out), "client policy agent-a --ttl 0");
	rc = t_sh_out(out, sizeof(out), "%s -s %s --client-id %s --aud %s --ttl 301", assert_bin,
		      sign_sock, client_id, aud);
	t_ok(rc == 1 && strstr(out, "bad_request") && strstr(out, "assertion_max_ttl"),
	     "a ttl over assertion_max_ttl is refused (exit 1): %s", out);

	/* Exit statuses tell refused from unavailable. */
	rc = t_sh_out(out, sizeof(out), "%s -s %s --client-id %s --aud https://evil.example",
		      assert_bin, sign_sock, client_id);
	t_ok(rc == 1 && strstr(out, "audience_not_allowed"), "an audience off the list: exit 1, %s",
	     out);
	rc = t_sh_out(out, sizeof(out), "%s -s %s/nothing.sock --client-id %s --aud %s", assert_bin,
		      dir, client_id, aud);
	t_ok(rc == 3 && strstr(out, "nothing.sock"), "no daemon on the socket: exit 3, %s", out);
	rc = t_sh_out(out, sizeof(out), "%s --client-id %s", assert_bin, client_id);
	t_ok(rc == 2, "a missing --aud is a usage error (exit 2)");
	rc = t_sh_out(out, sizeof(out), "%s --help", assert_bin);
	t_ok(rc == 0 && strstr(out, "usage: cimd-assert"), "cimd-assert --help");

	/* The shared library, as a workload links it: cimd.h and libcimd.so. */
	{
		char lib[700], *slash, src[800], prog[800];
		static const char text[] =
		    "#include <stdio.h>\n#include <stdlib.h>\n#include <cimd.h>\n"
		    "int main(int c, char **v) { struct cimd *h = NULL; char *j = NULL;\n"
		    "  int r = cimd_open(v[1], &h);\n"
		    "  if (r == CIMD_OK) r = cimd_assert(h, v[2], v[3], 0, &j, NULL);\n"
		    "  if (r == CIMD_OK) puts(j); else puts(cimd_message(h));\n"
		    "  free(j); cimd_close(&h); return r; }\n";

		t_bin("", lib, sizeof(lib));
		if ((slash = strrchr(lib, '/')) != NULL)
			*slash = '\0';
		if ((slash = strrchr(lib, '/')) != NULL)
			strcpy(slash, "/lib");
		snprintf(src, sizeof(src), "%s/prog.c", dir);
		snprintf(prog, sizeof(prog), "%s/prog", dir);
		t_write_file(src, text, strlen(text));
		rc = t_sh("cc %s -Itools -o %s %s -L%s -l:libcimd.so.0 -Wl,-rpath,%s",
			  getenv("CIMD_TEST_SANITIZED") ? "-fsanitize=address,undefined" : "", prog,
			  src, lib, lib);
		if (rc == 0)
			rc = t_sh_out(out, sizeof(out), "%s %s %s %s", prog, sign_sock, client_id,
				      aud);
		t_ok(rc == 0 && strncmp(out, "eyJ", 3) == 0,
		     "a program linked against libcimd.so gets an assertion");
	}
	(void)f;
}

/* ---- 10,000 assertions ---- */

#define BULK_THREADS 8
#define BULK_EACH 1250

struct bulk {
	char **jwts;
	char (*jtis)[64];
	int fails;
};

static void *bulk_main(void *arg)
{
	struct bulk *b = arg;
	struct cimd *c = NULL;
	struct cimd_info info;
	int i;

	if (cimd_open(sign_sock, &c) != CIMD_OK) {
		b->fails = BULK_EACH;
		cimd_close(&c);
		return NULL;
	}
	for (i = 0; i < BULK_EACH; i++) {
		if (cimd_assert(c, client_id, aud, 0, &b->jwts[i], &info) != CIMD_OK) {
			b->fails++;
			b->jwts[i] = NULL;
			continue;
		}
		snprintf(b->jtis[i], sizeof(b->jtis[i]), "%s", info.jti);
	}
	cimd_close(&c);
	return NULL;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

struct jtis {
	char (*v)[64];
	size_t n, cap;
};

/* The jti of an assertion.issue record of agent-a for aud by our uid and pid,
 * added to arg. */
static int our_jti(void *arg, json_t *rec)
{
	struct jtis *l = arg;
	const char *jti = json_string_value(json_object_get(rec, "jti"));
	const char *client = json_string_value(json_object_get(rec, "client"));
	const char *a = json_string_value(json_object_get(rec, "aud"));
	void *p;

	if (jti == NULL || client == NULL || a == NULL || strcmp(client, "agent-a") != 0 ||
	    strcmp(a, aud) != 0 ||
	    json_integer_value(json_object_get(rec, "uid")) != (json_int_t)geteuid() ||
	    json_integer_value(json_object_get(rec, "pid")) != (json_int_t)getpid())
		return 0;
	if (l->n == l->cap) {
		if ((p = realloc(l->v, (l->cap * 2 + 1024) * sizeof(l->v[0]))) == NULL)
			return 1;
		l->v = p;
		l->cap = l->cap * 2 + 1024;
	}
	snprintf(l->v[l->n++], sizeof(l->v[0]), "%s", jti);
	return 0;
}

static void test_bulk(void)
{
	static struct bulk b[BULK_THREADS];
	static char jtis[BULK_THREADS * BULK_EACH][64];
	pthread_t th[BULK_THREADS];
	char path[700], out[4096], args[512];
	size_t i, j, distinct = 0, fails = 0;
	struct jtis ours = {NULL, 0, 0};
	long in_journal = -1;
	double t0, ms;
	FILE *f;

	t0 = t_now_ms();
	for (i = 0; i < BULK_THREADS; i++) {
		b[i].jwts = calloc(BULK_EACH, sizeof(char *));
		b[i].jtis = calloc(BULK_EACH, 64);
		b[i].fails = 0;
		pthread_create(&th[i], NULL, bulk_main, &b[i]);
	}
	for (i = 0; i < BULK_THREADS; i++)
		pthread_join(th[i], NULL);
	ms = t_now_ms() - t0;
	snprintf(path, sizeof(path), "%s/bulk.txt", dir);
	f = fopen(path, "w");
	for (i = 0; i < BULK_THREADS; i++) {
		fails += (size_t)b[i].fails;
		for (j = 0; j < BULK_EACH; j++) {
			memcpy(jtis[i * BULK_EACH + j], b[i].jtis[j], 64);
			if (b[i].jwts[j] != NULL && f != NULL)
				fprintf(f, "%s\n", b[i].jwts[j]);
			free(b[i].jwts[j]);
		}
		free(b[i].jwts);
		free(b[i].jtis);
	}
	if (f != NULL)
		fclose(f);
	t_ok(fails == 0, "10,000 assertions from %d threads, none failed (%zu failed; %.0f ms)",
	     BULK_THREADS, fails, ms);
	qsort(jtis, BULK_THREADS * BULK_EACH, 64, cmp_str);
	for (i = 0; i < BULK_THREADS * BULK_EACH; i++)
		if (jtis[i][0] != '\0' && (i == 0 || strcmp(jtis[i], jtis[i - 1]) != 0))
			distinct++;
	t_ok(distinct == BULK_THREADS * BULK_EACH, "they carry 10,000 distinct jti (%zu)",
	     distinct);
	/* Each is in the journal: the issue records of our uid and pid, sorted,
	 * against the sorted jti we received. */
	if (t_db_journal_each(db, "assertion.issue", our_jti, &ours) >= 0) {
		qsort(ours.v, ours.n, sizeof(ours.v[0]), cmp_str);
		in_journal = 0;
		for (i = 0, j = 0; j < ours.n; j++) {
			while (i < BULK_THREADS * BULK_EACH && strcmp(jtis[i], ours.v[j]) < 0)
				i++;
			if (i < BULK_THREADS * BULK_EACH && strcmp(jtis[i], ours.v[j]) == 0) {
				in_journal++;
				i++;
			}
		}
	}
	free(ours.v);
	t_ok(in_journal == BULK_THREADS * BULK_EACH,
	     "each jti is exactly one assertion.issue record naming client, aud, uid and pid "
	     "(%ld)",
	     in_journal);
	snprintf(args, sizeof(args), "remote %s/clients/agent-a/jwks.json", base);
	verify(args, 60, path, out, sizeof(out));
	t_ok(json_num(out, "verified") == BULK_THREADS * BULK_EACH &&
		 json_num(out, "failed") == 0 && json_num(out, "distinct_jti") == 10000,
	     "jose verifies all 10,000 against the published JWKS (%s)", out);
	t_ok(openssl_verified(path) == BULK_THREADS * BULK_EACH,
	     "OpenSSL verifies all 10,000 against the published JWKS too");
	t_ok(ctl(out, sizeof(out), "journal verify") == 0,
	     "the journal chain verifies after 10,000 group-committed records");
}

/* ---- strangers learn nothing of which clients exist ---- */

/* The answer uid 1001 gets for client name, with its client_id replaced by
 * CID: what is left must be the same for every name. */
static void stranger_answer(const char *name, char *out, size_t len)
{
	char line[1024], cid[300], *p;
	size_t n;

	snprintf(cid, sizeof(cid), "%s/clients/%s", base, name);
	snprintf(line, sizeof(line), "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\"}\n",
		 cid, aud);
	raw_as(1001, line, out, len);
	if ((p = strstr(out, cid)) != NULL) {
		n = strlen(cid);
		memmove(p + 3, p + n, strlen(p + n) + 1);
		memcpy(p, "CID", 3);
	}
}

static void test_strangers(void)
{
	char a[1024], b[1024], c[1024], path[700];
	static const char doc[] = "{\"client_name\":\"Unpublished\",\"grant_types\":"
				  "[\"client_credentials\"],\"response_types\":[]}\n";

	if (!root)
		return;
	snprintf(path, sizeof(path), "%s/unpub.json", dir);
	t_write_file(path, doc, strlen(doc));
	ctl(a, sizeof(a), "client add unpub --owner team-a --metadata %s", path);
	ctl(a, sizeof(a), "client allow unpub --uid %d", (int)geteuid());
	stranger_answer("agent-a", a, sizeof(a));
	stranger_answer("no-such-client", b, sizeof(b));
	stranger_answer("unpub", c, sizeof(c));
	t_ok(has_error(a, "forbidden") && strstr(a, "uid 1001 may not sign for CID") &&
		 strcmp(a, b) == 0 && strcmp(a, c) == 0,
	     "uid 1001 gets one answer for a client that exists (agent-a), one that does not, "
	     "and one without an approved document: %s | %s | %s",
	     a, b, c);
}

/* ---- every refusal its own error ---- */

static void test_refusals(void)
{
	char out[8192], line[8192], big[CIMD_SIGN_LINE_MAX + 64], *jwt;
	size_t n;
	int fd;

	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"%s/clients/nobody\",\"aud\":\"%s\"}\n", base,
		 aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "forbidden") && strstr(out, "uid 0 may not sign for ") != NULL,
	     "a client that does not exist: forbidden, as one the caller may not use (%s)", out);
	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"https://other.example/clients/agent-a\","
		 "\"aud\":\"%s\"}\n",
		 aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "unknown_client"), "another origin's client_id: unknown_client");
	test_strangers();
	snprintf(line, sizeof(line), "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s/\"}\n",
		 client_id, aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "audience_not_allowed"),
	     "an audience differing by one character: audience_not_allowed");
	raw("{\"op\":\"assert\"\n", 15, out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "not a JSON object"),
	     "invalid JSON: bad_request (%s)", out);
	snprintf(
	    line, sizeof(line),
	    "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"https://as.example.com/\xff\"}\n",
	    client_id);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "decode byte"),
	     "invalid UTF-8: bad_request (%s)", out);
	snprintf(line, sizeof(line), "{\"op\":\"assert\",\"client_id\":\"%s\"}\n", client_id);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "aud is missing"),
	     "a missing member: bad_request naming it (%s)", out);
	snprintf(line, sizeof(line), "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":7}\n",
		 client_id);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "aud must be a string"),
	     "a mistyped member: bad_request naming it (%s)", out);
	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\",\"ttl\":\"60\"}\n",
		 client_id, aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "ttl"), "a string ttl: bad_request");
	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\",\"ttl\":301}\n", client_id,
		 aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "exceeds assertion_max_ttl"),
	     "ttl above the cap: bad_request naming the cap (%s)", out);
	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\",\"kid\":\"x\"}\n",
		 client_id, aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request") && strstr(out, "unknown member \\\"kid\\\""),
	     "a member the protocol does not have (kid): bad_request, never obeyed");
	raw("{\"op\":\"sign\",\"payload\":\"x\"}\n", 28, out, sizeof(out));
	t_ok(has_error(out, "bad_request"), "no op signs caller-supplied bytes: %s", out);
	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"%s\",\"client_id\":\"%s\",\"aud\":\"%s\"}\n",
		 client_id, client_id, aud);
	raw(line, strlen(line), out, sizeof(out));
	t_ok(has_error(out, "bad_request"), "a duplicated member: bad_request");

	/* Line limits: 4096 bytes are read as a request, 4097 are too_large. */
	memset(big, ' ', sizeof(big));
	n = (size_t)snprintf(line, sizeof(line),
			     "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\"", client_id,
			     aud);
	memcpy(big, line, n);
	big[CIMD_SIGN_LINE_MAX - 1] = '}';
	big[CIMD_SIGN_LINE_MAX] = '\n';
	raw(big, CIMD_SIGN_LINE_MAX + 1, out, sizeof(out));
	t_ok(strstr(out, "\"ok\":true") != NULL, "a request line of exactly 4096 bytes is served");
	big[CIMD_SIGN_LINE_MAX - 1] = ' ';
	big[CIMD_SIGN_LINE_MAX] = '}';
	big[CIMD_SIGN_LINE_MAX + 1] = '\n';
	fd = unix_connect(sign_sock);
	if (fd >= 0 && write(fd, big, CIMD_SIGN_LINE_MAX + 2) > 0) {
		ssize_t k, got = 0;

		while ((k = read(fd, out + got, sizeof(out) - 1 - (size_t)got)) > 0)
			got += k;
		out[got > 0 ? got : 0] = '\0';
		t_ok(has_error(out, "too_large") && k <= 0,
		     "4097 bytes: too_large, then the connection is closed (%s)", out);
	} else {
		t_ok(0, "4097 bytes: too_large");
	}
	if (fd >= 0)
		close(fd);

	/* Many requests on one connection, answered in order. */
	fd = unix_connect(sign_sock);
	snprintf(line, sizeof(line),
		 "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\"}\n"
		 "{\"op\":\"nope\"}\n"
		 "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\",\"ttl\":5}\n",
		 client_id, aud, client_id, aud);
	if (fd >= 0 && write(fd, line, strlen(line)) == (ssize_t)strlen(line)) {
		size_t got = 0, lines = 0;
		ssize_t k;
		char *a, *b2, *c;

		while (lines < 3 && (k = read(fd, out + got, sizeof(out) - 1 - got)) > 0) {
			got += (size_t)k;
			out[got] = '\0';
			for (lines = 0, a = out; (a = strchr(a, '\n')) != NULL; a++)
				lines++;
		}
		a = strstr(out, "\"ok\":true");
		b2 = strstr(out, "\"ok\":false");
		c = a ? strstr(a + 1, "\"ok\":true") : NULL;
		t_ok(lines == 3 && a && b2 && c && a < b2 && b2 < c,
		     "three pipelined requests on one connection: three answers, in order");
	} else {
		t_ok(0, "pipelined requests");
	}
	if (fd >= 0)
		close(fd);
	jwt = NULL;
	t_ok(sign_once(client_id, aud, 0, &jwt, NULL) == CIMD_OK,
	     "after all of that the daemon still signs");
	free(jwt);
}

/* ---- who may sign ---- */

static void test_callers(void)
{
	char out[8192], *jwt = NULL;
	int rc;
	long before = db_count("SELECT count(*) FROM journal WHERE kind = 'assertion.refuse'");

	ctl(out, sizeof(out), "client allow agent-a --uid %d --remove", (int)geteuid());
	rc = sign_once(client_id, aud, 0, &jwt, NULL);
	t_ok(rc == CIMD_FORBIDDEN, "our uid removed from the policy: forbidden (%s)",
	     cimd_status_name(rc));
	t_ok(t_db_journal_match(db, "assertion.refuse", "{sssssIsI}", "error", "forbidden",
				"client", "agent-a", "uid", (json_int_t)geteuid(), "pid",
				(json_int_t)getpid()) == 1 &&
		 db_count("SELECT count(*) FROM journal WHERE kind = 'assertion.refuse'") ==
		     before + 1,
	     "the refusal is journaled with the caller's uid and pid");
	rc = t_sh_out(out, sizeof(out), "%s -s %s --client-id %s --aud %s", assert_bin, sign_sock,
		      client_id, aud);
	t_ok(rc == 1 && strstr(out, "forbidden") && strstr(out, "may not sign"),
	     "cimd-assert: forbidden, exit 1 (%s)", out);
	ctl(out, sizeof(out), "client allow agent-a --gid %d", (int)getegid());
	t_ok(sign_once(client_id, aud, 0, &jwt, NULL) == CIMD_OK, "allowed by our gid instead");
	t_ok(t_db_journal_match(db, "assertion.issue", "{sIss}", "gid", (json_int_t)getegid(),
				"client", "agent-a") == 1,
	     "its record names our gid");
	free(jwt);
	jwt = NULL;
	ctl(out, sizeof(out), "client allow agent-a --gid %d --remove", (int)getegid());
	ctl(out, sizeof(out), "client allow agent-a --uid %d", (int)geteuid());
	if (!root)
		return;
	rc = t_sh_out(out, sizeof(out),
		      "setpriv --reuid=1001 --regid=1001 --clear-groups %s -s %s --client-id %s "
		      "--aud %s",
		      assert_bin, sign_sock, client_id, aud);
	t_ok(rc == 1 && strstr(out, "uid 1001 may not sign"),
	     "another user (uid 1001): forbidden (%s)", out);
	ctl(out, sizeof(out), "client allow agent-a --gid 2345");
	rc = t_sh_out(out, sizeof(out),
		      "setpriv --reuid=1001 --regid=1001 --groups=2345 %s -s %s --client-id %s "
		      "--aud %s >/dev/null",
		      assert_bin, sign_sock, client_id, aud);
	t_ok(rc == 0, "uid 1001 with supplementary group 2345, which the policy allows: signed");
	t_ok(t_db_journal_match(db, "assertion.issue", "{sisiss}", "uid", 1001, "gid", 2345,
				"client", "agent-a") == 1,
	     "its record names the group that allowed it (gid 2345)");
	rc = t_sh_out(out, sizeof(out),
		      "setpriv --reuid=1001 --regid=1001 --clear-groups %s -s %s --client-id %s "
		      "--aud %s",
		      assert_bin, sign_sock, client_id, aud);
	t_ok(rc == 1, "the same uid without that group: forbidden");
	ctl(out, sizeof(out), "client allow agent-a --gid 2345 --remove");
}

/* ---- rate limit ---- */

static void test_rate(void)
{
	struct cimd *c = NULL;
	char out[1024], *jwt;
	int i, ok = 0, limited = 0, r;

	ctl(out, sizeof(out), "client policy agent-a --rate 5");
	cimd_open(sign_sock, &c);
	for (i = 0; i < 30; i++) {
		jwt = NULL;
		r = cimd_assert(c, client_id, aud, 0, &jwt, NULL);
		ok += r == CIMD_OK;
		limited += r == CIMD_RATE_LIMITED;
		free(jwt);
	}
	cimd_close(&c);
	t_ok(ok >= 5 && ok <= 10 && limited == 30 - ok,
	     "--rate 5: a burst of 30 gets about 5 assertions and rate_limited for the rest "
	     "(%d, %d)",
	     ok, limited);
	usleep(1100 * 1000);
	jwt = NULL;
	t_ok(sign_once(client_id, aud, 0, &jwt, NULL) == CIMD_OK,
	     "a second later the client signs again");
	free(jwt);
	ctl(out, sizeof(out), "client policy agent-a --rate 0");
}

/* ---- rotation and revocation ---- */

/* An assertion and the JWKS served right after it was issued, as one line of
 * the local-mode verifier's input. */
static int sample(FILE *f, int k, char *ret_kid)
{
	char path[700], args[2048], *jwt = NULL;
	struct cimd_info info;
	int r;

	if ((r = sign_once(client_id, aud, 0, &jwt, &info)) != CIMD_OK)
		return r;
	snprintf(path, sizeof(path), "%s/jwks-%d.json", dir, k);
	snprintf(args, sizeof(args),
		 "curl -s --max-time 5 --cacert %s -o %s %s/clients/agent-a/jwks.json", ca, path,
		 base);
	t_sh("%s", args);
	fprintf(f, "%s %s\n", jwt, path);
	if (ret_kid != NULL)
		snprintf(ret_kid, 64, "%s", info.kid);
	free(jwt);
	return 0;
}

static void test_rotation(void)
{
	char out[8192], path[700], kid0[64] = "", kid1[64] = "", kid2[64] = "", old[64] = "";
	int k = 0, i, bad = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/rotation.txt", dir);
	if ((f = fopen(path, "w")) == NULL)
		return;
	for (i = 0; i < 3; i++)
		bad += sample(f, k++, kid0) != 0;
	ctl(out, sizeof(out), "key rotate agent-a");
	usleep(300 * 1000);
	for (i = 0; i < 3; i++)
		bad += sample(f, k++, kid1) != 0;
	t_ok(strcmp(kid0, kid1) == 0, "a next key does not sign yet");
	usleep(1200 * 1000); /* jwks_max_age = 1: the next key may be activated */
	ctl(out, sizeof(out), "key activate agent-a");
	for (i = 0; i < 3; i++)
		bad += sample(f, k++, kid1) != 0;
	t_ok(kid1[0] && strcmp(kid0, kid1) != 0,
	     "after activation assertions carry the new kid at once");
	/* Revoke the active key with a replacement: never signs again. */
	snprintf(old, sizeof(old), "%s", kid1);
	if (ctl(out, sizeof(out), "key revoke agent-a %s --reason test --replace", kid1) != 0)
		printf("# key revoke failed: %s\n", out); /* what the checks below will say */
	for (i = 0; i < 3; i++)
		bad += sample(f, k++, kid2) != 0;
	fclose(f);
	t_ok(bad == 0 && kid2[0] && strcmp(kid2, old) != 0,
	     "after revocation with --replace: the replacement signs (%d failures)", bad);
	t_ok(t_db_issued_after_revocation(db, old) == 0,
	     "no assertion by the revoked key is journaled after its revocation");
	t_ok(t_db_journal_match(db, "key.state", "{ssss}", "to", "revoked", "kid", old) == 1 &&
		 t_db_journal_match(db, "assertion.issue", "{ss}", "kid", old) > 0,
	     "(the revocation is a journal record, and that key did sign before it)");
	verify("local", 60, path, out, sizeof(out));
	t_ok(json_num(out, "verified") == k && json_num(out, "failed") == 0,
	     "each of %d assertions verifies against the JWKS published when it was issued (%s)", k,
	     out);
}

/* ---- connections that misbehave ---- */

static void test_abuse(void)
{
	enum { IDLE = 1000 };
	static int fds[IDLE];
	struct rlimit rl;
	char out[1024], line[1024], *jwt = NULL;
	double t0, worst = 0, ms;
	int i, n = 0, half, never, ok = 0;
	ssize_t k;

	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	for (i = 0; i < IDLE; i++)
		if ((fds[i] = unix_connect(sign_sock)) >= 0)
			n++;
	half = unix_connect(sign_sock);
	k = write(half, "{\"op\":\"assert\",\"client_", 23);
	/* A peer that sends requests and never reads its answers. */
	never = unix_connect(sign_sock);
	snprintf(line, sizeof(line), "{\"op\":\"assert\",\"client_id\":\"%s\",\"aud\":\"%s\"}\n",
		 client_id, aud);
	fcntl(never, F_SETFL, O_NONBLOCK);
	for (i = 0; i < 3000; i++)
		if (write(never, line, strlen(line)) < 0)
			break;
	for (i = 0; i < 20; i++) {
		t0 = t_now_ms();
		if (sign_once(client_id, aud, 0, &jwt, NULL) == CIMD_OK)
			ok++;
		ms = t_now_ms() - t0;
		worst = ms > worst ? ms : worst;
		free(jwt);
		jwt = NULL;
	}
	t_ok(n == IDLE && k == 23 && ok == 20,
	     "with %d idle connections, a stalled half-line and a peer that never reads, an "
	     "allowed client gets 20 of 20 assertions (slowest %.1f ms)",
	     n, worst);
	/* The stalled line is closed after CIMD_SIGN_LINE_SEC. */
	t0 = t_now_ms();
	{
		struct timeval tv = {CIMD_SIGN_LINE_SEC + 3, 0};

		setsockopt(half, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		k = read(half, out, sizeof(out));
	}
	ms = t_now_ms() - t0;
	t_ok(k == 0 && ms < (CIMD_SIGN_LINE_SEC + 2) * 1000.0,
	     "the half-line connection is closed by the daemon (after %.1f s)", ms / 1000);
	for (i = 0; i < IDLE; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	close(half);
	close(never);
	t_ok(sign_once(client_id, aud, 0, &jwt, NULL) == CIMD_OK, "and it still signs");
	free(jwt);
}

/* ---- the journal cannot be written: fail closed ---- */

static void test_journal_fails_closed(void)
{
	struct store *st = NULL;
	char *jwt = NULL, err[256];
	double t0, ms;
	long before;
	int rc;

	before = db_count("SELECT count(*) FROM journal WHERE kind = 'assertion.issue'");
	/* Another process holds the database's write lock: a write transaction
	 * of the store (SQLite's BEGIN IMMEDIATE, PostgreSQL's writers' lock). */
	if (t_db_open(db, &st, err, sizeof(err)) < 0 || store_begin(st) < 0) {
		t_ok(0, "take the database's write lock (%s)", st == NULL ? err : "begin");
		store_free(&st);
		return;
	}
	t0 = t_now_ms();
	rc = sign_once(client_id, aud, 0, &jwt, NULL);
	ms = t_now_ms() - t0;
	t_ok(rc == CIMD_INTERNAL && jwt == NULL,
	     "journal unwritable: internal, no assertion (%s after %.0f ms)", cimd_status_name(rc),
	     ms);
	store_rollback(st);
	store_free(&st);
	t_ok(db_count("SELECT count(*) FROM journal WHERE kind = 'assertion.issue'") == before,
	     "and nothing was journaled for it");
	rc = sign_once(client_id, aud, 0, &jwt, NULL);
	t_ok(rc == CIMD_OK, "once the lock is released, signing resumes");
	free(jwt);
}

/* ---- hardware that stops answering (swtpm stopped) ---- */

static void test_unavailable(void)
{
	char *jwt = NULL;
	double t0, ms;
	int rc, i, back = 0;

	kill(tpm.pid, SIGSTOP);
	t0 = t_now_ms();
	rc = sign_once(client_id, aud, 0, &jwt, NULL);
	ms = t_now_ms() - t0;
	t_ok(rc == CIMD_BACKEND_UNAVAILABLE && ms < 2000,
	     "swtpm stopped: backend_unavailable in %.0f ms (< 2 s)", ms);
	t0 = t_now_ms();
	rc = t_sh("%s -s %s --client-id %s --aud %s 2>/dev/null", assert_bin, sign_sock, client_id,
		  aud);
	t_ok(rc == 3 && t_now_ms() - t0 < 2500, "cimd-assert: exit 3 (unavailable)");
	kill(tpm.pid, SIGCONT);
	for (i = 0; i < 50 && !back; i++) {
		free(jwt);
		jwt = NULL;
		back = sign_once(client_id, aud, 0, &jwt, NULL) == CIMD_OK;
		if (!back)
			usleep(100 * 1000);
	}
	t_ok(back, "swtpm resumed: signing resumes by itself");
	free(jwt);
}

/* The value of the metrics line that starts with series, or 0. */
static long long metric(const char *text, const char *series)
{
	const char *p = strstr(text, series);

	return p != NULL ? strtoll(p + strlen(series), NULL, 10) : 0;
}

/* Names probed on sign.sock by a stranger (one made up, one of a client
 * without an approved document) never become labels: they are counted under
 * client="". */
static void test_metrics_probe(void)
{
	static const char series[] = "cimdd_assertions_total{client=\"\",result=\"forbidden\"} ";
	char out[65536], args[2048], probe[64], answer[1024];
	long long before;
	int i, counted = 0;

	snprintf(args, sizeof(args), "curl -s --max-time 5 --cacert %s %s/metrics", ca, base);
	t_sh_out(out, sizeof(out), "%s", args);
	before = metric(out, series);
	snprintf(probe, sizeof(probe), "probe-%d-%ld", (int)getpid(), random() % 100000);
	stranger_answer(probe, answer, sizeof(answer));
	stranger_answer("unpub", answer, sizeof(answer));
	/* The signer's counters reach /metrics at most every 5 s. */
	for (i = 0; i < 80 && !counted; i++) {
		t_sh_out(out, sizeof(out), "%s", args);
		counted = metric(out, series) >= before + 2;
		if (!counted)
			usleep(100 * 1000);
	}
	t_ok(counted && strstr(out, probe) == NULL && strstr(out, "unpub") == NULL,
	     "/metrics counts a stranger's probes under client=\"\" and names neither %s nor "
	     "unpub (a client without an approved document)",
	     probe);
}

static void test_metrics(void)
{
	char out[65536], args[2048];
	int i, found = 0;

	snprintf(args, sizeof(args), "curl -s --max-time 5 --cacert %s %s/metrics", ca, base);
	for (i = 0; i < 80 && !found; i++) {
		t_sh_out(out, sizeof(out), "%s", args);
		found = strstr(out, "cimdd_assertions_total{client=\"agent-a\",result=\"ok\"}") &&
			strstr(out, "result=\"forbidden\"") &&
			strstr(out, "result=\"audience_not_allowed\"");
		if (!found)
			usleep(100 * 1000);
	}
	t_ok(found, "/metrics counts assertions by client and result");
	if (root)
		test_metrics_probe();
}

static void suite(int tpm_mode)
{
	char hsm_conf[1200];
	int rc;

	on_tpm = tpm_mode;
	t_set_prefix(on_tpm ? "tpm2: " : "pkcs11: ");
	if (on_tpm && !t_ok(t_swtpm_start(&tpm) == 0, "swtpm started"))
		return;
	/* PKCS#11 on more sessions than this machine may have cores: signatures
	 * run at once whatever the machine (a TPM has one). */
	snprintf(hsm_conf, sizeof(hsm_conf), "%s;sessions=3", hsm.conf);
	rc = t_cimdd_start(&cd, on_tpm ? "tpm2" : "pkcs11", on_tpm ? tpm.conf : hsm_conf,
			   "sign_socket_mode = 0666\njwks_max_age = 1\ncimd_max_age = 1\n"
			   "assertion_default_ttl = 60\nassertion_max_ttl = 300\nclock_skew = 0\n"
			   "destroy_delay = 1\n");
	if (!t_ok(rc == 0, "cimdd starts (%s)", cimd_strerror(rc))) {
		t_sh("cat %s", cd.dm.log);
		return;
	}
	snprintf(dir, sizeof(dir), "%s", cd.dir);
	snprintf(db, sizeof(db), "%s", cd.db);
	snprintf(base, sizeof(base), "%s", cd.base);
	snprintf(ca, sizeof(ca), "%s", cd.ca);
	snprintf(sign_sock, sizeof(sign_sock), "%s", cd.sign_sock);
	snprintf(client_id, sizeof(client_id), "%s/clients/agent-a", cd.base);
	if (!t_ok(t_cimdd_client(&cd, "agent-a", aud) == 0,
		  "client agent-a: added, approved, allowed, with an audience")) {
		t_sh("cat %s", cd.dm.log);
		return;
	}
	{
		char *jwt = NULL;

		rc = sign_once(client_id, aud, 0, &jwt, NULL);
		free(jwt);
	}
	t_ok(rc == CIMD_OK, "libcimd gets an assertion (%s)", cimd_status_name(rc));
	test_basics();
	test_refusals();
	test_callers();
	test_bulk();
	test_rate();
	test_rotation();
	test_abuse();
	test_journal_fails_closed();
	if (on_tpm)
		test_unavailable();
	test_metrics();
	rc = t_daemon_stop(&cd.dm, SIGTERM);
	t_ok(rc == 0 && access(sign_sock, F_OK) != 0, "cimdd stops cleanly and removes sign.sock");
	if (getenv("CIMD_TEST_VERBOSE"))
		t_sh("cat %s", cd.dm.log);
	if (on_tpm)
		t_swtpm_kill(&tpm);
}

int main(void)
{
	char src[700], cmd[2200];

	signal(SIGPIPE, SIG_IGN);
	root = geteuid() == 0;
	chmod(t_tmpdir(), 0711);
	/* cimd-assert where other uids may run it (setpriv). */
	snprintf(assert_bin, sizeof(assert_bin), "%s/cimd-assert", t_tmpdir());
	t_bin("cimd-assert", src, sizeof(src));
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0755 '%s'", src, assert_bin, assert_bin);
	if (system(cmd) != 0)
		return t_ok(0, "copy cimd-assert"), t_done();
	if (!t_ok(t_softhsm_init(&hsm, "sign", "654321") == 0, "SoftHSM2 token"))
		return t_done();
	suite(0);
	suite(1);
	return t_done();
}
