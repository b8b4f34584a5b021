/*
 * config.c — the configuration file, cimdd.conf(5).
 *
 * One setting per line, `key = value`; `#` starts a comment line; blank lines
 * are ignored.  Scalars may appear once; `backend` and `operator` repeat.
 * Everything is checked here, at start and at reload, and the first problem is
 * reported as FILE:LINE: reason.  Nothing is half-applied: a file with any
 * error yields no configuration at all.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "service.h"

struct parse {
	struct cimd_config *cfg;
	const char *path;
	unsigned line;
	char *err;
	size_t errlen;
	unsigned seen; /* bit per scalar key, to refuse repeats */
};

static int perr(struct parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(struct parse *p, const char *fmt, ...)
{
	va_list ap;
	int n = 0;

	if (p->err == NULL)
		return -EINVAL;
	if (p->line > 0)
		n = snprintf(p->err, p->errlen, "%s:%u: ", p->path, p->line);
	else
		n = snprintf(p->err, p->errlen, "%s: ", p->path);
	if (n < 0 || (size_t)n >= p->errlen)
		return -EINVAL;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static const struct {
	const char *name;
	unsigned bit;
} roles[] = {
    {"submit", CIMD_ROLE_SUBMIT}, {"approve", CIMD_ROLE_APPROVE}, {"rotate", CIMD_ROLE_ROTATE},
    {"revoke", CIMD_ROLE_REVOKE}, {"read", CIMD_ROLE_READ},
};

int config_parse_roles(const char *s, unsigned *ret_roles)
{
	char buf[128], *tok, *save = NULL;
	unsigned bits = 0;
	size_t i;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	for (tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		for (i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
			if (strcmp(tok, roles[i].name) == 0)
				break;
		if (i == sizeof(roles) / sizeof(roles[0]))
			return -EINVAL;
		bits |= roles[i].bit;
	}
	if (bits == 0)
		return -EINVAL;
	*ret_roles = bits;
	return 0;
}

const char *config_roles_str(unsigned bits, char *buf, size_t len)
{
	size_t i, off = 0;

	buf[0] = '\0';
	for (i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
		if (bits & roles[i].bit) {
			int n =
			    snprintf(buf + off, len - off, "%s%s", off ? "," : "", roles[i].name);
			if (n < 0 || (size_t)n >= len - off)
				break;
			off += (size_t)n;
		}
	return buf;
}

static int set_str(struct parse *p, char **dst, const char *v)
{
	if (*v == '\0')
		return perr(p, "empty value");
	if ((*dst = strdup(v)) == NULL)
		return -ENOMEM;
	return 0;
}

static int set_duration(struct parse *p, const char *key, long *dst, const char *v, long min)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || n < min || n > CIMD_DURATION_MAX)
		return perr(p, "%s: '%s' is not a number of seconds from %ld to %d", key, v, min,
			    CIMD_DURATION_MAX);
	*dst = n;
	return 0;
}

static int set_bool(struct parse *p, const char *key, int *dst, const char *v)
{
	if (strcmp(v, "yes") == 0)
		*dst = 1;
	else if (strcmp(v, "no") == 0)
		*dst = 0;
	else
		return perr(p, "%s: '%s' is not yes or no", key, v);
	return 0;
}

static int set_mode(struct parse *p, const char *key, mode_t *dst, const char *v)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 8);
	/* Sockets: read+write bits only; never executable, never setuid. */
	if (errno != 0 || end == v || *end != '\0' || v[0] != '0' || n < 0 || (n & ~0666) != 0)
		return perr(p, "%s: '%s' is not an octal mode like 0600 or 0660", key, v);
	*dst = (mode_t)n;
	return 0;
}

/* https://host[:port] — no path, query, fragment or userinfo, no trailing slash:
 * client_ids are base_url + "/clients/" + NAME and must be unambiguous. */
static int check_base_url(struct parse *p, const char *v, int allow_http)
{
	const char *host;
	size_t i;

	if (strlen(v) > CIMD_URL_MAX - 80)
		return perr(p, "base_url: longer than %d characters", CIMD_URL_MAX - 80);
	if (strncmp(v, "https://", 8) == 0)
		host = v + 8;
	else if (allow_http && strncmp(v, "http://", 7) == 0)
		host = v + 7;
	else
		return perr(p, "base_url: '%s' must start with https://", v);
	if (*host == '\0')
		return perr(p, "base_url: no host");
	for (i = 0; host[i] != '\0'; i++)
		if (!(isalnum((unsigned char)host[i]) || strchr(".-:[]", host[i]) != NULL))
			return perr(p,
				    "base_url: '%s' must be scheme://host[:port], with no path, "
				    "query, fragment or user",
				    v);
	return 0;
}

static int parse_operator(struct parse *p, const char *v)
{
	struct cimd_config *c = p->cfg;
	struct cimd_operator op = {0};
	char buf[CIMD_CONF_LINE_MAX], *tok, *save = NULL, *end;
	int have_uid = 0;
	long uid;
	size_t i;

	if (c->n_operators == CIMD_OPERATORS_MAX)
		return perr(p, "operator: more than %d operators", CIMD_OPERATORS_MAX);
	snprintf(buf, sizeof(buf), "%s", v);
	/* operator = NAME uid=N roles=a,b */
	if ((tok = strtok_r(buf, " \t", &save)) == NULL || !cimd_valid_name(tok))
		return perr(p, "operator: expected 'NAME uid=N roles=ROLE,...' with NAME "
			       "[a-z0-9][a-z0-9-]{0,62}");
	snprintf(op.name, sizeof(op.name), "%s", tok);
	while ((tok = strtok_r(NULL, " \t", &save)) != NULL) {
		if (strncmp(tok, "uid=", 4) == 0) {
			errno = 0;
			uid = strtol(tok + 4, &end, 10);
			if (errno != 0 || end == tok + 4 || *end != '\0' || uid < 0 ||
			    uid > 0x7fffffff)
				return perr(p, "operator %s: '%s' is not a uid", op.name, tok + 4);
			op.uid = (uid_t)uid;
			have_uid = 1;
		} else if (strncmp(tok, "roles=", 6) == 0) {
			if (config_parse_roles(tok + 6, &op.roles) < 0)
				return perr(p,
					    "operator %s: roles '%s': each must be one of submit, "
					    "approve, rotate, revoke, read",
					    op.name, tok + 6);
		} else {
			return perr(p, "operator %s: unknown attribute '%s'", op.name, tok);
		}
	}
	if (!have_uid || op.roles == 0)
		return perr(p, "operator %s: needs uid= and roles=", op.name);
	for (i = 0; i < c->n_operators; i++) {
		if (strcmp(c->operators[i].name, op.name) == 0)
			return perr(p, "operator %s: defined twice", op.name);
		if (c->operators[i].uid == op.uid)
			return perr(p, "operator %s: uid %ld already belongs to operator %s",
				    op.name, (long)op.uid, c->operators[i].name);
	}
	c->operators[c->n_operators++] = op;
	return 0;
}

static int parse_backend(struct parse *p, const char *v)
{
	struct cimd_config *c = p->cfg;
	const char *colon = strchr(v, ':');
	size_t n = colon ? (size_t)(colon - v) : 0, i;

	if (c->n_backends == CIMD_BACKENDS_MAX)
		return perr(p, "backend: more than %d backends", CIMD_BACKENDS_MAX);
	if (colon == NULL ||
	    !((n == 6 && strncmp(v, "pkcs11", 6) == 0) || (n == 4 && strncmp(v, "tpm2", 4) == 0)))
		return perr(p, "backend: '%s' must start with pkcs11: or tpm2: (see cimdd.conf(5))",
			    v);
	for (i = 0; i < c->n_backends; i++)
		if (strncmp(c->backends[i].name, v, n) == 0 && c->backends[i].name[n] == '\0')
			return perr(p, "backend: a %.*s backend is already configured", (int)n, v);
	memcpy(c->backends[c->n_backends].name, v, n);
	c->backends[c->n_backends].name[n] = '\0';
	if ((c->backends[c->n_backends].conf = strdup(v)) == NULL)
		return -ENOMEM;
	c->n_backends++;
	return 0;
}

enum {
	K_STATE_DIR,
	K_BASE_URL,
	K_ADMIN_SOCKET,
	K_ADMIN_SOCKET_MODE,
	K_ADMIN_SOCKET_GROUP,
	K_SIGN_SOCKET,
	K_SIGN_SOCKET_MODE,
	K_SIGN_SOCKET_GROUP,
	K_LISTEN,
	K_TLS_CERT,
	K_TLS_KEY,
	K_EXPORT_DIR,
	K_ALLOW_HTTP,
	K_TWO_PERSON,
	K_DEFAULT_BACKEND,
	K_JWKS_MAX_AGE,
	K_CIMD_MAX_AGE,
	K_ASSERTION_DEFAULT_TTL,
	K_ASSERTION_MAX_TTL,
	K_ASSERTION_RATE_LIMIT,
	K_CLOCK_SKEW,
	K_DESTROY_DELAY,
	K_ROTATE_EVERY,
	K_CHECKPOINT_INTERVAL,
	K_STORE,
	K_CONNINFO,
	K_CONNINFO_FILE,
	K_NODE,
	K_BACKEND, /* repeatable from here on */
	K_OPERATOR,
};

static const char *const keys[] = {
    [K_STATE_DIR] = "state_dir",
    [K_BASE_URL] = "base_url",
    [K_ADMIN_SOCKET] = "admin_socket",
    [K_ADMIN_SOCKET_MODE] = "admin_socket_mode",
    [K_ADMIN_SOCKET_GROUP] = "admin_socket_group",
    [K_SIGN_SOCKET] = "sign_socket",
    [K_SIGN_SOCKET_MODE] = "sign_socket_mode",
    [K_SIGN_SOCKET_GROUP] = "sign_socket_group",
    [K_LISTEN] = "listen",
    [K_TLS_CERT] = "tls_cert",
    [K_TLS_KEY] = "tls_key",
    [K_EXPORT_DIR] = "export_dir",
    [K_ALLOW_HTTP] = "allow_http",
    [K_TWO_PERSON] = "two_person_rule",
    [K_DEFAULT_BACKEND] = "default_backend",
    [K_JWKS_MAX_AGE] = "jwks_max_age",
    [K_CIMD_MAX_AGE] = "cimd_max_age",
    [K_ASSERTION_DEFAULT_TTL] = "assertion_default_ttl",
    [K_ASSERTION_MAX_TTL] = "assertion_max_ttl",
    [K_ASSERTION_RATE_LIMIT] = "assertion_rate_limit",
    [K_CLOCK_SKEW] = "clock_skew",
    [K_DESTROY_DELAY] = "destroy_delay",
    [K_ROTATE_EVERY] = "rotate_every",
    [K_CHECKPOINT_INTERVAL] = "checkpoint_interval",
    [K_STORE] = "store",
    [K_CONNINFO] = "conninfo",
    [K_CONNINFO_FILE] = "conninfo_file",
    [K_NODE] = "node",
    [K_BACKEND] = "backend",
    [K_OPERATOR] = "operator",
};

static int set_group(struct parse *p, const char *key, long *ret_gid, const char *v)
{
	struct group *g = getgrnam(v);

	if (g == NULL)
		return perr(p, "%s: no group named '%s'", key, v);
	*ret_gid = (long)g->gr_gid;
	return 0;
}

/* A whole number 0..max. */
static int set_count(struct parse *p, const char *key, long *ret, const char *v, long max)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || n < 0 || n > max)
		return perr(p, "%s: '%s' is not a number from 0 to %ld", key, v, max);
	*ret = n;
	return 0;
}

static int parse_setting(struct parse *p, int k, const char *v)
{
	struct cimd_config *c = p->cfg;

	switch (k) {
	case K_STATE_DIR:
		if (v[0] != '/')
			return perr(p, "state_dir: '%s' is not an absolute path", v);
		return set_str(p, &c->state_dir, v);
	case K_BASE_URL:
		return set_str(p, &c->base_url, v); /* checked once allow_http is known */
	case K_ADMIN_SOCKET:
		return set_str(p, &c->admin_socket, v);
	case K_ADMIN_SOCKET_MODE:
		return set_mode(p, keys[k], &c->admin_socket_mode, v);
	case K_ADMIN_SOCKET_GROUP:
		return set_group(p, keys[k], &c->admin_socket_gid, v);
	case K_SIGN_SOCKET_GROUP:
		return set_group(p, keys[k], &c->sign_socket_gid, v);
	case K_SIGN_SOCKET:
		return set_str(p, &c->sign_socket, v);
	case K_SIGN_SOCKET_MODE:
		return set_mode(p, keys[k], &c->sign_socket_mode, v);
	case K_LISTEN:
		return set_str(p, &c->listen, v);
	case K_TLS_CERT:
		return set_str(p, &c->tls_cert, v);
	case K_TLS_KEY:
		return set_str(p, &c->tls_key, v);
	case K_STORE:
		if (strcmp(v, "sqlite") != 0 && strcmp(v, "postgresql") != 0)
			return perr(p, "store: '%s' is neither sqlite nor postgresql", v);
		return set_str(p, &c->store, v);
	case K_CONNINFO:
		return set_str(p, &c->conninfo, v);
	case K_CONNINFO_FILE:
		if (v[0] != '/')
			return perr(p, "conninfo_file: '%s' is not an absolute path", v);
		return set_str(p, &c->conninfo_file, v);
	case K_NODE:
		if (!cimd_valid_name(v))
			return perr(p, "node: '%s' is not a name [a-z0-9][a-z0-9-]{0,62}", v);
		snprintf(c->node, sizeof(c->node), "%s", v);
		return 0;
	case K_EXPORT_DIR:
		if (v[0] != '/')
			return perr(p, "export_dir: '%s' is not an absolute path", v);
		return set_str(p, &c->export_dir, v);
	case K_ALLOW_HTTP:
		return set_bool(p, keys[k], &c->allow_http, v);
	case K_TWO_PERSON:
		return set_bool(p, keys[k], &c->two_person_rule, v);
	case K_DEFAULT_BACKEND:
		if (strcmp(v, "pkcs11") != 0 && strcmp(v, "tpm2") != 0)
			return perr(p, "default_backend: '%s' is not pkcs11 or tpm2", v);
		snprintf(c->default_backend, sizeof(c->default_backend), "%s", v);
		return 0;
	case K_JWKS_MAX_AGE:
		return set_duration(p, keys[k], &c->jwks_max_age, v, 1);
	case K_CIMD_MAX_AGE:
		return set_duration(p, keys[k], &c->cimd_max_age, v, 1);
	case K_ASSERTION_DEFAULT_TTL:
		return set_duration(p, keys[k], &c->assertion_default_ttl, v, 1);
	case K_ASSERTION_MAX_TTL:
		return set_duration(p, keys[k], &c->assertion_max_ttl, v, 1);
	case K_ASSERTION_RATE_LIMIT:
		return set_count(p, keys[k], &c->assertion_rate_limit, v, CIMD_RATE_MAX);
	case K_CLOCK_SKEW:
		return set_duration(p, keys[k], &c->clock_skew, v, 0);
	case K_DESTROY_DELAY:
		return set_duration(p, keys[k], &c->destroy_delay, v, 0);
	case K_CHECKPOINT_INTERVAL:
		return set_duration(p, keys[k], &c->checkpoint_interval, v, 1);
	case K_ROTATE_EVERY:
		return set_duration(p, keys[k], &c->rotate_every, v, 0);
	case K_BACKEND:
		return parse_backend(p, v);
	case K_OPERATOR:
		return parse_operator(p, v);
	}
	return perr(p, "internal: key %d", k);
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static int parse_line(struct parse *p, char *line)
{
	char *eq, *key, *val;
	size_t i;

	line = trim(line);
	if (*line == '\0' || *line == '#')
		return 0;
	if ((eq = strchr(line, '=')) == NULL)
		return perr(p, "expected 'key = value'");
	*eq = '\0';
	key = trim(line);
	val = trim(eq + 1);
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (strcmp(key, keys[i]) == 0)
			break;
	if (i == sizeof(keys) / sizeof(keys[0]))
		return perr(p, "unknown key '%s'", key);
	if (i < K_BACKEND) {
		if (p->seen & (1u << i))
			return perr(p, "'%s' is set twice", key);
		p->seen |= 1u << i;
	}
	return parse_setting(p, (int)i, val);
}

/* Checks that need the whole file. */
static int finish(struct parse *p)
{
	struct cimd_config *c = p->cfg;
	char buf[1024];
	int r, n;

	p->line = 0;
	if (c->state_dir == NULL)
		return perr(p, "state_dir is required");
	if (c->base_url == NULL)
		return perr(p, "base_url is required");
	if ((r = check_base_url(p, c->base_url, c->allow_http)) < 0)
		return r;
	if (c->n_backends == 0)
		return perr(p,
			    "at least one backend is required (backend = pkcs11:... or tpm2:...)");
	if (c->default_backend[0] == '\0')
		snprintf(c->default_backend, sizeof(c->default_backend), "%s", c->backends[0].name);
	else if (config_backend(c, c->default_backend) == NULL)
		return perr(p, "default_backend %s is not configured", c->default_backend);
	if (c->store == NULL && (c->store = strdup("sqlite")) == NULL)
		return -ENOMEM;
	if (strcmp(c->store, "postgresql") == 0 &&
	    (c->conninfo == NULL) == (c->conninfo_file == NULL))
		return perr(p, "store = postgresql needs one of conninfo and conninfo_file");
	if (strcmp(c->store, "sqlite") == 0 && (c->conninfo != NULL || c->conninfo_file != NULL))
		return perr(p, "conninfo and conninfo_file are for store = postgresql");
	if (c->listen != NULL && !c->allow_http && (c->tls_cert == NULL || c->tls_key == NULL))
		return perr(p, "listen needs tls_cert and tls_key (or allow_http = yes behind a "
			       "TLS-terminating proxy)");
	if (c->listen != NULL && (strchr(c->listen, ':') == NULL))
		return perr(p, "listen: '%s' is not HOST:PORT", c->listen);
	if (c->assertion_default_ttl > c->assertion_max_ttl)
		return perr(p, "assertion_default_ttl (%ld) exceeds assertion_max_ttl (%ld)",
			    c->assertion_default_ttl, c->assertion_max_ttl);
	/* A state_dir near the line cap must not leave a cut-off socket path. */
	if (c->admin_socket == NULL) {
		n = snprintf(buf, sizeof(buf), "%s/admin.sock", c->state_dir);
		if (n < 0 || (size_t)n >= sizeof(buf))
			return perr(p, "state_dir: too long to hold admin.sock");
		if ((c->admin_socket = strdup(buf)) == NULL)
			return -ENOMEM;
	}
	if (c->sign_socket == NULL) {
		n = snprintf(buf, sizeof(buf), "%s/sign.sock", c->state_dir);
		if (n < 0 || (size_t)n >= sizeof(buf))
			return perr(p, "state_dir: too long to hold sign.sock");
		if ((c->sign_socket = strdup(buf)) == NULL)
			return -ENOMEM;
	}
	return 0;
}

static void defaults(struct cimd_config *c)
{
	c->admin_socket_mode = 0600;
	c->admin_socket_gid = -1;
	c->sign_socket_mode = 0666;
	c->sign_socket_gid = -1;
	c->two_person_rule = 1;
	c->jwks_max_age = 300;
	c->cimd_max_age = 300;
	c->assertion_default_ttl = 60;
	c->assertion_max_ttl = 300;
	c->clock_skew = 60;
	c->destroy_delay = 86400;
	c->rotate_every = 0;
	c->checkpoint_interval = 60;
	snprintf(c->node, sizeof(c->node), "%s", CIMD_NODE_DEFAULT);
}

int config_parse(const char *label, const char *text, size_t len, struct cimd_config **ret_cfg,
		 char *errbuf, size_t errlen)
{
	struct parse p = {.path = label, .err = errbuf, .errlen = errlen};
	char *buf = NULL, *line, *next;
	int r;

	if (errbuf != NULL && errlen > 0)
		errbuf[0] = '\0';
	if (label == NULL || (text == NULL && len > 0) || ret_cfg == NULL)
		return -EINVAL;
	if ((p.cfg = calloc(1, sizeof(*p.cfg))) == NULL)
		return -ENOMEM;
	defaults(p.cfg);
	if ((p.cfg->path = strdup(label)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (len > CIMD_CONF_MAX) {
		r = perr(&p, "not a regular file of at most %d bytes", CIMD_CONF_MAX);
		goto out;
	}
	if ((buf = malloc(len + 1)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (len > 0)
		memcpy(buf, text, len);
	buf[len] = '\0';
	if (strlen(buf) != len) {
		r = perr(&p, "contains a NUL byte");
		goto out;
	}
	for (line = buf; line != NULL; line = next) {
		p.line++;
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (strlen(line) >= CIMD_CONF_LINE_MAX) {
			r = perr(&p, "line longer than %d characters", CIMD_CONF_LINE_MAX - 1);
			goto out;
		}
		if ((r = parse_line(&p, line)) < 0)
			goto out;
	}
	if ((r = finish(&p)) < 0)
		goto out;
	*ret_cfg = p.cfg;
	p.cfg = NULL;
	r = 0;
out:
	free(buf);
	config_free(&p.cfg);
	return r;
}

/*
 * The files and directories the configuration names, held to the standard of
 * the configuration file itself and the PIN file (key_store.c): tls_key, a
 * private key, is a regular file of root or this daemon's user that others
 * cannot read and nobody else can write (its group may read it only when that
 * group is the daemon's own: root:cimdd 0640, docs/operations.md); state_dir,
 * which holds the database and the lock, is this daemon's user's and writable
 * by nobody else.  A state_dir that does not exist yet is made 0700 at start.
 */
static int check_paths(struct parse *p)
{
	const struct cimd_config *c = p->cfg;
	struct stat st;

	p->line = 0;
	if (c->tls_key != NULL) {
		if (stat(c->tls_key, &st) < 0)
			return perr(p, "tls_key %s: %s", c->tls_key, strerror(errno));
		if (!S_ISREG(st.st_mode))
			return perr(p, "tls_key %s: not a regular file", c->tls_key);
		if (st.st_uid != 0 && st.st_uid != geteuid())
			return perr(p,
				    "tls_key %s: owned by uid %ld, neither root nor this "
				    "daemon's user",
				    c->tls_key, (long)st.st_uid);
		if ((st.st_mode & 037) != 0 || ((st.st_mode & 040) && st.st_gid != getegid()))
			return perr(p,
				    "tls_key %s: readable or writable by others (mode %04o): "
				    "0600, or 0640 to the daemon's own group",
				    c->tls_key, (unsigned)(st.st_mode & 07777));
	}
	/* Like the PIN file (key_store.c): it may carry the database's password. */
	if (c->conninfo_file != NULL) {
		if (stat(c->conninfo_file, &st) < 0)
			return perr(p, "conninfo_file %s: %s", c->conninfo_file, strerror(errno));
		if (!S_ISREG(st.st_mode))
			return perr(p, "conninfo_file %s: not a regular file", c->conninfo_file);
		if (st.st_uid != geteuid() || (st.st_mode & 077) != 0)
			return perr(
			    p,
			    "conninfo_file %s: must be this daemon's user's and 0600 (owner "
			    "uid %ld, mode %04o)",
			    c->conninfo_file, (long)st.st_uid, (unsigned)(st.st_mode & 07777));
	}
	if (stat(c->state_dir, &st) < 0)
		return errno == ENOENT ? 0
				       : perr(p, "state_dir %s: %s", c->state_dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return perr(p, "state_dir %s: not a directory", c->state_dir);
	if (st.st_uid != geteuid())
		return perr(p, "state_dir %s: owned by uid %ld, not this daemon's user (%ld)",
			    c->state_dir, (long)st.st_uid, (long)geteuid());
	if (st.st_mode & 022)
		return perr(p, "state_dir %s: writable by group or others (mode %04o)",
			    c->state_dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

int config_load(const char *path, struct cimd_config **ret_cfg, char *errbuf, size_t errlen)
{
	struct parse p = {.path = path, .err = errbuf, .errlen = errlen};
	struct stat st;
	char *buf = NULL;
	ssize_t n;
	int fd = -1, r;

	if (errbuf != NULL && errlen > 0)
		errbuf[0] = '\0';
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) < 0) {
		r = perr(&p, "%s", strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > CIMD_CONF_MAX) {
		r = perr(&p, "not a regular file of at most %d bytes", CIMD_CONF_MAX);
		goto out;
	}
	/* The file names operators and key stores: others may not rewrite it. */
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		r = perr(&p, "owned by uid %ld, neither root nor this daemon's user",
			 (long)st.st_uid);
		goto out;
	}
	if (st.st_mode & 022) {
		r = perr(&p, "writable by group or others (mode %04o)",
			 (unsigned)(st.st_mode & 07777));
		goto out;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((n = read(fd, buf, (size_t)st.st_size)) != st.st_size) {
		r = perr(&p, "short read");
		goto out;
	}
	if ((r = config_parse(path, buf, (size_t)n, &p.cfg, errbuf, errlen)) < 0)
		goto out;
	if ((r = check_paths(&p)) < 0)
		goto out;
	*ret_cfg = p.cfg;
	p.cfg = NULL;
out:
	config_free(&p.cfg);
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

void config_free(struct cimd_config **pcfg)
{
	struct cimd_config *c = *pcfg;
	size_t i;

	if (c == NULL)
		return;
	free(c->path);
	free(c->state_dir);
	free(c->base_url);
	free(c->admin_socket);
	free(c->sign_socket);
	free(c->listen);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->export_dir);
	free(c->store);
	free(c->conninfo);
	free(c->conninfo_file);
	for (i = 0; i < c->n_backends; i++)
		free(c->backends[i].conf);
	free(c);
	*pcfg = NULL;
}

const struct cimd_operator *config_operator(const struct cimd_config *c, uid_t uid)
{
	size_t i;

	for (i = 0; i < c->n_operators; i++)
		if (c->operators[i].uid == uid)
			return &c->operators[i];
	return NULL;
}

const struct cimd_backend_conf *config_backend(const struct cimd_config *c, const char *name)
{
	size_t i;

	for (i = 0; i < c->n_backends; i++)
		if (strcmp(c->backends[i].name, name) == 0)
			return &c->backends[i];
	return NULL;
}
