/*
 * request.c — the publisher's request rules (publisher.h): what it decides
 * from a request before any lookup.  Pure functions of the request, no state
 * and no I/O, so that fuzz_http_path runs them on their own.
 *
 * GET and HEAD only (405 otherwise); no body; a path of at most 1 KiB of
 * [A-Za-z0-9/._-] without ".." or "//", never percent-decoded (400 for any
 * '%', so no encoded dot, slash or NUL can ever reach a lookup).  Before
 * those, the head: no NUL byte in the request target, exactly one Host in
 * HTTP/1.1 (at most one in HTTP/1.0), at most one Content-Length.
 */
#include <string.h>

#include <microhttpd.h>

#include "publisher.h"

enum pub_route pub_route_of(const char *url)
{
	size_t n = strlen(url);

	if (strncmp(url, "/clients/", 9) == 0 && strchr(url + 9, '/') == NULL)
		return PUB_ROUTE_DOCUMENT;
	if (strncmp(url, "/clients/", 9) == 0 && n > 10 && strcmp(url + n - 10, "/jwks.json") == 0)
		return PUB_ROUTE_JWKS;
	if ((strncmp(url, "/clients/", 9) == 0 && n > 17 &&
	     (strcmp(url + n - 17, "/attestation.json") == 0 ||
	      strcmp(url + n - 17, "/revocations.json") == 0)) ||
	    strncmp(url, "/.well-known/cimdd/", 19) == 0)
		return PUB_ROUTE_ATTESTATION;
	if (strcmp(url, "/healthz") == 0)
		return PUB_ROUTE_HEALTHZ;
	if (strcmp(url, "/metrics") == 0)
		return PUB_ROUTE_METRICS;
	return PUB_ROUTE_OTHER;
}

static int path_ok(const char *url)
{
	const char *c;
	size_t n = strlen(url);

	if (n == 0 || url[0] != '/' || strstr(url, "..") != NULL || strstr(url, "//") != NULL)
		return 0;
	for (c = url; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '/' || *c == '.' || *c == '_' || *c == '-'))
			return 0;
	return 1;
}

int pub_etag_matches(const char *inm, const char *etag)
{
	const char *p = inm;
	size_t el = strlen(etag);

	/* RFC 9110 §13.1.2: "*" or a list of entity tags; weak comparison, so a
	 * W/ prefix is ignored. */
	while (*p) {
		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (*p == '*')
			return 1;
		if (p[0] == 'W' && p[1] == '/')
			p += 2;
		if (strncmp(p, etag, el) == 0 && (p[el] == '\0' || p[el] == ',' || p[el] == ' '))
			return 1;
		while (*p && *p != ',')
			p++;
	}
	return 0;
}

/* The rules a request meets before any lookup, in the order they are applied:
 * the method, then a body, then the path's length, then its characters. */
int pub_request_check(const char *method, const char *url, int has_body)
{
	if (method == NULL || url == NULL)
		return MHD_HTTP_BAD_REQUEST;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return MHD_HTTP_METHOD_NOT_ALLOWED;
	if (has_body)
		return MHD_HTTP_BAD_REQUEST;
	if (strnlen(url, PUB_PATH_MAX + 1) > PUB_PATH_MAX)
		return MHD_HTTP_URI_TOO_LONG;
	if (!path_ok(url))
		return MHD_HTTP_BAD_REQUEST;
	return 0;
}

/* The head's rules, before the method and the path: a request whose framing
 * or target is in doubt is not looked at further. */
int pub_request_head_check(const struct pub_request_head *h)
{
	if (h->target_cut)
		return MHD_HTTP_BAD_REQUEST;
	if (h->hosts > 1 || (h->http11 && h->hosts == 0))
		return MHD_HTTP_BAD_REQUEST;
	if (h->content_lengths > 1)
		return MHD_HTTP_BAD_REQUEST;
	return 0;
}
