/*
 * fuzz_pubset — the publication channel's decoder (codec/pubset.c), which
 * the network-facing publisher runs on every message the custody process
 * sends.  Input: a message body.  Beyond "no crash": every entry the decoder
 * hands on has a NUL-free path of 1..1024 bytes and a body inside the input,
 * and a body it accepts is exactly what the encoder makes of its entries
 * (decode, encode again, compare), so the two sides cannot disagree.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pubset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
	const uint8_t *data;
	size_t size;
	struct pubset_buf b;
};

static int again(void *arg, const struct pubset_entry *e)
{
	struct ctx *c = arg;
	size_t pl = strlen(e->path);

	if (pl == 0 || pl > PUBSET_PATH_MAX)
		abort();
	if (e->op == PUBSET_OP_PUT) {
		if (e->body < c->data || e->body + e->len > c->data + c->size ||
		    strlen(e->ctype) == 0 || strlen(e->etag) == 0)
			abort();
		pubset_put(&c->b, e->path, e->ctype, e->etag, e->max_age, e->stale, e->body,
			   e->len);
	} else if (e->op == PUBSET_OP_DELETE) {
		pubset_delete(&c->b, e->path);
	} else {
		abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ctx c = {.data = data, .size = size};
	const uint8_t *msg;
	uint8_t flags, hdr[PUBSET_HDR_LEN];
	uint32_t count, len;
	size_t mlen;

	if (pubset_decode(data, size, &flags, &count, NULL, NULL) < 0)
		return 0;
	pubset_begin(&c.b, flags);
	if (pubset_decode(data, size, NULL, NULL, again, &c) < 0 || c.b.count != count)
		abort(); /* accepted once, refused the second time */
	if (pubset_finish(&c.b, &msg, &mlen) < 0 || mlen != size + PUBSET_HDR_LEN ||
	    memcmp(msg + PUBSET_HDR_LEN, data, size) != 0)
		abort(); /* the encoder would not have made these bytes */
	memcpy(hdr, msg, PUBSET_HDR_LEN);
	if (pubset_header(hdr, &len) < 0 || len != size)
		abort();
	pubset_buf_free(&c.b);
	return 0;
}
