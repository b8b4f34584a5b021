/*
 * note_sign.c — the signature line of a C2SP signed note
 * (c2sp.org/signed-note), made with an attestation key through the key store:
 * U+2014 EM DASH, space, key name, space, base64 of the 4-byte key ID
 * followed by the signature, signature type 0x02 (a DER ECDSA-Sig-Value over
 * SHA-256 of the note text).  note.c verifies it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks.h"

int note_sign_line(struct key_store *ks, struct ks_key *key, const char *name, const char *text,
		   size_t len, char **ret_line)
{
	enum cimd_alg alg = ks_key_alg(key);
	size_t size = cimd_alg_ec_size(alg), der_len, sl;
	uint8_t sig[CIMD_SIG_MAX], *der = NULL, *blob = NULL;
	char *b64 = NULL, *line = NULL;
	json_t *jwk = NULL;
	int r;

	if (!note_name_valid(name) || len == 0 || text[len - 1] != '\n' || alg != CIMD_ALG_ES256)
		return -EINVAL;
	if ((jwk = ks_key_jwk(key)) == NULL)
		return -ENOMEM;
	if ((r = key_store_sign(ks, key, (const uint8_t *)text, len, sig, &sl)) < 0 ||
	    (r = ecdsa_raw_to_der(sig, size, &der, &der_len)) < 0)
		goto out;
	if ((blob = malloc(4 + der_len)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = note_key_id(jwk, blob)) < 0)
		goto out;
	memcpy(blob + 4, der, der_len);
	if ((r = b64_encode_alloc(blob, 4 + der_len, &b64)) < 0)
		goto out;
	if (asprintf(&line, "%s %s %s\n", NOTE_EM_DASH, name, b64) < 0) {
		r = -ENOMEM;
		goto out;
	}
	*ret_line = line;
	r = 0;
out:
	free(b64);
	free(blob);
	free(der);
	json_decref(jwk);
	return r;
}
