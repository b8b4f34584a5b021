/*
 * publish.c — the custody side of publication: takes the per-client change
 * markers (the dirty table, written by triggers in every transaction that
 * changes what a client publishes: store.c, schema 7), issues the changed
 * clients' attestations (attest.c), renders their public bytes, records
 * what changed (publish journal records, docs/audit.md), and hands exactly
 * what changed to the publisher process and to export_dir.  Every step costs
 * what changed, not what exists (docs/scaling.md).
 *
 * The publisher is its own program, cimdd-publisher (publisher/), forked and
 * exec'd from ../libexec/cimdd/ beside this binary's directory: it holds no key
 * handle and no database handle, links none of the custody libraries, receives
 * messages of one codec (codec/pubset.c) on a one-way pipe, and never sends
 * anything back.  A
 * new publisher is given the full table, in chunks; after that, only updates.
 * If it dies it is started again after a backoff that grows while it keeps
 * dying at once (a timer of the main loop, which never sleeps); if we die, it
 * reads end-of-file and exits.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <seccomp.h>

#include <openssl/sha.h>

#include "hmap.h"
#include "pubset.h"
#include "service.h"

#define TURN_MS 50	  /* at most this long on changed clients per main-loop turn */
#define TURN_CLIENTS 256  /* changed clients read per turn */
#define METRICS_EVERY 5	  /* seconds between publications for counters alone */
#define RESTART_MAX 32	  /* seconds: the longest wait before a new publisher */
#define RESTART_STABLE 10 /* seconds: a publisher that lived this long died by chance */
#define FULL_CLIENTS 256  /* clients rendered, recorded and sent per chunk of a full table */
#define RETIRE_EVERY 1	  /* seconds between looks at retiring attestation keys */

/* ---- what is published ---- */

/* One path as last handed on: what export_dir's snippet and the next change
 * are compared with. */
struct pub_path {
	struct hmap_item it;
	char *path;
	uint8_t sha[32];
	const char *ctype;
	uint32_t max_age;
};

/* A client whose served document and JWKS have no attestation naming them:
 * tried again every second (hardware that was away). */
struct due {
	struct hmap_item it;
	char name[CIMD_NAME_MAX + 1];
};

struct publication {
	struct svc *d;
	struct tlog *tlog;		/* its latest checkpoint is published, or NULL */
	struct signer *signer;		/* told which clients changed, or NULL (not started yet) */
	publication_metrics_fn metrics; /* the custody process's part of /metrics */
	void *metrics_arg;
	struct hmap paths; /* path -> struct pub_path */
	struct hmap due;   /* client -> struct due */
	int full;	   /* the next turn renders and sends everything */
	int health;	   /* /healthz and /metrics to render again */
	time_t metrics_at, due_at, retire_at;
	uint64_t answers_at;
	int64_t changes_at;
	int64_t seen_seq; /* the signer has dropped the policies of changes up to here */
	int64_t taken;	  /* this node has published the changes up to here (-1: not read) */

	/* the publisher process (none without `listen`) */
	char exe[1024];
	pid_t pid;
	int fd; /* write end of the channel, or -1 */
	time_t started, restart_at;
	unsigned backoff;
	int switch_user; /* the child becomes uid/gid before exec (CAP_SETUID mode) */
	uid_t uid;
	gid_t gid;
};

/* One rendered path of this turn. */
struct entry {
	char path[CIMD_URL_MAX + 32];
	char client[CIMD_NAME_MAX + 1]; /* "" for what is not a client's */
	const char *ctype;
	uint32_t max_age, stale;
	char *body; /* NULL: the path is no longer published */
	size_t len;
	uint8_t sha[32];
	int changed;	/* differs from what this node handed on (new: changed) */
	int unrecorded; /* a document or JWKS no publish record holds yet (record()) */
	int record;	/* a document or JWKS: recorded in the audit journal */
	int jwks;
};

struct entries {
	struct entry *v;
	size_t n, cap;
};

static void entries_clear(struct entries *l)
{
	while (l->n > 0)
		free(l->v[--l->n].body);
}

static void entries_free(struct entries *l)
{
	entries_clear(l);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static struct entry *entry_add(struct entries *l, const char *path, const char *client)
{
	struct entry *nv, *e;
	size_t cap;

	if (l->n == l->cap) {
		cap = l->cap ? 2 * l->cap : 64;
		if ((nv = realloc(l->v, cap * sizeof(*nv))) == NULL)
			return NULL;
		l->v = nv;
		l->cap = cap;
	}
	e = &l->v[l->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->path, sizeof(e->path), "%s", path);
	snprintf(e->client, sizeof(e->client), "%s", client);
	return e;
}

/* Whether a document or JWKS differs from its latest publish record (the
 * first time a path is seen in this process). */
static int recorded_differs(struct store *st, const char *path, const uint8_t sha[32])
{
	struct store_rows *s = NULL;
	char hex[65];
	int differs = 1;

	hex_encode(sha, 32, hex);
	if (store_query(st, &s,
			"SELECT sha256 FROM publications WHERE path = ? ORDER BY id DESC LIMIT 1",
			"s", path) < 0)
		return 1;
	if (store_next(s) > 0)
		differs = strcmp(store_text(s, 0), hex) != 0;
	store_done(st, s);
	return differs;
}

/* The keys a JWKS names are published from now: by their kids in the bytes
 * recorded, not by the client's keys now (another node may have made one
 * since these bytes were rendered). */
static int mark_published(struct store *st, const struct entry *e, int64_t now)
{
	json_t *jwks = json_loadb(e->body, e->len, 0, NULL), *k;
	size_t i;
	int r = jwks != NULL ? 0 : -EINVAL;

	json_array_foreach(json_object_get(jwks, "keys"), i, k)
	{
		const char *kid = json_string_value(json_object_get(k, "kid"));

		if (r == 0 && kid != NULL &&
		    store_exec(st,
			       "UPDATE keys SET published = ? WHERE kid = ? AND published IS NULL",
			       "is", now, kid) < 0)
			r = -EIO;
	}
	json_decref(jwks);
	return r;
}

/* Sets path's bytes (body owned by the entry from now on; NULL: not
 * published) and whether they changed. */
static int entry_set(struct publication *p, struct entries *l, const char *path, const char *client,
		     const char *ctype, uint32_t max_age, char *body, size_t len, int record)
{
	struct pub_path *pp = hmap_get(&p->paths, path);
	struct entry *e;

	if (body == NULL && pp == NULL)
		return 0; /* not published, and never was */
	if ((e = entry_add(l, path, client)) == NULL) {
		free(body);
		return -ENOMEM;
	}
	e->ctype = ctype;
	e->max_age = e->stale = max_age;
	e->body = body;
	e->len = len;
	e->record = record;
	e->jwks = record && strstr(path, "/jwks.json") != NULL;
	if (body == NULL) {
		e->changed = 1;
		return 0;
	}
	SHA256((const uint8_t *)body, len, e->sha);
	/* Against what this node handed on: bytes another node recorded first
	 * are new to this node's publisher (record() records them once). */
	e->changed = pp == NULL || memcmp(pp->sha, e->sha, 32) != 0;
	return 0;
}

static void due_add(struct publication *p, const char *name)
{
	struct hmap_item *old;
	struct due *x;

	if (hmap_get(&p->due, name) != NULL || (x = calloc(1, sizeof(*x))) == NULL)
		return;
	snprintf(x->name, sizeof(x->name), "%s", name);
	if (hmap_put(&p->due, &x->it, x->name, &old) < 0)
		free(x);
}

static void due_drop(struct publication *p, const char *name)
{
	free(hmap_del(&p->due, name));
}

/* The public bytes of one client: its approved document, JWKS, attestation
 * (only while it names exactly these bytes: served document, JWKS and
 * attestation always agree) and revocation records.  A client without an
 * approved document publishes nothing. */
static int render_client(struct publication *p, const char *name, struct entries *l)
{
	struct svc *d = p->d;
	uint32_t jwks_age = (uint32_t)d->cfg->jwks_max_age,
		 doc_age = (uint32_t)d->cfg->cimd_max_age;
	char path[CIMD_URL_MAX + 32], cimd_hex[65], jwks_hex[65], *doc = NULL, *jwks = NULL, *att,
								  *rev;
	struct store_rows *s = NULL;
	size_t doc_len = 0, first = l->n;
	int r;

	if (store_query(d->st, &s,
			"SELECT bytes FROM documents WHERE client = ? AND state = 'approved'", "s",
			name) < 0)
		return -EIO;
	if (store_next(s) > 0) {
		doc_len = store_len(s, 0);
		if ((doc = malloc(doc_len + 1)) != NULL)
			memcpy(doc, store_blob(s, 0), doc_len);
	}
	store_done(d->st, s);
	if (doc_len > 0 && doc == NULL)
		return -ENOMEM;
	if (doc != NULL && (jwks = jwks_client(d->st, name)) == NULL) {
		free(doc);
		return -EIO;
	}
	snprintf(path, sizeof(path), "/clients/%s", name);
	if ((r = entry_set(p, l, path, name, "application/json", doc_age, doc, doc_len, 1)) < 0) {
		free(jwks);
		return r;
	}
	snprintf(path, sizeof(path), "/clients/%s/jwks.json", name);
	/* max-age is exactly jwks_max_age: the activation rule relies on it. */
	if ((r = entry_set(p, l, path, name, "application/json", jwks_age, jwks,
			   jwks ? strlen(jwks) : 0, 1)) < 0)
		return r;
	att = rev = NULL;
	if (doc != NULL) {
		hex_encode(l->v[first].sha, 32, cimd_hex);
		hex_encode(l->v[first + 1].sha, 32, jwks_hex);
		if ((att = attest_envelope(d, name, cimd_hex, jwks_hex)) == NULL)
			due_add(p, name);
		else
			due_drop(p, name);
		rev = attest_revocations(d, name);
	} else {
		due_drop(p, name);
	}
	snprintf(path, sizeof(path), "/clients/%s/attestation.json", name);
	if ((r = entry_set(p, l, path, name, "application/json", jwks_age, att,
			   att ? strlen(att) : 0, 0)) < 0) {
		free(rev);
		return r;
	}
	snprintf(path, sizeof(path), "/clients/%s/revocations.json", name);
	return entry_set(p, l, path, name, "application/json", jwks_age, rev, rev ? strlen(rev) : 0,
			 0);
}

/* What is not a client's: the attestation keys and the latest checkpoint. */
static int render_globals(struct publication *p, struct entries *l)
{
	uint32_t jwks_age = (uint32_t)p->d->cfg->jwks_max_age;
	char *b;
	int r;

	b = attest_keys_jwks(p->d);
	if ((r = entry_set(p, l, "/.well-known/cimdd/attestation-keys.json", "", "application/json",
			   jwks_age, b, b ? strlen(b) : 0, 0)) < 0)
		return r;
	/* No-store: it moves every checkpoint_interval. */
	if (p->tlog != NULL)
		tlog_follow(p->d, p->tlog); /* the leader's, in a cluster */
	b = p->tlog != NULL ? tlog_checkpoint(p->tlog) : NULL;
	return entry_set(p, l, "/.well-known/cimdd/checkpoint", "", "text/plain; charset=utf-8", 0,
			 b, b ? strlen(b) : 0, 0);
}

/* "ok", or which hardware does not answer: documents and JWKS are still
 * served; signing and issuing attestations for its clients are not.  And the
 * custody process's part of /metrics (the publisher adds its own). */
static int render_health(struct publication *p, struct entries *l)
{
	struct svc *d = p->d;
	char health[256] = "ok", *m;
	size_t i, n = 0;
	int r;

	for (i = 0; i < d->cfg->n_backends; i++)
		if (custody_health(d->custody, i) == 0)
			n += (size_t)snprintf(health + n, sizeof(health) - n, "%s%s",
					      n == 0 ? "degraded: unavailable backend " : ", ",
					      d->cfg->backends[i].name);
	if ((m = strdup(health)) == NULL)
		return -ENOMEM;
	if ((r = entry_set(p, l, "/healthz", "", "text/plain", 0, m, strlen(m), 0)) < 0)
		return r;
	if (p->metrics == NULL)
		return 0;
	if ((m = p->metrics(p->metrics_arg)) == NULL)
		return -ENOMEM;
	return entry_set(p, l, "/metrics", "", "text/plain; version=0.0.4", 0, m, strlen(m), 0);
}

/*
 * Records the documents and JWKS that changed, each with a publish journal
 * record (docs/audit.md): the audit bundle carries every version ever handed
 * to the publisher, and the record's place in the journal is where an auditor
 * replays the key states that JWKS must show.  A JWKS recorded marks its keys
 * published (the signer signs only with those).  How far this node has taken
 * the change markers (seen: the last dirty.seq of this turn, 0 for none) goes
 * in the same transaction: a crash before it leaves them to be done again.
 * In a cluster every node renders the same bytes; the first to record them
 * records them, once.
 */
static int record(struct publication *p, struct entries *l, int64_t seen)
{
	struct store *st = p->d->st;
	char hex[65];
	int64_t seq, now = (int64_t)time(NULL);
	size_t i, n = 0;
	json_t *f;
	int ok = 1;

	/* Outside the transaction first: a start hands on every path, nearly
	 * all of them recorded already. */
	for (i = 0; i < l->n; i++) {
		struct entry *e = &l->v[i];

		e->unrecorded = e->record && e->changed && e->body != NULL &&
				recorded_differs(st, e->path, e->sha);
		n += (size_t)e->unrecorded;
	}
	if (n == 0 && seen == 0)
		return 0; /* nothing to write: no transaction, no fsync */
	if (store_begin(st) < 0)
		return -EIO;
	for (i = 0; ok && i < l->n; i++) {
		const struct entry *e = &l->v[i];

		/* Again inside it: another node may have recorded them since. */
		if (!e->unrecorded || !recorded_differs(st, e->path, e->sha))
			continue;
		hex_encode(e->sha, 32, hex);
		f = json_pack("{ssssss}", "client", e->client, "path", e->path, "sha256", hex);
		ok = f != NULL && journal_append(st, "publish", "cimdd", f, &seq) == 0 &&
		     store_exec(st,
				"INSERT INTO publications (path, client, sha256, bytes, seq, "
				"created) VALUES (?, ?, ?, ?, ?, ?)",
				"sssbii", e->path, e->client, hex, e->body, e->len, seq, now) == 1;
		if (ok && e->jwks)
			ok = mark_published(st, e, now) == 0;
		json_decref(f);
	}
	if (ok && seen > 0)
		ok = store_exec(st, "UPDATE nodes SET seen = ? WHERE name = ? AND seen < ?", "isi",
				seen, p->d->cfg->node, seen) >= 0;
	if (!ok || store_commit(st) < 0) {
		store_rollback(st);
		log_err("publication: cannot record what is published (database error); "
			"nothing new is published until it can be");
		return -EIO;
	}
	return 0;
}

/* ---- export_dir: the same bytes as static files, for nginx or a CDN ---- */

/* Writes path atomically (a temporary file beside it, fsync, rename), unless
 * it already holds exactly these bytes. */
static int write_file(const char *path, const void *data, size_t len)
{
	char tmp[2 * CIMD_URL_MAX + 128], cur[4096];
	struct stat sb;
	int fd, r = 0;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) >= 0) {
		int same = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (size_t)sb.st_size == len;
		size_t off = 0;
		ssize_t k;

		while (same && off < len) {
			size_t want = len - off < sizeof(cur) ? len - off : sizeof(cur);

			if ((k = read(fd, cur, want)) <= 0 ||
			    memcmp(cur, (const uint8_t *)data + off, (size_t)k) != 0)
				same = 0;
			else
				off += (size_t)k;
		}
		close(fd);
		if (same)
			return 0;
	}
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
	if (mkdir(buf, 0755) == 0)
		return chmod(buf, 0755) < 0 ? -errno : 0;
	return errno == EEXIST ? 0 : -errno;
}

/* Where path lives under export_dir: documents are files under clients/NAME/
 * (cimd.json beside jwks.json, attestation.json, revocations.json), since a
 * path cannot be both a file and a directory. */
static void export_file(const char *dir, const char *path, char *out, size_t len)
{
	size_t n = strlen(path);

	if (strcmp(path, "/healthz") == 0)
		snprintf(out, len, "%s/healthz.txt", dir);
	else if (n > 5 && strcmp(path + n - 5, ".json") == 0)
		snprintf(out, len, "%s%s", dir, path); /* a file: jwks.json, ... */
	else
		snprintf(out, len, "%s%s/cimd.json", dir, path);
}

/* The nginx locations of one client's paths (or, client "", of what is not a
 * client's), with the publisher's headers: the same ETag, Cache-Control,
 * Content-Type, and 304 for a matching If-None-Match.  One file per client
 * under conf/, so that a change rewrites what changed; nginx reads them at
 * its next reload (docs/scaling.md). */
static int export_conf(struct publication *p, const char *client)
{
	static const char *const client_paths[] = {"", "/jwks.json", "/attestation.json",
						   "/revocations.json"};
	static const char *const global_paths[] = {"/.well-known/cimdd/attestation-keys.json",
						   "/.well-known/cimdd/checkpoint", "/healthz"};
	const char *dir = p->d->cfg->export_dir;
	char file[2 * CIMD_URL_MAX + 64], path[CIMD_URL_MAX + 32], etag[48], *conf = NULL;
	size_t conf_len = 0, i, n = client[0] ? 4 : 3, locations = 0;
	struct pub_path *pp;
	FILE *f = open_memstream(&conf, &conf_len);
	int r;

	if (f == NULL)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		if (client[0])
			snprintf(path, sizeof(path), "/clients/%s%s", client, client_paths[i]);
		else
			snprintf(path, sizeof(path), "%s", global_paths[i]);
		if ((pp = hmap_get(&p->paths, path)) == NULL)
			continue;
		etag[0] = '"';
		b64url_encode(pp->sha, 32, etag + 1);
		strcat(etag, "\"");
		export_file(dir, path, file, sizeof(file));
		fprintf(f,
			"location = %s {\n"
			"    alias %s;\n"
			"    types { } default_type \"%s\";\n"
			"    etag off;\n"
			"    if ($http_if_none_match = '%s') { return 304; }\n"
			"    add_header ETag '%s' always;\n",
			path, file, pp->ctype, etag, etag);
		if (pp->max_age == 0)
			fprintf(f, "    add_header Cache-Control \"no-store\" always;\n");
		else
			fprintf(f,
				"    add_header Cache-Control \"public, max-age=%u, "
				"stale-if-error=%u\" always;\n",
				pp->max_age, pp->max_age);
		fprintf(f, "    add_header X-Content-Type-Options nosniff always;\n"
			   "    limit_except GET { deny all; }\n}\n");
		locations++;
	}
	if (fclose(f) != 0) {
		free(conf);
		return -ENOMEM;
	}
	/* "_" sorts nothing and names no client ([a-z0-9]...). */
	snprintf(file, sizeof(file), "%s/conf/%s.conf", dir, client[0] ? client : "_appliance");
	if (locations == 0)
		r = unlink(file) < 0 && errno != ENOENT ? -errno : 0;
	else
		r = write_file(file, conf, conf_len);
	free(conf);
	return r;
}

/* The files of this turn's entries that changed (all: every one, for an
 * export_dir that may not hold them yet; a file that holds the same bytes is
 * not written), then the snippets of the clients they belong to.  /metrics
 * stays with the publisher. */
static int export_entries(struct publication *p, const struct entries *l, int all)
{
	const char *dir = p->d->cfg->export_dir;
	char file[2 * CIMD_URL_MAX + 64], *slash;
	const char *last = NULL;
	size_t i;
	int r = 0;

	for (i = 0; i < l->n && r == 0; i++) {
		const struct entry *e = &l->v[i];

		if (strcmp(e->path, "/metrics") == 0 || !(e->changed || all))
			continue;
		export_file(dir, e->path, file, sizeof(file));
		if (e->body == NULL) {
			if (unlink(file) < 0 && errno != ENOENT)
				r = -errno;
			continue;
		}
		slash = strrchr(file, '/');
		*slash = '\0';
		r = mkdirs(file);
		*slash = '/';
		if (r == 0)
			r = write_file(file, e->body, e->len);
	}
	/* Entries come grouped by client. */
	for (i = 0; i < l->n && r == 0; i++) {
		if (!(l->v[i].changed || all) || strcmp(l->v[i].path, "/metrics") == 0 ||
		    (last != NULL && strcmp(last, l->v[i].client) == 0))
			continue;
		last = l->v[i].client;
		r = export_conf(p, last);
	}
	return r;
}

/* nginx.conf, to include inside a server block: every snippet under conf/,
 * and 404 for anything else. */
static int export_start(struct publication *p)
{
	const char *dir = p->d->cfg->export_dir;
	char file[2 * CIMD_URL_MAX + 64], conf[3 * CIMD_URL_MAX];
	int r;

	snprintf(file, sizeof(file), "%s/conf", dir);
	if ((r = mkdirs(file)) < 0)
		return r;
	snprintf(conf, sizeof(conf),
		 "# Made by cimdd: include inside a server block.  It serves %s with the\n"
		 "# headers the publisher sends; reload nginx when conf/ changes.\n"
		 "include %s/conf/*.conf;\n"
		 "location / { return 404; }\n",
		 dir, dir);
	snprintf(file, sizeof(file), "%s/nginx.conf", dir);
	return write_file(file, conf, strlen(conf));
}

/* ---- handing on ---- */

static void paths_update(struct publication *p, const struct entries *l)
{
	struct hmap_item *old;
	struct pub_path *pp;
	size_t i;

	for (i = 0; i < l->n; i++) {
		const struct entry *e = &l->v[i];

		if (e->body == NULL) {
			if ((pp = hmap_del(&p->paths, e->path)) != NULL) {
				free(pp->path);
				free(pp);
			}
			continue;
		}
		if ((pp = hmap_get(&p->paths, e->path)) == NULL) {
			if ((pp = calloc(1, sizeof(*pp))) == NULL ||
			    (pp->path = strdup(e->path)) == NULL ||
			    hmap_put(&p->paths, &pp->it, pp->path, &old) < 0) {
				if (pp != NULL)
					free(pp->path);
				free(pp);
				continue; /* compared as new next time: recorded again at worst */
			}
		}
		memcpy(pp->sha, e->sha, 32);
		pp->ctype = e->ctype;
		pp->max_age = e->max_age;
	}
}

static void channel_lost(struct publication *p, const char *why)
{
	log_err("publisher: channel: %s", why);
	close(p->fd);
	p->fd = -1; /* the publisher is ended and started again (publication_child) */
	if (p->pid > 0)
		kill(p->pid, SIGTERM);
}

static int channel_write(struct publication *p, const uint8_t *msg, size_t len)
{
	size_t off;
	ssize_t n;

	for (off = 0; off < len; off += (size_t)n)
		if ((n = write(p->fd, msg + off, len - off)) <= 0) {
			if (n < 0 && errno == EINTR) {
				n = 0;
				continue;
			}
			channel_lost(p, n < 0 ? strerror(errno) : "closed");
			return -EPIPE;
		}
	return 0;
}

/* Sends a message of the entries (only changed ones unless all), flags as
 * given; nothing for an update with nothing in it. */
static int send_entries(struct publication *p, const struct entries *l, uint8_t flags, int all)
{
	struct pubset_buf b = {0};
	const uint8_t *msg;
	char etag[48];
	size_t i, len;
	int r;

	if (p->fd < 0)
		return 0;
	pubset_begin(&b, flags);
	for (i = 0; i < l->n; i++) {
		const struct entry *e = &l->v[i];

		if (!all && !e->changed)
			continue;
		if (e->body == NULL) {
			if (!all)
				pubset_delete(&b, e->path);
			continue;
		}
		etag[0] = '"';
		b64url_encode(e->sha, 32, etag + 1);
		strcat(etag, "\"");
		pubset_put(&b, e->path, e->ctype, etag, e->max_age, e->stale, e->body, e->len);
	}
	if (b.count == 0 && flags == 0) {
		pubset_buf_free(&b);
		return 0;
	}
	if ((r = pubset_finish(&b, &msg, &len)) == 0)
		r = channel_write(p, msg, len);
	else
		log_err("publisher: cannot encode a publication message: %s", strerror(-r));
	pubset_buf_free(&b);
	return r;
}

/* Records, sends, exports and remembers one turn's entries, and drops the
 * signer's policies whose keys became published. */
static int hand_on(struct publication *p, struct entries *l, uint8_t flags, int all, int64_t seen)
{
	const char *last = NULL;
	size_t i;
	int r;

	if ((r = record(p, l, seen)) < 0)
		return r;
	send_entries(p, l, flags, all); /* a lost channel: a new publisher gets everything */
	paths_update(p, l);
	if (p->d->cfg->export_dir != NULL && (r = export_entries(p, l, all)) < 0)
		log_err("export_dir %s: %s", p->d->cfg->export_dir, strerror(-r));
	for (i = 0; i < l->n; i++)
		if (l->v[i].jwks && l->v[i].changed &&
		    (last == NULL || strcmp(last, l->v[i].client) != 0))
			signer_invalidate_client(p->signer, last = l->v[i].client);
	return 0;
}

static int publishing(const struct publication *p)
{
	return p->d->cfg->listen != NULL || p->d->cfg->export_dir != NULL;
}

/* Everything, for a new publisher (or a new configuration): every client with
 * an approved document, in chunks that are rendered, recorded and sent one at
 * a time (BEGIN on the first, COMMIT on the last), so that neither process
 * holds the whole table twice. */
static int publish_full(struct publication *p)
{
	struct entries l = {0};
	struct store_rows *s = NULL;
	char after[CIMD_NAME_MAX + 1] = "", (*names)[CIMD_NAME_MAX + 1] = NULL;
	uint8_t flags = PUBSET_BEGIN;
	size_t n, i;
	int r = 0;

	if ((names = calloc(FULL_CLIENTS, sizeof(*names))) == NULL)
		return -ENOMEM;
	for (;;) {
		n = 0;
		if (store_query(p->d->st, &s,
				"SELECT client FROM documents WHERE state = 'approved' AND client "
				"> ? ORDER BY client LIMIT ?",
				"si", after, (int64_t)FULL_CLIENTS) < 0) {
			r = -EIO;
			break;
		}
		while (n < FULL_CLIENTS && store_next(s) > 0)
			snprintf(names[n++], sizeof(names[0]), "%s", store_text(s, 0));
		store_done(p->d->st, s);
		s = NULL;
		/* One snapshot per chunk: its queries take the lock once. */
		(void)store_read_begin(p->d->st);
		for (i = 0; i < n && r == 0; i++)
			r = render_client(p, names[i], &l);
		if (n < FULL_CLIENTS && r == 0 &&
		    ((r = render_globals(p, &l)) == 0 && (r = render_health(p, &l)) == 0))
			flags |= PUBSET_COMMIT;
		store_read_end(p->d->st);
		if (r < 0 || (r = hand_on(p, &l, flags, 1, 0)) < 0)
			break;
		entries_clear(&l);
		flags = 0;
		if (n < FULL_CLIENTS)
			break;
		snprintf(after, sizeof(after), "%s", names[n - 1]);
	}
	entries_free(&l);
	free(names);
	if (r < 0)
		log_err("publication: cannot render the full table: %s", strerror(-r));
	return r;
}

/* The signer drops the cached policy of every client changed since it last
 * looked: callers, audiences, lifetime, rate and active key are read again. */
static void follow_changes(struct publication *p)
{
	struct store_rows *s = NULL;

	if (store_query(p->d->st, &s, "SELECT seq, client FROM dirty WHERE seq > ? ORDER BY seq",
			"i", p->seen_seq) < 0)
		return;
	while (store_next(s) > 0) {
		p->seen_seq = store_int(s, 0);
		if (store_len(s, 1) > 0)
			signer_invalidate_client(p->signer, store_text(s, 1));
	}
	store_done(p->d->st, s);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* How far this node had taken the change markers when it last stopped. */
static int64_t taken_so_far(struct publication *p)
{
	struct store_rows *s = NULL;
	int64_t seen = -1;

	if (store_query(p->d->st, &s, "SELECT seen FROM nodes WHERE name = ?", "s",
			p->d->cfg->node) == 0) {
		int rc = store_next(s);

		seen = rc > 0 ? store_int(s, 0) : rc == 0 ? 0 : -1;
	}
	store_done(p->d->st, s);
	return seen;
}

/* The changed clients, oldest change first, for at most TURN_MS: each one's
 * attestation issued if what it states changed, then what it publishes
 * rendered; what changed is recorded and handed on, and how far this node
 * has taken the markers is recorded in the same transaction (the markers
 * stay, for the other nodes).  1 when more remain. */
static int publish_changes(struct publication *p)
{
	struct attest_batch ab = {0};
	struct entries l = {0};
	struct store_rows *s = NULL;
	char(*names)[CIMD_NAME_MAX + 1] = NULL;
	int64_t deadline = now_ms() + TURN_MS, *seqs = NULL;
	size_t n = 0, i;
	int more = 0, r = 0, globals = 0;

	if (p->taken < 0 && (p->taken = taken_so_far(p)) < 0)
		return 0;
	if ((names = calloc(TURN_CLIENTS, sizeof(*names))) == NULL ||
	    (seqs = calloc(TURN_CLIENTS, sizeof(*seqs))) == NULL ||
	    store_query(p->d->st, &s,
			"SELECT seq, client FROM dirty WHERE seq > ? ORDER BY seq "
			"LIMIT ?",
			"ii", p->taken, (int64_t)TURN_CLIENTS) < 0) {
		free(names);
		free(seqs);
		return 0;
	}
	while (n < TURN_CLIENTS && store_next(s) > 0) {
		seqs[n] = store_int(s, 0);
		snprintf(names[n++], sizeof(names[0]), "%s", store_text(s, 1));
	}
	store_done(p->d->st, s);
	more = n == TURN_CLIENTS;
	for (i = 0; i < n && r == 0; i++) {
		if (i > 0 && now_ms() > deadline) {
			more = 1;
			break;
		}
		if (names[i][0] == '\0') {
			globals = 1;
			continue;
		}
		keys_adopt_check(p->d, names[i]);
		if (attest_client(p->d, &ab, names[i]) < 0)
			due_add(p, names[i]);
		if (publishing(p))
			r = render_client(p, names[i], &l);
	}
	n = i;
	attest_batch_end(&ab);
	if (r == 0 && globals && publishing(p))
		r = render_globals(p, &l);
	if (r == 0 && (r = hand_on(p, &l, 0, 0, n > 0 ? seqs[n - 1] : 0)) == 0 && n > 0)
		p->taken = seqs[n - 1];
	entries_free(&l);
	free(names);
	free(seqs);
	/* A database that refuses (locked, full): tried again next turn, not in
	 * a tight loop. */
	return r < 0 ? 0 : more;
}

/* Clients still without an attestation for what they serve (their hardware
 * was away): tried again, at most once a second. */
static void retry_due(struct publication *p, time_t now)
{
	struct attest_batch ab = {0};
	struct hmap_item *it;
	int64_t deadline = now_ms() + TURN_MS;
	char(*names)[CIMD_NAME_MAX + 1];
	size_t pos = 0, n = 0, i;

	if (p->due.n == 0 || now == p->due_at)
		return;
	p->due_at = now;
	if ((names = calloc(p->due.n, sizeof(*names))) == NULL)
		return;
	while ((it = hmap_next(&p->due, &pos)) != NULL)
		snprintf(names[n++], sizeof(names[0]), "%s", it->key);
	for (i = 0; i < n && now_ms() <= deadline; i++)
		if (attest_client(p->d, &ab, names[i]) == 0)
			due_drop(p, names[i]); /* an attestation issued marks it changed */
		else if (ab.ak[0].state < 0 && p->d->cfg->n_backends == 1)
			break; /* the one backend is away: no use asking for the rest */
	attest_batch_end(&ab);
	free(names);
}

/* ---- the publisher process ---- */

/*
 * Where cimdd-publisher is: PREFIX/libexec/cimdd/cimdd-publisher for this
 * binary's PREFIX/bin/cimdd, from /proc/self/exe (resolved by the kernel, so
 * its parent is the real PREFIX): build/bin/cimdd finds build/libexec/..., an
 * installed cimdd what `make install` put beside it.  Checked at start-up,
 * where a missing program ends the start with its path, rather than in a
 * child that could only exit 127 again and again.
 */
static int publisher_exe(char *out, size_t len)
{
	char self[1024], *slash;
	ssize_t n;
	int i, r;

	if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) < 0) {
		r = -errno;
		log_err("publisher: cannot read /proc/self/exe: %s", strerror(errno));
		return r;
	}
	self[n] = '\0';
	for (i = 0; i < 2; i++) /* PREFIX/bin/cimdd -> PREFIX */
		if ((slash = strrchr(self, '/')) != NULL)
			*slash = '\0';
		else
			self[0] = '\0';
	if ((size_t)snprintf(out, len, "%s/libexec/cimdd/cimdd-publisher", self) >= len)
		return -ENAMETOOLONG;
	if (access(out, X_OK) < 0) {
		r = -errno;
		log_err("publisher: cannot run %s: %s", out, strerror(errno));
		return r;
	}
	return 0;
}

/* ---- the publisher's own user ----
 *
 * Three ways cimdd can be started (docs/operations.md, "The publisher's
 * user"):
 *   - as root (development, tests): the publisher drops itself, to
 *     cimdd-publish if that user exists, else nobody (publisher/confine.c);
 *   - as a user with CAP_SETUID and CAP_SETGID permitted (the shipped unit:
 *     User=cimdd, AmbientCapabilities=): the forked child becomes the user
 *     named USER-publish (cimdd-publish), drops every capability and execs;
 *     no such user, and cimdd refuses to start;
 *   - as a user without them: the publisher runs as that same user, unless
 *     USER-publish exists, in which case it should not, and cimdd refuses to
 *     start.
 * Whatever the mode, the publisher refuses to serve as root or with any
 * capability left (confine.c).
 */

#define CAP_BIT(c) (1u << (c))
#define SWITCH_CAPS (CAP_BIT(CAP_SETUID) | CAP_BIT(CAP_SETGID))

static int caps_get(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};

	return (int)syscall(SYS_capget, &h, d);
}

static int caps_set(uint32_t permitted, uint32_t effective)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2] = {{.permitted = permitted, .effective = effective}};

	return (int)syscall(SYS_capset, &h, d);
}

/* Whether this process may start its publisher as another user. */
static int caps_permitted(void)
{
	struct __user_cap_data_struct d[2] = {{0}};

	return caps_get(d) == 0 && (d[0].permitted & SWITCH_CAPS) == SWITCH_CAPS;
}

void publication_caps_init(void)
{
	if (geteuid() == 0 || !caps_permitted())
		return;
	/* Permitted only: raised again in the publisher's child alone.  No
	 * inheritable capability, hence no ambient one: nothing this process
	 * execs inherits them. */
	if (caps_set(SWITCH_CAPS, 0) < 0 ||
	    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		log_warn("publisher: cannot lower CAP_SETUID and CAP_SETGID: %s", strerror(errno));
}

/*
 * CAP_SETUID lets a process take any uid, root's included.  cimdd needs it
 * for one thing, so a filter on every thread (TSYNC) lets the set*id calls
 * through only to become the publisher's user: a compromised custody
 * process gains no identity but one with less than its own.
 */
static int guard_ids(uid_t uid, gid_t gid)
{
	static const int uids[] = {SCMP_SYS(setuid), SCMP_SYS(setreuid), SCMP_SYS(setresuid),
				   SCMP_SYS(setfsuid)};
	static const int gids[] = {SCMP_SYS(setgid), SCMP_SYS(setregid), SCMP_SYS(setresgid),
				   SCMP_SYS(setfsgid)};
	static const unsigned nargs[] = {1, 2, 3, 1};
	scmp_filter_ctx ctx;
	unsigned i, a;
	int r = -EPERM;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    (ctx = seccomp_init(SCMP_ACT_ALLOW)) == NULL)
		return -EPERM;
	for (i = 0; i < 4; i++)
		for (a = 0; a < nargs[i]; a++)
			if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), uids[i], 1,
					     SCMP_CMP32(a, SCMP_CMP_NE, (uint32_t)uid, 0)) < 0 ||
			    seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), gids[i], 1,
					     SCMP_CMP32(a, SCMP_CMP_NE, (uint32_t)gid, 0)) < 0)
				goto out;
	/* setgroups: only to none at all. */
	if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(setgroups), 1,
			     SCMP_A0(SCMP_CMP_NE, 0, 0)) < 0 ||
	    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) < 0 || seccomp_load(ctx) < 0)
		goto out;
	r = 0;
out:
	seccomp_release(ctx);
	return r;
}

/* Which way the publisher is started (above), decided once at start-up:
 * 0, or a negative code with the reason logged. */
static int publisher_user(struct publication *p)
{
	struct passwd *me, *pw;
	char name[256];
	int caps = caps_permitted(), r;

	if (geteuid() == 0)
		return 0; /* it drops itself (confine.c) */
	if ((me = getpwuid(getuid())) == NULL) {
		log_err("publisher: uid %d has no name", (int)getuid());
		return -ENOENT;
	}
	snprintf(name, sizeof(name), "%s-publish", me->pw_name);
	pw = getpwnam(name);
	if (!caps) {
		if (pw != NULL) {
			log_err(
			    "publisher: it must run as %s, but cimdd holds no CAP_SETUID and "
			    "CAP_SETGID to start it so (dist/systemd/cimdd.service grants them)",
			    name);
			return -EPERM;
		}
		log_warn("publisher: runs as %s, cimdd's own user: there is no user %s",
			 me->pw_name, name);
		return 0;
	}
	if (pw == NULL || pw->pw_uid == 0 || pw->pw_uid == getuid() || pw->pw_gid == 0) {
		log_err("publisher: no user %s of its own to run as (dist/sysusers.d/cimdd.conf)",
			name);
		return -ENOENT;
	}
	p->switch_user = 1;
	p->uid = pw->pw_uid;
	p->gid = pw->pw_gid;
	if ((r = guard_ids(p->uid, p->gid)) < 0) {
		log_err("publisher: cannot confine CAP_SETUID to %s: %s", name, strerror(-r));
		return r;
	}
	log_info("publisher: runs as %s (uid %d)", name, (int)p->uid);
	return 0;
}

/* In the child, before exec (only async-signal-safe calls, raw system calls:
 * the custody process has threads): the publisher's user, no supplementary
 * group, then no capability in any set, checked; exit 126 otherwise. */
static void child_become(const struct publication *p)
{
	static const char fail[] = "cimdd: publisher: cannot become its own user\n";
	struct __user_cap_data_struct d[2] = {{0}};
	uid_t ru, eu, su;
	gid_t rg, eg, sg;

	if (caps_set(SWITCH_CAPS, SWITCH_CAPS) < 0 || syscall(SYS_setgroups, 0, NULL) < 0 ||
	    syscall(SYS_setresgid, p->gid, p->gid, p->gid) < 0 ||
	    syscall(SYS_setresuid, p->uid, p->uid, p->uid) < 0 || caps_set(0, 0) < 0 ||
	    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 ||
	    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || caps_get(d) < 0 || d[0].permitted != 0 ||
	    d[0].effective != 0 || d[1].permitted != 0 || d[1].effective != 0 ||
	    syscall(SYS_getresuid, &ru, &eu, &su) < 0 ||
	    syscall(SYS_getresgid, &rg, &eg, &sg) < 0 || ru != p->uid || eu != p->uid ||
	    su != p->uid || rg != p->gid || eg != p->gid || sg != p->gid) {
		if (write(2, fail, sizeof(fail) - 1) < 0) {
			/* nothing more to say */
		}
		_exit(126);
	}
}

/* The TLS certificate and key, opened here with the custody process's
 * rights and handed to the publisher as descriptors 4 and 5: the publisher's
 * own user cannot read the key file (docs/operations.md).  -errno, logged. */
static int open_tls(const struct cimd_config *cfg, int *ret_cert, int *ret_key)
{
	int cert, key, r;

	if ((cert = open(cfg->tls_cert, O_RDONLY | O_CLOEXEC)) < 0) {
		r = -errno;
		log_err("publisher: cannot open tls_cert %s: %s", cfg->tls_cert, strerror(errno));
		return r;
	}
	if ((key = open(cfg->tls_key, O_RDONLY | O_CLOEXEC)) < 0) {
		r = -errno;
		log_err("publisher: cannot open tls_key %s: %s", cfg->tls_key, strerror(errno));
		close(cert);
		return r;
	}
	*ret_cert = cert;
	*ret_key = key;
	return 0;
}

/* In the child, before exec: the channel on 3, the TLS files on 4 and 5
 * (dup2 clears close-on-exec), nothing above.  Only async-signal-safe calls:
 * the custody process has threads. */
static void child_fds(int chan, int cert, int key)
{
	if (dup2(chan, 3) < 0 || (cert >= 0 && (dup2(cert, 4) < 0 || dup2(key, 5) < 0)) ||
	    close_range(cert >= 0 ? 6 : 4, ~0U, 0) < 0)
		_exit(127);
}

static int spawn(struct publication *p)
{
	const struct cimd_config *cfg = p->d->cfg;
	int plain = cfg->allow_http && cfg->tls_cert == NULL;
	int fds[2], cert = -1, key = -1, r;
	sigset_t none;
	pid_t pid;

	if (!plain && (r = open_tls(cfg, &cert, &key)) < 0)
		return r;
	if (pipe2(fds, O_CLOEXEC) < 0) {
		r = -errno;
		goto out;
	}
	if ((pid = fork()) < 0) {
		r = -errno;
		close(fds[0]);
		close(fds[1]);
		goto out;
	}
	if (pid == 0) {
		/* A fresh program image: nothing of the custody process (key stores,
		 * database, sockets) survives into it.  Ours are close-on-exec; a
		 * module's may not be (SoftHSM2 reading its object files in the
		 * thread that opens the store at start-up), so every descriptor
		 * above the ones handed on is closed here. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		child_fds(fds[0], cert, key);
		/* A change of credentials clears the parent-death signal: set
		 * again by the publisher itself (confine.c). */
		if (p->switch_user)
			child_become(p);
		if (plain)
			execl(p->exe, "cimdd-publisher", "--publisher", "3", "--listen",
			      cfg->listen, "--plain", (char *)NULL);
		else
			execl(p->exe, "cimdd-publisher", "--publisher", "3", "--listen",
			      cfg->listen, "--tls-cert-fd", "4", "--tls-key-fd", "5", (char *)NULL);
		_exit(127);
	}
	close(fds[0]);
	p->pid = pid;
	p->fd = fds[1];
	p->started = time(NULL);
	p->full = 1; /* a new publisher holds nothing */
	log_info("publisher: started (pid %d) on %s", (int)pid, cfg->listen);
	r = 0;
out:
	if (cert >= 0)
		close(cert);
	if (key >= 0)
		close(key);
	return r;
}

int publication_new(struct svc *d, struct tlog *tl, struct publication **ret)
{
	struct publication *p;
	int r;

	if ((p = calloc(1, sizeof(*p))) == NULL)
		return -ENOMEM;
	p->d = d;
	p->tlog = tl;
	p->fd = -1;
	p->taken = -1;
	p->full = 1;
	p->health = 1;
	if (d->cfg->listen != NULL) {
		if ((r = publisher_exe(p->exe, sizeof(p->exe))) < 0 ||
		    (r = publisher_user(p)) < 0 || (r = spawn(p)) < 0)
			goto fail;
	}
	if (d->cfg->export_dir != NULL && (r = export_start(p)) < 0) {
		log_err("export_dir %s: %s", d->cfg->export_dir, strerror(-r));
		goto fail;
	}
	*ret = p;
	return 0;
fail:
	free(p);
	return r;
}

static void free_path(struct hmap_item *it)
{
	free(((struct pub_path *)it)->path);
	free(it);
}

static void free_due(struct hmap_item *it)
{
	free(it);
}

void publication_free(struct publication **pp)
{
	struct publication *p = *pp;

	if (p == NULL)
		return;
	if (p->fd >= 0)
		close(p->fd); /* end of file: it exits */
	if (p->pid > 0) {
		/* Refused (EPERM) when it runs as its own user and we are not
		 * root: then the end of file above is what ends it. */
		kill(p->pid, SIGTERM);
		waitpid(p->pid, NULL, 0);
	}
	hmap_clear(&p->paths, free_path);
	hmap_clear(&p->due, free_due);
	free(p);
	*pp = NULL;
}

void publication_child(struct publication *p)
{
	time_t now = time(NULL);
	int st;

	if (p == NULL || p->pid <= 0 || waitpid(p->pid, &st, WNOHANG) != p->pid)
		return;
	/* One that lived a while died by chance: again at once.  One that dies
	 * at once is started again after 1, 2, 4 ... RESTART_MAX seconds. */
	if (now - p->started >= RESTART_STABLE)
		p->backoff = 0;
	else
		p->backoff = p->backoff == 0
				 ? 1
				 : (p->backoff * 2 > RESTART_MAX ? RESTART_MAX : p->backoff * 2);
	p->restart_at = now + p->backoff;
	log_err("publisher: pid %d %s %d; starting it again in %u s", (int)p->pid,
		WIFSIGNALED(st) ? "killed by signal" : "exited with",
		WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), p->backoff);
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
	p->pid = 0;
}

void publication_reconfigured(struct publication *p)
{
	if (p != NULL)
		p->full = 1; /* max-age values are in every entry */
}

void publication_health(struct publication *p)
{
	if (p != NULL)
		p->health = 2; /* at once */
}

void publication_set_signer(struct publication *p, struct signer *sg)
{
	p->signer = sg;
}

void publication_set_metrics(struct publication *p, publication_metrics_fn fn, void *arg)
{
	p->metrics = fn;
	p->metrics_arg = arg;
}

/* A publisher started when none runs and its backoff is over, and the full
 * table for a new one (or a new configuration).  -1: the table could not be
 * handed on (tried again next turn). */
static int start_and_fill(struct publication *p, time_t now)
{
	int r;

	if (p->d->cfg->listen != NULL && p->pid == 0 && now >= p->restart_at && (r = spawn(p)) < 0)
		log_err("publisher: cannot start it: %s", strerror(-r));
	if (p->full && publishing(p)) {
		if (publish_full(p) < 0)
			return -1;
		p->full = 0;
		p->health = 0;
		p->metrics_at = now;
	}
	return 0;
}

int publication_start(struct publication *p)
{
	start_and_fill(p, time(NULL)); /* a failure: publication_step does it again */
	return 0;
}

int publication_step(struct publication *p)
{
	struct entries l = {0};
	time_t now = time(NULL);
	int more = 0;

	if (p == NULL)
		return 0;
	if (store_changes(p->d->st) != p->changes_at) {
		p->changes_at = store_changes(p->d->st);
		follow_changes(p);
		p->health = 1; /* key counts, journal size: /metrics */
	}
	if (start_and_fill(p, now) < 0)
		return 0; /* tried again next turn */
	more = publish_changes(p);
	retry_due(p, now);
	/* Health at once; gauges of the state (keys, journal, checkpoint) at
	 * most once a second while it changes; the signer's counters alone
	 * every METRICS_EVERY. */
	if (publishing(p) && (p->health == 2 || (p->health == 1 && now != p->metrics_at) ||
			      (signer_answers(p->signer) != p->answers_at &&
			       now - p->metrics_at >= METRICS_EVERY))) {
		p->answers_at = signer_answers(p->signer);
		p->metrics_at = now;
		p->health = 0;
		if (render_health(p, &l) == 0)
			hand_on(p, &l, 0, 0, 0);
		entries_free(&l);
	}
	if (!more && p->due.n == 0 && now - p->retire_at >= RETIRE_EVERY) {
		p->retire_at = now;
		attest_retire_unused(p->d);
	}
	return more;
}
