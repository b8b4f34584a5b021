/*
 * cimd_doc.c — validation of submitted Client ID Metadata Documents.
 *
 * Sources (docs/governance.md lists each rule with its source):
 *   draft-ietf-oauth-client-id-metadata-document (CIMD): the document is the
 *     client's RFC 7591 metadata, served at the client_id URL, whose client_id
 *     member equals that URL; no client_secret, no shared secrets;
 *   RFC 7591 §2 (client metadata), §2.1 (grant_types/response_types pairs);
 *   RFC 7523 / OIDC Core §9 (private_key_jwt);
 *   OAuth 2.1 (draft-ietf-oauth-v2-1) §2.3.1, §4.1.1, §8.4.2 and RFC 8252 §7.3
 *     (exact redirect URI matching, loopback http for native apps, no implicit
 *     or password grants);
 *   the MCP authorization specification (CIMD for client registration).
 * Each rule fails with its own message; the first failure is reported.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include "service.h"

static int fail(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

int cimd_valid_name(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > CIMD_NAME_MAX ||
	    !(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0])))
		return 0;
	for (i = 1; i < n; i++)
		if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-'))
			return 0;
	return 1;
}

struct uri {
	int https;
	char host[256];
};

/* The code point of the UTF-8 sequence at s, for a message; -1 when the bytes
 * are no valid sequence (jansson hands us valid UTF-8, so only defensively). */
static long utf8_at(const unsigned char *s)
{
	int n = s[0] >= 0xf0 ? 3 : s[0] >= 0xe0 ? 2 : s[0] >= 0xc0 ? 1 : -1;
	long cp = n == 3 ? s[0] & 0x07 : n == 2 ? s[0] & 0x0f : s[0] & 0x1f;
	int i;

	if (n < 0 || s[0] > 0xf4)
		return -1;
	for (i = 1; i <= n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return -1;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	return cp;
}

/* RFC 3986 §2: the characters a URI may hold, all ASCII.  Anything else --
 * a look-alike letter, U+3002 (an ideographic full stop some resolvers treat
 * as a dot), a zero-width space, U+202E, a backslash -- is refused by name,
 * so that the approver reads exactly the bytes a client will be sent to. */
static int uri_chars(const char *member, const char *u, char *err, size_t len)
{
	static const char allowed[] = "-._~:/?#[]@!$&'()*+,;=%";
	const unsigned char *p;
	long cp;

	if (strlen(u) > CIMD_URL_MAX)
		return fail(err, len, "%s: longer than %d characters", member, CIMD_URL_MAX);
	for (p = (const unsigned char *)u; *p; p++) {
		if (*p >= 0x80) {
			if ((cp = utf8_at(p)) < 0)
				return fail(err, len, "%s: '%s' holds the byte 0x%02x", member, u,
					    *p);
			return fail(err, len,
				    "%s: '%s' holds U+%04lX at byte %zu: a URI is ASCII "
				    "(RFC 3986 §2); write an internationalised host in its "
				    "punycode form (xn--...)",
				    member, u, cp, (size_t)(p - (const unsigned char *)u));
		}
		if (*p <= 0x20 || *p == 0x7f)
			return fail(err, len, "%s: '%s' contains a space or control character",
				    member, u);
		if (!isalnum(*p) && strchr(allowed, *p) == NULL)
			return fail(err, len, "%s: '%s' holds '%c', which no URI may (RFC 3986 §2)",
				    member, u, *p);
		if (*p == '%' && !(isxdigit(p[1]) && isxdigit(p[2])))
			return fail(err, len,
				    "%s: '%s' has a '%%' not followed by two hex digits (RFC 3986 "
				    "§2.1)",
				    member, u);
	}
	return 0;
}

/* A host name of LDH labels (RFC 1123 §2.1, RFC 3986 §3.2.2 reg-name kept to
 * what DNS can hold): letters, digits and inner hyphens, 1 to 63 per label,
 * no empty label; or an IPv4 address, which is such a name too. */
static int host_ldh(const char *h)
{
	size_t label = 0;

	for (; *h; h++) {
		if (*h == '.') {
			if (label == 0 || h[-1] == '-')
				return 0;
			label = 0;
		} else if (isalnum((unsigned char)*h) || (*h == '-' && label > 0)) {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0 && h[-1] != '-';
}

/* The authority's host into ret->host, its port (when given) checked: the
 * bracketed IPv6 literal with its brackets, or LDH labels. */
static int uri_host(const char *member, const char *u, const char *a, const char *end,
		    struct uri *ret, char *err, size_t len)
{
	char lit[64];
	const char *p, *port;
	struct in6_addr in6;
	size_t n;
	long v;

	if (*a == '[') {
		if ((p = memchr(a, ']', (size_t)(end - a))) == NULL)
			return fail(err, len, "%s: '%s' has an unclosed IPv6 literal", member, u);
		if (p + 1 != end && p[1] != ':')
			return fail(err, len, "%s: '%s' has text after its IPv6 literal", member,
				    u);
		n = (size_t)(p - a) - 1;
		if (n < sizeof(lit))
			memcpy(lit, a + 1, n), lit[n] = '\0';
		if (n >= sizeof(lit) || inet_pton(AF_INET6, lit, &in6) != 1)
			return fail(err, len, "%s: '%s' has no valid IPv6 literal", member, u);
		port = p + 1 < end ? p + 1 : NULL;
		n += 2;
	} else {
		port = memchr(a, ':', (size_t)(end - a));
		n = (size_t)((port ? port : end) - a);
	}
	if (n == 0 || n >= sizeof(ret->host))
		return fail(err, len, "%s: '%s' has no host", member, u);
	memcpy(ret->host, a, n);
	ret->host[n] = '\0';
	if (*a != '[' && !host_ldh(ret->host))
		return fail(err, len,
			    "%s: '%s': the host '%s' is not letters, digits, hyphens and dots "
			    "(RFC 1123 §2.1)",
			    member, u, ret->host);
	if (port == NULL)
		return 0;
	/* RFC 3986 §3.2.3: port = *DIGIT; we want one a socket can have. */
	for (p = port + 1, v = 0; p < end && isdigit((unsigned char)*p) && v <= 65535; p++)
		v = v * 10 + (*p - '0');
	if (p != end || p == port + 1 || v < 1 || v > 65535)
		return fail(err, len, "%s: '%s' has no valid port (1 to 65535)", member, u);
	return 0;
}

/* Splits an absolute http(s) URI far enough to judge it.  Refuses what no
 * member of ours may carry: anything but RFC 3986's ASCII, userinfo, a
 * fragment, a host that is no DNS name or IP literal, a port no socket has. */
static int uri_parse(const char *member, const char *u, struct uri *ret, char *err, size_t len)
{
	const char *a, *end;

	if (uri_chars(member, u, err, len) < 0)
		return -EINVAL;
	if (strncmp(u, "https://", 8) == 0)
		ret->https = 1, a = u + 8;
	else if (strncmp(u, "http://", 7) == 0)
		ret->https = 0, a = u + 7;
	else
		return fail(err, len, "%s: '%s' is not an absolute http(s) URI", member, u);
	end = a + strcspn(a, "/?#");
	if (memchr(a, '@', (size_t)(end - a)) != NULL)
		return fail(err, len, "%s: '%s' carries userinfo", member, u);
	if (strchr(u, '#') != NULL)
		return fail(err, len, "%s: '%s' has a fragment", member, u);
	return uri_host(member, u, a, end, ret, err, len);
}

int cimd_https_url(const char *member, const char *url, char *err, size_t len)
{
	struct uri u;

	if (uri_parse(member, url, &u, err, len) < 0)
		return -EINVAL;
	if (!u.https)
		return fail(err, len, "%s: '%s' must be https", member, url);
	return 0;
}

static int loopback(const char *host)
{
	return strcmp(host, "127.0.0.1") == 0 || strcmp(host, "[::1]") == 0 ||
	       strcmp(host, "localhost") == 0;
}

/* Whether s came earlier in its array: seen holds the strings before it (as C
 * strings, what strcmp would compare), so that an array of k strings costs
 * O(k), not O(k^2); an admin line holds thousands of short ones.  1 seen, 0
 * not (and now it is), -ENOMEM. */
static int seen_before(json_t *seen, const char *s)
{
	if (json_object_get(seen, s) != NULL)
		return 1;
	return json_object_set_new_nocheck(seen, s, json_true()) == 0 ? 0 : -ENOMEM;
}

static int check_redirect_uris(const json_t *v, char *err, size_t len)
{
	json_t *seen = NULL;
	struct uri u;
	size_t i;
	const char *s;
	int r = -EINVAL;

	if (!json_is_array(v) || json_array_size(v) == 0)
		return fail(err, len, "redirect_uris: must be a non-empty array of strings");
	if ((seen = json_object()) == NULL)
		return -ENOMEM;
	for (i = 0; i < json_array_size(v); i++) {
		if ((s = json_string_value(json_array_get(v, i))) == NULL) {
			r = fail(err, len, "redirect_uris[%zu]: not a string", i);
			goto out;
		}
		if (strchr(s, '*') != NULL) {
			r = fail(err, len,
				 "redirect_uris: '%s' has a wildcard: redirect URIs are "
				 "compared as exact strings",
				 s);
			goto out;
		}
		if ((r = uri_parse("redirect_uris", s, &u, err, len)) < 0)
			goto out;
		if (!u.https && !loopback(u.host)) {
			r = fail(err, len,
				 "redirect_uris: '%s' must be https, or http on a loopback host "
				 "(127.0.0.1, [::1], localhost)",
				 s);
			goto out;
		}
		if ((r = seen_before(seen, s)) != 0) {
			if (r > 0)
				r = fail(err, len, "redirect_uris: '%s' appears twice", s);
			goto out;
		}
	}
	r = 0;
out:
	json_decref(seen);
	return r;
}

/* Array of unique strings. */
static int string_set(const char *member, const json_t *v, int may_be_empty, char *err, size_t len)
{
	json_t *seen = NULL;
	size_t i;
	const char *s;
	int r = 0;

	if (!json_is_array(v) || (json_array_size(v) == 0 && !may_be_empty))
		return fail(err, len, "%s: must be a non-empty array of strings", member);
	if ((seen = json_object()) == NULL)
		return -ENOMEM;
	for (i = 0; i < json_array_size(v) && r == 0; i++) {
		if ((s = json_string_value(json_array_get(v, i))) == NULL || *s == '\0')
			r = fail(err, len, "%s[%zu]: not a non-empty string", member, i);
		else if ((r = seen_before(seen, s)) > 0)
			r = fail(err, len, "%s: '%s' appears twice", member, s);
	}
	json_decref(seen);
	return r;
}

static int has(const json_t *arr, const char *s)
{
	size_t i;

	for (i = 0; i < json_array_size(arr); i++)
		if (strcmp(json_string_value(json_array_get(arr, i)), s) == 0)
			return 1;
	return 0;
}

/* RFC 7591 §2.1: grant_types and response_types must agree; defaults are
 * ["authorization_code"] and ["code"].  A client that uses no authorization
 * endpoint (client_credentials only) says response_types: [].  OAuth 2.1 drops
 * implicit and password. */
static int check_grants(const json_t *doc, char *err, size_t len)
{
	const json_t *g = json_object_get(doc, "grant_types"),
		     *rt = json_object_get(doc, "response_types");
	json_t *dg = NULL, *dr = NULL;
	int r = 0, code_grant, code_resp;

	if (g != NULL && string_set("grant_types", g, 0, err, len) < 0)
		return -EINVAL;
	if (rt != NULL && string_set("response_types", rt, 1, err, len) < 0)
		return -EINVAL;
	if (g == NULL)
		g = dg = json_pack("[s]", "authorization_code");
	if (rt == NULL)
		rt = dr = json_pack("[s]", "code");
	if (has(g, "implicit") || has(rt, "token") || has(rt, "id_token token"))
		r = fail(err, len,
			 "grant_types: the implicit grant is not allowed (OAuth 2.1 §10.1)");
	else if (has(g, "password"))
		r = fail(err, len,
			 "grant_types: the password grant is not allowed (OAuth 2.1 §10.1)");
	else {
		code_grant = has(g, "authorization_code");
		code_resp = has(rt, "code");
		if (code_grant && !code_resp)
			r = fail(err, len,
				 "grant_types has authorization_code but response_types "
				 "lacks code (RFC 7591 §2.1)");
		else if (!code_grant && code_resp)
			r = fail(err, len,
				 "response_types has code but grant_types lacks "
				 "authorization_code (RFC 7591 §2.1)");
		else if (code_grant && json_object_get(doc, "redirect_uris") == NULL)
			r = fail(err, len,
				 "redirect_uris: required with the authorization_code grant");
	}
	json_decref(dg);
	json_decref(dr);
	return r;
}

/* A JWK with private members anywhere in the document (RFC 7517 §9.2 names
 * the private members of the registered key types). */
static int private_jwk(const json_t *v)
{
	static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};
	const char *key;
	json_t *m;
	size_t i;

	if (json_is_object(v)) {
		if (json_object_get(v, "kty") != NULL)
			for (i = 0; i < sizeof(priv) / sizeof(priv[0]); i++)
				if (json_object_get(v, priv[i]) != NULL)
					return 1;
		json_object_foreach((json_t *)v, key, m) if (private_jwk(m)) return 1;
	} else if (json_is_array(v)) {
		for (i = 0; i < json_array_size(v); i++)
			if (private_jwk(json_array_get(v, i)))
				return 1;
	}
	return 0;
}

/* A member the appliance owns: absent, or exactly the appliance's value. */
static int owned(json_t *doc, const char *member, const char *want, char *err, size_t len)
{
	const json_t *v = json_object_get(doc, member);

	if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), want) != 0))
		return fail(err, len, "%s: must be \"%s\" or absent: the appliance sets it", member,
			    want);
	return json_object_set_new(doc, member, json_string(want)) == 0 ? 0 : -ENOMEM;
}

/* The rules on the submitted members, in the order docs/governance.md lists them. */
static int check_rules(const json_t *in, char *err, size_t len)
{
	static const char *const forbidden[] = {"client_secret", "client_secret_expires_at",
						"jwks"};
	static const char *const https_members[] = {"client_uri", "logo_uri", "policy_uri",
						    "tos_uri"};
	static const char *const string_members[] = {"client_name", "scope", "software_id",
						     "software_version"};
	const json_t *v;
	size_t i;

	for (i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
		if (json_object_get(in, forbidden[i]) != NULL)
			return fail(err, len, "%s: not allowed in a CIMD document%s", forbidden[i],
				    strcmp(forbidden[i], "jwks") == 0
					? " (keys are published at jwks_uri by the appliance)"
					: " (no shared secrets)");
	if (private_jwk(in))
		return fail(err, len,
			    "the document contains private key material (a JWK with a "
			    "private member)");
	if ((v = json_object_get(in, "redirect_uris")) != NULL &&
	    check_redirect_uris(v, err, len) < 0)
		return -EINVAL;
	for (i = 0; i < sizeof(https_members) / sizeof(https_members[0]); i++) {
		if ((v = json_object_get(in, https_members[i])) == NULL)
			continue;
		if (!json_is_string(v))
			return fail(err, len, "%s: not a string", https_members[i]);
		if (cimd_https_url(https_members[i], json_string_value(v), err, len) < 0)
			return -EINVAL;
	}
	for (i = 0; i < sizeof(string_members) / sizeof(string_members[0]); i++)
		if ((v = json_object_get(in, string_members[i])) != NULL && !json_is_string(v))
			return fail(err, len, "%s: not a string", string_members[i]);
	if ((v = json_object_get(in, "contacts")) != NULL &&
	    string_set("contacts", v, 0, err, len) < 0)
		return -EINVAL;
	if (check_grants(in, err, len) < 0)
		return -EINVAL;
	return 0;
}

int cimd_doc_prepare(const json_t *in, const char *client_id, const char *jwks_uri, const char *alg,
		     char **ret_bytes, size_t *ret_len, char *err, size_t len)
{
	json_t *doc = NULL;
	char *bytes = NULL;
	int r = -EINVAL;

	if (!json_is_object(in))
		return fail(err, len, "the document must be a JSON object");
	/* The identity members first: the appliance owns them (CIMD §3). */
	if ((doc = json_deep_copy(in)) == NULL)
		return -ENOMEM;
	if ((r = owned(doc, "client_id", client_id, err, len)) < 0 ||
	    (r = owned(doc, "jwks_uri", jwks_uri, err, len)) < 0 ||
	    (r = owned(doc, "token_endpoint_auth_method", "private_key_jwt", err, len)) < 0 ||
	    (r = owned(doc, "token_endpoint_auth_signing_alg", alg, err, len)) < 0)
		goto out;
	if ((r = check_rules(in, err, len)) < 0)
		goto out;
	if ((bytes = json_dumps(doc, JSON_COMPACT)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (strlen(bytes) > CIMD_DOC_MAX) {
		r = fail(err, len, "the document is %zu bytes as served; at most %d are allowed",
			 strlen(bytes), CIMD_DOC_MAX);
		goto out;
	}
	*ret_len = strlen(bytes);
	*ret_bytes = bytes;
	bytes = NULL;
	r = 0;
out:
	free(bytes);
	json_decref(doc);
	return r;
}
