/*
 * publish.c — the custody side of publication: renders the complete
 * publication set (every public byte the publisher may serve) from the
 * database, and hands it to the publisher process over a one-way pipe.
 *
 * The publisher (publisher.c) is a separate program image (fork + exec of this
 * binary): it holds no key handle and no database handle, receives only
 * complete sets, and never sends anything back.  If it dies it is started again
 * and given the current set; if we die, it reads end-of-file and exits.
 *
 * Wire format of one set, all integers big-endian (docs/protocol.md):
 *   "CPS1" u32 body_len | u32 count | count × entry
 *   entry: u16 path_len path | u8 ctype_len ctype | u8 etag_len etag |
 *          u32 max_age | u32 stale_if_error | u32 len bytes
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>
#include <sqlite3.h>

#include "service.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
	int failed;
};

static void put(struct buf *b, const void *data, size_t n)
{
	uint8_t *np;
	size_t cap;

	if (b->failed)
		return;
	if (b->len + n > CIMD_PUBSET_MAX) {
		b->failed = 1;
		return;
	}
	if (b->len + n > b->cap) {
		for (cap = b->cap ? b->cap : 4096; cap < b->len + n; cap *= 2)
			;
		if ((np = realloc(b->p, cap)) == NULL) {
			b->failed = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
	put(b, x, 4);
}

/* One entry; the ETag is the strong validator "base64url(SHA-256(bytes))". */
static void put_entry(struct buf *b, const char *path, const char *ctype, uint32_t max_age,
		      uint32_t stale, const void *body, size_t len)
{
	uint8_t md[SHA256_DIGEST_LENGTH], l16[2], l8;
	char etag[CIMD_KID_LEN + 3];

	SHA256(body, len, md);
	etag[0] = '"';
	b64url_encode(md, sizeof(md), etag + 1);
	strcat(etag, "\"");
	l16[0] = (uint8_t)(strlen(path) >> 8), l16[1] = (uint8_t)strlen(path);
	put(b, l16, 2);
	put(b, path, strlen(path));
	l8 = (uint8_t)strlen(ctype);
	put(b, &l8, 1);
	put(b, ctype, l8);
	l8 = (uint8_t)strlen(etag);
	put(b, &l8, 1);
	put(b, etag, l8);
	put_u32(b, max_age);
	put_u32(b, stale);
	put_u32(b, (uint32_t)len);
	put(b, body, len);
}

/* {"keys":[...]} of the client's keys in states next, active, retiring. */
char *publish_jwks(struct store *st, const char *client)
{
	sqlite3_stmt *s = NULL;
	json_t *jwks;
	char *out = NULL;

	if (store_query(st, &s,
			"SELECT jwk FROM keys WHERE client = ? AND state IN ('next', 'active', "
			"'retiring') AND jwk IS NOT NULL ORDER BY created, kid",
			"s", client) < 0)
		return NULL;
	if ((jwks = store_jwks(s)) != NULL)
		out = json_dumps(jwks, JSON_COMPACT);
	json_decref(jwks);
	return out;
}

/* The custody process's part of /metrics (the publisher adds its own). */
static char *render_metrics(struct cimdd *d)
{
	static const char *const states[] = {"next",	"active",    "retiring",
					     "retired", "destroyed", "revoked"};
	sqlite3_stmt *s = NULL;
	char *out = NULL;
	size_t len = 0, i;
	FILE *f = open_memstream(&out, &len);
	int64_t head = 0;
	char hash[65];

	if (f == NULL)
		return NULL;
	fprintf(f, "# HELP cimdd_keys Keys by lifecycle state.\n# TYPE cimdd_keys gauge\n");
	for (i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		int64_t n = 0;
		if (store_query(d->st, &s, "SELECT count(*) FROM keys WHERE state = ?", "s",
				states[i]) == 0 &&
		    sqlite3_step(s) == SQLITE_ROW)
			n = sqlite3_column_int64(s, 0);
		sqlite3_finalize(s);
		s = NULL;
		fprintf(f, "cimdd_keys{state=\"%s\"} %lld\n", states[i], (long long)n);
	}
	journal_head(d->st, &head, hash);
	fprintf(f,
		"# HELP cimdd_journal_records Records in the audit journal.\n"
		"# TYPE cimdd_journal_records gauge\ncimdd_journal_records %lld\n",
		(long long)head);
	if (d->tlog != NULL) {
		uint64_t size = 0;
		time_t issued = 0;

		tlog_latest(d->tlog, &size, &issued);
		fprintf(f,
			"# HELP cimdd_checkpoint_size Records under the latest signed checkpoint.\n"
			"# TYPE cimdd_checkpoint_size gauge\ncimdd_checkpoint_size %llu\n"
			"# HELP cimdd_checkpoint_timestamp_seconds When the latest checkpoint was "
			"issued (alert when it falls behind checkpoint_interval while the journal "
			"grows).\n"
			"# TYPE cimdd_checkpoint_timestamp_seconds gauge\n"
			"cimdd_checkpoint_timestamp_seconds %lld\n",
			(unsigned long long)size, (long long)issued);
	}
	fprintf(f, "# HELP cimdd_backend_up Whether a key store backend is open.\n"
		   "# TYPE cimdd_backend_up gauge\n");
	for (i = 0; i < d->cfg->n_backends; i++)
		fprintf(f, "cimdd_backend_up{backend=\"%s\"} %d\n", d->cfg->backends[i].name,
			d->ks[i] != NULL && d->backend_ok[i] != 0);
	fprintf(f,
		"# HELP cimdd_backend_errors_total Hardware calls that failed.\n"
		"# TYPE cimdd_backend_errors_total counter\ncimdd_backend_errors_total %llu\n",
		(unsigned long long)d->backend_errors);
	signer_metrics(d->signer, f);
	if (fclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
}

/* Bytes of one path that differ from what was last recorded for it. */
struct pub_change {
	char path[CIMD_URL_MAX];
	char client[CIMD_NAME_MAX + 1];
	char hex[65];
	char *bytes;
	size_t len;
};

/* Whether bytes (digest hex) differ from the last publication of path. */
static int pub_changed(struct store *st, const char *path, const char *hex)
{
	sqlite3_stmt *s = NULL;
	int changed = 1;

	if (store_query(st, &s,
			"SELECT sha256 FROM publications WHERE path = ? ORDER BY id DESC LIMIT 1",
			"s", path) < 0)
		return 1;
	if (sqlite3_step(s) == SQLITE_ROW)
		changed = strcmp((const char *)sqlite3_column_text(s, 0), hex) != 0;
	sqlite3_finalize(s);
	return changed;
}

static int pub_note(struct pub_change **v, size_t *n, const char *path, const char *client,
		    const char *hex, const void *bytes, size_t len)
{
	struct pub_change *nv, *c;

	if ((nv = realloc(*v, (*n + 1) * sizeof(**v))) == NULL)
		return -ENOMEM;
	*v = nv;
	c = &nv[*n];
	if ((c->bytes = malloc(len ? len : 1)) == NULL)
		return -ENOMEM;
	memcpy(c->bytes, bytes, len);
	c->len = len;
	snprintf(c->path, sizeof(c->path), "%s", path);
	snprintf(c->client, sizeof(c->client), "%s", client);
	snprintf(c->hex, sizeof(c->hex), "%s", hex);
	(*n)++;
	return 0;
}

/*
 * Records the documents and JWKS that changed since their last publication,
 * each with a publish journal record (docs/audit.md): the audit bundle carries
 * every version ever handed to the publisher, and the record's place in the
 * journal is where an auditor replays the key states that JWKS must show.
 * Only this thread changes key states, so none changed since the render.
 */
static int pub_record(struct cimdd *d, struct pub_change *v, size_t n)
{
	json_t *f;
	int64_t seq;
	size_t i;
	int ok;

	if (n == 0)
		return 0;
	if (store_begin(d->st) < 0)
		return -EIO;
	for (i = 0, ok = 1; ok && i < n; i++) {
		f = json_pack("{ssssss}", "client", v[i].client, "path", v[i].path, "sha256",
			      v[i].hex);
		ok = f != NULL && journal_append(d->st, "publish", "cimdd", f, &seq) == 0 &&
		     store_exec(d->st,
				"INSERT INTO publications (path, client, sha256, bytes, seq, "
				"created) VALUES (?, ?, ?, ?, ?, strftime('%s', 'now'))",
				"sssbi", v[i].path, v[i].client, v[i].hex, v[i].bytes, v[i].len,
				seq) == 1;
		json_decref(f);
	}
	if (!ok || store_commit(d->st) < 0) {
		store_rollback(d->st);
		log_err("publication: cannot record what is published (database error); "
			"nothing new is published until it can be");
		return -EIO;
	}
	return 0;
}

int publish_render(struct cimdd *d, uint8_t **ret_set, size_t *ret_len)
{
	struct pub_change *changes = NULL;
	size_t n_changes = 0;
	int rec_failed = 0;
	struct buf b = {0}, e = {0};
	sqlite3_stmt *s = NULL;
	char path[CIMD_URL_MAX], *jwks, *metrics;
	uint32_t count = 0;
	uint32_t jwks_age = (uint32_t)d->cfg->jwks_max_age,
		 doc_age = (uint32_t)d->cfg->cimd_max_age;

	/* Documents and JWKS of every client with an approved document. */
	if (store_query(
		d->st, &s,
		"SELECT c.name, d.bytes FROM clients c JOIN documents d ON d.client = c.name "
		"AND d.state = 'approved' ORDER BY c.name",
		"") < 0)
		return -EIO;
	while (sqlite3_step(s) == SQLITE_ROW && !e.failed) {
		const char *name = (const char *)sqlite3_column_text(s, 0);
		char cimd_hex[65], jwks_hex[65], *att, *rev;
		uint8_t md[SHA256_DIGEST_LENGTH];

		snprintf(path, sizeof(path), "/clients/%s", name);
		put_entry(&e, path, "application/json", doc_age, doc_age, sqlite3_column_blob(s, 1),
			  (size_t)sqlite3_column_bytes(s, 1));
		SHA256(sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1), md);
		hex_encode(md, sizeof(md), cimd_hex);
		if (pub_changed(d->st, path, cimd_hex) &&
		    pub_note(&changes, &n_changes, path, name, cimd_hex, sqlite3_column_blob(s, 1),
			     (size_t)sqlite3_column_bytes(s, 1)) < 0)
			e.failed = 1;
		if ((jwks = publish_jwks(d->st, name)) == NULL) {
			e.failed = 1;
			break;
		}
		snprintf(path, sizeof(path), "/clients/%s/jwks.json", name);
		/* max-age is exactly jwks_max_age: the activation rule relies on it. */
		put_entry(&e, path, "application/json", jwks_age, jwks_age, jwks, strlen(jwks));
		SHA256((const uint8_t *)jwks, strlen(jwks), md);
		hex_encode(md, sizeof(md), jwks_hex);
		if (pub_changed(d->st, path, jwks_hex) &&
		    pub_note(&changes, &n_changes, path, name, jwks_hex, jwks, strlen(jwks)) < 0)
			e.failed = 1;
		free(jwks);
		count += 2;
		/* The attestation only while it names exactly these bytes (attest.c):
		 * served document, JWKS and attestation always agree. */
		if ((att = attest_envelope(d, name, cimd_hex, jwks_hex)) != NULL) {
			snprintf(path, sizeof(path), "/clients/%s/attestation.json", name);
			put_entry(&e, path, "application/json", jwks_age, jwks_age, att,
				  strlen(att));
			free(att);
			count++;
		}
		if ((rev = attest_revocations(d, name)) != NULL) {
			snprintf(path, sizeof(path), "/clients/%s/revocations.json", name);
			put_entry(&e, path, "application/json", jwks_age, jwks_age, rev,
				  strlen(rev));
			free(rev);
			count++;
		}
	}
	sqlite3_finalize(s);
	/* Recorded only for a set that will be handed on; a set whose changes
	 * cannot be recorded is not handed on (fail closed, retried). */
	if (!e.failed && pub_record(d, changes, n_changes) < 0)
		rec_failed = 1;
	while (n_changes > 0)
		free(changes[--n_changes].bytes);
	free(changes);
	if ((jwks = attest_keys_jwks(d)) != NULL) {
		put_entry(&e, "/.well-known/cimdd/attestation-keys.json", "application/json",
			  jwks_age, jwks_age, jwks, strlen(jwks));
		free(jwks);
		count++;
	}
	/* The latest signed checkpoint of the journal (tlog.c): no-store,
	 * it moves every checkpoint_interval. */
	if (d->tlog != NULL && (jwks = tlog_checkpoint(d->tlog)) != NULL) {
		put_entry(&e, "/.well-known/cimdd/checkpoint", "text/plain; charset=utf-8", 0, 0,
			  jwks, strlen(jwks));
		free(jwks);
		count++;
	}
	{
		/* "ok", or which hardware does not answer: documents and JWKS are
		 * still served; signing and issuing attestations for its clients
		 * are not. */
		char health[256] = "ok";
		size_t i, n = 0;

		for (i = 0; i < d->cfg->n_backends; i++)
			if (d->backend_ok[i] == 0)
				n += (size_t)snprintf(health + n, sizeof(health) - n, "%s%s",
						      n == 0 ? "degraded: unavailable backend "
							     : ", ",
						      d->cfg->backends[i].name);
		put_entry(&e, "/healthz", "text/plain", 0, 0, health, strlen(health));
	}
	count++;
	if ((metrics = render_metrics(d)) == NULL) {
		e.failed = 1;
	} else {
		put_entry(&e, "/metrics", "text/plain; version=0.0.4", 0, 0, metrics,
			  strlen(metrics));
		count++;
		free(metrics);
	}
	put(&b, "CPS1", 4);
	put_u32(&b, (uint32_t)(e.len + 4));
	put_u32(&b, count);
	put(&b, e.p, e.len);
	free(e.p);
	if (e.failed || b.failed || rec_failed) {
		free(b.p);
		return rec_failed ? -EIO : -E2BIG;
	}
	*ret_set = b.p;
	*ret_len = b.len;
	return 0;
}

/* ---- export_dir: the same set as static files, for nginx or a CDN ---- */

/* Writes path atomically: a temporary file beside it, fsync, rename. */
static int write_atomic(const char *path, const void *data, size_t len)
{
	char tmp[2 * CIMD_URL_MAX + 128];
	int fd, r = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0)
		return -errno;
	/* Public bytes, for another server to read: readable whatever our umask. */
	if (fchmod(fd, 0644) < 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) < 0)
		r = -EIO;
	if (close(fd) < 0 && r == 0)
		r = -EIO;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

static int mkdirs(const char *path)
{
	char buf[2 * CIMD_URL_MAX + 128], *p;

	snprintf(buf, sizeof(buf), "%s", path);
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) == 0)
			chmod(buf, 0755); /* new, so ours: readable whatever our umask */
		else if (errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return chmod(buf, 0755) < 0 ? -errno : 0;
}

/*
 * The files of a set and an nginx snippet (nginx.conf, to include inside a
 * server block) that serves them with the publisher's headers: the same
 * ETag, Cache-Control, Content-Type, and 304 for a matching If-None-Match.
 * Documents are files under clients/NAME/ (cimd.json beside jwks.json,
 * attestation.json, revocations.json): a path cannot be both a file and a
 * directory.  /metrics stays with the publisher.
 */
static int export_set(const char *dir, const uint8_t *set, size_t len)
{
	char file[2 * CIMD_URL_MAX + 64], rel[CIMD_URL_MAX + 32], path[CIMD_URL_MAX], ctype[256],
	    etag[64];
	size_t off = 12, pl, cl, el, bl;
	uint32_t max_age, stale, count, i;
	char *conf = NULL;
	size_t conf_len = 0;
	FILE *f = open_memstream(&conf, &conf_len);
	int r = 0;

	if (f == NULL)
		return -ENOMEM;
	if (len < 12) {
		fclose(f);
		free(conf);
		return -EINVAL;
	}
	fprintf(f,
		"# Made by cimdd from its publication set: include inside a server block.\n"
		"# It serves %s with the headers the publisher sends.\n",
		dir);
	count = (uint32_t)set[8] << 24 | (uint32_t)set[9] << 16 | (uint32_t)set[10] << 8 | set[11];
	for (i = 0; i < count && r == 0; i++) {
		/* The set was made by publish_render a moment ago: its lengths hold. */
		pl = (size_t)set[off] << 8 | set[off + 1];
		memcpy(path, set + off + 2, pl);
		path[pl] = '\0';
		off += 2 + pl;
		cl = set[off];
		memcpy(ctype, set + off + 1, cl);
		ctype[cl] = '\0';
		off += 1 + cl;
		el = set[off];
		memcpy(etag, set + off + 1, el);
		etag[el] = '\0';
		off += 1 + el;
		max_age = (uint32_t)set[off] << 24 | (uint32_t)set[off + 1] << 16 |
			  (uint32_t)set[off + 2] << 8 | set[off + 3];
		stale = (uint32_t)set[off + 4] << 24 | (uint32_t)set[off + 5] << 16 |
			(uint32_t)set[off + 6] << 8 | set[off + 7];
		bl = (size_t)set[off + 8] << 24 | (size_t)set[off + 9] << 16 |
		     (size_t)set[off + 10] << 8 | set[off + 11];
		off += 12;
		if (strcmp(path, "/metrics") == 0) {
			off += bl;
			continue;
		}
		if (strcmp(path, "/healthz") == 0)
			snprintf(rel, sizeof(rel), "healthz.txt");
		else if (strlen(path) > 5 && strcmp(path + strlen(path) - 5, ".json") == 0)
			snprintf(rel, sizeof(rel), "%s", path + 1); /* a file: jwks.json, ... */
		else
			snprintf(rel, sizeof(rel), "%s/cimd.json", path + 1);
		snprintf(file, sizeof(file), "%s/%s", dir, rel);
		*strrchr(file, '/') = '\0';
		if ((r = mkdirs(file)) < 0)
			break;
		snprintf(file, sizeof(file), "%s/%s", dir, rel);
		if ((r = write_atomic(file, set + off, bl)) < 0)
			break;
		off += bl;
		fprintf(f,
			"location = %s {\n"
			"    alias %s;\n"
			"    types { } default_type \"%s\";\n"
			"    etag off;\n"
			"    if ($http_if_none_match = '%s') { return 304; }\n"
			"    add_header ETag '%s' always;\n",
			path, file, ctype, etag, etag);
		if (max_age == 0)
			fprintf(f, "    add_header Cache-Control \"no-store\" always;\n");
		else
			fprintf(f,
				"    add_header Cache-Control \"public, max-age=%u, "
				"stale-if-error=%u\" "
				"always;\n",
				max_age, stale);
		fprintf(f, "    add_header X-Content-Type-Options nosniff always;\n"
			   "    limit_except GET { deny all; }\n}\n");
	}
	fprintf(f, "location / { return 404; }\n");
	if (fclose(f) != 0 && r == 0)
		r = -ENOMEM;
	if (r == 0) {
		snprintf(file, sizeof(file), "%s/nginx.conf", dir);
		r = write_atomic(file, conf, conf_len);
	}
	free(conf);
	return r;
}

/* ---- the publisher process ---- */

struct publisher {
	pid_t pid;
	int fd;		  /* write end of the channel */
	uint8_t last[32]; /* SHA-256 of the last set sent */
	int sent;
	time_t started;
	char exe[1024];
};

static int spawn(struct cimdd *d, struct publisher *p)
{
	int fds[2];
	char fdarg[16];
	sigset_t none;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	if ((pid = fork()) < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (pid == 0) {
		/* A fresh program image: nothing of the custody process (key stores,
		 * database, sockets: all close-on-exec) survives into it. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (dup2(fds[0], 3) < 0)
			_exit(127);
		snprintf(fdarg, sizeof(fdarg), "3");
		if (d->cfg->allow_http && d->cfg->tls_cert == NULL)
			execl(p->exe, "cimdd-publisher", "--publisher", fdarg, "--listen",
			      d->cfg->listen, "--plain", (char *)NULL);
		else
			execl(p->exe, "cimdd-publisher", "--publisher", fdarg, "--listen",
			      d->cfg->listen, "--tls-cert", d->cfg->tls_cert, "--tls-key",
			      d->cfg->tls_key, (char *)NULL);
		_exit(127);
	}
	close(fds[0]);
	p->pid = pid;
	p->fd = fds[1];
	p->sent = 0;
	p->started = time(NULL);
	log_info("publisher: started (pid %d) on %s", (int)pid, d->cfg->listen);
	return 0;
}

int publisher_start(struct cimdd *d, struct publisher **ret)
{
	struct publisher *p;
	ssize_t n;
	int r;

	if (d->cfg->listen == NULL)
		return 0; /* nothing to serve */
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return -ENOMEM;
	if ((n = readlink("/proc/self/exe", p->exe, sizeof(p->exe) - 1)) < 0) {
		free(p);
		return -errno;
	}
	p->exe[n] = '\0';
	p->fd = -1;
	if ((r = spawn(d, p)) < 0) {
		free(p);
		return r;
	}
	*ret = p;
	return 0;
}

void publisher_stop(struct publisher **pp)
{
	struct publisher *p = *pp;

	if (p == NULL)
		return;
	if (p->fd >= 0)
		close(p->fd); /* end of file: it exits */
	if (p->pid > 0) {
		kill(p->pid, SIGTERM);
		waitpid(p->pid, NULL, 0);
	}
	free(p);
	*pp = NULL;
}

void publisher_check(struct cimdd *d, struct publisher *p)
{
	int st;

	if (p == NULL || p->pid <= 0)
		return;
	if (waitpid(p->pid, &st, WNOHANG) != p->pid)
		return;
	log_err("publisher: pid %d %s %d; starting it again", (int)p->pid,
		WIFSIGNALED(st) ? "killed by signal" : "exited with",
		WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	close(p->fd);
	p->fd = -1;
	p->pid = 0;
	if (time(NULL) == p->started)
		sleep(1); /* a publisher that dies at once is not restarted in a tight loop */
	if (spawn(d, p) < 0)
		log_err("publisher: cannot start it: %s", strerror(errno));
}

int publisher_serving(const struct publisher *p)
{
	return p != NULL && p->fd >= 0 && p->sent;
}

int publisher_publish(struct cimdd *d, struct publisher *p)
{
	uint8_t *set = NULL, md[SHA256_DIGEST_LENGTH];
	size_t len, off;
	ssize_t n;
	int r;

	if ((p == NULL || p->fd < 0) && d->cfg->export_dir == NULL)
		return 0;
	if ((r = publish_render(d, &set, &len)) < 0) {
		log_err("publisher: cannot render the publication set: %s", strerror(-r));
		return r;
	}
	SHA256(set, len, md);
	if (d->export_sent == 0 || memcmp(md, d->export_last, sizeof(md)) != 0) {
		if (d->cfg->export_dir != NULL &&
		    (r = export_set(d->cfg->export_dir, set, len)) < 0)
			log_err("export_dir %s: %s", d->cfg->export_dir, strerror(-r));
		else {
			memcpy(d->export_last, md, sizeof(md));
			d->export_sent = 1;
		}
	}
	if (p == NULL || p->fd < 0 || (p->sent && memcmp(md, p->last, sizeof(md)) == 0)) {
		free(set);
		return 0;
	}
	for (off = 0; off < len; off += (size_t)n)
		if ((n = write(p->fd, set + off, len - off)) <= 0) {
			if (n < 0 && errno == EINTR) {
				n = 0;
				continue;
			}
			free(set);
			log_err("publisher: channel: %s", strerror(errno));
			return -EPIPE; /* publisher_check restarts it */
		}
	free(set);
	memcpy(p->last, md, sizeof(md));
	p->sent = 1;
	return 1;
}
