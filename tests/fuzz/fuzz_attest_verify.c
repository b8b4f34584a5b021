/*
 * fuzz_attest_verify — `cimdctl attest verify` (firmware/attest_fmt.c,
 * attest_verify) on an envelope and a trust JWKS as they come off the network.
 *
 * Input: 2 bytes (big-endian) the length T of the trust JWKS, T bytes of it,
 * then the envelope.  The seeds are real envelopes and attestation-keys.json
 * of --dev instances on SoftHSM2 and swtpm (make-attest-seeds.sh).  What lies
 * behind the DSSE signature is fuzzed by fuzz_attest_statement.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void report(void *arg, int ok, const char *check, const char *detail)
{
	size_t *n = arg;

	/* Each check is named and says something. */
	if (check == NULL || detail == NULL || (ok != 0 && ok != 1))
		abort();
	/* FUZZ_DEBUG=1 ./fuzz_... SEED: what each check said, to see how far a seed gets. */
	if (getenv("FUZZ_DEBUG") != NULL)
		fprintf(stderr, "%s %s: %s\n", ok ? "ok  " : "FAIL", check, detail);
	(*n)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *trust;
	size_t t, n = 0;
	int r;

	if (size < 2 || (t = (size_t)data[0] << 8 | data[1]) > size - 2)
		return 0;
	trust = json_loadb((const char *)data + 2, t, JSON_REJECT_DUPLICATES, NULL);
	r = attest_verify((const char *)data + 2 + t, size - 2 - t, trust, NULL, 0, NULL, 0, report,
			  &n);
	/* Every run reports at least one check; success only if none failed. */
	if (n == 0 || (r != 0 && r != -CIMD_EVERIFY))
		abort();
	json_decref(trust);
	return 0;
}
