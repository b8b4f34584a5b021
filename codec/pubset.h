/*
 * pubset.h — the publication channel's one codec (docs/protocol.md,
 * "Publication channel"), used by the custody process (service/publish.c) to
 * encode and by cimdd-publisher (publisher/) to decode.  It depends on nothing
 * but libc, and lives in codec/ (libcimdcodec.a) so that the publisher links
 * it without anything of service/.
 *
 * The custody process sends messages on a one-way pipe; each carries entries
 * that put (add or replace) or delete one path:
 *
 *   message: "CPS2" u32 body_len | body            (big-endian integers)
 *   body:    u8 flags | u32 count | count × entry
 *   entry:   u8 op | u16 path_len path
 *            op PUT: u8 ctype_len ctype | u8 etag_len etag |
 *                    u32 max_age | u32 stale_if_error | u32 len bytes
 *            op DELETE: nothing more
 *
 * flags: PUBSET_BEGIN starts a new table (the one served stays until the
 * table is complete); PUBSET_COMMIT makes the table being built the one
 * served.  A full table may span several messages (BEGIN on the first,
 * COMMIT on the last).  A message without BEGIN while no table is being
 * built changes the served table at once: an update of what changed.
 */
#ifndef CIMD_PUBSET_H
#define CIMD_PUBSET_H

#include <stddef.h>
#include <stdint.h>

#define PUBSET_MAGIC "CPS2"
#define PUBSET_HDR_LEN 8
#define PUBSET_BEGIN 0x01
#define PUBSET_COMMIT 0x02
#define PUBSET_OP_PUT 1
#define PUBSET_OP_DELETE 2
#define PUBSET_PATH_MAX 1024
#define PUBSET_CTYPE_MAX 255
#define PUBSET_ETAG_MAX 63
/* One message on the channel; a full table is split into messages of about
 * PUBSET_CHUNK bytes each. */
#define PUBSET_MSG_MAX (16 * 1024 * 1024)
#define PUBSET_CHUNK (1024 * 1024)
/* Paths a table may hold: four per client (document, JWKS, attestation,
 * revocations) and the appliance's own.  The client bound is the custody
 * process's (CIMD_CLIENTS_MAX, service.h, which checks that the two agree). */
#define PUBSET_ENTRIES_MAX (4 * 10000 + 16)

/* One entry as decoded: strings NUL-terminated, body pointing into the message. */
struct pubset_entry {
	uint8_t op;
	char path[PUBSET_PATH_MAX + 1];
	char ctype[PUBSET_CTYPE_MAX + 1];
	char etag[PUBSET_ETAG_MAX + 1];
	uint32_t max_age, stale;
	const uint8_t *body;
	size_t len;
};

/* ---- encoding (custody) ---- */

struct pubset_buf {
	uint8_t *p;
	size_t len, cap;
	uint32_t count;
	int failed; /* out of memory or over PUBSET_MSG_MAX: the message is void */
};

/* Starts a message with flags. */
void pubset_begin(struct pubset_buf *b, uint8_t flags);
/* Appends a put of path; the strong ETag is the caller's (pubset_etag). */
void pubset_put(struct pubset_buf *b, const char *path, const char *ctype, const char *etag,
		uint32_t max_age, uint32_t stale, const void *body, size_t len);
void pubset_delete(struct pubset_buf *b, const char *path);
/* Sets or adds flags of the message being built (COMMIT on the last chunk). */
void pubset_set_flags(struct pubset_buf *b, uint8_t flags);
/* The finished message (header lengths filled in): 0, or -E2BIG / -ENOMEM.
 * The buffer stays the caller's; pubset_buf_free releases it. */
int pubset_finish(struct pubset_buf *b, const uint8_t **ret_msg, size_t *ret_len);
void pubset_buf_free(struct pubset_buf *b);

/* ---- decoding (publisher) ---- */

/* The body length of a message from its 8-byte header: 0, or -EPROTO for a
 * wrong magic or a length outside 5..PUBSET_MSG_MAX. */
int pubset_header(const uint8_t hdr[PUBSET_HDR_LEN], uint32_t *ret_body_len);
/* Checks every length of a body and, when cb is not NULL, calls it for each
 * entry in order (stopping at its first negative return, which is returned).
 * -EPROTO for a malformed body: nothing is called for a body that is not
 * wholly well-formed when it is first checked with cb == NULL. */
int pubset_decode(const uint8_t *body, size_t len, uint8_t *ret_flags, uint32_t *ret_count,
		  int (*cb)(void *arg, const struct pubset_entry *e), void *arg);

#endif
