/*
 * ks.h — firmware/'s hardware half: the key store, and the signing halves of
 * the formats, which sign through it.
 *
 * Only this half touches key material or hardware, and only its files include
 * a tss2 ESAPI/TCTI or libp11 header.  It exports:
 *   - the backend-neutral key store                            (key_store.c)
 *     with its PKCS#11 (ks_pkcs11.c) and TPM 2.0 (ks_tpm2.c) backends
 *   - JWS compact signing, RFC 7515 §7.1                       (jws_sign.c)
 *   - DSSE envelope signing                                    (dsse_sign.c)
 *   - C2SP signed-note signature lines                         (note_sign.c)
 * It is libcimdks.a, built on libcimdfmt.a (fmt.h), and linked by the daemon,
 * the tests and the benchmarks; never by cimdctl.
 *
 * Conventions as in fmt.h.
 */
#ifndef CIMD_KS_H
#define CIMD_KS_H

#include <errno.h>
#include <time.h>

#include "fmt.h"

/* Caps of the key store. */
#define CIMD_KEYREF_MAX 4096	/* a stored key reference (TPM blobs are ~ 250 bytes) */
#define CIMD_KS_SESSIONS_MAX 64 /* sessions (workers) of one key store */

/* ---- key store ---- */

struct key_store;
struct ks_key;

/*
 * Opens a backend from a configuration string:
 *   pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=LABEL;pin-file=/etc/cimdd/pin
 *   tpm2:tcti=device:/dev/tpmrm0[;parent=0x81000001]
 *   tpm2:tcti=swtpm:host=127.0.0.1,port=2321
 * Parameters are separated by ';'; a value runs to the next ';'.  See docs/custody.md.
 * The store's own parameters, on either backend: timeout-ms (the deadline of a
 * call) and sessions (how many signatures run at once; key_store_sessions).
 * A key store may be shared by threads; a second key store on the same module or
 * TPM in one process is refused (-EBUSY).
 * On failure the details are written to errbuf (may be NULL).
 */
int key_store_open(const char *conf, struct key_store **ret_ks, char *errbuf, size_t errlen);
void key_store_free(struct key_store **ks);
/* "pkcs11" or "tpm2". */
const char *key_store_backend(const struct key_store *ks);
/* The sessions the store signs on in parallel: `sessions=N` of the
 * configuration string, by default the number of cores, capped by what the
 * hardware allows (a TPM: 1). */
int key_store_sessions(const struct key_store *ks);
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
/* The asynchronous form, for a caller that must not wait on the hardware (the
 * signing socket): reqs[0..n) are hashed now (their msg may go) and handed to
 * one worker, claimed within timeout-ms (else -CIMD_EUNAVAILABLE, as
 * key_store_sign_batch), or by until (CLOCK_MONOTONIC; NULL: none) when that
 * is sooner: -ETIMEDOUT then, and nothing was taken (a caller with deadlines
 * of its own to keep keeps them, then tries again).  When the hardware has signed them, done(arg)
 * runs on that worker's thread with each reqs[i].r, sig and sig_len set; it must be quick (hand the
 * results on).  The caller keeps reqs until then, or until key_store_sign_expire gives them back,
 * which it calls once ret->deadline has passed.  No attestation keys. */
struct ks_pending {
	struct timespec deadline; /* CLOCK_MONOTONIC: when a call would give up */
	size_t idx;
	uint32_t turn;
};
int key_store_sign_async(struct key_store *ks, struct ks_sign_req *reqs, size_t n,
			 const struct timespec *until, void (*done)(void *arg), void *arg,
			 struct ks_pending *ret);
/* The caller's deadline for p passed: 0 when the signatures were abandoned
 * (done will never run, reqs are the caller's again, and the store fails at
 * once until the hardware answers), -1 when done has run or runs now. */
int key_store_sign_expire(struct key_store *ks, const struct ks_pending *p);
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

/* ---- signing through the key store: the halves of fmt.h's formats ---- */

/* Signs payload with key; the protected header is {"alg","kid"} of the key plus
 * the members of extra_header (may be NULL; must not set alg or kid). */
int jws_sign(struct key_store *ks, struct ks_key *key, const json_t *extra_header,
	     const uint8_t *payload, size_t payload_len, char **ret_jws);
/* Signs body as a DSSE envelope {"payloadType","payload","signatures":[{"keyid","sig"}]}
 * with key (ECDSA, signature DER-encoded, SEC 1 §C.5); keyid is the key's kid. */
int dsse_sign(struct key_store *ks, struct ks_key *key, const char *type, const uint8_t *body,
	      size_t len, json_t **ret_envelope);
/* The signature line "\u2014 NAME base64(key ID || DER ECDSA)\n" of key over
 * text (len bytes, ending in a newline); key must be an ES256 key. */
int note_sign_line(struct key_store *ks, struct ks_key *key, const char *name, const char *text,
		   size_t len, char **ret_line);

/* ---- backend interface: key_store.c <-> ks_*.c only ---- */

struct ks_param {
	const char *name;
	const char *value;
};

/* One signature as a backend gets it: the digest of the message under the
 * alg's hash, computed by the caller; the message itself only for a
 * restricted key (a TPM AK signs only what the TPM hashed), NULL otherwise. */
struct ks_tbs {
	enum cimd_alg alg;
	const uint8_t *ref;
	size_t ref_len;
	const uint8_t *digest;
	size_t dlen;
	const uint8_t *msg;
	size_t len;
};
/* A shared signature that needs the hardware to itself (see sign). */
#define KS_ALONE (-EDEADLK)

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
	/* Signs tbs on the session sess (session_new's, or NULL).  Signatures on
	 * different sessions run at once when shared is 1: the backend may then
	 * read its state but change nothing shared, and returns KS_ALONE when
	 * the signature needs more (a key to look up, a session to recover): it
	 * is then called again with shared 0, the hardware to itself. */
	int (*sign)(struct key_store *ks, void *be, void *sess, int shared,
		    const struct ks_tbs *tbs, uint8_t *ret_sig, size_t *ret_len);
	/* A session for one worker (NULL where signatures do not run at once:
	 * max_sessions 1), made before the worker starts and freed after it ends;
	 * max_sessions: how many the hardware allows (0: no limit). */
	void *(*session_new)(void *be);
	void (*session_free)(void *be, void *sess);
	int (*max_sessions)(void *be);
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

#endif /* CIMD_KS_H */
