/*
 * log.c — where the publisher's messages go: stderr, which is the custody
 * process's (its log in the foreground, the journal under systemd).  The same
 * line format as the custody process's own messages (service/log.c), so that
 * one log reads as one.  No syslog: nothing could be opened once the seccomp
 * filter is in place.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "publisher.h"

static void logv(const char *tag, const char *fmt, va_list ap)
{
	char ts[32], msg[2048], *p;
	time_t now;
	struct tm tm;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* Messages quote what peers sent: one message stays one line, and no
	 * peer can forge another. */
	for (p = msg; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	now = time(NULL);
	gmtime_r(&now, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s cimdd %s%s\n", ts, tag, msg);
}

void pub_log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	logv("warning: ", fmt, ap);
	va_end(ap);
}

void pub_log_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	logv("error: ", fmt, ap);
	va_end(ap);
}
