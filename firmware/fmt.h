/*
 * fmt.h — firmware/'s hardware-free half: the formats, and their verifiers.
 *
 * Nothing declared here calls the key store or any hardware, so a program that
 * must not trust the appliance (cimdctl's offline checks: attest verify,
 * journal prove/consistency, audit verify) links this half alone
 * (libcimdfmt.a; tests/test_layers.c checks it).  It exports:
 *   - error codes, cimd_strerror() and cimd_fail()             (err.c)
 *   - base64: RFC 4648 §5 without padding and §4 with it        (b64.c)
 *   - JWK construction and RFC 7638 thumbprints               (jwk.c)
 *   - ECDSA signature DER <-> raw r||s, RFC 7518 §3.4         (ecdsa.c)
 *   - JWS compact verification, RFC 7515 §7.1                 (jws.c)
 *   - DSSE PAE and envelope verification                      (dsse.c)
 *   - checks of TPM evidence (tss2-mu only, no TPM)           (tpm2_verify.c)
 *   - the attestation verification procedure                  (attest_fmt.c)
 *   - RFC 9162 Merkle trees and proofs                        (merkle.c)
 *   - C2SP signed notes and checkpoints: text and verification (note.c)
 * The key store and the signing halves are in ks.h.
 *
 * Conventions (STYLE.md): functions return 0 or a negative code; outputs are
 * named ret_* and written only on success; x_free(T **) accepts NULL and NULLs
 * the caller's pointer.  Nothing here logs.
 */
#ifndef CIMD_FMT_H
#define CIMD_FMT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Error codes.  Negative errno values (-ENOMEM, -EINVAL, ...) are used as well. */
enum {
	CIMD_EBASE = 1000,
	CIMD_ECONFIG,	   /* bad key store configuration string */
	CIMD_ENOMODULE,	   /* PKCS#11 module cannot be loaded */
	CIMD_ENOTOKEN,	   /* no token with the configured label */
	CIMD_EPIN,	   /* PIN refused, or PIN file unusable */
	CIMD_EUNAVAILABLE, /* hardware does not answer (gone, stopped, timed out) */
	CIMD_ENOKEY,	   /* no such key in the hardware, or reference malformed */
	CIMD_EALG,	   /* algorithm unknown or not what the key is */
	CIMD_EBACKEND,	   /* the hardware refused the operation */
	CIMD_EFORMAT,	   /* malformed encoding (base64url, DER, JWK, JWS) */
	CIMD_EVERIFY,	   /* signature does not verify */
	CIMD_ECRYPTO,	   /* OpenSSL failed */
	CIMD_ELAST
};

/* Words for a code from this project or for a negative errno. */
const char *cimd_strerror(int r);
/* Writes the reason into errbuf (may be NULL) and returns r: the one line of
 * a verifier's failure path. */
int cimd_fail(char *errbuf, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Caps that bound firmware inputs and outputs. */
#define CIMD_SIG_MAX 512   /* RSA-4096 or ECDSA P-521 raw, with room */
#define CIMD_JWS_MAX 65536 /* a compact JWS we build or verify */
#define CIMD_KID_LEN 43	   /* base64url of a SHA-256 digest */

/* ---- algorithms (RFC 7518 §3.1) ---- */

enum cimd_alg {
	CIMD_ALG_NONE = 0,
	CIMD_ALG_ES256,
	CIMD_ALG_ES384,
	CIMD_ALG_PS256,
};

/* "ES256" <-> CIMD_ALG_ES256; unknown names give CIMD_ALG_NONE / NULL. */
enum cimd_alg cimd_alg_from_name(const char *name);
const char *cimd_alg_name(enum cimd_alg alg);
/* Field size in bytes of an ECDSA algorithm's curve (32, 48), 0 for others. */
size_t cimd_alg_ec_size(enum cimd_alg alg);

/* ---- base64, RFC 4648 (b64.c): one codec, two forms ---- */

enum base64_form {
	/* §5 URL-safe alphabet, no padding (RFC 7515 §2: JWS, JWK).  Decoding
	 * rejects padding and the standard alphabet. */
	BASE64_URL,
	/* §4 standard alphabet, padded with "=".  Decoding requires the padding
	 * and also accepts the URL-safe alphabet, one alphabet per string, as
	 * DSSE verifiers must (DSSE protocol: "Base64 ... either"). */
	BASE64_STD,
};
/* Both decoders reject whitespace, anything outside the alphabet and
 * non-canonical trailing bits (§3.5). */

/* Length of the encoding of n bytes, without the terminating NUL. */
size_t base64_encoded_len(enum base64_form form, size_t n);
/* Encodes into out (base64_encoded_len(form, n) + 1 bytes), NUL-terminated. */
void base64_encode(enum base64_form form, const uint8_t *in, size_t n, char *out);
/* Allocating form; *ret_s is set only on success. */
int base64_encode_alloc(enum base64_form form, const uint8_t *in, size_t n, char **ret_s);
/* Decodes exactly len characters.  *ret_buf is malloc'd. */
int base64_decode(enum base64_form form, const char *in, size_t len, uint8_t **ret_buf,
		  size_t *ret_n);

/* The same, named by form: base64url (BASE64_URL) ... */
size_t b64url_encoded_len(size_t n);
void b64url_encode(const uint8_t *in, size_t n, char *out);
int b64url_encode_alloc(const uint8_t *in, size_t n, char **ret_s);
int b64url_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n);
/* ... and standard base64 (BASE64_STD), as DSSE envelopes use it. */
int b64_encode_alloc(const uint8_t *in, size_t n, char **ret_s);
int b64_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n);

/* Lower-case hex of n bytes into out (2n + 1 bytes), NUL-terminated. */
void hex_encode(const uint8_t *in, size_t n, char *out);

/* ---- JWK, RFC 7517 / RFC 7518 §6 ---- */

/* Public EC JWK {kty,crv,x,y}; x and y are each exactly cimd_alg_ec_size(alg)
 * bytes (RFC 7518 §6.2.1.2: padded to the field size). */
int jwk_new_ec(enum cimd_alg alg, const uint8_t *x, const uint8_t *y, json_t **ret_jwk);
/* Public RSA JWK {kty,n,e}; leading zero octets of n and e are dropped
 * (RFC 7518 §6.3.1.1: "the minimum number of octets"). */
int jwk_new_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len, json_t **ret_jwk);
/* RFC 7638 SHA-256 thumbprint of a public JWK (EC, RSA or OKP), base64url,
 * into ret_tp (CIMD_KID_LEN + 1 bytes). */
int jwk_thumbprint(const json_t *jwk, char *ret_tp);
/* OpenSSL public key from a public JWK (for verification). */
struct evp_pkey_st;
int jwk_to_evp(const json_t *jwk, struct evp_pkey_st **ret_pkey);

/* ---- ECDSA signature encodings, RFC 7518 §3.4 ---- */

/* DER ECDSA-Sig-Value (SEC 1 §C.5) -> raw r||s, each left-padded to size. */
int ecdsa_der_to_raw(const uint8_t *der, size_t der_len, size_t size, uint8_t *ret_raw);
/* raw r||s (2*size bytes) -> DER; *ret_der is malloc'd. */
int ecdsa_raw_to_der(const uint8_t *raw, size_t size, uint8_t **ret_der, size_t *ret_len);

/* ---- JWS compact serialisation, RFC 7515 §7.1 (jws.c; signing: ks.h) ---- */

/* Verifies a compact JWS against a public JWK whose alg it must use.
 * On success *ret_header (if not NULL) and *ret_payload are set. */
int jws_verify(const char *jws, const json_t *jwk, json_t **ret_header, uint8_t **ret_payload,
	       size_t *ret_payload_len);

/* Verifies a JWS signature (raw r||s for ECDSA, RFC 7518 §3) over in. */
int jws_verify_signature(const json_t *jwk, enum cimd_alg alg, const uint8_t *in, size_t in_len,
			 const uint8_t *sig, size_t sig_len);

/* ---- DSSE and TPM evidence, offline (dsse.c, tpm2_verify.c; signing: ks.h) ---- */

/* DSSE v1 pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body)
 * SP body, lengths in ASCII decimal (DSSE protocol, "Signature definition"). */
int dsse_pae(const char *type, const uint8_t *body, size_t len, uint8_t **ret, size_t *ret_len);
/* Verifies an envelope against the keys of a JWKS (by keyid = kid); on success
 * *ret_payload (malloc'd) is the payload and *ret_kid the kid that verified (a
 * pointer into trust).  errbuf names the failed check. */
int dsse_verify(const json_t *envelope, const json_t *trust_jwks, const char **ret_type,
		uint8_t **ret_payload, size_t *ret_len, const char **ret_kid, char *errbuf,
		size_t errlen);

/*
 * Checks TPM2_Certify evidence offline (docs/attestation.md, "TPM evidence"):
 * attest parses as a TPMS_ATTEST with magic TPM_GENERATED_VALUE and type
 * TPM_ST_ATTEST_CERTIFY; sig (raw r||s) verifies over attest with ak_jwk; extraData
 * equals expected_extra; pub parses as a TPMT_PUBLIC whose name (nameAlg ||
 * H(TPMT_PUBLIC)) equals the certified name; its attributes have fixedTPM,
 * fixedParent and sensitiveDataOrigin and not restricted; and its public key is
 * key_jwk.  0, or -CIMD_EVERIFY with errbuf naming the first check that failed.
 */
int tpm2_verify_certify(const uint8_t *attest, size_t attest_len, const uint8_t *sig,
			size_t sig_len, const json_t *ak_jwk, const uint8_t *pub, size_t pub_len,
			const json_t *key_jwk, const uint8_t *expected_extra, size_t extra_len,
			char *errbuf, size_t errlen);
/* The public JWK {kty,crv,x,y | n,e} of a marshalled TPMT_PUBLIC, and whether it
 * is restricted; for checking an AK published with its TPMT_PUBLIC. */
int tpm2_public_jwk(const uint8_t *pub, size_t pub_len, json_t **ret_jwk, int *ret_restricted);

/* The TPM2_Certify qualifyingData binding a client key to one client and one
 * document (attest_fmt.c, docs/attestation.md). */
int attest_binding(const char *client_id, const char *cimd_hex, const char *kid, uint8_t ret[32]);
/*
 * Verifies an attestation or revocation envelope offline (docs/attestation.md,
 * "Verification"): the DSSE signature by a key of trust (the appliance's
 * attestation-keys.json), the statement, the subjects against the given
 * document and JWKS bytes (either may be NULL: not checked), and every key's
 * hardware evidence.  Each check is reported as it is made; 0 when all held,
 * -CIMD_EVERIFY when one did not.
 */
typedef void (*attest_report_fn)(void *arg, int ok, const char *check, const char *detail);
int attest_verify(const char *envelope, size_t len, const json_t *trust, const uint8_t *doc,
		  size_t doc_len, const uint8_t *jwks, size_t jwks_len, attest_report_fn report,
		  void *arg);

/* ---- RFC 9162 Merkle trees over SHA-256 (merkle.c) ---- */

#define MERKLE_LEAVES_MAX (1ULL << 40) /* leaves of one tree */
#define MERKLE_PROOF_MAX 64	       /* nodes of one proof */

/* SHA-256(0x00 || data) and SHA-256(0x01 || left || right) (RFC 9162 §2.1.1). */
void merkle_leaf_hash(const uint8_t *data, size_t len, uint8_t ret[32]);
void merkle_node_hash(const uint8_t left[32], const uint8_t right[32], uint8_t ret[32]);

/* The head of a growing tree, O(log n) per appended leaf hash. */
struct merkle_frontier {
	uint64_t size;
	uint8_t nodes[64][32]; /* nodes[i]: the perfect subtree bit i of size stands for */
};
void merkle_frontier_init(struct merkle_frontier *f);
void merkle_frontier_append(struct merkle_frontier *f, const uint8_t leaf[32]);
void merkle_frontier_root(const struct merkle_frontier *f, uint8_t ret[32]);

/* A tree of leaf hashes, for proofs: every aligned perfect subtree of 2^base
 * leaves or more is kept; smaller ones are hashed when a proof needs them,
 * from the last block's leaves (kept) or from leaves the fetch callback reads
 * (count <= 2^(base-1) leaves from index first; 0 or a negative code). */
#define MERKLE_BASE_MAX 10
typedef int (*merkle_fetch_fn)(void *arg, uint64_t first, uint64_t count, uint8_t (*ret)[32]);
struct merkle_tree {
	uint64_t n;
	unsigned levels, base;
	uint8_t (*level[64])[32];
	uint8_t (*pending)[32]; /* base > 0: the leaves of the last, incomplete block */
	merkle_fetch_fn fetch;
	void *fetch_arg;
};
/* An empty tree keeping levels >= base (0..MERKLE_BASE_MAX). */
int merkle_tree_new(unsigned base, struct merkle_tree **ret);
void merkle_tree_set_fetch(struct merkle_tree *t, merkle_fetch_fn fn, void *arg);
/* A tree of n leaves keeping every level. */
int merkle_tree_build(const uint8_t (*leaves)[32], uint64_t n, struct merkle_tree **ret);
void merkle_tree_free(struct merkle_tree **t);
/* Appends k leaf hashes to the tree; on failure the tree is unchanged. */
int merkle_tree_extend(struct merkle_tree *t, const uint8_t (*leaves)[32], uint64_t k);
/* MTH of the first size leaves (size <= n). */
int merkle_tree_root(const struct merkle_tree *t, uint64_t size, uint8_t ret[32]);
/* PATH(index, D[size]) (§2.1.3.1) and PROOF(old_size, D[size]) (§2.1.4.1), each at
 * most MERKLE_PROOF_MAX nodes into ret; a fetch callback's error is returned. */
int merkle_inclusion_proof(const struct merkle_tree *t, uint64_t index, uint64_t size,
			   uint8_t (*ret)[32], size_t *ret_len);
int merkle_consistency_proof(const struct merkle_tree *t, uint64_t old_size, uint64_t size,
			     uint8_t (*ret)[32], size_t *ret_len);
/* The verifications of §2.1.3.2 and §2.1.4.2: 0 or -CIMD_EVERIFY. */
int merkle_verify_inclusion(uint64_t index, uint64_t size, const uint8_t leaf[32],
			    const uint8_t (*proof)[32], size_t len, const uint8_t root[32]);
int merkle_verify_consistency(uint64_t old_size, uint64_t size, const uint8_t (*proof)[32],
			      size_t len, const uint8_t old_root[32], const uint8_t root[32]);

/* ---- C2SP signed notes and tlog checkpoints (note.c, docs/audit.md) ---- */

#define NOTE_MAX 8192		    /* a signed note we write or read */
#define NOTE_NAME_MAX 255	    /* a key name, a checkpoint origin */
#define NOTE_EM_DASH "\xe2\x80\x94" /* U+2014 in UTF-8: begins a signature line */

/* Key ID of a P-256 JWK for signature type 0x02: SHA-256(DER SPKI)[:4]. */
int note_key_id(const json_t *jwk, uint8_t ret[4]);
/* Whether name may name a key or a checkpoint origin: non-empty, at most
 * NOTE_NAME_MAX characters of printable ASCII but space and '+' (signed-note:
 * "Key names ... MUST NOT contain spaces or plus signs"). */
int note_name_valid(const char *name);
/* Verifies that note carries a valid signature by (name, jwk); the text
 * length (through its last newline before the blank line) in *ret_text_len.
 * -ENOENT when no signature line is by that key; -CIMD_EFORMAT or
 * -CIMD_EVERIFY with errbuf naming what failed. */
int note_verify(const char *note, size_t len, const char *name, const json_t *jwk,
		size_t *ret_text_len, char *errbuf, size_t errlen);

struct checkpoint {
	char origin[NOTE_NAME_MAX + 1];
	uint64_t size;
	uint8_t root[32];
	size_t extensions; /* offset of the first extension line in the text */
};
/* "ORIGIN\nSIZE\nbase64(ROOT)\n" followed by extensions (NULL, or lines each
 * ending in a newline). */
int checkpoint_format(const char *origin, uint64_t size, const uint8_t root[32],
		      const char *extensions, char **ret_text);
/* Parses a checkpoint's text (not the signatures). */
int checkpoint_parse(const char *text, size_t len, struct checkpoint *ret);
/* A signed checkpoint: parsed, and signed as its origin by a key of the JWKS
 * trust ({"keys":[...]}, P-256); the kid that verified in *ret_kid (a pointer
 * into trust).  -CIMD_EFORMAT or -CIMD_EVERIFY with errbuf saying why. */
int checkpoint_verify(const char *note, size_t len, const json_t *trust,
		      struct checkpoint *ret_checkpoint, const char **ret_kid, char *errbuf,
		      size_t errlen);
/* The decimal value of extension line "KEY VALUE"; -ENOENT when absent. */
int checkpoint_extension(const char *text, size_t len, const struct checkpoint *c, const char *key,
			 uint64_t *ret_value);

#endif /* CIMD_FMT_H */
