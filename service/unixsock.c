/*
 * unixsock.c — the daemon's listening Unix sockets (admin.sock, sign.sock).
 *
 * A socket is bound with no access at all and then opened up to the
 * configured mode and group, so there is never a moment where it is wider.  A
 * stale socket from a previous run is replaced; a live one (another daemon
 * answers on it) or any other kind of file is not.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "service.h"

int unix_listen(const char *path, mode_t mode, long gid, int backlog, int *ret_fd, char *err,
		size_t errlen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	mode_t old;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "socket path too long: %s", path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	if (lstat(sa.sun_path, &st) == 0) {
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), live;

		live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (probe >= 0)
			close(probe);
		if (!S_ISSOCK(st.st_mode) || live) {
			snprintf(err, errlen, "%s %s", sa.sun_path,
				 live ? "is in use by a running daemon"
				      : "exists and is not a socket");
			return -EEXIST;
		}
		unlink(sa.sun_path);
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
		r = -errno;
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return r;
	}
	old = umask(0777);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 || (gid >= 0 && chown(sa.sun_path, (uid_t)-1, (gid_t)gid) < 0) ||
	    chmod(sa.sun_path, mode) < 0 || listen(fd, backlog) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", sa.sun_path, strerror(errno));
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}
