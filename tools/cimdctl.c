/*
 * cimdctl — the admin CLI: a thin client of cimdd's admin socket.
 *
 * Each command becomes one request line; the daemon decides everything (who
 * the caller is, what is allowed, what is valid) and this program only prints
 * the answer: a table for people, the raw JSON with --json.
 *
 * Exit status: 0 done; 1 refused or failed by the daemon; 2 usage; 3 the
 * daemon cannot be reached.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "audit.h"
#include "fmt.h"
#include "lineio.h"

#define DEFAULT_SOCKET "/run/cimdd/admin.sock"
#define METADATA_MAX (64 * 1024)
#define RESPONSE_MAX (64 * 1024 * 1024)

static const char *sock_path;
static int json_out;

struct cmd {
	const char *group, *name;
	const char *usage;
	int (*fn)(int argc, char **argv);
};

static int usage_error(const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "cimdctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: cimdctl %s\n", usage);
	return 2;
}

/* Sends req (stolen) and reads one answer; 0 ok, 1 refused, 3 unreachable. */
static int call(json_t *req, json_t **ret_resp)
{
	struct lineio_buf in = {0};
	char *line = NULL;
	size_t n;
	json_t *resp;
	int fd = -1, rc = 3, r;

	if ((r = lineio_connect(sock_path, &fd)) == -ENAMETOOLONG) {
		fprintf(stderr, "cimdctl: socket path too long: %s\n", sock_path);
		goto out;
	}
	if (r < 0) {
		fprintf(stderr, "cimdctl: cannot reach cimdd at %s: %s\n", sock_path, strerror(-r));
		goto out;
	}
	if ((line = json_dumps(req, JSON_COMPACT)) == NULL)
		goto out;
	n = strlen(line);
	line[n] = '\n'; /* json_dumps leaves room for the NUL we overwrite */
	if ((r = lineio_send(fd, line, n + 1, -1)) < 0) {
		fprintf(stderr, "cimdctl: writing to %s: %s\n", sock_path, strerror(-r));
		goto out;
	}
	if ((r = lineio_read(fd, &in, RESPONSE_MAX, -1, &n)) < 0) {
		fprintf(stderr, r == -EMSGSIZE || r == -ENOMEM
				    ? "cimdctl: answer too large\n"
				    : "cimdctl: cimdd closed the connection without an answer\n");
		goto out;
	}
	if ((resp = json_loadb(in.buf, n, 0, NULL)) == NULL) {
		fprintf(stderr, "cimdctl: malformed answer from cimdd\n");
		goto out;
	}
	*ret_resp = resp;
	rc = json_is_true(json_object_get(resp, "ok")) ? 0 : 1;
out:
	if (fd >= 0)
		close(fd);
	free(line);
	lineio_buf_free(&in);
	json_decref(req);
	return rc;
}

/* Runs req; prints --json output or the daemon's refusal.  Returns the exit
 * status, and the answer for human output when there is some to print. */
static int run(json_t *req, json_t **ret_resp)
{
	json_t *resp = NULL;
	int rc = call(req, &resp);

	if (rc == 3)
		return 3;
	if (json_out) {
		json_dumpf(resp, stdout, JSON_INDENT(2));
		printf("\n");
	} else if (rc != 0) {
		fprintf(stderr, "cimdctl: %s: %s\n",
			json_string_value(json_object_get(resp, "error")),
			json_string_value(json_object_get(resp, "message")));
	}
	if (rc == 0 && !json_out && ret_resp != NULL) {
		*ret_resp = resp;
		return 0;
	}
	json_decref(resp);
	return rc == 0 && ret_resp != NULL ? -1 : rc; /* -1: done, nothing more to print */
}

/* Runs req whatever --json says; a refusal is said on stderr.  *ret_resp only
 * when the daemon said ok. */
static int call_said(json_t *req, json_t **ret_resp)
{
	json_t *resp = NULL;
	int rc = call(req, &resp);

	if (rc == 1)
		fprintf(stderr, "cimdctl: %s: %s\n",
			json_string_value(json_object_get(resp, "error")),
			json_string_value(json_object_get(resp, "message")));
	if (rc != 0) {
		json_decref(resp);
		return rc;
	}
	*ret_resp = resp;
	return 0;
}

static const char *str(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "-";
}

static const char *when(const json_t *o, const char *k, char *buf, size_t len)
{
	json_t *v = json_object_get(o, k);
	time_t t;
	struct tm tm;

	if (!json_is_integer(v) || json_integer_value(v) == 0)
		return "-";
	t = (time_t)json_integer_value(v);
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

/* A change to who may sign that the two-person rule made a proposal: says so
 * and returns 1; 0 when the daemon made it at once. */
static int proposed(const json_t *r)
{
	const json_t *id = json_object_get(r, "change");

	if (!json_is_integer(id))
		return 0;
	printf("submitted as change %lld; another operator must approve it (cimdctl change "
	       "approve %lld)\n",
	       (long long)json_integer_value(id), (long long)json_integer_value(id));
	return 1;
}

static json_t *read_metadata(const char *path, const char *usage, int *rc)
{
	json_error_t e;
	struct stat st;
	json_t *doc;
	FILE *f;

	if ((f = fopen(path, "re")) == NULL) {
		fprintf(stderr, "cimdctl: %s: %s\n", path, strerror(errno));
		*rc = 2;
		return NULL;
	}
	if (fstat(fileno(f), &st) < 0 || st.st_size > METADATA_MAX) {
		fprintf(stderr, "cimdctl: %s: larger than %d bytes\n", path, METADATA_MAX);
		fclose(f);
		*rc = 2;
		return NULL;
	}
	doc = json_loadf(f, JSON_REJECT_DUPLICATES, &e);
	fclose(f);
	if (doc == NULL) {
		*rc = usage_error(usage, "%s:%d: not JSON: %s", path, e.line, e.text);
		return NULL;
	}
	return doc;
}

/* A tiny option parser for "NAME [POS] --opt VALUE --flag": options may come
 * in any order after the command; unknown ones are usage errors. */
struct opt {
	const char *name; /* "--owner" */
	int has_value;
	const char *value;
	int set;
};

#define OPT(n, v)                                                                                  \
	{                                                                                          \
		.name = (n), .has_value = (v)                                                      \
	}
#define OPT_END                                                                                    \
	{                                                                                          \
		.name = NULL                                                                       \
	}

static int parse(int argc, char **argv, const char *usage, struct opt *opts, const char **pos,
		 int npos_min, int npos_max)
{
	int i, np = 0;
	struct opt *o;

	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			printf("usage: cimdctl %s\n", usage);
			exit(0);
		}
		if (strncmp(argv[i], "--", 2) == 0) {
			for (o = opts; o && o->name; o++)
				if (strcmp(o->name, argv[i]) == 0)
					break;
			if (o == NULL || o->name == NULL)
				return usage_error(usage, "unknown option %s", argv[i]);
			if (o->set)
				return usage_error(usage, "%s given twice", argv[i]);
			o->set = 1;
			if (o->has_value) {
				if (i + 1 >= argc)
					return usage_error(usage, "%s needs a value", argv[i]);
				o->value = argv[++i];
			}
			continue;
		}
		if (np == npos_max)
			return usage_error(usage, "unexpected argument '%s'", argv[i]);
		pos[np++] = argv[i];
	}
	if (np < npos_min)
		return usage_error(usage, "missing argument");
	return 0;
}

static long number(const char *s, const char *what, const char *usage, int *rc)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 0) {
		*rc = usage_error(usage, "%s '%s' is not a number", what, s);
		return -1;
	}
	return v;
}

/* ---- commands ---- */

static const char U_STATUS[] = "status";
static int cmd_status(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL, *be;
	size_t i;
	int rc;

	if ((rc = parse(argc, argv, U_STATUS, NULL, pos, 0, 0)) != 0)
		return rc;
	if ((rc = run(json_pack("{ss}", "op", "status"), &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("cimdd %s\nbase_url         %s\nnode             %s (state on %s)\noperator         "
	       "%s (%s)\n",
	       str(r, "version"), str(r, "base_url"), str(r, "node"), str(r, "store"),
	       str(r, "operator"), str(r, "roles"));
	printf("two-person rule  %s\n",
	       json_is_true(json_object_get(r, "two_person_rule")) ? "on" : "off");
	json_array_foreach(json_object_get(r, "backends"), i, be)
	{
		if (!json_is_true(json_object_get(be, "open")))
			printf("backend          %s: UNAVAILABLE (not open)\n", str(be, "name"));
		else if (!json_is_true(json_object_get(be, "answers")))
			printf("backend          %s: UNAVAILABLE (no answer)\n", str(be, "name"));
		else
			printf("backend          %s: open, %lld session%s\n", str(be, "name"),
			       (long long)json_integer_value(json_object_get(be, "sessions")),
			       json_integer_value(json_object_get(be, "sessions")) == 1 ? "" : "s");
	}
	printf("journal          %lld records, head %s\n",
	       (long long)json_integer_value(json_object_get(json_object_get(r, "journal"), "seq")),
	       str(json_object_get(r, "journal"), "head"));
	json_decref(r);
	return 0;
}

static const char U_CLIENT_ADD[] = "client add NAME --owner OWNER --metadata FILE [--backend "
				   "pkcs11|tpm2] [--alg ES256|ES384|PS256]";
static int cmd_client_add(int argc, char **argv)
{
	struct opt o[] = {OPT("--owner", 1), OPT("--metadata", 1),     OPT("--backend", 1),
			  OPT("--alg", 1),   OPT("--rotate-every", 1), OPT_END};
	const char *pos[1];
	long every;
	json_t *req, *doc, *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_CLIENT_ADD, o, pos, 1, 1)) != 0)
		return rc;
	if (!o[0].set || !o[1].set)
		return usage_error(U_CLIENT_ADD, "--owner and --metadata are required");
	if ((doc = read_metadata(o[1].value, U_CLIENT_ADD, &rc)) == NULL)
		return rc;
	req = json_pack("{sssssssO}", "op", "client.add", "name", pos[0], "owner", o[0].value,
			"metadata", doc);
	json_decref(doc);
	if (o[2].set)
		json_object_set_new(req, "backend", json_string(o[2].value));
	if (o[3].set)
		json_object_set_new(req, "alg", json_string(o[3].value));
	if (o[4].set) {
		if ((every = number(o[4].value, "--rotate-every", U_CLIENT_ADD, &rc)) < 0) {
			json_decref(req);
			return rc;
		}
		json_object_set_new(req, "rotate_every", json_integer(every));
	}
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("client %s added\n  client_id  %s\n  jwks_uri   %s\n  key        %s (active)\n"
	       "  document   version 1, submitted: approve with 'cimdctl doc approve %s 1'\n",
	       pos[0], str(r, "client_id"), str(r, "jwks_uri"), str(r, "kid"), pos[0]);
	json_decref(r);
	return 0;
}

static const char U_CLIENT_LIST[] = "client list [--after NAME] [--limit N] [--all]";

/* Prints one page's clients: a table row each, or with --json each client as
 * an element of the one "clients" array that --all prints. */
static void print_clients(const json_t *clients, size_t *count)
{
	json_t *c;
	char *line;
	size_t i;

	json_array_foreach(clients, i, c)
	{
		char v[24] = "-";

		if (json_out) {
			if ((line = json_dumps(c, JSON_COMPACT)) != NULL)
				printf("%s\n    %s", *count ? "," : "", line);
			free(line);
			(*count)++;
			continue;
		}
		if (json_is_integer(json_object_get(c, "version")))
			snprintf(v, sizeof(v), "%lld",
				 (long long)json_integer_value(json_object_get(c, "version")));
		printf("%-24s %-16s %-7s %-6s %-8s %s%s\n", str(c, "name"), str(c, "owner"),
		       str(c, "backend"), str(c, "alg"), v, str(c, "active_kid"),
		       json_is_true(json_object_get(c, "degraded")) ? "  DEGRADED" : "");
		(*count)++;
	}
}

static int cmd_client_list(int argc, char **argv)
{
	struct opt o[] = {OPT("--after", 1), OPT("--limit", 1), OPT("--all", 0), OPT_END};
	const char *pos[1];
	char *after = NULL;
	json_t *req, *r = NULL;
	size_t count = 0;
	long limit = -1;
	int rc;

	if ((rc = parse(argc, argv, U_CLIENT_LIST, o, pos, 0, 0)) != 0)
		return rc;
	if (o[1].set && (limit = number(o[1].value, "--limit", U_CLIENT_LIST, &rc)) < 0)
		return rc;
	if (!o[2].set) {
		/* One page, as the daemon answers it. */
		req = json_pack("{ss}", "op", "client.list");
		if (req != NULL && o[0].set)
			json_object_set_new(req, "after", json_string(o[0].value));
		if (req != NULL && limit >= 0)
			json_object_set_new(req, "limit", json_integer(limit));
		if ((rc = run(req, &r)) != 0)
			return rc < 0 ? 0 : rc;
		printf("%-24s %-16s %-7s %-6s %-8s %s\n", "NAME", "OWNER", "BACKEND", "ALG",
		       "VERSION", "ACTIVE KEY");
		print_clients(json_object_get(r, "clients"), &count);
		if (json_is_string(json_object_get(r, "next")))
			fprintf(stderr, "cimdctl: more follow: --after %s, or --all\n",
				str(r, "next"));
		json_decref(r);
		return 0;
	}
	/* --all: page after page, each printed as it comes, until no next. */
	if (o[0].set && (after = strdup(o[0].value)) == NULL)
		return 1;
	if (json_out)
		printf("{\n  \"ok\": true,\n  \"clients\": [");
	else
		printf("%-24s %-16s %-7s %-6s %-8s %s\n", "NAME", "OWNER", "BACKEND", "ALG",
		       "VERSION", "ACTIVE KEY");
	for (;;) {
		req = json_pack("{ss}", "op", "client.list");
		if (req != NULL && after != NULL)
			json_object_set_new(req, "after", json_string(after));
		if (req != NULL && limit >= 0)
			json_object_set_new(req, "limit", json_integer(limit));
		if ((rc = call_said(req, &r)) != 0)
			break;
		print_clients(json_object_get(r, "clients"), &count);
		fflush(stdout);
		free(after);
		after = NULL;
		if (json_is_string(json_object_get(r, "next")) &&
		    (after = strdup(str(r, "next"))) == NULL)
			rc = 1;
		json_decref(r);
		r = NULL;
		if (after == NULL)
			break;
	}
	if (json_out && rc == 0)
		printf("\n  ]\n}\n");
	else if (json_out)
		printf("\n");
	free(after);
	return rc;
}

static const char U_CLIENT_SHOW[] = "client show NAME";
static int cmd_client_show(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL, *c, *v, *d;
	char t1[32], t2[32];
	size_t i;
	int rc;

	if ((rc = parse(argc, argv, U_CLIENT_SHOW, NULL, pos, 1, 1)) != 0)
		return rc;
	if ((rc = run(json_pack("{ssss}", "op", "client.show", "name", pos[0]), &r)) != 0)
		return rc < 0 ? 0 : rc;
	c = json_object_get(r, "client");
	printf("client      %s%s\nowner       %s\nclient_id   %s\njwks_uri    %s\nbackend     %s\n"
	       "alg         %s\nactive key  %s\n",
	       str(c, "name"), json_is_true(json_object_get(c, "degraded")) ? " (DEGRADED)" : "",
	       str(c, "owner"), str(c, "client_id"), str(c, "jwks_uri"), str(c, "backend"),
	       str(c, "alg"), str(c, "active_kid"));
	printf("may sign    uids:");
	json_array_foreach(json_object_get(c, "uids"), i, v)
	    printf(" %lld", (long long)json_integer_value(v));
	printf("  gids:");
	json_array_foreach(json_object_get(c, "gids"), i, v)
	    printf(" %lld", (long long)json_integer_value(v));
	printf("\naudiences  ");
	json_array_foreach(json_object_get(c, "audiences"), i, v)
	    printf(" %s", json_string_value(v));
	printf("\nassertions  ttl %lld s, rate limit %s",
	       (long long)json_integer_value(json_object_get(c, "assertion_ttl")),
	       json_integer_value(json_object_get(c, "rate_limit")) > 0 ? "" : "none");
	if (json_integer_value(json_object_get(c, "rate_limit")) > 0)
		printf("%lld per second",
		       (long long)json_integer_value(json_object_get(c, "rate_limit")));
	printf("\ndocuments\n  %-7s %-10s %-12s %-21s %-12s %-21s %s\n", "VERSION", "STATE",
	       "SUBMITTER", "SUBMITTED", "APPROVER", "APPROVED", "SHA-256");
	json_array_foreach(json_object_get(c, "documents"), i, d)
	    printf("  %-7lld %-10s %-12s %-21s %-12s %-21s %s\n",
		   (long long)json_integer_value(json_object_get(d, "version")), str(d, "state"),
		   str(d, "submitter"), when(d, "submitted", t1, sizeof(t1)), str(d, "approver"),
		   when(d, "approved", t2, sizeof(t2)), str(d, "sha256"));
	json_decref(r);
	return 0;
}

static const char U_CLIENT_ALLOW[] = "client allow NAME --uid UID | --gid GID [--remove]";
static int cmd_client_allow(int argc, char **argv)
{
	struct opt o[] = {OPT("--uid", 1), OPT("--gid", 1), OPT("--remove", 0), OPT_END};
	const char *pos[1];
	json_t *req, *r = NULL;
	long id;
	int rc = 0;

	if ((rc = parse(argc, argv, U_CLIENT_ALLOW, o, pos, 1, 1)) != 0)
		return rc;
	if (o[0].set == o[1].set)
		return usage_error(U_CLIENT_ALLOW, "give exactly one of --uid and --gid");
	if ((id = number(o[0].set ? o[0].value : o[1].value, "id", U_CLIENT_ALLOW, &rc)) < 0)
		return rc;
	req = json_pack("{sssssIsb}", "op", "client.allow", "name", pos[0],
			o[0].set ? "uid" : "gid", (json_int_t)id, "remove", o[2].set);
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	if (!proposed(r))
		printf("%s %ld %s sign for %s\n", o[0].set ? "uid" : "gid", id,
		       o[2].set ? "may no longer" : "may", pos[0]);
	json_decref(r);
	return 0;
}

static const char U_CLIENT_AUD[] = "client audience NAME --add URL | --remove URL";
static int cmd_client_audience(int argc, char **argv)
{
	struct opt o[] = {OPT("--add", 1), OPT("--remove", 1), OPT_END};
	const char *pos[1];
	json_t *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_CLIENT_AUD, o, pos, 1, 1)) != 0)
		return rc;
	if (o[0].set == o[1].set)
		return usage_error(U_CLIENT_AUD, "give exactly one of --add and --remove");
	rc = run(json_pack("{ssssss}", "op", "client.audience", "name", pos[0],
			   o[0].set ? "add" : "remove", o[0].set ? o[0].value : o[1].value),
		 &r);
	if (rc != 0)
		return rc < 0 ? 0 : rc;
	if (!proposed(r))
		printf("%s %s the audiences of %s\n", o[0].set ? o[0].value : o[1].value,
		       o[0].set ? "added to" : "removed from", pos[0]);
	json_decref(r);
	return 0;
}

static const char U_CLIENT_POLICY[] = "client policy NAME [--ttl SECONDS] [--rate PER_SECOND]";
static int cmd_client_policy(int argc, char **argv)
{
	struct opt o[] = {OPT("--ttl", 1), OPT("--rate", 1), OPT_END};
	const char *pos[1];
	json_t *req, *r = NULL;
	long v;
	int rc = 0;

	if ((rc = parse(argc, argv, U_CLIENT_POLICY, o, pos, 1, 1)) != 0)
		return rc;
	if (!o[0].set && !o[1].set)
		return usage_error(U_CLIENT_POLICY, "give --ttl, --rate or both");
	req = json_pack("{ssss}", "op", "client.policy", "name", pos[0]);
	if (o[0].set) {
		if ((v = number(o[0].value, "ttl", U_CLIENT_POLICY, &rc)) < 0)
			goto fail;
		json_object_set_new(req, "ttl", json_integer(v));
	}
	if (o[1].set) {
		if ((v = number(o[1].value, "rate", U_CLIENT_POLICY, &rc)) < 0)
			goto fail;
		json_object_set_new(req, "rate", json_integer(v));
	}
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	if (!proposed(r))
		printf("policy of %s changed\n", pos[0]);
	json_decref(r);
	return 0;
fail:
	json_decref(req);
	return rc;
}

/* ---- changes pending under the two-person rule ---- */

static const char U_CHANGE_LIST[] = "change list [NAME]";
static int cmd_change_list(int argc, char **argv)
{
	const char *pos[1] = {NULL};
	json_t *req, *r = NULL, *c;
	char t[32], *fields;
	size_t i;
	int rc;

	if ((rc = parse(argc, argv, U_CHANGE_LIST, NULL, pos, 0, 1)) != 0)
		return rc;
	req = json_pack("{ss}", "op", "change.list");
	if (pos[0] != NULL)
		json_object_set_new(req, "name", json_string(pos[0]));
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("%-6s %-20s %-24s %-16s %-20s %s\n", "ID", "CLIENT", "OPERATION", "SUBMITTER",
	       "SUBMITTED", "FIELDS");
	json_array_foreach(json_object_get(r, "changes"), i, c)
	{
		fields = json_dumps(json_object_get(c, "fields"), JSON_COMPACT);
		printf("%-6lld %-20s %-24s %-16s %-20s %s\n",
		       (long long)json_integer_value(json_object_get(c, "id")), str(c, "client"),
		       str(c, "op"), str(c, "submitter"), when(c, "submitted", t, sizeof(t)),
		       fields ? fields : "-");
		free(fields);
	}
	json_decref(r);
	return 0;
}

static const char U_CHANGE_APPROVE[] = "change approve ID";
static int cmd_change_approve(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL;
	long id;
	int rc = 0;

	if ((rc = parse(argc, argv, U_CHANGE_APPROVE, NULL, pos, 1, 1)) != 0)
		return rc;
	if ((id = number(pos[0], "change id", U_CHANGE_APPROVE, &rc)) < 0)
		return rc;
	if ((rc = run(json_pack("{sssI}", "op", "change.approve", "id", (json_int_t)id), &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("change %ld approved and made: %s of %s\n", id, str(r, "op"), str(r, "client"));
	json_decref(r);
	return 0;
}

static const char U_CHANGE_REJECT[] = "change reject ID --reason TEXT";
static int cmd_change_reject(int argc, char **argv)
{
	struct opt o[] = {OPT("--reason", 1), OPT_END};
	const char *pos[1];
	long id;
	int rc = 0;

	if ((rc = parse(argc, argv, U_CHANGE_REJECT, o, pos, 1, 1)) != 0)
		return rc;
	if (!o[0].set)
		return usage_error(U_CHANGE_REJECT, "--reason is required");
	if ((id = number(pos[0], "change id", U_CHANGE_REJECT, &rc)) < 0)
		return rc;
	if ((rc = run(json_pack("{sssIss}", "op", "change.reject", "id", (json_int_t)id, "reason",
				o[0].value),
		      NULL)) != 0)
		return rc < 0 ? 0 : rc;
	if (!json_out)
		printf("change %ld rejected; nothing was changed\n", id);
	return 0;
}

static const char U_DOC_SUBMIT[] = "doc submit NAME --metadata FILE";
static int cmd_doc_submit(int argc, char **argv)
{
	struct opt o[] = {OPT("--metadata", 1), OPT_END};
	const char *pos[1];
	json_t *doc, *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_DOC_SUBMIT, o, pos, 1, 1)) != 0)
		return rc;
	if (!o[0].set)
		return usage_error(U_DOC_SUBMIT, "--metadata is required");
	if ((doc = read_metadata(o[0].value, U_DOC_SUBMIT, &rc)) == NULL)
		return rc;
	rc = run(json_pack("{sssssO}", "op", "doc.submit", "name", pos[0], "metadata", doc), &r);
	json_decref(doc);
	if (rc != 0)
		return rc < 0 ? 0 : rc;
	printf("%s document version %lld submitted (sha256 %s); it awaits approval\n", pos[0],
	       (long long)json_integer_value(json_object_get(r, "version")), str(r, "sha256"));
	json_decref(r);
	return 0;
}

static const char U_DOC_APPROVE[] = "doc approve NAME VERSION";
static int cmd_doc_approve(int argc, char **argv)
{
	const char *pos[2];
	json_t *r = NULL;
	long v;
	int rc = 0;

	if ((rc = parse(argc, argv, U_DOC_APPROVE, NULL, pos, 2, 2)) != 0)
		return rc;
	if ((v = number(pos[1], "version", U_DOC_APPROVE, &rc)) < 0)
		return rc;
	if ((rc = run(json_pack("{sssssI}", "op", "doc.approve", "name", pos[0], "version",
				(json_int_t)v),
		      &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("%s document version %ld approved (sha256 %s)\n", pos[0], v, str(r, "sha256"));
	json_decref(r);
	return 0;
}

static const char U_DOC_SHOW[] =
    "doc show NAME [--version N]   (prints the document bytes exactly)";
static int cmd_doc_show(int argc, char **argv)
{
	struct opt o[] = {OPT("--version", 1), OPT_END};
	const char *pos[1], *bytes;
	json_t *req, *r = NULL;
	long v;
	int rc = 0;

	if ((rc = parse(argc, argv, U_DOC_SHOW, o, pos, 1, 1)) != 0)
		return rc;
	req = json_pack("{ssss}", "op", "doc.show", "name", pos[0]);
	if (o[0].set) {
		if ((v = number(o[0].value, "version", U_DOC_SHOW, &rc)) < 0) {
			json_decref(req);
			return rc;
		}
		json_object_set_new(req, "version", json_integer(v));
	}
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	bytes = json_string_value(json_object_get(json_object_get(r, "document"), "bytes"));
	if (bytes != NULL)
		fwrite(bytes, 1,
		       json_string_length(json_object_get(json_object_get(r, "document"), "bytes")),
		       stdout);
	json_decref(r);
	return 0;
}

static const char U_KEY_LIST[] = "key list NAME";
static int cmd_key_list(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL, *k;
	char t1[32], t2[32];
	size_t i;
	int rc;

	if ((rc = parse(argc, argv, U_KEY_LIST, NULL, pos, 1, 1)) != 0)
		return rc;
	if ((rc = run(json_pack("{ssss}", "op", "key.list", "name", pos[0]), &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("%-43s %-9s %-6s %-7s %-12s %-21s %s\n", "KID", "STATE", "ALG", "BACKEND", "NODE",
	       "CREATED", "ACTIVATED");
	json_array_foreach(json_object_get(r, "keys"), i, k)
	{
		printf("%-43s %-9s %-6s %-7s %-12s %-21s %s", str(k, "kid"), str(k, "state"),
		       str(k, "alg"), str(k, "backend"), str(k, "node"),
		       when(k, "created", t1, sizeof(t1)), when(k, "activated", t2, sizeof(t2)));
		if (json_object_get(k, "revoke_reason"))
			printf("  revoked: %s", str(k, "revoke_reason"));
		printf("\n");
	}
	json_decref(r);
	return 0;
}

static const char U_KEY_ROTATE[] = "key rotate NAME";
static int cmd_key_rotate(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL;
	char t[32];
	int rc;

	if ((rc = parse(argc, argv, U_KEY_ROTATE, NULL, pos, 1, 1)) != 0)
		return rc;
	if ((rc = run(json_pack("{ssss}", "op", "key.rotate", "name", pos[0]), &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("next key %s created for %s; it may be activated from %s\n", str(r, "kid"), pos[0],
	       when(r, "activate_after", t, sizeof(t)));
	json_decref(r);
	return 0;
}

static const char U_KEY_ACTIVATE[] = "key activate NAME [KID] [--force]";
static int cmd_key_activate(int argc, char **argv)
{
	struct opt o[] = {OPT("--force", 0), OPT_END};
	const char *pos[2] = {NULL, NULL};
	json_t *req, *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_KEY_ACTIVATE, o, pos, 1, 2)) != 0)
		return rc;
	req = json_pack("{sssssb}", "op", "key.activate", "name", pos[0], "force", o[0].set);
	if (pos[1] != NULL)
		json_object_set_new(req, "kid", json_string(pos[1]));
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("key %s is now the active key of %s%s\n", str(r, "kid"), pos[0],
	       json_is_true(json_object_get(r, "forced"))
		   ? " (forced before jwks_max_age: verifiers with a cached JWKS may reject "
		     "it until they refetch)"
		   : "");
	json_decref(r);
	return 0;
}

static const char U_KEY_REVOKE[] = "key revoke NAME KID --reason TEXT [--replace]";
static int cmd_key_revoke(int argc, char **argv)
{
	struct opt o[] = {OPT("--reason", 1), OPT("--replace", 0), OPT_END};
	const char *pos[2];
	json_t *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_KEY_REVOKE, o, pos, 2, 2)) != 0)
		return rc;
	if (!o[0].set)
		return usage_error(U_KEY_REVOKE, "--reason is required");
	if ((rc = run(json_pack("{sssssssssb}", "op", "key.revoke", "name", pos[0], "kid", pos[1],
				"reason", o[0].value, "replace", o[1].set),
		      &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("key %s of %s revoked\n", pos[1], pos[0]);
	if (*str(r, "replacement") != '\0' && strcmp(str(r, "replacement"), "-") != 0)
		printf("replacement key %s is active\n", str(r, "replacement"));
	if (!json_is_true(json_object_get(r, "client_has_active_key")))
		printf("WARNING: %s has no active key now and cannot sign: rotate and activate a "
		       "new key (cimdctl key rotate %s; cimdctl key activate %s --force)\n",
		       pos[0], pos[0], pos[0]);
	if (json_object_get(r, "message"))
		printf("note: %s\n", str(r, "message"));
	json_decref(r);
	return 0;
}

static const char U_NODE_LIST[] = "node list";
static int cmd_node_list(int argc, char **argv)
{
	json_t *r = NULL, *n;
	char t1[32], t2[32];
	size_t i;
	int rc;

	if ((rc = parse(argc, argv, U_NODE_LIST, NULL, NULL, 0, 0)) != 0)
		return rc;
	if ((rc = run(json_pack("{ss}", "op", "node.list"), &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("%-24s %-14s %-21s %-21s %5s %s\n", "NODE", "HARDWARE", "JOINED", "HEARTBEAT",
	       "KEYS", "STATE");
	json_array_foreach(json_object_get(r, "nodes"), i, n)
	{
		printf("%-24s %-14s %-21s %-21s %5lld %s%s", str(n, "name"), str(n, "hardware"),
		       when(n, "joined", t1, sizeof(t1)), when(n, "heartbeat", t2, sizeof(t2)),
		       (long long)json_integer_value(json_object_get(n, "keys")),
		       json_object_get(n, "revoked") ? "revoked" : "live",
		       json_is_true(json_object_get(n, "this")) ? " (this node)" : "");
		if (json_object_get(n, "revoke_reason"))
			printf(": %s", str(n, "revoke_reason"));
		printf("\n");
	}
	json_decref(r);
	return 0;
}

static const char U_NODE_REVOKE[] = "node revoke NAME --reason TEXT";
static int cmd_node_revoke(int argc, char **argv)
{
	struct opt o[] = {OPT("--reason", 1), OPT_END};
	const char *pos[1];
	json_t *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_NODE_REVOKE, o, pos, 1, 1)) != 0)
		return rc;
	if (!o[0].set)
		return usage_error(U_NODE_REVOKE, "--reason is required");
	if ((rc = run(
		 json_pack("{ssssss}", "op", "node.revoke", "name", pos[0], "reason", o[0].value),
		 &r)) != 0)
		return rc < 0 ? 0 : rc;
	printf("node %s revoked: %lld keys revoked; it stops at its next heartbeat and may not "
	       "start again under that name\n",
	       pos[0], (long long)json_integer_value(json_object_get(r, "keys_revoked")));
	json_decref(r);
	return 0;
}

static const char U_JOURNAL_SHOW[] = "journal show [--since SEQ]";
static int cmd_journal_show(int argc, char **argv)
{
	struct opt o[] = {OPT("--since", 1), OPT_END};
	const char *pos[1];
	json_t *req, *r = NULL, *rec, *copy;
	char t[32], *rest;
	size_t i;
	long since;
	int rc = 0;

	if ((rc = parse(argc, argv, U_JOURNAL_SHOW, o, pos, 0, 0)) != 0)
		return rc;
	req = json_pack("{ss}", "op", "journal.show");
	if (o[0].set) {
		if ((since = number(o[0].value, "--since", U_JOURNAL_SHOW, &rc)) < 0) {
			json_decref(req);
			return rc;
		}
		json_object_set_new(req, "since", json_integer(since));
	}
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	json_array_foreach(json_object_get(r, "records"), i, rec)
	{
		copy = json_copy(rec);
		json_object_del(copy, "seq");
		json_object_del(copy, "time");
		json_object_del(copy, "prev");
		json_object_del(copy, "kind");
		json_object_del(copy, "actor");
		rest = json_dumps(copy, JSON_COMPACT);
		printf("%6lld %s %-20s %-12s %s\n",
		       (long long)json_integer_value(json_object_get(rec, "seq")),
		       when(rec, "time", t, sizeof(t)), str(rec, "kind"), str(rec, "actor"),
		       rest ? rest : "");
		free(rest);
		json_decref(copy);
	}
	json_decref(r);
	return 0;
}

static const char U_JOURNAL_VERIFY[] = "journal verify";
static int cmd_journal_verify(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_JOURNAL_VERIFY, NULL, pos, 0, 0)) != 0)
		return rc;
	if (json_out) {
		/* The exit status says whether the chain holds, with --json too. */
		json_t *resp = NULL;
		if ((rc = call(json_pack("{ss}", "op", "journal.verify"), &resp)) == 3)
			return 3;
		json_dumpf(resp, stdout, JSON_INDENT(2));
		printf("\n");
		rc = rc == 0 && json_is_true(json_object_get(resp, "intact")) ? 0 : 1;
		json_decref(resp);
		return rc;
	}
	if ((rc = run(json_pack("{ss}", "op", "journal.verify"), &r)) != 0)
		return rc < 0 ? 0 : rc;
	if (json_is_true(json_object_get(r, "intact"))) {
		printf("journal intact: %lld records, hash chain verified\n",
		       (long long)json_integer_value(json_object_get(r, "records")));
		rc = 0;
	} else {
		printf("journal BROKEN: the first record that does not hold is %lld\n",
		       (long long)json_integer_value(json_object_get(r, "first_bad")));
		rc = 1;
	}
	json_decref(r);
	return rc;
}

/* ---- proofs (docs/audit.md) ---- */

/* A whole file, at most max bytes; NULL with a message on failure. */
static uint8_t *slurp(const char *path, size_t max, size_t *ret_len);

/* The trusted attestation keys of --trust, or NULL (with rc 2) on failure. */
static json_t *load_trust(const char *path, int *rc)
{
	uint8_t *bytes;
	size_t len = 0;
	json_t *t = NULL;

	if ((bytes = slurp(path, 1 << 20, &len)) != NULL &&
	    ((t = json_loadb((const char *)bytes, len, 0, NULL)) == NULL ||
	     !json_is_array(json_object_get(t, "keys")))) {
		fprintf(stderr, "cimdctl: %s is not a JWKS\n", path);
		json_decref(t);
		t = NULL;
	}
	free(bytes);
	if (t == NULL)
		*rc = 2;
	return t;
}

/* The members of an answer that make the proof, as a file would keep it. */
static json_t *proof_of(const json_t *resp, const char *const *members, size_t n)
{
	json_t *o = json_object();
	size_t i;

	for (i = 0; o != NULL && i < n; i++)
		if (json_object_get(resp, members[i]) != NULL)
			json_object_set(o, members[i], json_object_get(resp, members[i]));
	return o;
}

static const char U_JOURNAL_PROVE[] = "journal prove SEQ [--trust ATTESTATION_KEYS_JWKS]";
static int cmd_journal_prove(int argc, char **argv)
{
	static const char *const members[] = {"seq",	"leaf_index", "tree_size",
					      "record", "proof",      "checkpoint"};
	struct opt o[] = {OPT("--trust", 1), OPT_END};
	const char *pos[1];
	json_t *resp = NULL, *proof = NULL, *trust = NULL;
	char err[512];
	long seq;
	int rc;

	if ((rc = parse(argc, argv, U_JOURNAL_PROVE, o, pos, 1, 1)) != 0)
		return rc;
	if ((seq = number(pos[0], "SEQ", U_JOURNAL_PROVE, &rc)) < 0 || rc != 0)
		return rc ? rc : 2;
	if (o[0].set && (trust = load_trust(o[0].value, &rc)) == NULL)
		return rc;
	if ((rc = call_said(json_pack("{sssI}", "op", "journal.prove", "seq", (json_int_t)seq),
			    &resp)) != 0)
		goto out;
	/* The proof on stdout, to keep; the verdict of checking it here on stderr. */
	proof = proof_of(resp, members, sizeof(members) / sizeof(members[0]));
	json_dumpf(proof, stdout, JSON_INDENT(2));
	printf("\n");
	if (audit_check_inclusion(proof, trust, err, sizeof(err)) < 0) {
		fprintf(stderr, "cimdctl: NOT verified: %s\n", err);
		rc = 1;
		goto out;
	}
	fprintf(stderr, "verified: record %ld is in the journal's tree of %lld records%s\n", seq,
		(long long)json_integer_value(json_object_get(proof, "tree_size")),
		trust ? ", whose checkpoint a trusted attestation key signed"
		      : " (the checkpoint's signature was not checked: give --trust)");
out:
	json_decref(resp);
	json_decref(proof);
	json_decref(trust);
	return rc;
}

static const char U_JOURNAL_CONSISTENCY[] =
    "journal consistency OLD_CHECKPOINT [--trust ATTESTATION_KEYS_JWKS]";
static int cmd_journal_consistency(int argc, char **argv)
{
	static const char *const members[] = {"old_size", "tree_size", "proof", "checkpoint"};
	struct opt o[] = {OPT("--trust", 1), OPT_END};
	const char *pos[1];
	json_t *resp = NULL, *proof = NULL, *trust = NULL;
	struct checkpoint c;
	uint8_t *old = NULL;
	size_t old_len = 0;
	char err[512];
	int rc;

	if ((rc = parse(argc, argv, U_JOURNAL_CONSISTENCY, o, pos, 1, 1)) != 0)
		return rc;
	if (o[0].set && (trust = load_trust(o[0].value, &rc)) == NULL)
		return rc;
	if ((old = slurp(pos[0], NOTE_MAX, &old_len)) == NULL ||
	    checkpoint_parse((const char *)old, old_len, &c) < 0) {
		if (old != NULL)
			fprintf(stderr, "cimdctl: %s is not a checkpoint\n", pos[0]);
		rc = 2;
		goto out;
	}
	if ((rc = call_said(
		 json_pack("{sssI}", "op", "journal.consistency", "old_size", (json_int_t)c.size),
		 &resp)) != 0)
		goto out;
	proof = proof_of(resp, members, sizeof(members) / sizeof(members[0]));
	json_dumpf(proof, stdout, JSON_INDENT(2));
	printf("\n");
	if (audit_check_consistency((const char *)old, old_len, proof, trust, err, sizeof(err)) <
	    0) {
		fprintf(stderr, "cimdctl: NOT verified: %s\n", err);
		rc = 1;
		goto out;
	}
	fprintf(stderr,
		"verified: the journal of %llu records at %s is a prefix of the latest "
		"checkpoint's %lld%s\n",
		(unsigned long long)c.size, pos[0],
		(long long)json_integer_value(json_object_get(proof, "tree_size")),
		trust ? "; both checkpoints signed by trusted attestation keys"
		      : " (signatures not checked: give --trust)");
out:
	free(old);
	json_decref(resp);
	json_decref(proof);
	json_decref(trust);
	return rc;
}

/* ---- the audit bundle (docs/audit.md) ---- */

static int write_line(FILE *f, const json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);
	int ok = s != NULL && fputs(s, f) >= 0 && fputc('\n', f) != EOF;

	free(s);
	return ok ? 0 : -1;
}

static FILE *bundle_file(const char *dir, const char *name)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "cimdctl: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	return fdopen(fd, "w");
}

/* Every item of one audit.export kind; items after the journal's end (seq >
 * last) are left out, so that the bundle is one consistent cut. */
static int export_kind(const char *dir, const char *kind, const char *file, int64_t last,
		       json_t *keys_out, size_t *ret_n)
{
	json_t *resp = NULL, *items, *it, *next;
	json_int_t after = 0;
	FILE *f = NULL;
	size_t i, n = 0;
	int rc;

	if (file != NULL && (f = bundle_file(dir, file)) == NULL)
		return 1;
	for (;;) {
		if ((rc = call_said(
			 json_pack("{sssssI}", "op", "audit.export", "kind", kind, "after", after),
			 &resp)) != 0)
			goto out;
		items = json_object_get(resp, "items");
		json_array_foreach(items, i, it)
		{
			json_int_t seq = json_integer_value(json_object_get(it, "seq"));

			if (seq > last)
				continue;
			/* Only what audit verify checks against signed or journaled
			 * content (docs/audit.md): the rows' ids and times, and an
			 * attestation key's current state, are the database's own. */
			json_object_del(it, "id");
			json_object_del(it, "created");
			if (keys_out != NULL) {
				json_object_del(it, "state");
				json_array_append(keys_out, it);
			} else if (write_line(f, it) < 0) {
				fprintf(stderr, "cimdctl: %s/%s: %s\n", dir, file, strerror(errno));
				rc = 1;
				goto out;
			}
			n++;
		}
		next = json_object_get(resp, "next");
		if (!json_is_integer(next))
			break;
		after = json_integer_value(next);
		json_decref(resp);
		resp = NULL;
	}
	rc = 0;
	*ret_n = n;
out:
	json_decref(resp);
	if (f != NULL && fclose(f) != 0 && rc == 0) {
		fprintf(stderr, "cimdctl: %s/%s: %s\n", dir, file, strerror(errno));
		rc = 1;
	}
	return rc;
}

static const char U_AUDIT_EXPORT[] = "audit export DIR";
static int cmd_audit_export(int argc, char **argv)
{
	static const struct {
		const char *kind, *file;
	} kinds[] = {
	    {"checkpoints", "checkpoints.jsonl"},
	    {"publications", "publications.jsonl"},
	    {"attestations", "attestations.jsonl"},
	    {"revocations", "revocations.jsonl"},
	};
	const char *pos[1];
	json_t *resp = NULL, *recs, *v, *keys = NULL, *doc = NULL;
	json_int_t since = 1, last = 0, head;
	size_t i, n = 0, counts[4] = {0};
	FILE *f = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_AUDIT_EXPORT, NULL, pos, 1, 1)) != 0)
		return rc;
	if (mkdir(pos[0], 0700) < 0) {
		fprintf(stderr, "cimdctl: %s: %s (give a directory that does not exist yet)\n",
			pos[0], strerror(errno));
		return 1;
	}
	/* The journal first, up to its head now: it decides the cut (every
	 * request, this one's too, adds a record). */
	if ((rc = call_said(json_pack("{ss}", "op", "status"), &resp)) != 0)
		return rc;
	head = json_integer_value(json_object_get(json_object_get(resp, "journal"), "seq"));
	json_decref(resp);
	resp = NULL;
	if ((f = bundle_file(pos[0], "journal.jsonl")) == NULL)
		return 1;
	while (last < head) {
		if ((rc = call_said(
			 json_pack("{sssIsb}", "op", "journal.show", "since", since, "raw", 1),
			 &resp)) != 0)
			goto out;
		recs = json_object_get(resp, "records");
		if (json_array_size(recs) == 0)
			break;
		json_array_foreach(recs, i, v)
		{
			if (last == head)
				break;
			if (!json_is_string(v) ||
			    fwrite(json_string_value(v), 1, json_string_length(v), f) !=
				json_string_length(v) ||
			    fputc('\n', f) == EOF) {
				fprintf(stderr, "cimdctl: writing the journal failed\n");
				rc = 1;
				goto out;
			}
			last++;
		}
		since = last + 1;
		json_decref(resp);
		resp = NULL;
	}
	if (fclose(f) != 0) {
		f = NULL;
		fprintf(stderr, "cimdctl: %s/journal.jsonl: %s\n", pos[0], strerror(errno));
		rc = 1;
		goto out;
	}
	f = NULL;
	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if ((rc = export_kind(pos[0], kinds[i].kind, kinds[i].file, last, NULL,
				      &counts[i])) != 0)
			goto out;
	/* Every attestation key ever, so that old signatures still verify. */
	keys = json_array();
	if ((rc = export_kind(pos[0], "attest_keys", NULL, last, keys, &n)) != 0)
		goto out;
	doc = json_pack("{sO}", "keys", keys);
	if ((f = bundle_file(pos[0], "attestation-keys.json")) == NULL || write_line(f, doc) < 0 ||
	    fclose(f) != 0) {
		f = NULL;
		rc = 1;
		goto out;
	}
	f = NULL;
	printf("audit bundle in %s: %lld journal records, %zu checkpoints, %zu publications, %zu "
	       "attestations, %zu revocation records, %zu attestation keys\n"
	       "check it anywhere with: cimdctl audit verify %s\n",
	       pos[0], (long long)last, counts[0], counts[1], counts[2], counts[3], n, pos[0]);
	rc = 0;
out:
	if (f != NULL)
		fclose(f);
	json_decref(resp);
	json_decref(keys);
	json_decref(doc);
	return rc;
}

static const char U_AUDIT_VERIFY[] = "audit verify DIR --trust ATTESTATION_KEYS_JWKS "
				     "[--checkpoint SAVED_CHECKPOINT] [--strict]";
static void report_line(void *arg, int ok, const char *check, const char *detail);
static int cmd_audit_verify(int argc, char **argv)
{
	struct opt o[] = {OPT("--trust", 1), OPT("--checkpoint", 1), OPT("--strict", 0), OPT_END};
	const char *pos[1];
	uint8_t *saved = NULL;
	size_t saved_len = 0;
	json_t *trust;
	int rc;

	if ((rc = parse(argc, argv, U_AUDIT_VERIFY, o, pos, 1, 1)) != 0)
		return rc;
	/* The bundle's own keys prove nothing: anyone can make a bundle with
	 * keys of their own.  The keys the auditor pinned do. */
	if (!o[0].set)
		return usage_error(U_AUDIT_VERIFY,
				   "--trust is required: the attestation keys you pinned "
				   "(attestation-keys.json, obtained over a channel you trust)");
	if ((trust = load_trust(o[0].value, &rc)) == NULL)
		return rc;
	if (o[1].set && (saved = slurp(o[1].value, NOTE_MAX, &saved_len)) == NULL) {
		json_decref(trust);
		return 2;
	}
	/* Offline: nothing here talks to a daemon or the network. */
	rc = audit_verify_dir(pos[0], trust, (const char *)saved, saved_len, report_line, NULL);
	json_decref(trust);
	free(saved);
	/* Differences an operator accepted are journaled, so the bundle
	 * explains them; but they are not what the journal's own records made
	 * the tables, and --strict counts them as a failure. */
	if (rc == 1)
		printf("verified, with exceptions: table differences the operator accepted (see "
		       "the tables line above)%s\n",
		       o[2].set ? "; NOT verified with --strict" : "");
	else
		printf("%s\n", rc == 0 ? "verified: every check held"
				       : "NOT verified: see the FAIL line above");
	return rc == 0 || (rc == 1 && !o[2].set) ? 0 : 1;
}

/* ---- attestations ---- */

/* A whole file, at most max bytes; NULL with a message on failure. */
static uint8_t *slurp(const char *path, size_t max, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t n;

	if (f == NULL) {
		fprintf(stderr, "cimdctl: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if ((buf = malloc(max + 1)) != NULL) {
		n = fread(buf, 1, max + 1, f);
		if (ferror(f) || n > max) {
			fprintf(stderr, "cimdctl: %s: %s\n", path,
				n > max ? "too large" : strerror(errno));
			free(buf);
			buf = NULL;
		} else {
			buf[n] = '\0';
			*ret_len = n;
		}
	}
	fclose(f);
	return buf;
}

static const char U_ATTEST_SHOW[] = "attest show NAME";
static int cmd_attest_show(int argc, char **argv)
{
	const char *pos[1];
	json_t *r = NULL, *env, *st;
	const char *p;
	uint8_t *payload = NULL;
	size_t n = 0;
	int rc;

	if ((rc = parse(argc, argv, U_ATTEST_SHOW, NULL, pos, 1, 1)) != 0)
		return rc;
	if ((rc = run(json_pack("{ssss}", "op", "attest.show", "name", pos[0]), &r)) != 0)
		return rc < 0 ? 0 : rc;
	env = json_object_get(r, "envelope");
	p = json_string_value(json_object_get(env, "payload"));
	if (p == NULL || b64_decode(p, strlen(p), &payload, &n) < 0 ||
	    (st = json_loadb((const char *)payload, n, 0, NULL)) == NULL) {
		fprintf(stderr, "cimdctl: the attestation's payload is not a JSON statement\n");
		free(payload);
		json_decref(r);
		return 1;
	}
	printf("attestation of %s, journal record %lld, signed by %s\n", pos[0],
	       (long long)json_integer_value(json_object_get(r, "seq")),
	       json_string_value(json_object_get(
		   json_array_get(json_object_get(env, "signatures"), 0), "keyid")));
	json_dumpf(st, stdout, JSON_INDENT(2));
	printf("\n");
	json_decref(st);
	free(payload);
	json_decref(r);
	return 0;
}

static void report_line(void *arg, int ok, const char *check, const char *detail)
{
	(void)arg;
	printf("%s %-10s %s\n", ok ? "ok  " : "FAIL", check, detail);
}

static const char U_ATTEST_VERIFY[] =
    "attest verify FILE --trust ATTESTATION_KEYS_JWKS [--document CIMD_FILE] [--jwks JWKS_FILE]";
static int cmd_attest_verify(int argc, char **argv)
{
	struct opt o[] = {OPT("--trust", 1), OPT("--document", 1), OPT("--jwks", 1), OPT_END};
	uint8_t *env = NULL, *trust_bytes = NULL, *doc = NULL, *jwks = NULL;
	size_t env_len = 0, trust_len = 0, doc_len = 0, jwks_len = 0;
	const char *pos[1];
	json_t *trust = NULL;
	int rc, r;

	if ((rc = parse(argc, argv, U_ATTEST_VERIFY, o, pos, 1, 1)) != 0)
		return rc;
	if (!o[0].set)
		return usage_error(U_ATTEST_VERIFY, "--trust is required: the attestation keys "
						    "you trust (attestation-keys.json)");
	rc = 2;
	if ((env = slurp(pos[0], 1 << 20, &env_len)) == NULL ||
	    (trust_bytes = slurp(o[0].value, 1 << 20, &trust_len)) == NULL ||
	    (o[1].set && (doc = slurp(o[1].value, 1 << 20, &doc_len)) == NULL) ||
	    (o[2].set && (jwks = slurp(o[2].value, 1 << 20, &jwks_len)) == NULL))
		goto out;
	if ((trust = json_loadb((const char *)trust_bytes, trust_len, 0, NULL)) == NULL ||
	    !json_is_array(json_object_get(trust, "keys"))) {
		fprintf(stderr, "cimdctl: %s is not a JWKS\n", o[0].value);
		goto out;
	}
	/* Offline: nothing here talks to a daemon or the network. */
	r = attest_verify((const char *)env, env_len, trust, doc, doc_len, jwks, jwks_len,
			  report_line, NULL);
	printf("%s\n",
	       r == 0 ? "verified: every check held" : "NOT verified: see the FAIL lines above");
	if (!o[1].set || !o[2].set)
		printf("note: without --document and --jwks the subjects' digests were not "
		       "compared with any bytes\n");
	rc = r == 0 ? 0 : 1;
out:
	free(env);
	free(trust_bytes);
	free(doc);
	free(jwks);
	json_decref(trust);
	return rc;
}

static const char U_ATTEST_KEY_ROTATE[] = "attest-key rotate [--backend pkcs11|tpm2]";
static int cmd_attest_key_rotate(int argc, char **argv)
{
	struct opt o[] = {OPT("--backend", 1), OPT_END};
	const char *pos[1];
	json_t *req, *r = NULL;
	int rc;

	if ((rc = parse(argc, argv, U_ATTEST_KEY_ROTATE, o, pos, 0, 0)) != 0)
		return rc;
	req = json_pack("{ss}", "op", "attest_key.rotate");
	if (o[0].set)
		json_object_set_new(req, "backend", json_string(o[0].value));
	if ((rc = run(req, &r)) != 0)
		return rc < 0 ? 0 : rc;
	if (!json_out)
		printf("attestation key %s is now active on %s; every attestation will be "
		       "issued again with it, and the old key stays published until then\n",
		       json_string_value(json_object_get(r, "kid")),
		       json_string_value(json_object_get(r, "backend")));
	json_decref(r);
	return 0;
}

static const struct cmd cmds[] = {
    {"status", NULL, U_STATUS, cmd_status},
    {"client", "add", U_CLIENT_ADD, cmd_client_add},
    {"client", "list", U_CLIENT_LIST, cmd_client_list},
    {"client", "show", U_CLIENT_SHOW, cmd_client_show},
    {"client", "allow", U_CLIENT_ALLOW, cmd_client_allow},
    {"client", "audience", U_CLIENT_AUD, cmd_client_audience},
    {"client", "policy", U_CLIENT_POLICY, cmd_client_policy},
    {"change", "list", U_CHANGE_LIST, cmd_change_list},
    {"change", "approve", U_CHANGE_APPROVE, cmd_change_approve},
    {"change", "reject", U_CHANGE_REJECT, cmd_change_reject},
    {"doc", "submit", U_DOC_SUBMIT, cmd_doc_submit},
    {"doc", "approve", U_DOC_APPROVE, cmd_doc_approve},
    {"doc", "show", U_DOC_SHOW, cmd_doc_show},
    {"key", "list", U_KEY_LIST, cmd_key_list},
    {"key", "rotate", U_KEY_ROTATE, cmd_key_rotate},
    {"key", "activate", U_KEY_ACTIVATE, cmd_key_activate},
    {"key", "revoke", U_KEY_REVOKE, cmd_key_revoke},
    {"node", "list", U_NODE_LIST, cmd_node_list},
    {"node", "revoke", U_NODE_REVOKE, cmd_node_revoke},
    {"journal", "show", U_JOURNAL_SHOW, cmd_journal_show},
    {"journal", "verify", U_JOURNAL_VERIFY, cmd_journal_verify},
    {"journal", "prove", U_JOURNAL_PROVE, cmd_journal_prove},
    {"journal", "consistency", U_JOURNAL_CONSISTENCY, cmd_journal_consistency},
    {"audit", "export", U_AUDIT_EXPORT, cmd_audit_export},
    {"audit", "verify", U_AUDIT_VERIFY, cmd_audit_verify},
    {"attest", "show", U_ATTEST_SHOW, cmd_attest_show},
    {"attest", "verify", U_ATTEST_VERIFY, cmd_attest_verify},
    {"attest-key", "rotate", U_ATTEST_KEY_ROTATE, cmd_attest_key_rotate},
};

static void usage(FILE *f)
{
	size_t i;

	fprintf(f,
		"usage: cimdctl [-s SOCKET] [--json] COMMAND ...\n\n"
		"  -s, --socket PATH  the admin socket (default $CIMD_ADMIN_SOCKET or %s)\n"
		"      --json         print the daemon's answer as JSON\n"
		"  -h, --help         this text; COMMAND --help for one command\n\ncommands:\n",
		DEFAULT_SOCKET);
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  cimdctl %s\n", cmds[i].usage);
	fprintf(f, "\nexit status: 0 done, 1 refused or failed, 2 usage, 3 cimdd unreachable\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	size_t i;
	int c, sub;

	sock_path = getenv("CIMD_ADMIN_SOCKET") ? getenv("CIMD_ADMIN_SOCKET") : DEFAULT_SOCKET;
	/* "+": options end at the command; its own options follow it. */
	while ((c = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			sock_path = optarg;
			break;
		case 'j':
			json_out = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(cmds[i].group, argv[optind]) != 0)
			continue;
		if (cmds[i].name == NULL)
			return cmds[i].fn(argc - optind - 1, argv + optind + 1);
		sub = optind + 1;
		if (sub < argc && strcmp(cmds[i].name, argv[sub]) == 0)
			return cmds[i].fn(argc - sub - 1, argv + sub + 1);
	}
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].group, argv[optind]) == 0 && cmds[i].name != NULL)
			break;
	if (i < sizeof(cmds) / sizeof(cmds[0]) &&
	    (optind + 1 >= argc || strcmp(argv[optind + 1], "--help") == 0 ||
	     strcmp(argv[optind + 1], "-h") == 0)) {
		size_t j;
		FILE *f = optind + 1 >= argc ? stderr : stdout;
		for (j = 0; j < sizeof(cmds) / sizeof(cmds[0]); j++)
			if (strcmp(cmds[j].group, argv[optind]) == 0)
				fprintf(f, "usage: cimdctl %s\n", cmds[j].usage);
		return optind + 1 >= argc ? 2 : 0;
	}
	fprintf(stderr, "cimdctl: unknown command '%s%s%s'; see cimdctl --help\n", argv[optind],
		optind + 1 < argc ? " " : "", optind + 1 < argc ? argv[optind + 1] : "");
	return 2;
}
