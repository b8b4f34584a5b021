/*
 * test_pubset — the publication channel's codec (codec/pubset.c) and the
 * hash table both processes keep their tables in (codec/hmap.c); the round
 * trip through the custody process and a recorded channel: test_publisher.
 *
 * Codec: what the encoder makes, the decoder gives back entry for entry;
 * every truncation, a count the body cannot hold, an unknown op or flag, a NUL
 * inside a path, an empty path, ctype or ETag, and trailing bytes are refused.
 * hmap: 20,000 random puts, replacements and deletes against a plain array,
 * every key looked up after each phase (backward-shift deletion keeps every
 * key reachable).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hmap.h"
#include "pubset.h"

struct got {
	struct pubset_entry e[8];
	uint8_t body[8][64];
	size_t n;
};

static int collect(void *arg, const struct pubset_entry *e)
{
	struct got *g = arg;

	if (g->n == 8)
		return -E2BIG;
	g->e[g->n] = *e;
	if (e->len > 0)
		memcpy(g->body[g->n], e->body, e->len < 64 ? e->len : 64);
	g->n++;
	return 0;
}

static void test_round_trip(void)
{
	struct pubset_buf b = {0};
	const uint8_t *msg;
	uint8_t flags = 0, *body;
	uint32_t len = 0, count = 0;
	struct got g = {0};
	size_t mlen = 0, cut, bad = 0;
	int r;

	pubset_begin(&b, PUBSET_BEGIN);
	pubset_put(&b, "/clients/agent-a", "application/json", "\"abc\"", 300, 300,
		   "{\"client_name\":\"A\"}", 19);
	pubset_delete(&b, "/clients/agent-a/attestation.json");
	pubset_put(&b, "/healthz", "text/plain", "\"ok\"", 0, 0, "ok", 2);
	pubset_put(&b, "/empty", "text/plain", "\"e\"", 1, 2, "", 0);
	pubset_set_flags(&b, PUBSET_COMMIT);
	r = pubset_finish(&b, &msg, &mlen);
	t_ok(r == 0 && pubset_header(msg, &len) == 0 && len == mlen - PUBSET_HDR_LEN,
	     "a message of four entries encodes (%zu bytes)", r == 0 ? mlen : 0);
	body = (uint8_t *)msg + PUBSET_HDR_LEN;
	t_ok(pubset_decode(body, len, &flags, &count, collect, &g) == 0 && count == 4 && g.n == 4 &&
		 flags == (PUBSET_BEGIN | PUBSET_COMMIT),
	     "and decodes: 4 entries, BEGIN|COMMIT");
	t_ok(g.e[0].op == PUBSET_OP_PUT && strcmp(g.e[0].path, "/clients/agent-a") == 0 &&
		 strcmp(g.e[0].ctype, "application/json") == 0 &&
		 strcmp(g.e[0].etag, "\"abc\"") == 0 && g.e[0].max_age == 300 &&
		 g.e[0].stale == 300 && g.e[0].len == 19 &&
		 memcmp(g.body[0], "{\"client_name\":\"A\"}", 19) == 0,
	     "a put comes back with path, type, ETag, ages and bytes");
	t_ok(g.e[1].op == PUBSET_OP_DELETE &&
		 strcmp(g.e[1].path, "/clients/agent-a/attestation.json") == 0,
	     "a delete comes back with its path");
	t_ok(g.e[3].len == 0 && g.e[3].max_age == 1 && g.e[3].stale == 2,
	     "an empty body comes back empty");
	for (cut = 0; cut < len; cut++)
		if (pubset_decode(body, cut, NULL, NULL, NULL, NULL) == 0)
			bad++;
	t_ok(bad == 0, "every truncation of the body is refused (%zu of %u accepted)", bad, len);

	/* A trailing byte. */
	{
		uint8_t *x = malloc(len + 1);

		memcpy(x, body, len);
		x[len] = 0;
		t_ok(pubset_decode(x, len + 1, NULL, NULL, NULL, NULL) == -EPROTO,
		     "a trailing byte is refused");
		/* A NUL inside the first path ("/clients/agent-a" starts at 8). */
		memcpy(x, body, len);
		x[8 + 3] = '\0';
		t_ok(pubset_decode(x, len, NULL, NULL, NULL, NULL) == -EPROTO,
		     "a NUL inside a path is refused");
		/* An unknown op. */
		memcpy(x, body, len);
		x[5] = 9;
		t_ok(pubset_decode(x, len, NULL, NULL, NULL, NULL) == -EPROTO,
		     "an unknown op is refused");
		/* An unknown flag. */
		memcpy(x, body, len);
		x[0] |= 0x80;
		t_ok(pubset_decode(x, len, NULL, NULL, NULL, NULL) == -EPROTO,
		     "an unknown flag is refused");
		/* A count the body cannot hold. */
		memcpy(x, body, len);
		x[1] = 0x7f;
		t_ok(pubset_decode(x, len, NULL, NULL, NULL, NULL) == -EPROTO,
		     "a count larger than the body can hold is refused before anything is read");
		free(x);
	}
	pubset_buf_free(&b);

	/* What the encoder refuses to make. */
	pubset_begin(&b, 0);
	pubset_put(&b, "", "text/plain", "\"x\"", 0, 0, "x", 1);
	t_ok(pubset_finish(&b, &msg, &mlen) == -EINVAL, "an empty path is not encoded");
	pubset_begin(&b, 0);
	pubset_put(&b, "/x", "", "\"x\"", 0, 0, "x", 1);
	t_ok(pubset_finish(&b, &msg, &mlen) == -EINVAL, "an empty content type is not encoded");
	pubset_begin(&b, 0);
	pubset_put(&b, "/x", "text/plain", "", 0, 0, "x", 1);
	t_ok(pubset_finish(&b, &msg, &mlen) == -EINVAL, "an empty ETag is not encoded");
	pubset_buf_free(&b);

	/* Headers. */
	{
		uint8_t h[PUBSET_HDR_LEN] = {'C', 'P', 'S', '1', 0, 0, 0, 9};

		t_ok(pubset_header(h, &len) == -EPROTO, "the old magic CPS1 is refused");
		memcpy(h, "CPS2", 4);
		h[4] = 0x7f;
		t_ok(pubset_header(h, &len) == -EPROTO, "a length over PUBSET_MSG_MAX is refused");
		h[4] = 0, h[7] = 4;
		t_ok(pubset_header(h, &len) == -EPROTO,
		     "a body shorter than flags and count is refused");
	}
}

struct item {
	struct hmap_item it;
	char key[24];
	int present;
	int value;
};

static void test_hmap(void)
{
	enum { N = 20000 };
	struct hmap m = {0};
	struct item *v = calloc(N, sizeof(*v)), *got;
	struct hmap_item *old;
	size_t i, pos = 0, n = 0, wrong = 0;
	unsigned seed = 7;

	for (i = 0; i < N; i++)
		snprintf(v[i].key, sizeof(v[i].key), "/clients/c%zu", i);
	/* Random puts and deletes, checked against the array after each phase. */
	for (int phase = 0; phase < 4; phase++) {
		for (i = 0; i < N; i++) {
			size_t k = (size_t)rand_r(&seed) % N;

			if (rand_r(&seed) % 3 == 0) {
				got = hmap_del(&m, v[k].key);
				if ((got != NULL) != v[k].present || (got && got != &v[k]))
					wrong++;
				v[k].present = 0;
			} else {
				if (hmap_put(&m, &v[k].it, v[k].key, &old) < 0 ||
				    (old != NULL) != v[k].present)
					wrong++;
				v[k].present = 1;
				v[k].value = phase;
			}
		}
		for (i = 0, n = 0; i < N; i++) {
			got = hmap_get(&m, v[i].key);
			if ((got != NULL) != v[i].present || (got && got != &v[i]))
				wrong++;
			n += v[i].present;
		}
		if (n != m.n)
			wrong++;
	}
	t_ok(wrong == 0,
	     "hmap: 80,000 random puts and deletes agree with a plain array (%zu wrong)", wrong);
	for (i = 0, pos = 0; hmap_next(&m, &pos) != NULL; i++)
		;
	t_ok(i == m.n, "hmap: iteration visits each of the %zu items once", m.n);
	hmap_clear(&m, NULL);
	t_ok(m.n == 0 && hmap_get(&m, v[0].key) == NULL, "hmap: cleared, it is empty");
	free(v);
}

int main(void)
{
	test_round_trip();
	test_hmap();
	return t_done();
}
