/*
 * lineio.c — one request line out, one answer line back (lineio.h): the
 * client half of what service/lineserv.c serves.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lineio.h"

#define LINEIO_CHUNK (64 * 1024) /* what a buffer starts with and grows by doubling */

int lineio_connect(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

/* Waits for events on fd: 0, -ETIMEDOUT, or poll(2)'s -errno. */
static int wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = events};
	int n;

	if (timeout_ms < 0)
		return 0; /* read(2) and send(2) wait themselves on a blocking socket */
	while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
		;
	if (n < 0)
		return -errno;
	return n == 0 ? -ETIMEDOUT : 0;
}

int lineio_send(int fd, const char *text, size_t n, int timeout_ms)
{
	ssize_t w;
	int r;

	while (n > 0) {
		if ((r = wait_fd(fd, POLLOUT, timeout_ms)) < 0)
			return r;
		w = send(fd, text, n, MSG_NOSIGNAL);
		if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (w < 0)
			return -errno;
		if (w == 0)
			return -EPIPE;
		text += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Room for at least one more byte, never more than max + 1 in all. */
static int grow(struct lineio_buf *b, size_t max)
{
	size_t cap;
	char *nb;

	if (b->len < b->cap)
		return 0;
	cap = b->cap == 0 ? LINEIO_CHUNK : 2 * b->cap;
	if (cap > max + 1)
		cap = max + 1;
	if (cap <= b->cap)
		return -EMSGSIZE;
	if ((nb = realloc(b->buf, cap)) == NULL)
		return -ENOMEM;
	b->buf = nb;
	b->cap = cap;
	return 0;
}

int lineio_read(int fd, struct lineio_buf *b, size_t max, int timeout_ms, size_t *ret_len)
{
	char *nl;
	ssize_t n;
	int r;

	b->len = 0;
	for (;;) {
		if (b->len > 0 && (nl = memchr(b->buf, '\n', b->len)) != NULL) {
			*nl = '\0';
			*ret_len = (size_t)(nl - b->buf);
			return 0;
		}
		/* max bytes and no newline yet: the line does not fit. */
		if (b->len >= max)
			return -EMSGSIZE;
		if ((r = grow(b, max)) < 0)
			return r;
		if ((r = wait_fd(fd, POLLIN, timeout_ms)) < 0)
			return r;
		n = read(fd, b->buf + b->len, (b->cap < max ? b->cap : max) - b->len);
		if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		b->len += (size_t)n;
	}
}

void lineio_buf_free(struct lineio_buf *b)
{
	free(b->buf);
	b->buf = NULL;
	b->len = b->cap = 0;
}
