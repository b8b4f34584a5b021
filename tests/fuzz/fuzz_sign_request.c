/*
 * fuzz_sign_request — the signing socket's request line (service/sign_request.c).
 *
 * Input: one line as it reaches the parser (the socket strips the newline and
 * caps the line at CIMD_SIGN_LINE_MAX).  Checked beyond "no crash": an
 * accepted request has both strings and a ttl within 0..max_ttl; a refused one
 * always says why.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

#define MAX_TTL 300

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sign_request rq;
	char msg[512] = "";

	if (sign_request_parse((const char *)data, size, MAX_TTL, &rq, msg, sizeof(msg)) == 0) {
		/* An assertion request names a client and an audience; a receipt
		 * request a jti of at most CIMD_JTI_MAX characters, and nothing else. */
		if (rq.json == NULL || rq.ttl < 0 || rq.ttl > MAX_TTL)
			abort();
		if (rq.op == SIGN_OP_ASSERT && (rq.client_id == NULL || rq.aud == NULL || rq.jti))
			abort();
		if (rq.op == SIGN_OP_RECEIPT &&
		    (rq.jti == NULL || strlen(rq.jti) == 0 || strlen(rq.jti) > CIMD_JTI_MAX ||
		     rq.client_id != NULL || rq.aud != NULL || rq.ttl != 0))
			abort();
		sign_request_clear(&rq);
		if (rq.json != NULL)
			abort();
	} else if (msg[0] == '\0') {
		abort();
	}
	return 0;
}
