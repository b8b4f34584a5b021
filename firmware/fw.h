/*
 * fw.h — the custody core's one header.
 *
 * firmware/ is the only code that touches key material or hardware.  It exports:
 *   - error codes and cimd_strerror()                        (err.c)
 *   - base64url without padding, RFC 4648 §5                  (b64url.c)
 *   - JWK construction and RFC 7638 thumbprints               (jwk.c)
 *   - ECDSA signature DER <-> raw r||s, RFC 7518 §3.4         (ecdsa.c)
 *   - JWS compact serialisation, RFC 7515 §7.1                (jws.c)
 *   - the backend-neutral key store                           (key_store.c)
 *     with its PKCS#11 (ks_pkcs11.c) and TPM 2.0 (ks_tpm2.c) backends.
 *
 * Conventions (STYLE.md): functions return 0 or a negative code; outputs are
 * named ret_* and written only on success; x_free(T **) accepts NULL and NULLs
 * the caller's pointer.  Nothing here logs.
 */
#ifndef CIMD_FW_H
#define CIMD_FW_H

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
#define CIMD_SIG_MAX 512     /* RSA-4096 or ECDSA P-521 raw, with room */
#define CIMD_KEYREF_MAX 4096 /* a stored key reference (TPM blobs are ~ 250 bytes) */
#define CIMD_JWS_MAX 65536   /* a compact JWS we build or verify */
#define CIMD_KID_LEN 43	     /* base64url of a SHA-256 digest */

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

/* ---- base64url, RFC 4648 §5, no padding (RFC 7515 §2) ---- */

/* Length of the encoding of n bytes, without the terminating NUL. */
size_t b64url_encoded_len(size_t n);
/* Encodes into out (b64url_encoded_len(n) + 1 bytes), NUL-terminated. */
void b64url_encode(const uint8_t *in, size_t n, char *out);
/* Allocating form; *ret_s is set only on success. */
int b64url_encode_alloc(const uint8_t *in, size_t n, char **ret_s);
/* Decodes exactly len characters; rejects padding, whitespace, other alphabets
 * and non-canonical trailing bits.  *ret_buf is malloc'd. */
int b64url_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n);

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

/* ---- key store ---- */

struct key_store;
struct ks_key;

/*
 * Opens a backend from a configuration string:
 *   pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=LABEL;pin-file=/etc/cimdd/pin
 *   tpm2:tcti=device:/dev/tpmrm0[;parent=0x81000001]
 *   tpm2:tcti=swtpm:host=127.0.0.1,port=2321
 * Parameters are separated by ';'; a value runs to the next ';'.  See docs/custody.md.
 * A key store serialises its calls, so it may be shared by threads; a second key
 * store on the same module or TPM in one process is refused (-EBUSY).
 * On failure the details are written to errbuf (may be NULL).
 */
int key_store_open(const char *conf, struct key_store **ret_ks, char *errbuf, size_t errlen);
void key_store_free(struct key_store **ks);
/* "pkcs11" or "tpm2". */
const char *key_store_backend(const struct key_store *ks);
/* The details of this thread's last failed key store call (never NULL). */
const char *key_store_errmsg(const struct key_store *ks);

/* Generates a key for alg in the hardware.  tag (NULL, or up to CIMD_TAG_MAX
 * characters of [A-Za-z0-9-]) is kept with the key where the hardware keeps keys
 * (PKCS#11: CKA_LABEL "cimdd:TAG"), so that key_store_list can tell which
 * generation it came from. */
#define CIMD_TAG_MAX 32
int key_store_generate(struct key_store *ks, enum cimd_alg alg, const char *tag,
		       struct ks_key **ret_key);
/* Finds a key from its stored reference (as key_store_key_ref gave it) and checks
 * that it is a key for alg. */
int key_store_load(struct key_store *ks, enum cimd_alg alg, const uint8_t *ref, size_t ref_len,
		   struct ks_key **ret_key);
/* Signs msg as JWS alg prescribes (RFC 7518 §3): ECDSA as raw r||s, RSASSA-PSS with
 * MGF1 and a salt as long as the hash.  ret_sig holds CIMD_SIG_MAX bytes. */
int key_store_sign(struct key_store *ks, struct ks_key *key, const uint8_t *msg, size_t len,
		   uint8_t *ret_sig, size_t *ret_len);
/* Several signatures in one call to the hardware's worker (one handoff, one
 * deadline for the batch: keep batches small enough to finish within the
 * store's timeout-ms on slow hardware).  Returns 0 when the batch ran, each
 * request's r (and sig) then holding its own result; a negative code when the
 * batch did not run or did not finish in time. */
#define CIMD_SIGN_BATCH_MAX 64
struct ks_sign_req {
	struct ks_key *key;
	const uint8_t *msg;
	size_t len;
	int r;
	uint8_t sig[CIMD_SIG_MAX];
	size_t sig_len;
};
int key_store_sign_batch(struct key_store *ks, struct ks_sign_req *reqs, size_t n);
/* Destroys the key in the hardware (see docs/custody.md for what that means on
 * each backend) and frees the handle. */
int key_store_destroy(struct key_store *ks, struct ks_key **key);

/* A reference as key_store_list gives it. */
struct ks_ref {
	uint8_t *ref;
	size_t len;
	char tag[CIMD_TAG_MAX + 1]; /* "" when the key has none */
	int whole; /* the hardware holds all of it, as key_store_load needs it (PKCS#11:
		      exactly one private and one public object with the CKA_ID) */
};
/* The references of every key this appliance made that the hardware itself
 * holds (PKCS#11: the private keys labelled "cimdd", each whole or not), at most
 * max, in one pass over the hardware: what reconciliation matches the database
 * against.  On PKCS#11 the store remembers the objects of every key listed, so
 * that no later call on one searches the token.  A TPM keeps no keys of ours
 * (they are blobs the caller stores), so a TPM store lists none.  The listing
 * has a deadline of its own, longer than timeout-ms: it reads every object on a
 * token.  Free with ks_refs_free. */
int key_store_list(struct key_store *ks, size_t max, struct ks_ref **ret_refs, size_t *ret_n);
void ks_refs_free(struct ks_ref **refs, size_t n);
/* 1 when the hardware holds the keys themselves, so that key_store_list shows
 * every key there is (PKCS#11); 0 when a key exists only as the reference the
 * caller stores (TPM: a wrapped blob), so that a listing proves nothing. */
int key_store_holds_keys(const struct key_store *ks);
/* What can be known of a stored reference without the hardware (no call to
 * it, any thread): 0 when it is well formed for this backend and alg,
 * -CIMD_ENOKEY when it is malformed (key_store_load would say the same),
 * -CIMD_EALG when it is a key for another algorithm. */
int key_store_ref_check(const struct key_store *ks, enum cimd_alg alg, const uint8_t *ref,
			size_t ref_len);
/* Destroys the hardware key of a stored reference without loading it first, as
 * key_store_destroy does (PKCS#11: every object with the CKA_ID, even half a
 * pair; TPM: flushed if loaded, the caller deletes the blob).  -CIMD_ENOKEY
 * when the hardware holds nothing under it. */
int key_store_destroy_ref(struct key_store *ks, const uint8_t *ref, size_t ref_len);

void ks_key_free(struct ks_key **key);
/* The reference to persist; valid while the key handle lives. */
void ks_key_ref(const struct ks_key *key, const uint8_t **ret_ref, size_t *ret_len);
enum cimd_alg ks_key_alg(const struct ks_key *key);
/* kid: the RFC 7638 thumbprint of the public key. */
const char *ks_key_kid(const struct ks_key *key);
/* The public JWK {kty, crv/x/y | n/e, kid, alg, use:"sig"}; a new reference. */
json_t *ks_key_jwk(const struct ks_key *key);

/* ---- attestation keys and hardware evidence (key_store.c, ks_*.c) ---- */

/*
 * Generates an attestation key (P-256, ES256) for this appliance.  On a TPM it is
 * a restricted signing key, an AK (TPM 2.0 Part 1 §25.2.3; objectAttributes
 * fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted |
 * sign | noDA, scheme fixed to ECDSA-SHA256), a child of the same SRK as the
 * client keys; on PKCS#11 an ordinary non-extractable P-256 key labelled
 * "cimdd:TAG".  key_store_load (CIMD_ALG_ES256) loads it again from its
 * reference, and key_store_sign signs with it: a TPM AK signs only digests the
 * TPM computed itself, so the TPM backend hashes the message in a hash sequence
 * (TPM2_HashSequenceStart / SequenceUpdate / SequenceComplete, Part 3 §17) and
 * signs with the ticket it returns; a message beginning with TPM_GENERATED_VALUE
 * (0xff544347) gets no ticket and is refused (-CIMD_EVERIFY).
 */
int key_store_generate_attest(struct key_store *ks, const char *tag, struct ks_key **ret_key);
/* Whether a loaded key is a restricted TPM key (an AK). */
int ks_key_restricted(const struct ks_key *key);

/* TPM2_Certify (TPM 2.0 Part 3 §18.2) of key by the AK ak, with qualifyingData. */
struct ks_certify {
	uint8_t *attest; /* TPMS_ATTEST, marshalled (the TPM2B_ATTEST's buffer) */
	size_t attest_len;
	uint8_t sig[CIMD_SIG_MAX]; /* the AK's signature over attest, raw r||s */
	size_t sig_len;
	uint8_t *pub; /* the certified key's TPMT_PUBLIC, marshalled */
	size_t pub_len;
};
/* -ENOTSUP on a PKCS#11 store; outputs freed with ks_certify_clear. */
int key_store_certify(struct key_store *ks, struct ks_key *ak, struct ks_key *key,
		      const uint8_t *qualifying, size_t qlen, struct ks_certify *ret);
void ks_certify_clear(struct ks_certify *c);
/* A TPM key's TPMT_PUBLIC, marshalled, from its reference (no hardware call);
 * -ENOTSUP for a PKCS#11 key.  *ret_pub is malloc'd. */
int ks_key_tpm_public(const struct ks_key *key, uint8_t **ret_pub, size_t *ret_len);

/* What a PKCS#11 token says about itself and a key (C_GetTokenInfo,
 * C_GetAttributeValue): self-reported, never proven.  Strings are the
 * token's blank-padded fields with the padding removed. */
struct ks_p11_evidence {
	char manufacturer[33];
	char model[17];
	char serial[17];
	char label[33];
	int sensitive; /* CK_BBOOL values: 1 true, 0 false, -1 not reported */
	int always_sensitive;
	int extractable;
	int never_extractable;
	int local;
};
/* -ENOTSUP on a TPM store. */
int key_store_p11_evidence(struct key_store *ks, struct ks_key *key, struct ks_p11_evidence *ret);

/*
 * The appliance's monotonic counter in the hardware, for detecting a restored
 * old state database (docs/audit.md).  On a TPM: an NV counter index
 * (TPMA_NV_COUNTER, TPM 2.0 Part 1 §37.2.1; NV_DefineSpace Part 3 §31.3,
 * NV_Increment §31.8, NV_Read §31.13), index from the backend configuration's
 * nv-counter parameter (default 0x0100C1DD, in the TPM owner's range of the
 * TCG registry of reserved handles), owner-authorised.  key_store_counter_read
 * gives its value, defining and first incrementing it if it does not exist
 * yet (an NV counter has no value before its first increment);
 * key_store_counter_increment increments it and gives the new value.
 * -ENOTSUP on PKCS#11 (no standard monotonic counter object).
 */
int key_store_counter_read(struct key_store *ks, uint64_t *ret_value);
int key_store_counter_increment(struct key_store *ks, uint64_t *ret_value);

/* ---- DSSE and TPM evidence, offline (dsse.c, tpm2_verify.c) ---- */

/* Standard base64 with padding (RFC 4648 §4), as DSSE envelopes use it. */
int b64_encode_alloc(const uint8_t *in, size_t n, char **ret_s);
/* Decodes standard base64, padding required; also accepts the URL-safe
 * alphabet, as DSSE verifiers must (DSSE protocol: "Base64 ... either"). */
int b64_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n);

/* DSSE v1 pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body)
 * SP body, lengths in ASCII decimal (DSSE protocol, "Signature definition"). */
int dsse_pae(const char *type, const uint8_t *body, size_t len, uint8_t **ret, size_t *ret_len);
/* Signs body as a DSSE envelope {"payloadType","payload","signatures":[{"keyid","sig"}]}
 * with key (ECDSA, signature DER-encoded, SEC 1 §C.5); keyid is the key's kid. */
int dsse_sign(struct key_store *ks, struct ks_key *key, const char *type, const uint8_t *body,
	      size_t len, json_t **ret_envelope);
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

#define NOTE_MAX 8192	  /* a signed note we write or read */
#define NOTE_NAME_MAX 255 /* a key name, a checkpoint origin */

/* Key ID of a P-256 JWK for signature type 0x02: SHA-256(DER SPKI)[:4]. */
int note_key_id(const json_t *jwk, uint8_t ret[4]);
/* The signature line "\u2014 NAME base64(key ID || DER ECDSA)\n" of key over
 * text (len bytes, ending in a newline); key must be an ES256 key. */
int note_sign_line(struct key_store *ks, struct ks_key *key, const char *name, const char *text,
		   size_t len, char **ret_line);
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

/* ---- JWS compact serialisation, RFC 7515 §7.1 ---- */

/* Signs payload with key; the protected header is {"alg","kid"} of the key plus
 * the members of extra_header (may be NULL; must not set alg or kid). */
int jws_sign(struct key_store *ks, struct ks_key *key, const json_t *extra_header,
	     const uint8_t *payload, size_t payload_len, char **ret_jws);
/* Verifies a compact JWS against a public JWK whose alg it must use.
 * On success *ret_header (if not NULL) and *ret_payload are set. */
int jws_verify(const char *jws, const json_t *jwk, json_t **ret_header, uint8_t **ret_payload,
	       size_t *ret_payload_len);

/* Verifies a JWS signature (raw r||s for ECDSA, RFC 7518 §3) over in. */
int jws_verify_signature(const json_t *jwk, enum cimd_alg alg, const uint8_t *in, size_t in_len,
			 const uint8_t *sig, size_t sig_len);

/* ---- backend interface: key_store.c <-> ks_*.c only ---- */

struct ks_param {
	const char *name;
	const char *value;
};

struct ks_backend {
	const char *name;
	/* The parameter naming the hardware: one key store per value per process. */
	const char *exclusive_param;
	/* key_store_holds_keys: whether list shows every key there is. */
	int holds_keys;
	int (*open)(struct key_store *ks, const struct ks_param *params, size_t nparams,
		    void **ret_be);
	void (*close)(void *be);
	/* ret_ref is malloc'd; ret_jwk holds only the public key members. */
	int (*generate)(struct key_store *ks, void *be, enum cimd_alg alg, const char *tag,
			uint8_t **ret_ref, size_t *ret_ref_len, json_t **ret_jwk);
	int (*load)(struct key_store *ks, void *be, enum cimd_alg alg, const uint8_t *ref,
		    size_t ref_len, json_t **ret_jwk);
	int (*sign)(struct key_store *ks, void *be, enum cimd_alg alg, const uint8_t *ref,
		    size_t ref_len, const uint8_t *msg, size_t len, uint8_t *ret_sig,
		    size_t *ret_len);
	int (*destroy)(struct key_store *ks, void *be, const uint8_t *ref, size_t ref_len);
	int (*list)(struct key_store *ks, void *be, size_t max, struct ks_ref **ret_refs,
		    size_t *ret_n);
	/* An attestation key (key_store_generate_attest): ES256, like generate. */
	int (*generate_attest)(struct key_store *ks, void *be, const char *tag, uint8_t **ret_ref,
			       size_t *ret_ref_len, json_t **ret_jwk);
	/* TPM2_Certify of the key of ref by the AK of ak_ref; -ENOTSUP where the
	 * hardware has no such thing. */
	int (*certify)(struct key_store *ks, void *be, const uint8_t *ak_ref, size_t ak_len,
		       const uint8_t *ref, size_t ref_len, const uint8_t *qualifying, size_t qlen,
		       struct ks_certify *ret);
	int (*p11_evidence)(struct key_store *ks, void *be, const uint8_t *ref, size_t ref_len,
			    struct ks_p11_evidence *ret);
	/* The monotonic counter (key_store_counter_*): its value after one increment
	 * when increment is 1, its value otherwise; -ENOTSUP where there is none. */
	int (*counter)(struct key_store *ks, void *be, int increment, uint64_t *ret_value);
	/* Pure functions of a reference, no hardware call: they may run on any
	 * thread.  ref_restricted: 1 for a restricted key (a TPM AK), 0 otherwise;
	 * tpm_public: the marshalled TPMT_PUBLIC (malloc'd), or -ENOTSUP. */
	int (*ref_restricted)(const uint8_t *ref, size_t ref_len);
	/* key_store_ref_check: load's checks that need no hardware. */
	int (*ref_check)(enum cimd_alg alg, const uint8_t *ref, size_t ref_len);
	int (*tpm_public)(const uint8_t *ref, size_t ref_len, uint8_t **ret_pub, size_t *ret_len);
};

extern const struct ks_backend ks_pkcs11_backend;
extern const struct ks_backend ks_tpm2_backend;

/* Records the details of a failure for key_store_errmsg(); returns r. */
int ks_fail(struct key_store *ks, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads a secret (a PIN) from a file that only its owner may read; strips one
 * trailing newline.  *ret_secret is zeroed and freed with secret_free(). */
int secret_read_file(const char *path, char **ret_secret);
void secret_free(char **secret);

#endif /* CIMD_FW_H */
