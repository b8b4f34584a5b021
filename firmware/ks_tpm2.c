/*
 * ks_tpm2.c — TPM 2.0 backend (tpm2-tss ESAPI).
 *
 * Every key is an ordinary child of a storage primary key: either the standard
 * SRK that we recreate from its template (deterministic for a given owner seed)
 * or a persistent key at a configured handle.  The stored reference is the
 * TPM-wrapped TPM2B_PUBLIC || TPM2B_PRIVATE (TPM 2.0 Part 1 §23.3: the private
 * area never leaves the TPM unencrypted).  Keys are loaded when they are used
 * and flushed again, keeping at most one client key loaded beside the primary,
 * so any number of keys works without a resource manager (swtpm alone has three
 * object slots).  The third slot is for one command at a time: the hash sequence
 * of an attestation key's signature, or the key that TPM2_Certify certifies
 * beside the loaded AK, flushed at once.
 *
 * Faults: a failure below the TPM (TCTI: the TPM is gone, the connection broke,
 * a command timed out) tears the ESAPI context down and reports
 * CIMD_EUNAVAILABLE; the next call connects afresh, so signing resumes by itself
 * when the TPM is back.  Commands that must answer fast (load, sign, flush) run
 * with a short timeout; key creation, which can take seconds on real TPMs, with
 * a long one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "ks.h"

#define TPM_TIMEOUT_FAST_MS 1500       /* load, sign, flush: unavailable within 2 s */
#define TPM_TIMEOUT_SLOW_MS 60000      /* CreatePrimary, Create (RSA key generation) */
#define NV_COUNTER_DEFAULT 0x0100C1DDu /* the nv-counter parameter's default */

struct tpm {
	char *tcti_conf;
	TPM2_HANDLE parent;	/* persistent parent, or 0 for the SRK from its template */
	TPM2_HANDLE nv_counter; /* the NV index of the monotonic counter */
	TSS2_TCTI_CONTEXT *tcti;
	ESYS_CONTEXT *ectx;
	ESYS_TR primary;
	/* The one client key kept loaded, identified by its reference. */
	uint8_t *loaded_ref;
	size_t loaded_len;
	ESYS_TR loaded;
};

/* Object attributes of client keys: TPM 2.0 Part 2 §8.3.  fixedTPM and
 * fixedParent: never duplicated out of this TPM; sensitiveDataOrigin: the TPM
 * made the private key; noDA: failed authorisations (a crash mid-command) never
 * count toward dictionary-attack lockout; sign only, not decrypt, not restricted
 * (it signs digests we computed, with a NULL ticket). */
#define KEY_ATTRS                                                                                  \
	(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |        \
	 TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_NODA)

/* An attestation key (AK, TPM 2.0 Part 1 §25.2.3): a client key's attributes
 * plus restricted, so that it signs only digests the TPM computed itself, and
 * never one of data beginning with TPM_GENERATED_VALUE (Part 2 §6.2): it cannot
 * be made to sign something that looks like a TPM attestation it did not make. */
#define AK_ATTRS (KEY_ATTRS | TPMA_OBJECT_RESTRICTED)

/* The monotonic counter's NV index (TPM 2.0 Part 2, TPMA_NV): type TPM_NT_COUNTER,
 * 8 bytes that only TPM2_NV_Increment changes, and that do not go back even when
 * the index is undefined and defined again (Part 1 §37.2.1: a counter's first
 * increment starts it no lower than any counter the TPM has deleted; tested).
 * Written and read with the owner hierarchy's authorisation, as the SRK is
 * created: advancing it (which makes a daemon with an older database refuse to
 * start) needs the owner's authority, the same that could undefine it.
 * authRead as well: the value is no secret, and an operator may read it with
 * the index's own empty authValue.  noDA: a failed authorisation of the index
 * never counts toward lockout.  Not orderly: every value reaches NV exactly (an
 * orderly counter may jump ahead after a power cut), at the cost of an NV write
 * per increment: increment at checkpoints, not per signature. */
#define NV_COUNTER_ATTRS                                                                           \
	((TPMA_NV)(TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT) | TPMA_NV_OWNERWRITE |                \
	 TPMA_NV_OWNERREAD | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA)
/* What an existing index must have to be used as our counter. */
#define NV_COUNTER_NEEDED (TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD)

/* A TSS2_RC that says the TPM did not answer, rather than refused. */
static int rc_is_unavailable(TSS2_RC rc)
{
	TSS2_RC layer = rc & TSS2_RC_LAYER_MASK, base = rc & 0xffff;

	if (layer == TSS2_TCTI_RC_LAYER)
		return 1;
	if (layer == TSS2_ESAPI_RC_LAYER || layer == TSS2_SYS_RC_LAYER || layer == TSS2_MU_RC_LAYER)
		return base == TSS2_BASE_RC_IO_ERROR || base == TSS2_BASE_RC_TRY_AGAIN ||
		       base == TSS2_BASE_RC_NO_CONNECTION ||
		       base == TSS2_BASE_RC_MALFORMED_RESPONSE ||
		       base == TSS2_BASE_RC_INSUFFICIENT_RESPONSE ||
		       base == TSS2_BASE_RC_NOT_PERMITTED; /* context torn down */
	return 0;
}

/* A TPM answer that says our handles are stale: the TPM was reset, or another
 * party flushed our objects, without the TCTI noticing (TPM 2.0 Part 2 §6.6:
 * TPM_RC_HANDLE, TPM_RC_REFERENCE_Hx, TPM_RC_INITIALIZE, TPM_RC_OBJECT_MEMORY).
 * A fresh connection (TPM2_Startup, a new SRK, our key loaded again) cures it. */
static int rc_is_stale(TSS2_RC rc)
{
	if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER)
		return 0;
	if (rc & TPM2_RC_FMT1)
		return (rc & (TPM2_RC_FMT1 | 0x3f)) == TPM2_RC_HANDLE;
	return (rc >= TPM2_RC_REFERENCE_H0 && rc <= TPM2_RC_REFERENCE_H6) ||
	       rc == TPM2_RC_INITIALIZE || rc == TPM2_RC_OBJECT_MEMORY;
}

static void tpm_disconnect(struct tpm *t)
{
	/* Best effort: the TPM may be gone.  Transient objects vanish with the
	 * connection's end or the TPM's restart anyway. */
	if (t->ectx != NULL) {
		Esys_SetTimeout(t->ectx, TPM_TIMEOUT_FAST_MS);
		if (t->loaded != ESYS_TR_NONE)
			Esys_FlushContext(t->ectx, t->loaded);
		if (t->primary != ESYS_TR_NONE && t->parent == 0)
			Esys_FlushContext(t->ectx, t->primary);
		Esys_Finalize(&t->ectx);
	}
	if (t->tcti != NULL)
		Tss2_TctiLdr_Finalize(&t->tcti);
	t->ectx = NULL;
	t->tcti = NULL;
	t->primary = ESYS_TR_NONE;
	t->loaded = ESYS_TR_NONE;
	free(t->loaded_ref);
	t->loaded_ref = NULL;
	t->loaded_len = 0;
}

/* Maps a failed ESAPI call and, when the TPM did not answer, drops the
 * connection so that the next call reconnects. */
static int tpm_fail(struct key_store *ks, struct tpm *t, TSS2_RC rc, int r, const char *what)
{
	if (rc_is_unavailable(rc)) {
		tpm_disconnect(t);
		r = -CIMD_EUNAVAILABLE;
	} else if (rc_is_stale(rc)) {
		tpm_disconnect(t);
		r = -EAGAIN; /* the caller reconnects and tries once more */
	}
	return ks_fail(ks, r, "tpm2: %s: %s", what, Tss2_RC_Decode(rc));
}

/* A second -EAGAIN after a fresh connection is final. */
static int tpm_final(int r)
{
	return r == -EAGAIN ? -CIMD_EBACKEND : r;
}

/* SRK template of the TCG TPM v2.0 Provisioning Guidance (§7.5.1, "Storage
 * Primary Key"): ECC NIST P-256, AES-128-CFB, restricted decrypt, unique zero. */
static void srk_template(TPM2B_PUBLIC *pub)
{
	memset(pub, 0, sizeof(*pub));
	pub->publicArea.type = TPM2_ALG_ECC;
	pub->publicArea.nameAlg = TPM2_ALG_SHA256;
	pub->publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
					   TPMA_OBJECT_SENSITIVEDATAORIGIN |
					   TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA |
					   TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
	pub->publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
	pub->publicArea.parameters.eccDetail.symmetric.keyBits.aes = 128;
	pub->publicArea.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
	pub->publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
	pub->publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
	pub->publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
	pub->publicArea.unique.ecc.x.size = 32;
	pub->publicArea.unique.ecc.y.size = 32;
}

/*
 * Without a resource manager (a simulator, /dev/tpm0) transient objects outlive
 * the process that loaded them: a cimdd killed mid-command leaves its SRK and a
 * key behind, and swtpm has three object slots.  cimdd is the only TPM user on
 * its host, so on connecting it flushes what a predecessor left.  Behind
 * /dev/tpmrm0 a fresh connection sees no transient objects: this does nothing.
 */
static int tpm_flush_stale(struct key_store *ks, struct tpm *t)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TPMI_YES_NO more = TPM2_NO;
	ESYS_TR tr;
	TSS2_RC rc;
	UINT32 i;

	/* TPM2_TRANSIENT_FIRST, spelt out: the header's macro shifts a signed int
	 * into its sign bit, which UBSan rightly reports. */
	rc = Esys_GetCapability(t->ectx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
				(TPM2_HC)0x80000000u, TPM2_MAX_CAP_HANDLES, &more, &cap);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_GetCapability(handles)");
	for (i = 0; i < cap->data.handles.count; i++) {
		if (Esys_TR_FromTPMPublic(t->ectx, cap->data.handles.handle[i], ESYS_TR_NONE,
					  ESYS_TR_NONE, ESYS_TR_NONE, &tr) == TSS2_RC_SUCCESS)
			Esys_FlushContext(t->ectx, tr);
	}
	Esys_Free(cap);
	return 0;
}

static int tpm_connect(struct key_store *ks, struct tpm *t)
{
	int r;
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_PUBLIC tmpl;
	TPML_PCR_SELECTION pcrs = {0};
	TPM2B_DATA outside = {0};
	TSS2_RC rc;

	if ((rc = Tss2_TctiLdr_Initialize(t->tcti_conf, &t->tcti)) != TSS2_RC_SUCCESS) {
		t->tcti = NULL;
		return ks_fail(ks, -CIMD_EUNAVAILABLE, "tpm2: cannot reach TPM at '%s': %s",
			       t->tcti_conf, Tss2_RC_Decode(rc));
	}
	if ((rc = Esys_Initialize(&t->ectx, t->tcti, NULL)) != TSS2_RC_SUCCESS) {
		t->ectx = NULL;
		tpm_disconnect(t);
		return ks_fail(ks, -CIMD_EUNAVAILABLE, "tpm2: Esys_Initialize: %s",
			       Tss2_RC_Decode(rc));
	}
	Esys_SetTimeout(t->ectx, TPM_TIMEOUT_SLOW_MS);
	/* A TPM that was just powered on (a restarted simulator) needs
	 * TPM2_Startup; one already started answers TPM2_RC_INITIALIZE (Part 3 §9.3). */
	rc = Esys_Startup(t->ectx, TPM2_SU_CLEAR);
	if (rc != TSS2_RC_SUCCESS && rc != TPM2_RC_INITIALIZE)
		return tpm_fail(ks, t, rc, -CIMD_EUNAVAILABLE, "TPM2_Startup");
	if ((r = tpm_flush_stale(ks, t)) < 0)
		return r;
	if (t->parent != 0) {
		rc = Esys_TR_FromTPMPublic(t->ectx, t->parent, ESYS_TR_NONE, ESYS_TR_NONE,
					   ESYS_TR_NONE, &t->primary);
		if (rc != TSS2_RC_SUCCESS)
			return tpm_fail(ks, t, rc, -CIMD_EBACKEND, "parent handle");
	} else {
		srk_template(&tmpl);
		rc = Esys_CreatePrimary(t->ectx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
					ESYS_TR_NONE, &sens, &tmpl, &outside, &pcrs, &t->primary,
					NULL, NULL, NULL, NULL);
		if (rc != TSS2_RC_SUCCESS) {
			t->primary = ESYS_TR_NONE;
			return tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_CreatePrimary (SRK)");
		}
	}
	Esys_SetTimeout(t->ectx, TPM_TIMEOUT_FAST_MS);
	return 0;
}

static int tpm_ready(struct key_store *ks, struct tpm *t)
{
	int r;

	if (t->ectx != NULL)
		return 0;
	if ((r = tpm_connect(ks, t)) < 0) {
		tpm_disconnect(t);
		if (r != -ENOMEM)
			r = -CIMD_EUNAVAILABLE;
	}
	return r;
}

static void tpm_free(struct tpm *t)
{
	if (t == NULL)
		return;
	tpm_disconnect(t);
	free(t->tcti_conf);
	free(t);
}

static int tpm_open(struct key_store *ks, const struct ks_param *params, size_t n, void **ret_be)
{
	struct tpm *t;
	size_t i;
	char *end;
	unsigned long h;
	int r;

	if ((t = calloc(1, sizeof(*t))) == NULL)
		return -ENOMEM;
	t->primary = ESYS_TR_NONE;
	t->loaded = ESYS_TR_NONE;
	t->nv_counter = NV_COUNTER_DEFAULT;
	for (i = 0; i < n; i++) {
		if (strcmp(params[i].name, "tcti") == 0) {
			free(t->tcti_conf);
			if ((t->tcti_conf = strdup(params[i].value)) == NULL) {
				r = -ENOMEM;
				goto out;
			}
		} else if (strcmp(params[i].name, "parent") == 0) {
			errno = 0;
			h = strtoul(params[i].value, &end, 0);
			/* TPM 2.0 Part 2 §7.2: persistent objects are 0x81xxxxxx. */
			if (errno != 0 || *end != '\0' || (h >> 24) != TPM2_HT_PERSISTENT) {
				r = ks_fail(
				    ks, -CIMD_ECONFIG,
				    "tpm2: parent '%s' is not a persistent handle (0x81......)",
				    params[i].value);
				goto out;
			}
			t->parent = (TPM2_HANDLE)h;
		} else if (strcmp(params[i].name, "nv-counter") == 0) {
			errno = 0;
			h = strtoul(params[i].value, &end, 0);
			/* TPM 2.0 Part 2 §7.2: NV indexes are 0x01xxxxxx. */
			if (errno != 0 || *end != '\0' || (h >> 24) != TPM2_HT_NV_INDEX) {
				r = ks_fail(ks, -CIMD_ECONFIG,
					    "tpm2: nv-counter '%s' is not an NV index handle "
					    "(0x01000000..0x01FFFFFF)",
					    params[i].value);
				goto out;
			}
			t->nv_counter = (TPM2_HANDLE)h;
		} else {
			r = ks_fail(ks, -CIMD_ECONFIG, "tpm2: unknown parameter '%s'",
				    params[i].name);
			goto out;
		}
	}
	if (t->tcti_conf == NULL) {
		r = ks_fail(ks, -CIMD_ECONFIG, "tpm2: tcti is required (e.g. device:/dev/tpmrm0)");
		goto out;
	}
	if ((r = tpm_connect(ks, t)) < 0)
		goto out;
	*ret_be = t;
	t = NULL;
	r = 0;
out:
	tpm_free(t);
	return r;
}

static void tpm_close(void *be)
{
	tpm_free(be);
}

/* The template of a client key for alg: the scheme is fixed in the key, so the
 * TPM itself refuses to use it for anything else. */
static int key_template(enum cimd_alg alg, TPM2B_PUBLIC *pub)
{
	memset(pub, 0, sizeof(*pub));
	pub->publicArea.nameAlg = TPM2_ALG_SHA256;
	pub->publicArea.objectAttributes = KEY_ATTRS;
	switch (alg) {
	case CIMD_ALG_ES256:
	case CIMD_ALG_ES384:
		pub->publicArea.type = TPM2_ALG_ECC;
		pub->publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
		pub->publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
		pub->publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg =
		    alg == CIMD_ALG_ES256 ? TPM2_ALG_SHA256 : TPM2_ALG_SHA384;
		pub->publicArea.parameters.eccDetail.curveID =
		    alg == CIMD_ALG_ES256 ? TPM2_ECC_NIST_P256 : TPM2_ECC_NIST_P384;
		pub->publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
		return 0;
	case CIMD_ALG_PS256:
		pub->publicArea.type = TPM2_ALG_RSA;
		pub->publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
		pub->publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSAPSS;
		pub->publicArea.parameters.rsaDetail.scheme.details.rsapss.hashAlg =
		    TPM2_ALG_SHA256;
		pub->publicArea.parameters.rsaDetail.keyBits = 2048;
		pub->publicArea.parameters.rsaDetail.exponent = 0; /* 2^16 + 1 */
		return 0;
	default:
		return -CIMD_EALG;
	}
}

/* The template of an AK: an ES256 client key that is also restricted.  The
 * scheme must be fixed (not TPM2_ALG_NULL) in a restricted signing key. */
static void ak_template(TPM2B_PUBLIC *pub)
{
	key_template(CIMD_ALG_ES256, pub);
	pub->publicArea.objectAttributes = AK_ATTRS;
}

/* The key's public area must be exactly what we would have created for alg
 * (for ES256: a client key or an AK). */
static int check_public(const TPM2B_PUBLIC *pub, enum cimd_alg alg)
{
	TPM2B_PUBLIC want;
	const TPMT_PUBLIC *a = &pub->publicArea, *w = &want.publicArea;

	if (key_template(alg, &want) < 0)
		return -CIMD_EALG;
	if (alg == CIMD_ALG_ES256 && a->objectAttributes == AK_ATTRS)
		ak_template(&want);
	if (a->type != w->type || a->nameAlg != w->nameAlg ||
	    a->objectAttributes != w->objectAttributes)
		return -CIMD_EALG;
	if (a->type == TPM2_ALG_ECC)
		return a->parameters.eccDetail.curveID == w->parameters.eccDetail.curveID &&
			       a->parameters.eccDetail.scheme.scheme == TPM2_ALG_ECDSA &&
			       a->parameters.eccDetail.scheme.details.ecdsa.hashAlg ==
				   w->parameters.eccDetail.scheme.details.ecdsa.hashAlg
			   ? 0
			   : -CIMD_EALG;
	return a->parameters.rsaDetail.scheme.scheme == TPM2_ALG_RSAPSS &&
		       a->parameters.rsaDetail.scheme.details.rsapss.hashAlg == TPM2_ALG_SHA256 &&
		       a->parameters.rsaDetail.keyBits == 2048
		   ? 0
		   : -CIMD_EALG;
}

static int public_jwk(const TPM2B_PUBLIC *pub, enum cimd_alg alg, json_t **ret_jwk)
{
	const TPMT_PUBLIC *a = &pub->publicArea;
	size_t size = cimd_alg_ec_size(alg);
	uint8_t x[66] = {0}, y[66] = {0};
	static const uint8_t e65537[] = {0x01, 0x00, 0x01};
	uint8_t e[4];
	uint32_t exp;

	if (a->type == TPM2_ALG_ECC) {
		/* TPM2B_ECC_PARAMETER may drop leading zeros: left-pad to the field
		 * size (RFC 7518 §6.2.1.2). */
		if (a->unique.ecc.x.size > size || a->unique.ecc.y.size > size)
			return -CIMD_EFORMAT;
		memcpy(x + size - a->unique.ecc.x.size, a->unique.ecc.x.buffer,
		       a->unique.ecc.x.size);
		memcpy(y + size - a->unique.ecc.y.size, a->unique.ecc.y.buffer,
		       a->unique.ecc.y.size);
		return jwk_new_ec(alg, x, y, ret_jwk);
	}
	/* Part 2 §12.2.3.5: an exponent of zero means 2^16 + 1. */
	if ((exp = a->parameters.rsaDetail.exponent) == 0)
		return jwk_new_rsa(a->unique.rsa.buffer, a->unique.rsa.size, e65537, sizeof(e65537),
				   ret_jwk);
	e[0] = (uint8_t)(exp >> 24), e[1] = (uint8_t)(exp >> 16), e[2] = (uint8_t)(exp >> 8),
	e[3] = (uint8_t)exp;
	return jwk_new_rsa(a->unique.rsa.buffer, a->unique.rsa.size, e, sizeof(e), ret_jwk);
}

/* reference = TPM2B_PUBLIC || TPM2B_PRIVATE, each as TPM 2.0 Part 2 marshals it,
 * and nothing after. */
static int ref_parse(const uint8_t *ref, size_t len, TPM2B_PUBLIC *pub, TPM2B_PRIVATE *priv)
{
	size_t off = 0;

	memset(pub, 0, sizeof(*pub));
	memset(priv, 0, sizeof(*priv));
	if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(ref, len, &off, pub) != TSS2_RC_SUCCESS ||
	    Tss2_MU_TPM2B_PRIVATE_Unmarshal(ref, len, &off, priv) != TSS2_RC_SUCCESS || off != len)
		return -CIMD_ENOKEY;
	return 0;
}

/* TPM2_Create of a key from tmpl under the parent; the reference and JWK. */
static int tpm_create_once(struct key_store *ks, struct tpm *t, const TPM2B_PUBLIC *tmpl,
			   enum cimd_alg alg, uint8_t **ret_ref, size_t *ret_ref_len,
			   json_t **ret_jwk)
{
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_PUBLIC *pub = NULL;
	TPM2B_PRIVATE *priv = NULL;
	TPML_PCR_SELECTION pcrs = {0};
	TPM2B_DATA outside = {0};
	uint8_t buf[sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_PRIVATE)], *ref = NULL;
	json_t *jwk = NULL;
	size_t off = 0;
	TSS2_RC rc;
	int r;

	if ((r = tpm_ready(ks, t)) < 0)
		return r;
	Esys_SetTimeout(t->ectx, TPM_TIMEOUT_SLOW_MS);
	rc = Esys_Create(t->ectx, t->primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sens,
			 tmpl, &outside, &pcrs, &priv, &pub, NULL, NULL, NULL);
	if (t->ectx != NULL)
		Esys_SetTimeout(t->ectx, TPM_TIMEOUT_FAST_MS);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_Create");
		goto out;
	}
	if (Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, sizeof(buf), &off) != TSS2_RC_SUCCESS ||
	    Tss2_MU_TPM2B_PRIVATE_Marshal(priv, buf, sizeof(buf), &off) != TSS2_RC_SUCCESS) {
		r = ks_fail(ks, -CIMD_EFORMAT, "tpm2: cannot marshal the new key");
		goto out;
	}
	if ((r = public_jwk(pub, alg, &jwk)) < 0) {
		ks_fail(ks, r, "tpm2: unusable public area");
		goto out;
	}
	if ((ref = malloc(off)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(ref, buf, off);
	*ret_jwk = jwk;
	jwk = NULL;
	*ret_ref = ref;
	*ret_ref_len = off;
	r = 0;
out:
	json_decref(jwk);
	Esys_Free(pub);
	Esys_Free(priv);
	return r;
}

/* Our objects flushed behind our back: once more on a fresh connection.  A key
 * created before the failure was never handed out, and the TPM keeps no copy. */
static int tpm_create(struct key_store *ks, struct tpm *t, const TPM2B_PUBLIC *tmpl,
		      enum cimd_alg alg, uint8_t **ret_ref, size_t *ret_ref_len, json_t **ret_jwk)
{
	int r = tpm_create_once(ks, t, tmpl, alg, ret_ref, ret_ref_len, ret_jwk);

	if (r == -EAGAIN)
		r = tpm_create_once(ks, t, tmpl, alg, ret_ref, ret_ref_len, ret_jwk);
	return tpm_final(r);
}

static int tpm_generate(struct key_store *ks, void *be, enum cimd_alg alg, const char *tag,
			uint8_t **ret_ref, size_t *ret_ref_len, json_t **ret_jwk)
{
	TPM2B_PUBLIC tmpl;
	int r;

	(void)tag; /* a TPM key lives only as the blob the caller stores */
	if ((r = key_template(alg, &tmpl)) < 0)
		return ks_fail(ks, r, "tpm2: no template for algorithm");
	return tpm_create(ks, be, &tmpl, alg, ret_ref, ret_ref_len, ret_jwk);
}

/* An AK: a restricted ECDSA-SHA256 P-256 signing key under the same parent as
 * the client keys (TPM 2.0 Part 1 §25.2.3). */
static int tpm_generate_attest(struct key_store *ks, void *be, const char *tag, uint8_t **ret_ref,
			       size_t *ret_ref_len, json_t **ret_jwk)
{
	TPM2B_PUBLIC tmpl;

	(void)tag;
	ak_template(&tmpl);
	return tpm_create(ks, be, &tmpl, CIMD_ALG_ES256, ret_ref, ret_ref_len, ret_jwk);
}

/* Makes the key of ref the loaded one; *ret_h is its ESYS_TR. */
static int tpm_load_ref(struct key_store *ks, struct tpm *t, const uint8_t *ref, size_t len,
			ESYS_TR *ret_h)
{
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	ESYS_TR h;
	TSS2_RC rc;
	uint8_t *copy;

	if (t->loaded != ESYS_TR_NONE && t->loaded_len == len &&
	    memcmp(t->loaded_ref, ref, len) == 0) {
		*ret_h = t->loaded;
		return 0;
	}
	if (ref_parse(ref, len, &pub, &priv) < 0)
		return ks_fail(ks, -CIMD_ENOKEY, "tpm2: malformed key reference");
	if ((copy = malloc(len)) == NULL)
		return -ENOMEM;
	if (t->loaded != ESYS_TR_NONE) {
		rc = Esys_FlushContext(t->ectx, t->loaded);
		t->loaded = ESYS_TR_NONE;
		free(t->loaded_ref);
		t->loaded_ref = NULL;
		if (rc != TSS2_RC_SUCCESS) {
			free(copy);
			return tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_FlushContext");
		}
	}
	rc = Esys_Load(t->ectx, t->primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv,
		       &pub, &h);
	if (rc != TSS2_RC_SUCCESS) {
		free(copy);
		/* A blob this TPM (under this parent) did not wrap fails its integrity
		 * check: TPM 2.0 Part 1 §23.7. */
		return tpm_fail(ks, t, rc, -CIMD_ENOKEY, "TPM2_Load");
	}
	memcpy(copy, ref, len);
	t->loaded = h;
	t->loaded_ref = copy;
	t->loaded_len = len;
	*ret_h = h;
	return 0;
}

static int tpm_load(struct key_store *ks, void *be, enum cimd_alg alg, const uint8_t *ref,
		    size_t ref_len, json_t **ret_jwk)
{
	struct tpm *t = be;
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	ESYS_TR h;
	int r;

	if (ref_parse(ref, ref_len, &pub, &priv) < 0)
		return ks_fail(ks, -CIMD_ENOKEY, "tpm2: malformed key reference");
	if (check_public(&pub, alg) < 0)
		return ks_fail(ks, -CIMD_EALG, "tpm2: key is not a %s key made by cimdd",
			       cimd_alg_name(alg));
	/* Loading proves that this TPM wrapped the key. */
	if ((r = tpm_ready(ks, t)) == 0 && (r = tpm_load_ref(ks, t, ref, ref_len, &h)) == -EAGAIN &&
	    (r = tpm_ready(ks, t)) == 0)
		r = tpm_load_ref(ks, t, ref, ref_len, &h);
	if ((r = tpm_final(r)) < 0)
		return r;
	if ((r = public_jwk(&pub, alg, ret_jwk)) < 0)
		return ks_fail(ks, r, "tpm2: unusable public area");
	return 0;
}

/* The TPM's RSA-PSS signature over digest verifies with the salt JWS fixes. */
static int check_pss(struct key_store *ks, const uint8_t *ref, size_t ref_len,
		     const uint8_t *digest, size_t dlen, const uint8_t *sig, size_t sig_len)
{
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	json_t *jwk = NULL;
	EVP_PKEY *pk = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	int ok;

	if (ref_parse(ref, ref_len, &pub, &priv) < 0 ||
	    public_jwk(&pub, CIMD_ALG_PS256, &jwk) < 0 || jwk_to_evp(jwk, &pk) < 0) {
		json_decref(jwk);
		return ks_fail(ks, -CIMD_EFORMAT, "tpm2: unusable public area");
	}
	/* RFC 7518 §3.5: MGF1 with SHA-256, a salt as long as the hash. */
	ok = (ctx = EVP_PKEY_CTX_new(pk, NULL)) != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
	     EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) == 1 &&
	     EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, 32) == 1 &&
	     EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
	     EVP_PKEY_verify(ctx, sig, sig_len, digest, dlen) == 1;
	ERR_clear_error();
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(pk);
	json_decref(jwk);
	OPENSSL_cleanse(&priv, sizeof(priv));
	if (!ok)
		return ks_fail(ks, -CIMD_EBACKEND,
			       "tpm2: the TPM's RSA-PSS signature does not verify with a %d-byte "
			       "salt (RFC 7518 §3.5)",
			       32);
	return 0;
}

/* Data the TPM will give a ticket for (Part 3, TPM2_SequenceUpdate and
 * TPM2_SequenceComplete: none when the first block begins with
 * TPM_GENERATED_VALUE; the reference implementation also gives none when the
 * first block is shorter than it). */
static int ticket_safe(const uint8_t *msg, size_t len)
{
	static const uint8_t generated[] = {0xff, 0x54, 0x43, 0x47}; /* TPM_GENERATED_VALUE */

	return len >= sizeof(generated) && memcmp(msg, generated, sizeof(generated)) != 0;
}

/*
 * The SHA-256 digest of msg computed by the TPM in a hash sequence, with the
 * ticket that lets a restricted key sign it (TPM 2.0 Part 3 §17:
 * TPM2_HashSequenceStart, TPM2_SequenceUpdate, TPM2_SequenceComplete).  Every block
 * but the last goes through SequenceUpdate, TPM2_MAX_DIGEST_BUFFER bytes at a
 * time; the last through SequenceComplete.  The sequence object takes an
 * object slot: with the parent and the key loaded that is swtpm's third.
 */
static int tpm_hash_ticket(struct key_store *ks, struct tpm *t, const uint8_t *msg, size_t len,
			   TPM2B_DIGEST **ret_digest, TPMT_TK_HASHCHECK **ret_ticket)
{
	TPM2B_AUTH auth = {0};
	TPM2B_MAX_BUFFER buf;
	TPM2B_DIGEST *digest = NULL;
	TPMT_TK_HASHCHECK *ticket = NULL;
	ESYS_TR seq = ESYS_TR_NONE;
	size_t off = 0;
	TSS2_RC rc;
	int r;

	rc = Esys_HashSequenceStart(t->ectx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &auth,
				    TPM2_ALG_SHA256, &seq);
	if (rc != TSS2_RC_SUCCESS) {
		seq = ESYS_TR_NONE;
		r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_HashSequenceStart");
		goto out;
	}
	for (; len - off > sizeof(buf.buffer); off += sizeof(buf.buffer)) {
		buf.size = sizeof(buf.buffer);
		memcpy(buf.buffer, msg + off, sizeof(buf.buffer));
		rc = Esys_SequenceUpdate(t->ectx, seq, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
					 &buf);
		if (rc != TSS2_RC_SUCCESS) {
			r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_SequenceUpdate");
			goto out;
		}
	}
	buf.size = (UINT16)(len - off);
	memcpy(buf.buffer, msg + off, len - off);
	rc = Esys_SequenceComplete(t->ectx, seq, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf,
				   ESYS_TR_RH_OWNER, &digest, &ticket);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_SequenceComplete");
		goto out;
	}
	seq = ESYS_TR_NONE; /* SequenceComplete flushed it */
	/* A NULL ticket (hierarchy TPM_RH_NULL): the TPM found the data unsafe to sign. */
	if (ticket->hierarchy == TPM2_RH_NULL) {
		r = ks_fail(ks, -CIMD_EVERIFY,
			    "tpm2: the TPM gave no ticket: an attestation key does not sign "
			    "data beginning with TPM_GENERATED_VALUE or shorter than 4 bytes");
		goto out;
	}
	*ret_digest = digest;
	*ret_ticket = ticket;
	digest = NULL;
	ticket = NULL;
	r = 0;
out:
	if (seq != ESYS_TR_NONE && t->ectx != NULL &&
	    Esys_FlushContext(t->ectx, seq) != TSS2_RC_SUCCESS)
		tpm_disconnect(t); /* do not leave an object slot taken */
	Esys_Free(digest);
	Esys_Free(ticket);
	OPENSSL_cleanse(&buf, sizeof(buf));
	return r;
}

static int tpm_sign_once(struct key_store *ks, struct tpm *t, int restricted,
			 const struct ks_tbs *tbs, uint8_t *ret_sig, size_t *ret_len)
{
	const uint8_t *ref = tbs->ref;
	size_t ref_len = tbs->ref_len, size = cimd_alg_ec_size(tbs->alg);
	TPM2B_DIGEST digest = {0}, *tdigest = NULL;
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL}; /* the key's own scheme */
	/* An unrestricted key signs an outside digest with a NULL ticket (Part 3 §20.2). */
	TPMT_TK_HASHCHECK null_ticket = {.tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL};
	TPMT_TK_HASHCHECK *ticket = NULL;
	TPMT_SIGNATURE *sig = NULL;
	ESYS_TR h;
	TSS2_RC rc;
	int r;

	if (!restricted) {
		if (tbs->dlen > sizeof(digest.buffer))
			return ks_fail(ks, -CIMD_EALG, "tpm2: a digest of %zu bytes", tbs->dlen);
		memcpy(digest.buffer, tbs->digest, tbs->dlen);
		digest.size = (UINT16)tbs->dlen;
	}
	if ((r = tpm_ready(ks, t)) < 0 || (r = tpm_load_ref(ks, t, ref, ref_len, &h)) < 0)
		return r;
	/* A restricted key signs only what the TPM hashed itself, with the ticket
	 * that proves it (Part 3, TPM2_Sign). */
	if (restricted && (r = tpm_hash_ticket(ks, t, tbs->msg, tbs->len, &tdigest, &ticket)) < 0)
		return r;
	rc = Esys_Sign(t->ectx, h, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
		       restricted ? tdigest : &digest, &scheme, restricted ? ticket : &null_ticket,
		       &sig);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_Sign");
		goto out;
	}
	if (size != 0) {
		const TPMS_SIGNATURE_ECC *e = &sig->signature.ecdsa;
		if (sig->sigAlg != TPM2_ALG_ECDSA || e->signatureR.size > size ||
		    e->signatureS.size > size) {
			r = ks_fail(ks, -CIMD_EFORMAT, "tpm2: unexpected signature");
			goto out;
		}
		/* RFC 7518 §3.4: r and s left-padded to the field size. */
		memset(ret_sig, 0, 2 * size);
		memcpy(ret_sig + size - e->signatureR.size, e->signatureR.buffer,
		       e->signatureR.size);
		memcpy(ret_sig + 2 * size - e->signatureS.size, e->signatureS.buffer,
		       e->signatureS.size);
		*ret_len = 2 * size;
	} else {
		const TPM2B_PUBLIC_KEY_RSA *s = &sig->signature.rsapss.sig;
		if (sig->sigAlg != TPM2_ALG_RSAPSS || s->size > CIMD_SIG_MAX) {
			r = ks_fail(ks, -CIMD_EFORMAT, "tpm2: unexpected signature");
			goto out;
		}
		/* TPM 2.0 Part 1 §B.7 lets a TPM pick the PSS salt length; JWS fixes it
		 * at the hash length (RFC 7518 §3.5).  Check before handing it out:
		 * this also catches a faulty signature. */
		if ((r = check_pss(ks, ref, ref_len, restricted ? tdigest->buffer : digest.buffer,
				   restricted ? tdigest->size : digest.size, s->buffer, s->size)) <
		    0)
			goto out;
		memcpy(ret_sig, s->buffer, s->size);
		*ret_len = s->size;
	}
	r = 0;
out:
	Esys_Free(sig);
	Esys_Free(tdigest);
	Esys_Free(ticket);
	return r;
}

/* A TPM is one serial device: one session, never shared with another. */
static int tpm_sign(struct key_store *ks, void *be, void *sess, int shared,
		    const struct ks_tbs *tbs, uint8_t *ret_sig, size_t *ret_len)
{
	struct tpm *t = be;
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	int restricted, r;

	(void)sess, (void)shared;
	if (ref_parse(tbs->ref, tbs->ref_len, &pub, &priv) < 0)
		return ks_fail(ks, -CIMD_ENOKEY, "tpm2: malformed key reference");
	restricted = (pub.publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0;
	/* The TPM would give no ticket: refuse before asking it. */
	if (restricted && (tbs->msg == NULL || !ticket_safe(tbs->msg, tbs->len)))
		return ks_fail(ks, -CIMD_EVERIFY,
			       "tpm2: an attestation key does not sign data that begins with "
			       "TPM_GENERATED_VALUE (0xff544347) or is shorter than 4 bytes");
	r = tpm_sign_once(ks, t, restricted, tbs, ret_sig, ret_len);
	if (r == -EAGAIN)
		r = tpm_sign_once(ks, t, restricted, tbs, ret_sig, ret_len);
	return tpm_final(r);
}

static int tpm_max_sessions(void *be)
{
	(void)be;
	return 1;
}

/*
 * TPM2_Certify (TPM 2.0 Part 3 §18.2) of the key of ref by the AK of ak_ref.
 * The AK becomes (or stays) the one loaded key, as signing with it or
 * certifying the next key tends to follow; the certified key is loaded beside it
 * for this command alone and flushed again: parent, AK and key fill swtpm's
 * three object slots.
 */
static int tpm_certify_once(struct key_store *ks, struct tpm *t, const uint8_t *ak_ref,
			    size_t ak_len, const uint8_t *ref, size_t ref_len,
			    const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv,
			    const TPM2B_DATA *qual, TPM2B_ATTEST **ret_attest,
			    TPMT_SIGNATURE **ret_sig)
{
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL}; /* the AK's own scheme */
	int self = ak_len == ref_len && memcmp(ak_ref, ref, ref_len) == 0;
	ESYS_TR hak, h = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	if ((r = tpm_ready(ks, t)) < 0 || (r = tpm_load_ref(ks, t, ak_ref, ak_len, &hak)) < 0)
		return r;
	if (self) {
		h = hak;
	} else {
		rc = Esys_Load(t->ectx, t->primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
			       priv, pub, &h);
		if (rc != TSS2_RC_SUCCESS)
			return tpm_fail(ks, t, rc, -CIMD_ENOKEY, "TPM2_Load (the key to certify)");
	}
	/* objectHandle: ADMIN role, satisfied by the (empty) authValue as the key has
	 * no adminWithPolicy; signHandle: USER role (Part 3 §18.2, command table). */
	rc = Esys_Certify(t->ectx, h, hak, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD, ESYS_TR_NONE, qual,
			  &scheme, ret_attest, ret_sig);
	r = rc == TSS2_RC_SUCCESS ? 0 : tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_Certify");
	if (!self && t->ectx != NULL && Esys_FlushContext(t->ectx, h) != TSS2_RC_SUCCESS)
		tpm_disconnect(t); /* do not leave an object slot taken */
	return r;
}

static int tpm_certify(struct key_store *ks, void *be, const uint8_t *ak_ref, size_t ak_len,
		       const uint8_t *ref, size_t ref_len, const uint8_t *qualifying, size_t qlen,
		       struct ks_certify *ret)
{
	struct tpm *t = be;
	TPM2B_PUBLIC akpub, pub;
	TPM2B_PRIVATE akpriv, priv;
	TPM2B_DATA qual = {0};
	TPM2B_ATTEST *attest = NULL;
	TPMT_SIGNATURE *sig = NULL;
	const TPMS_SIGNATURE_ECC *e;
	uint8_t pbuf[sizeof(TPMT_PUBLIC)];
	struct ks_certify c = {0};
	json_t *akjwk = NULL;
	size_t poff = 0, size = cimd_alg_ec_size(CIMD_ALG_ES256);
	int r;

	if (ref_parse(ak_ref, ak_len, &akpub, &akpriv) < 0 ||
	    ref_parse(ref, ref_len, &pub, &priv) < 0)
		return ks_fail(ks, -CIMD_ENOKEY, "tpm2: malformed key reference");
	if (check_public(&akpub, CIMD_ALG_ES256) < 0 ||
	    akpub.publicArea.objectAttributes != AK_ATTRS)
		return ks_fail(ks, -CIMD_EALG,
			       "tpm2: the certifying key is not an attestation key made by cimdd");
	if (qlen > sizeof(qual.buffer))
		return ks_fail(ks, -EINVAL, "tpm2: qualifying data of %zu bytes (at most %zu)",
			       qlen, sizeof(qual.buffer));
	qual.size = (UINT16)qlen;
	if (qlen > 0)
		memcpy(qual.buffer, qualifying, qlen);
	if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub.publicArea, pbuf, sizeof(pbuf), &poff) !=
	    TSS2_RC_SUCCESS)
		return ks_fail(ks, -CIMD_EFORMAT, "tpm2: cannot marshal the public area");
	r = tpm_certify_once(ks, t, ak_ref, ak_len, ref, ref_len, &pub, &priv, &qual, &attest,
			     &sig);
	if (r == -EAGAIN)
		r = tpm_certify_once(ks, t, ak_ref, ak_len, ref, ref_len, &pub, &priv, &qual,
				     &attest, &sig);
	if ((r = tpm_final(r)) < 0)
		goto out;
	e = &sig->signature.ecdsa;
	if (sig->sigAlg != TPM2_ALG_ECDSA || e->signatureR.size > size ||
	    e->signatureS.size > size || attest->size == 0) {
		r = ks_fail(ks, -CIMD_EFORMAT, "tpm2: unexpected certification");
		goto out;
	}
	/* RFC 7518 §3.4: r and s left-padded to the field size. */
	memcpy(c.sig + size - e->signatureR.size, e->signatureR.buffer, e->signatureR.size);
	memcpy(c.sig + 2 * size - e->signatureS.size, e->signatureS.buffer, e->signatureS.size);
	c.sig_len = 2 * size;
	/* Checked before it is handed out, as PS256 signatures are: this catches a
	 * faulty signature here rather than at a verifier. */
	if ((r = public_jwk(&akpub, CIMD_ALG_ES256, &akjwk)) < 0 ||
	    jws_verify_signature(akjwk, CIMD_ALG_ES256, attest->attestationData, attest->size,
				 c.sig, c.sig_len) < 0) {
		r = ks_fail(ks, -CIMD_EBACKEND, "tpm2: the AK's signature over TPMS_ATTEST fails");
		goto out;
	}
	if ((c.attest = malloc(attest->size)) == NULL || (c.pub = malloc(poff)) == NULL) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(c.attest, attest->attestationData, attest->size);
	c.attest_len = attest->size;
	memcpy(c.pub, pbuf, poff);
	c.pub_len = poff;
	*ret = c;
	memset(&c, 0, sizeof(c)); /* moved to the caller */
	r = 0;
out:
	ks_certify_clear(&c);
	json_decref(akjwk);
	Esys_Free(attest);
	Esys_Free(sig);
	return r;
}

static int tpm_p11_evidence(struct key_store *ks, void *be, const uint8_t *ref, size_t ref_len,
			    struct ks_p11_evidence *ret)
{
	(void)be;
	(void)ref;
	(void)ref_len;
	(void)ret;
	return ks_fail(ks, -ENOTSUP, "tpm2: no PKCS#11 evidence on a TPM (use TPM2_Certify)");
}

/* TPM_RC_HANDLE (Part 2 §6.6, a format-one code): for an NV index, that no
 * index is defined at the handle. */
static int rc_is_absent(TSS2_RC rc)
{
	return (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER && (rc & TPM2_RC_FMT1) != 0 &&
	       (rc & (TPM2_RC_FMT1 | 0x3f)) == TPM2_RC_HANDLE;
}

/*
 * The ESYS_TR of the counter's index, defined if it does not exist yet (Part 3
 * §31.3 TPM2_NV_DefineSpace, empty authValue, nameAlg SHA-256, 8 bytes).  An
 * index already at the handle must be a counter of 8 bytes that the owner may
 * read and write: anything else is another party's index, which we neither use
 * nor touch.  *ret_defined says whether we defined it.
 */
static int counter_index(struct key_store *ks, struct tpm *t, ESYS_TR *ret_nv, int *ret_defined)
{
	TPM2B_AUTH auth = {0};
	TPM2B_NV_PUBLIC want = {0}, *pub = NULL;
	ESYS_TR nv = ESYS_TR_NONE;
	TPMA_NV type;
	TSS2_RC rc;
	int r;

	rc = Esys_TR_FromTPMPublic(t->ectx, t->nv_counter, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				   &nv);
	if (rc == TSS2_RC_SUCCESS) {
		rc = Esys_NV_ReadPublic(t->ectx, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub,
					NULL);
		if (rc != TSS2_RC_SUCCESS) {
			r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_NV_ReadPublic (nv-counter)");
			goto out;
		}
		type = (pub->nvPublic.attributes & TPMA_NV_TPM2_NT_MASK) >> TPMA_NV_TPM2_NT_SHIFT;
		if (type != TPM2_NT_COUNTER || pub->nvPublic.dataSize != 8 ||
		    (pub->nvPublic.attributes & NV_COUNTER_NEEDED) != NV_COUNTER_NEEDED) {
			r = ks_fail(
			    ks, -CIMD_ECONFIG,
			    "tpm2: NV index 0x%08x (nv-counter) is another party's: type %u, "
			    "%u bytes, attributes 0x%08x, where a counter (type %u) of 8 "
			    "bytes that the owner may read and write is needed",
			    t->nv_counter, (unsigned)type, (unsigned)pub->nvPublic.dataSize,
			    (unsigned)pub->nvPublic.attributes, (unsigned)TPM2_NT_COUNTER);
			goto out;
		}
		*ret_defined = 0;
	} else if (rc_is_absent(rc)) {
		nv = ESYS_TR_NONE;
		want.nvPublic.nvIndex = t->nv_counter;
		want.nvPublic.nameAlg = TPM2_ALG_SHA256;
		want.nvPublic.attributes = NV_COUNTER_ATTRS;
		want.nvPublic.dataSize = 8;
		rc = Esys_NV_DefineSpace(t->ectx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
					 ESYS_TR_NONE, &auth, &want, &nv);
		if (rc != TSS2_RC_SUCCESS) {
			nv = ESYS_TR_NONE;
			/* Defined by another party since we looked: look again. */
			if (rc == TPM2_RC_NV_DEFINED)
				r = ks_fail(ks, -EAGAIN, "tpm2: NV index 0x%08x defined meanwhile",
					    t->nv_counter);
			else
				r = tpm_fail(ks, t, rc, -CIMD_EBACKEND,
					     "TPM2_NV_DefineSpace (nv-counter)");
			goto out;
		}
		*ret_defined = 1;
	} else {
		nv = ESYS_TR_NONE;
		r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "NV index of nv-counter");
		goto out;
	}
	*ret_nv = nv;
	nv = ESYS_TR_NONE;
	r = 0;
out:
	if (nv != ESYS_TR_NONE && t->ectx != NULL)
		Esys_TR_Close(t->ectx, &nv);
	Esys_Free(pub);
	return r;
}

/*
 * One attempt at the counter: its index found or defined, incremented when
 * *pending says an increment is owed (cleared once the TPM did it, so that a
 * second attempt does not increment again), and read (Part 3 §31.8
 * TPM2_NV_Increment, §31.13 TPM2_NV_Read).  A counter never incremented has no
 * value (TPM_RC_NV_UNINITIALIZED): it is incremented once, as one we just
 * defined is.  TPM_RC_RETRY, _YIELDED and _TESTING are resubmitted by ESAPI
 * itself, as for every other command of this backend.
 */
static int tpm_counter_once(struct key_store *ks, struct tpm *t, int *pending, uint64_t *ret_value)
{
	TPM2B_MAX_NV_BUFFER *data = NULL;
	ESYS_TR nv = ESYS_TR_NONE;
	uint64_t v = 0;
	TSS2_RC rc;
	int defined = 0, r;
	size_t i;

	if ((r = tpm_ready(ks, t)) < 0 || (r = counter_index(ks, t, &nv, &defined)) < 0)
		return r;
	if (defined)
		*pending = 1;
	for (;;) {
		if (*pending) {
			rc = Esys_NV_Increment(t->ectx, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD,
					       ESYS_TR_NONE, ESYS_TR_NONE);
			if (rc != TSS2_RC_SUCCESS) {
				r = tpm_fail(ks, t, rc, -CIMD_EBACKEND,
					     "TPM2_NV_Increment (nv-counter)");
				goto out;
			}
			*pending = 0;
		}
		rc = Esys_NV_Read(t->ectx, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE,
				  ESYS_TR_NONE, 8, 0, &data);
		if (rc == TPM2_RC_NV_UNINITIALIZED && !defined) {
			defined = 1; /* at most one increment for this */
			*pending = 1;
			continue;
		}
		break;
	}
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_NV_Read (nv-counter)");
		goto out;
	}
	if (data->size != 8) {
		r = ks_fail(ks, -CIMD_EFORMAT, "tpm2: the counter read gave %u bytes, not 8",
			    (unsigned)data->size);
		goto out;
	}
	/* A counter reads as a UINT64, big-endian as the TPM marshals every integer. */
	for (i = 0; i < 8; i++)
		v = v << 8 | data->buffer[i];
	*ret_value = v;
	r = 0;
out:
	if (nv != ESYS_TR_NONE && t->ectx != NULL)
		Esys_TR_Close(t->ectx, &nv);
	Esys_Free(data);
	return r;
}

static int tpm_counter(struct key_store *ks, void *be, int increment, uint64_t *ret_value)
{
	struct tpm *t = be;
	int pending = increment, r;

	r = tpm_counter_once(ks, t, &pending, ret_value);
	/* A TPM that restarted behind our back (TPM_RC_INITIALIZE), or an index
	 * defined by another party as we defined ours: once more, afresh. */
	if (r == -EAGAIN)
		r = tpm_counter_once(ks, t, &pending, ret_value);
	return tpm_final(r);
}

static int tpm_ref_restricted(const uint8_t *ref, size_t ref_len)
{
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;

	if (ref_parse(ref, ref_len, &pub, &priv) < 0)
		return -CIMD_ENOKEY;
	return (pub.publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0;
}

/* What load checks before asking the TPM: the reference parses, and its public
 * area is exactly what cimdd creates for alg.  What only the TPM can check (that
 * it wrapped the private part, TPM 2.0 Part 1 §23.7) is left to TPM2_Load. */
static int tpm_ref_check(enum cimd_alg alg, const uint8_t *ref, size_t ref_len)
{
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	int r;

	if (ref_parse(ref, ref_len, &pub, &priv) < 0)
		return -CIMD_ENOKEY;
	r = check_public(&pub, alg) < 0 ? -CIMD_EALG : 0;
	OPENSSL_cleanse(&priv, sizeof(priv));
	return r;
}

/* The TPMT_PUBLIC as TPM 2.0 Part 2 §12.2.4 marshals it: what the key's name
 * is the digest of (Part 1 §16). */
static int tpm_public(const uint8_t *ref, size_t ref_len, uint8_t **ret_pub, size_t *ret_len)
{
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	uint8_t buf[sizeof(TPMT_PUBLIC)], *p;
	size_t off = 0;

	if (ref_parse(ref, ref_len, &pub, &priv) < 0)
		return -CIMD_ENOKEY;
	if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub.publicArea, buf, sizeof(buf), &off) != TSS2_RC_SUCCESS)
		return -CIMD_EFORMAT;
	if ((p = malloc(off)) == NULL)
		return -ENOMEM;
	memcpy(p, buf, off);
	*ret_pub = p;
	*ret_len = off;
	return 0;
}

/*
 * A TPM key exists only as the blob the caller stores; the TPM keeps nothing.
 * Destroying it here flushes it if loaded, and the caller then deletes the
 * blob.  docs/custody.md says what this does and does not guarantee.
 */
static int tpm_destroy(struct key_store *ks, void *be, const uint8_t *ref, size_t ref_len)
{
	struct tpm *t = be;
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	TSS2_RC rc;

	if (ref_parse(ref, ref_len, &pub, &priv) < 0)
		return ks_fail(ks, -CIMD_ENOKEY, "tpm2: malformed key reference");
	if (t->loaded != ESYS_TR_NONE && t->loaded_len == ref_len &&
	    memcmp(t->loaded_ref, ref, ref_len) == 0) {
		rc = Esys_FlushContext(t->ectx, t->loaded);
		t->loaded = ESYS_TR_NONE;
		free(t->loaded_ref);
		t->loaded_ref = NULL;
		if (rc != TSS2_RC_SUCCESS)
			return tpm_fail(ks, t, rc, -CIMD_EBACKEND, "TPM2_FlushContext");
	}
	OPENSSL_cleanse(&priv, sizeof(priv));
	return 0;
}

/* The TPM holds no keys of ours between calls: they are the blobs the caller
 * stores, so there is nothing in the hardware that the caller does not know
 * (holds_keys is 0: a listing says nothing about which keys exist). */
static int tpm_list(struct key_store *ks, void *be, size_t max, struct ks_ref **ret_refs,
		    size_t *ret_n)
{
	(void)ks;
	(void)be;
	(void)max;
	*ret_refs = NULL;
	*ret_n = 0;
	return 0;
}

const struct ks_backend ks_tpm2_backend = {
    .name = "tpm2",
    .exclusive_param = "tcti",
    .holds_keys = 0,
    .open = tpm_open,
    .close = tpm_close,
    .generate = tpm_generate,
    .load = tpm_load,
    .sign = tpm_sign,
    .max_sessions = tpm_max_sessions,
    .destroy = tpm_destroy,
    .list = tpm_list,
    .generate_attest = tpm_generate_attest,
    .certify = tpm_certify,
    .p11_evidence = tpm_p11_evidence,
    .counter = tpm_counter,
    .ref_restricted = tpm_ref_restricted,
    .ref_check = tpm_ref_check,
    .tpm_public = tpm_public,
};
