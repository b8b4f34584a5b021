/* log.c — one place that decides where the daemon's messages go. */
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

#include "service.h"

static int to_stderr = 1;

void log_init(const char *ident, int foreground)
{
	to_stderr = foreground;
	if (!foreground)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

static void logv(int prio, const char *tag, const char *fmt, va_list ap)
{
	char ts[32], msg[2048], *p;
	time_t now;
	struct tm tm;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* Messages quote what callers sent: one message stays one line, and no
	 * caller can forge another. */
	for (p = msg; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	if (!to_stderr) {
		syslog(prio, "%s%s", tag, msg);
		return;
	}
	now = time(NULL);
	gmtime_r(&now, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s cimdd %s%s\n", ts, tag, msg);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	logv(LOG_INFO, "", fmt, ap);
	va_end(ap);
}

void log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	logv(LOG_WARNING, "warning: ", fmt, ap);
	va_end(ap);
}

void log_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	logv(LOG_ERR, "error: ", fmt, ap);
	va_end(ap);
}
