/*
 * admin_req.c — what an admin handler answers with when it fails: the error
 * code and its words.  A file of its own so that the handlers (registry.c,
 * keys.c, attest.c, tlog.c) depend on it and not on the admin socket's
 * server, which depends on them through its handler table.
 */
#include <stdarg.h>
#include <stdio.h>

#include "service.h"

enum admin_err admin_fail(struct admin_req *q, enum admin_err e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q->msg, sizeof(q->msg), fmt, ap);
	va_end(ap);
	return e;
}
