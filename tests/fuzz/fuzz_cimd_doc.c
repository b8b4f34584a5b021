/*
 * fuzz_cimd_doc — CIMD document rules (service/cimd_doc.c) on arbitrary bytes.
 *
 * Input: a submitted document, loaded as admin.c loads a request
 * (JSON_REJECT_DUPLICATES).  The key algorithm comes from the input's length.
 * Beyond "no crash": a document accepted once is accepted again as served,
 * unchanged (the identity members are idempotent), and fits CIMD_DOC_MAX.  The
 * same bytes as a string also go through cimd_https_url and cimd_valid_name,
 * which check audiences and names from the admin socket.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

#define CLIENT_ID "https://cimd.example.com/clients/agent-a"
#define JWKS_URI "https://cimd.example.com/clients/agent-a/jwks.json"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const algs[] = {"ES256", "ES384", "PS256"};
	const char *alg = algs[size % 3];
	char err[512], *out = NULL, *again = NULL, *s;
	size_t len = 0, len2 = 0;
	json_t *doc, *back = NULL;

	doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (doc != NULL) {
		err[0] = '\0';
		if (cimd_doc_prepare(doc, CLIENT_ID, JWKS_URI, alg, &out, &len, err, sizeof(err)) ==
		    0) {
			if (len != strlen(out) || len > CIMD_DOC_MAX)
				abort();
			back = json_loadb(out, len, JSON_REJECT_DUPLICATES, NULL);
			if (back == NULL ||
			    cimd_doc_prepare(back, CLIENT_ID, JWKS_URI, alg, &again, &len2, err,
					     sizeof(err)) != 0 ||
			    len2 != len || memcmp(again, out, len) != 0)
				abort();
		} else if (err[0] == '\0') {
			abort();
		}
	}
	/* The same bytes as one string (up to a NUL, as a C caller sees them). */
	if ((s = strndup((const char *)data, size)) != NULL) {
		cimd_https_url("aud", s, err, sizeof(err));
		cimd_valid_name(s);
		free(s);
	}
	free(out);
	free(again);
	json_decref(back);
	json_decref(doc);
	return 0;
}
