/*
 * fuzz_http_path — the publisher's request rules (publisher/request.c):
 * pub_request_check, pub_route_of and pub_etag_matches.
 *
 * Input: byte 0 selects the method (GET, HEAD, or the text up to the first NUL
 * when bit 2 is set) and bit 3 a body; the rest is "PATH\0IF-NONE-MATCH".
 * Beyond "no crash", the decision is checked against the rules themselves: 0
 * only for GET/HEAD without a body and a path of at most 1 KiB that starts
 * with '/' and has only [A-Za-z0-9/._-], no "..", no "//" (so never a '%',
 * an encoded dot or slash, or a NUL that could reach a lookup).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "publisher.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int allowed(const char *p)
{
	size_t n = strlen(p);

	if (n == 0 || n > 1024 || p[0] != '/' || strstr(p, "..") || strstr(p, "//"))
		return 0;
	return strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-") == n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf, *url, *inm, *method;
	const char *m;
	int body, st, get;
	size_t n;

	if (size < 1)
		return 0;
	body = (data[0] & 8) != 0;
	if ((buf = malloc(size + 1)) == NULL)
		return 0;
	memcpy(buf, data + 1, size - 1);
	buf[size - 1] = '\0';
	buf[size] = '\0';
	n = strlen(buf);
	url = buf;
	inm = buf + n + (n < size - 1 ? 1 : 0);
	if (data[0] & 4) {
		method = url; /* the method is the text, then the path is the rest */
		url = inm;
		inm = url + strlen(url) + (url + strlen(url) < buf + size - 1 ? 1 : 0);
		m = method;
	} else {
		m = (data[0] & 1) ? "HEAD" : "GET";
	}
	get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
	st = pub_request_check(m, url, body);
	if (!get && st != MHD_HTTP_METHOD_NOT_ALLOWED)
		abort();
	if (get && body && st != MHD_HTTP_BAD_REQUEST)
		abort();
	if (get && !body && strlen(url) > 1024 && st != MHD_HTTP_URI_TOO_LONG)
		abort();
	if ((st == 0) != (get && !body && allowed(url)))
		abort();
	if (st == 0 && strchr(url, '%') != NULL)
		abort();
	if (pub_route_of(url) >= PUB_ROUTE_N)
		abort();
	if (pub_etag_matches(inm, "\"0123456789abcdef\"") < 0)
		abort();
	free(buf);
	return 0;
}
