/*
 * lineio.h — the client side of cimdd's line protocol (docs/protocol.md: one
 * request line out, one answer line back), for cimdctl, libcimd and the tests.
 *
 * Internal to what links it: in libcimd.so these functions are hidden, not
 * part of the library's interface (cimd.h is).
 */
#ifndef CIMD_LINEIO_H
#define CIMD_LINEIO_H

#include <stddef.h>

#define LINEIO_API __attribute__((visibility("hidden")))

/* What has been read of an answer: buf holds len bytes (NUL-terminated once a
 * line is complete); cap is what is allocated. */
struct lineio_buf {
	char *buf;
	size_t len, cap;
};

/* A connected Unix stream socket (close-on-exec) to path: 0 and *ret_fd, or
 * -ENAMETOOLONG, or socket(2)'s or connect(2)'s -errno. */
LINEIO_API int lineio_connect(const char *path, int *ret_fd);
/* Writes the n bytes of text in full, without SIGPIPE; on a non-blocking
 * socket each wait lasts at most timeout_ms (-1: no limit).  0 or -errno
 * (-ETIMEDOUT). */
LINEIO_API int lineio_send(int fd, const char *text, size_t n, int timeout_ms);
/* Reads into b (emptied first) until it holds a line that fits in max bytes
 * with its newline: 0, the line at b->buf with its newline made a NUL and its length in
 * *ret_len (bytes after it stay in b).  -EMSGSIZE when it does not fit,
 * -ETIMEDOUT when nothing came for timeout_ms (-1: no limit), -ECONNRESET when
 * the peer closed first (b->len tells whether anything had come), -ENOMEM,
 * or read(2)'s -errno. */
LINEIO_API int lineio_read(int fd, struct lineio_buf *b, size_t max, int timeout_ms,
			   size_t *ret_len);
LINEIO_API void lineio_buf_free(struct lineio_buf *b);

#endif /* CIMD_LINEIO_H */
