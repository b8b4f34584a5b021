/*
 * pubset.c — the publication channel's codec (pubset.h): the custody
 * process's encoder and the publisher's decoder, one implementation of the
 * format for both sides.  The decoder checks every length against what
 * remains before it reads; tests/fuzz/fuzz_pubset.c runs on it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pubset.h"

static void put(struct pubset_buf *b, const void *data, size_t n)
{
	uint8_t *np;
	size_t cap;

	if (b->failed)
		return;
	if (b->len + n > PUBSET_HDR_LEN + (size_t)PUBSET_MSG_MAX) {
		b->failed = -E2BIG;
		return;
	}
	if (b->len + n > b->cap) {
		for (cap = b->cap ? b->cap : 4096; cap < b->len + n; cap *= 2)
			;
		if ((np = realloc(b->p, cap)) == NULL) {
			b->failed = -ENOMEM;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void put_u8(struct pubset_buf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void put_u16(struct pubset_buf *b, uint16_t v)
{
	uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};

	put(b, x, 2);
}

static void put_u32(struct pubset_buf *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	put(b, x, 4);
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void pubset_begin(struct pubset_buf *b, uint8_t flags)
{
	b->len = 0;
	b->count = 0;
	b->failed = 0;
	put(b, PUBSET_MAGIC, 4);
	put_u32(b, 0); /* body length, at pubset_finish */
	put_u8(b, flags);
	put_u32(b, 0); /* count, at pubset_finish */
}

void pubset_set_flags(struct pubset_buf *b, uint8_t flags)
{
	if (!b->failed && b->len > PUBSET_HDR_LEN)
		b->p[PUBSET_HDR_LEN] |= flags;
}

static void put_path(struct pubset_buf *b, uint8_t op, const char *path)
{
	size_t pl = strlen(path);

	if (pl == 0 || pl > PUBSET_PATH_MAX) {
		b->failed = b->failed ? b->failed : -EINVAL;
		return;
	}
	put_u8(b, op);
	put_u16(b, (uint16_t)pl);
	put(b, path, pl);
	b->count++;
}

void pubset_put(struct pubset_buf *b, const char *path, const char *ctype, const char *etag,
		uint32_t max_age, uint32_t stale, const void *body, size_t len)
{
	size_t cl = strlen(ctype), el = strlen(etag);

	if (cl == 0 || cl > PUBSET_CTYPE_MAX || el == 0 || el > PUBSET_ETAG_MAX ||
	    len > PUBSET_MSG_MAX) {
		b->failed = b->failed ? b->failed : -EINVAL;
		return;
	}
	put_path(b, PUBSET_OP_PUT, path);
	put_u8(b, (uint8_t)cl);
	put(b, ctype, cl);
	put_u8(b, (uint8_t)el);
	put(b, etag, el);
	put_u32(b, max_age);
	put_u32(b, stale);
	put_u32(b, (uint32_t)len);
	put(b, body, len);
}

void pubset_delete(struct pubset_buf *b, const char *path)
{
	put_path(b, PUBSET_OP_DELETE, path);
}

int pubset_finish(struct pubset_buf *b, const uint8_t **ret_msg, size_t *ret_len)
{
	size_t body;

	if (b->failed)
		return b->failed;
	body = b->len - PUBSET_HDR_LEN;
	b->p[4] = (uint8_t)(body >> 24), b->p[5] = (uint8_t)(body >> 16);
	b->p[6] = (uint8_t)(body >> 8), b->p[7] = (uint8_t)body;
	b->p[9] = (uint8_t)(b->count >> 24), b->p[10] = (uint8_t)(b->count >> 16);
	b->p[11] = (uint8_t)(b->count >> 8), b->p[12] = (uint8_t)b->count;
	*ret_msg = b->p;
	*ret_len = b->len;
	return 0;
}

void pubset_buf_free(struct pubset_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

int pubset_header(const uint8_t hdr[PUBSET_HDR_LEN], uint32_t *ret_body_len)
{
	uint32_t len = get_u32(hdr + 4);

	if (memcmp(hdr, PUBSET_MAGIC, 4) != 0 || len < 5 || len > PUBSET_MSG_MAX)
		return -EPROTO;
	*ret_body_len = len;
	return 0;
}

/* A string of exactly n bytes and no NUL into out. */
static int get_str(const uint8_t *p, size_t n, char *out)
{
	if (n == 0 || memchr(p, '\0', n) != NULL)
		return -EPROTO;
	memcpy(out, p, n);
	out[n] = '\0';
	return 0;
}

int pubset_decode(const uint8_t *p, size_t len, uint8_t *ret_flags, uint32_t *ret_count,
		  int (*cb)(void *arg, const struct pubset_entry *e), void *arg)
{
	struct pubset_entry *e;
	size_t off = 5, n;
	uint32_t count, i;
	int r = -EPROTO;

	if (len < 5 || (p[0] & ~(PUBSET_BEGIN | PUBSET_COMMIT)) != 0)
		return -EPROTO;
	/* At least 3 bytes an entry: a count the body cannot hold is refused
	 * before anything is read. */
	if ((count = get_u32(p + 1)) > (len - 5) / 3)
		return -EPROTO;
	if ((e = malloc(sizeof(*e))) == NULL)
		return -ENOMEM;
	for (i = 0; i < count; i++) {
		e->ctype[0] = e->etag[0] = '\0';
		e->max_age = e->stale = 0;
		e->body = NULL;
		e->len = 0;
		if (len - off < 3)
			goto out;
		e->op = p[off];
		n = (size_t)p[off + 1] << 8 | p[off + 2];
		off += 3;
		if ((e->op != PUBSET_OP_PUT && e->op != PUBSET_OP_DELETE) || n > PUBSET_PATH_MAX ||
		    len - off < n || get_str(p + off, n, e->path) < 0)
			goto out;
		off += n;
		if (e->op == PUBSET_OP_PUT) {
			if (len - off < 1 || (n = p[off]) > len - off - 1 ||
			    get_str(p + off + 1, n, e->ctype) < 0)
				goto out;
			off += 1 + n;
			if (len - off < 1 || (n = p[off]) > PUBSET_ETAG_MAX || n > len - off - 1 ||
			    get_str(p + off + 1, n, e->etag) < 0)
				goto out;
			off += 1 + n;
			if (len - off < 12)
				goto out;
			e->max_age = get_u32(p + off);
			e->stale = get_u32(p + off + 4);
			e->len = get_u32(p + off + 8);
			off += 12;
			if (e->len > len - off)
				goto out;
			e->body = p + off;
			off += e->len;
		}
		if (cb != NULL && (r = cb(arg, e)) < 0)
			goto out;
		r = -EPROTO;
	}
	if (off != len)
		goto out;
	if (ret_flags != NULL)
		*ret_flags = p[0];
	if (ret_count != NULL)
		*ret_count = count;
	r = 0;
out:
	free(e);
	return r;
}
