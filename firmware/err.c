/* err.c — the one function that turns an error code into words. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fmt.h"

static const char *const msgs[CIMD_ELAST - CIMD_EBASE] = {
    [CIMD_ECONFIG - CIMD_EBASE] = "bad key store configuration",
    [CIMD_ENOMODULE - CIMD_EBASE] = "PKCS#11 module cannot be loaded",
    [CIMD_ENOTOKEN - CIMD_EBASE] = "token not found",
    [CIMD_EPIN - CIMD_EBASE] = "PIN refused",
    [CIMD_EUNAVAILABLE - CIMD_EBASE] = "backend unavailable",
    [CIMD_ENOKEY - CIMD_EBASE] = "unknown key reference",
    [CIMD_EALG - CIMD_EBASE] = "unsupported or mismatched algorithm",
    [CIMD_EBACKEND - CIMD_EBASE] = "hardware refused the operation",
    [CIMD_EFORMAT - CIMD_EBASE] = "malformed encoding",
    [CIMD_EVERIFY - CIMD_EBASE] = "signature does not verify",
    [CIMD_ECRYPTO - CIMD_EBASE] = "cryptographic library failure",
};

const char *cimd_strerror(int r)
{
	int e = -r;

	if (r >= 0)
		return "success";
	if (e > CIMD_EBASE && e < CIMD_ELAST && msgs[e - CIMD_EBASE] != NULL)
		return msgs[e - CIMD_EBASE];
	if (e < CIMD_EBASE)
		return strerror(e);
	return "unknown error";
}

int cimd_fail(char *errbuf, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	if (errbuf != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(errbuf, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}
