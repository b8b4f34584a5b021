/*
 * test_cimd_doc.c — every validation rule for submitted CIMD documents, each
 * with the error it must produce, and what a valid document becomes as served.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "service.h"

#define CID "https://keys.example.com/clients/agent-a"
#define JWKS CID "/jwks.json"

static int prepare(const char *doc_text, char **ret, char *err, size_t len)
{
	json_t *doc = json_loads(doc_text, JSON_REJECT_DUPLICATES, NULL);
	size_t n;
	int r;

	if (doc == NULL) {
		snprintf(err, len, "test document is not JSON");
		return -1;
	}
	r = cimd_doc_prepare(doc, CID, JWKS, "ES256", ret, &n, err, len);
	json_decref(doc);
	return r;
}

static void test_valid(void)
{
	char err[512], *bytes = NULL;
	json_t *served;
	int r;

	r = prepare(
	    "{\"client_name\":\"Agent A\",\"redirect_uris\":[\"https://app.example.com/cb\","
	    "\"http://127.0.0.1:9000/cb\",\"http://[::1]/cb\",\"http://localhost:8080/x\"],"
	    "\"client_uri\":\"https://example.com\",\"grant_types\":[\"authorization_code\","
	    "\"refresh_token\"],\"response_types\":[\"code\"]}",
	    &bytes, err, sizeof(err));
	if (!t_ok(r == 0, "a valid document is accepted (%s)", r < 0 ? err : "ok"))
		return;
	served = json_loads(bytes, 0, NULL);
	t_ok(strcmp(json_string_value(json_object_get(served, "client_id")), CID) == 0 &&
		 strcmp(json_string_value(json_object_get(served, "jwks_uri")), JWKS) == 0 &&
		 strcmp(json_string_value(json_object_get(served, "token_endpoint_auth_method")),
			"private_key_jwt") == 0 &&
		 strcmp(
		     json_string_value(json_object_get(served, "token_endpoint_auth_signing_alg")),
		     "ES256") == 0,
	     "the appliance fills in client_id, jwks_uri, private_key_jwt and the alg");
	t_ok(strncmp(bytes, "{\"client_name\":\"Agent A\"", 24) == 0,
	     "the submitted members keep their order in the served bytes");
	json_decref(served);
	free(bytes);

	/* Identity members equal to the appliance's own values are accepted. */
	r = prepare(
	    "{\"client_id\":\"" CID "\",\"jwks_uri\":\"" JWKS "\",\"token_endpoint_auth_method\":"
	    "\"private_key_jwt\",\"token_endpoint_auth_signing_alg\":\"ES256\",\"grant_types\":"
	    "[\"client_credentials\"],\"response_types\":[]}",
	    &bytes, err, sizeof(err));
	t_ok(r == 0, "client_credentials only, with response_types [] (%s)", r < 0 ? err : "ok");
	if (r == 0)
		free(bytes);
	r = prepare(
	    "{\"client_id\":\"" CID "\",\"jwks_uri\":\"" JWKS "\",\"token_endpoint_auth_method\":"
	    "\"private_key_jwt\",\"token_endpoint_auth_signing_alg\":\"ES256\",\"grant_types\":"
	    "[\"client_credentials\"],\"response_types\":[\"none\"]}",
	    &bytes, err, sizeof(err));
	t_ok(r == 0, "identity members that match, client_credentials only (%s)",
	     r < 0 ? err : "ok");
	free(bytes);
}

static void test_rules(void)
{
	static const struct {
		const char *doc, *want;
	} v[] = {
	    {"[1,2]", "must be a JSON object"},
	    {"{\"client_secret\":\"s\"}", "client_secret: not allowed"},
	    {"{\"client_secret_expires_at\":0}", "client_secret_expires_at: not allowed"},
	    {"{\"jwks\":{\"keys\":[]}}", "jwks: not allowed"},
	    {"{\"x\":{\"kty\":\"EC\",\"d\":\"abc\"}}", "private key material"},
	    {"{\"software_statement\":[{\"kty\":\"RSA\",\"p\":\"q\"}]}", "private key material"},
	    {"{\"client_id\":\"https://evil.example/clients/agent-a\"}", "client_id: must be"},
	    {"{\"jwks_uri\":\"https://evil.example/jwks\"}", "jwks_uri: must be"},
	    {"{\"token_endpoint_auth_method\":\"client_secret_basic\"}",
	     "token_endpoint_auth_method: must be \"private_key_jwt\""},
	    {"{\"token_endpoint_auth_signing_alg\":\"RS256\"}",
	     "token_endpoint_auth_signing_alg: must be \"ES256\""},
	    {"{\"redirect_uris\":\"https://a.example/cb\"}",
	     "redirect_uris: must be a non-empty array"},
	    {"{\"redirect_uris\":[]}", "redirect_uris: must be a non-empty array"},
	    {"{\"redirect_uris\":[7]}", "redirect_uris[0]: not a string"},
	    {"{\"redirect_uris\":[\"http://app.example.com/cb\"]}",
	     "must be https, or http on a loopback host"},
	    {"{\"redirect_uris\":[\"https://app.example.com/cb#frag\"]}", "has a fragment"},
	    {"{\"redirect_uris\":[\"https://user:pw@app.example.com/cb\"]}", "carries userinfo"},
	    {"{\"redirect_uris\":[\"https://*.example.com/cb\"]}", "has a wildcard"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\",\"https://a.example/cb\"]}",
	     "appears twice"},
	    {"{\"redirect_uris\":[\"/relative/cb\"]}", "is not an absolute http(s) URI"},
	    {"{\"redirect_uris\":[\"myapp://cb\"]}", "is not an absolute http(s) URI"},
	    {"{\"redirect_uris\":[\"https:///cb\"]}", "has no host"},
	    {"{\"redirect_uris\":[\"http://[::1]evil.example/cb\"]}",
	     "text after its IPv6 literal"},
	    {"{\"redirect_uris\":[\"https://a.example/c b\"]}", "space or control character"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"client_uri\":\"http://example.com\"}",
	     "client_uri: 'http://example.com' must be https"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"logo_uri\":\"ftp://x/y.png\"}",
	     "logo_uri: 'ftp://x/y.png' is not an absolute"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"policy_uri\":5}",
	     "policy_uri: not a string"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"tos_uri\":\"http://e.com/tos\"}",
	     "tos_uri: 'http://e.com/tos' must be https"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"client_name\":[\"x\"]}",
	     "client_name: not a string"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"contacts\":[\"a\",\"a\"]}",
	     "contacts: 'a' appears twice"},
	    {"{\"grant_types\":[\"client_credentials\"]}",
	     "response_types has code but grant_types lacks authorization_code"},
	    {"{\"redirect_uris\":[\"https://a.example/cb\"],\"response_types\":[\"none\"]}",
	     "grant_types has authorization_code but response_types lacks code"},
	    {"{\"grant_types\":[\"implicit\"],\"response_types\":[\"token\"]}", "implicit grant"},
	    {"{\"grant_types\":[\"password\"],\"response_types\":[\"none\"]}", "password grant"},
	    {"{\"grant_types\":[\"authorization_code\",\"authorization_code\"]}", "appears twice"},
	    {"{\"client_name\":\"x\"}",
	     "redirect_uris: required with the authorization_code grant"},
	};
	char err[512], *bytes = NULL, big[CIMD_DOC_MAX + 200];
	size_t i;
	int r;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		err[0] = '\0';
		r = prepare(v[i].doc, &bytes, err, sizeof(err));
		t_ok(r < 0 && strstr(err, v[i].want) != NULL, "refused: %s (got: %s)", v[i].want,
		     err);
		if (r == 0)
			free(bytes);
	}
	/* Size is judged as served, identity members included. */
	snprintf(big, sizeof(big),
		 "{\"redirect_uris\":[\"https://a.example/cb\"],\"client_name\":\"%0*d\"}",
		 CIMD_DOC_MAX - 250, 0);
	r = prepare(big, &bytes, err, sizeof(err));
	t_ok(r < 0 && strstr(err, "bytes as served; at most 5120"), "oversized document: %s", err);
	if (r == 0)
		free(bytes);
}

/* Issue 15, item 9: redirect URIs that could fool the approver are refused by
 * name; strict RFC 3986 ASCII URIs with a valid port pass. */
static void test_uris(void)
{
	static const struct {
		const char *uri, *want; /* the URI as JSON string text; NULL: accepted */
	} v[] = {
	    {"https://\\u0430pple.com/cb", "holds U+0430 at byte 8"},
	    {"https://example.com\\u3002evil.net/cb", "holds U+3002"},
	    {"https://exa\\u200bmple.com/cb", "holds U+200B"},
	    {"https://example.com/\\u202Ebc", "holds U+202E"},
	    {"https://ex\\\\ample.com/cb", "holds '\\', which no URI may"},
	    {"https://example.com:99999/cb", "no valid port (1 to 65535)"},
	    {"https://example.com:-1/cb", "no valid port"},
	    {"https://example.com:0/cb", "no valid port"},
	    {"https://example.com:/cb", "no valid port"},
	    {"https://example.com:443x/cb", "no valid port"},
	    {"https://exa_mple.com/cb", "is not letters, digits, hyphens and dots"},
	    {"https://-a.example/cb", "is not letters, digits, hyphens and dots"},
	    {"https://a..example/cb", "is not letters, digits, hyphens and dots"},
	    {"https://a.example./cb", "is not letters, digits, hyphens and dots"},
	    {"https://a%2eexample/cb", "is not letters, digits, hyphens and dots"},
	    {"https://a.example/%zz", "not followed by two hex digits"},
	    {"https://a.example/<script>", "holds '<'"},
	    {"https://[::g]/cb", "no valid IPv6 literal"},
	    {"https://xn--pple-43d.com/cb", NULL},
	    {"https://a.example:8443/cb?x=1&y=%20z", NULL},
	    {"http://[::1]:8080/cb", NULL},
	    {"https://192.0.2.1/cb", NULL},
	    {"https://[2001:db8::1]/cb", NULL},
	};
	char doc[512], err[512], *bytes = NULL;
	size_t i;
	int r;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		snprintf(doc, sizeof(doc), "{\"redirect_uris\":[\"%s\"]}", v[i].uri);
		err[0] = '\0';
		r = prepare(doc, &bytes, err, sizeof(err));
		if (v[i].want == NULL)
			t_ok(r == 0, "accepted: %s (%s)", v[i].uri, r < 0 ? err : "ok");
		else
			t_ok(r < 0 && strstr(err, v[i].want) != NULL, "refused: %s: %s (got: %s)",
			     v[i].uri, v[i].want, err);
		if (r == 0)
			free(bytes);
	}
	/* The same rules hold for every URI member and for an audience. */
	r = cimd_https_url("audience", "https://as.ex\xd0\xb0mple.com", err, sizeof(err));
	t_ok(r < 0 && strstr(err, "U+0430") != NULL, "an audience with a look-alike letter: %s",
	     err);
}

static void test_names(void)
{
	static const char *const good[] = {"a", "agent-a", "0agent", "a-b-c-1", NULL};
	static const char *const bad[] = {
	    "",	       "-a",
	    "Agent",   "agent_a",
	    "agent.a", "a b",
	    "ä",       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	    NULL};
	size_t i;
	int ok = 1;

	for (i = 0; good[i]; i++)
		ok &= cimd_valid_name(good[i]);
	t_ok(ok, "client names matching [a-z0-9][a-z0-9-]{0,62} are accepted");
	for (i = 0, ok = 1; bad[i]; i++)
		ok &= !cimd_valid_name(bad[i]);
	t_ok(ok, "other names, and a 64-character one, are refused");
}

int main(void)
{
	test_valid();
	test_rules();
	test_uris();
	test_names();
	return t_done();
}
