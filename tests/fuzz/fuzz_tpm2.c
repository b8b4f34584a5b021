/*
 * fuzz_tpm2 — TPM evidence parsed offline (firmware/tpm2_verify.c): TPMT_PUBLIC
 * (TPM 2.0 Part 2 §12.2.4) and TPMS_ATTEST (§10.12.8) through tss2-mu.
 *
 * Input: byte 0 selects the function.
 *   0: tpm2_public_jwk(rest), then tpm2_verify_certify with rest as the public
 *      area (and a fixed, unparsable attest: the early checks only).
 *   1: 2 bytes (big-endian) attest length A, A bytes of TPMS_ATTEST, 1 byte
 *      extraData length E, E bytes of expected extraData, then the TPMT_PUBLIC.
 *      The target signs the attest with its own key (common.c) as the AK, so
 *      every check after the signature is reached; the key JWK is that of the
 *      public area when it has one.
 * The seeds are real evidence from swtpm (make-attest-seeds.sh).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *att, *extra, *pub;
	size_t alen, elen, plen;
	json_t *jwk = NULL, *other;
	uint8_t sig[64];
	char err[256];
	int restricted = -1, r;

	if (fz_jwk() == NULL)
		abort();
	if (size < 1)
		return 0;
	if (data[0] == 0) {
		if (tpm2_public_jwk(data + 1, size - 1, &jwk, &restricted) == 0) {
			char tp[CIMD_KID_LEN + 1];

			if (jwk == NULL || (restricted != 0 && restricted != 1) ||
			    jwk_thumbprint(jwk, tp) < 0)
				abort();
		}
		memset(sig, 0, sizeof(sig));
		tpm2_verify_certify((const uint8_t *)"x", 1, sig, sizeof(sig), fz_jwk(), data + 1,
				    size - 1, fz_jwk(), NULL, 0, err, sizeof(err));
		json_decref(jwk);
		return 0;
	}
	if (data[0] != 1 || size < 3)
		return 0;
	alen = (size_t)data[1] << 8 | data[2];
	if (alen > size - 3)
		return 0;
	att = data + 3;
	if (3 + alen + 1 > size || (elen = data[3 + alen]) > size - 3 - alen - 1)
		return 0;
	extra = data + 3 + alen + 1;
	pub = extra + elen;
	plen = size - 3 - alen - 1 - elen;
	if (fz_sign_raw(att, alen, sig) < 0)
		abort();
	if (tpm2_public_jwk(pub, plen, &jwk, NULL) < 0)
		jwk = NULL;
	other = jwk != NULL ? jwk : (json_t *)fz_jwk();
	err[0] = '\0';
	r = tpm2_verify_certify(alen ? att : (const uint8_t *)"", alen, sig, sizeof(sig), fz_jwk(),
				plen ? pub : (const uint8_t *)"", plen, other, elen ? extra : NULL,
				elen, err, sizeof(err));
	if (getenv("FUZZ_DEBUG") != NULL)
		fprintf(stderr, "tpm2_verify_certify: %d %s\n", r, err);
	/* A refusal names the check that failed. */
	if (r != 0 && r != -ENOMEM && r != -EINVAL && err[0] == '\0')
		abort();
	json_decref(jwk);
	return 0;
}
