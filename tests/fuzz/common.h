/*
 * common.h — what the fuzz targets share: a fixed P-256 key that signs what a
 * target builds around the fuzzer's bytes, so that the checks behind a
 * signature (DSSE, TPM2_Certify) are reached at all.  The key is public
 * (below, in common.c) and trusted by nothing but these targets.
 */
#ifndef CIMD_FUZZ_COMMON_H
#define CIMD_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* The key's public JWK with its RFC 7638 kid (a reference; do not decref), or
 * NULL when the key could not be loaded (the target then aborts). */
const json_t *fz_jwk(void);
/* ECDSA P-256 with SHA-256 over in: DER (SEC 1 §C.5, as DSSE carries it), malloc'd. */
int fz_sign_der(const uint8_t *in, size_t len, uint8_t **ret_der, size_t *ret_len);
/* The same as raw r||s (RFC 7518 §3.4, as TPM evidence carries it). */
int fz_sign_raw(const uint8_t *in, size_t len, uint8_t ret_sig[64]);

#endif
