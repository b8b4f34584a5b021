/*
 * ks_pkcs11.c — PKCS#11 backend (libp11 for module loading, token discovery and
 * login; the module's own function list for everything done with keys).
 *
 * libp11 0.4.12 generates only RSA keys, reads no object attributes, and finds a
 * key only by enumerating every key on the token (which reads every object:
 * seconds at 20,000 objects on SoftHSM2), so key generation (C_GenerateKeyPair),
 * attribute reads (C_GetAttributeValue), lookup by CKA_ID, signing (C_Sign) and
 * destruction go through the module's CK_FUNCTION_LIST on a session of our own.
 * Those raw calls live in the p11_raw_* functions below and nowhere else.  The
 * function list is the one of the module instance that libp11 loaded (dlopen
 * RTLD_NOLOAD), so login state is shared: PKCS#11 v2.40 §5.6 makes login per
 * application, not per session, which is why our C_Login answers
 * CKR_USER_ALREADY_LOGGED_IN and why that counts as success.
 *
 * Keys by CKA_ID without a search.  A C_FindObjects search reads every object on
 * the token (SoftHSM2 checks each object's file: 0.4 s at 20,000 objects), so a
 * key is searched for at most once per connection: the objects of every key met
 * (generated, listed, searched for) are remembered by CKA_ID, and one listing
 * of the token fills that index for all of them (p11_raw_index).  A remembered
 * handle is used for a load, an evidence read or a destruction only after
 * C_GetAttributeValue confirms it still names an object of its class with that
 * CKA_ID (PKCS#11 v2.40 §2.4: a handle may come to name another object once its
 * own is destroyed); a signature trusts a handle confirmed on this connection,
 * as libp11's cached keys did.
 *
 * Threads: libp11 0.4.12 is not thread-safe, but the module is: libp11 loads it
 * with CKF_OS_LOCKING_OK (PKCS#11 v2.40 §5.4, C_Initialize), so several threads
 * may call it on sessions of their own.  Each of the key store's workers signs
 * on a session of its own (struct p11_sess), at once with the others ("shared",
 * see ks.h): such a signature reads the remembered keys and changes nothing
 * else.  Every other call, and a signature that needs a lookup or a fresh
 * connection, has the backend to itself (key_store.c's hw lock), uses the
 * control session p->sess, and is the only place libp11 is called.  Object
 * handles are the same in every session of an application (PKCS#11 v2.40 §2.4),
 * so a key looked up on the control session signs on any other.
 *
 * Faults: any failure that can come from a lost session or a stale object handle
 * (the token was removed and reinserted, the module was reset) makes the backend
 * drop every session and remembered key, log in again, look the key up again by
 * its CKA_ID and retry once.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libp11.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <p11-kit/pkcs11.h>

#include "ks.h"

#define P11_ID_LEN 16	/* CKA_ID of keys we generate: 128 random bits */
#define P11_FIND_MAX 16 /* objects one CKA_ID may name (a pair, normally) */
#define P11_RSA_BITS 2048
#define P11_KEYS_MAX (1 << 20)	/* keys remembered by CKA_ID */
#define P11_OBJECTS_MAX 1000000 /* objects on a token we list */

/* DER OIDs for CKA_EC_PARAMS (RFC 5480 §2.1.1.1). */
static const uint8_t oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

/* A key's two objects, remembered by CKA_ID (see the top of this file). */
struct p11_obj {
	uint8_t id[P11_ID_LEN];
	CK_OBJECT_HANDLE priv, pub; /* CK_INVALID_HANDLE: forgotten */
	int used;		    /* the slot holds an id (forgotten ones too) */
	int confirmed;		    /* the handles were confirmed on this connection */
};

/* A worker's signing session (session_new).  Opened on its first signature,
 * closed with the connection (p11_disconnect). */
struct p11_sess {
	CK_SESSION_HANDLE h;
	int open;
};

#define P11_SESS_MAX CIMD_KS_SESSIONS_MAX

struct p11 {
	char *module;
	char *token;
	char *pin;
	PKCS11_CTX *ctx;
	PKCS11_SLOT *slots;
	unsigned int nslots;
	PKCS11_SLOT *slot;
	CK_FUNCTION_LIST_PTR fl;
	CK_SESSION_HANDLE sess;
	int have_sess;
	struct p11_obj *objs; /* open addressing on the CKA_ID */
	size_t objs_cap, objs_n;
	int indexed;	 /* a listing of the token filled objs on this connection */
	time_t reloaded; /* last full reload of the module (p11_reload) */
	struct p11_sess *sessions[P11_SESS_MAX]; /* the workers' */
	size_t nsessions;
	CK_ULONG max_sessions; /* the token's ulMaxSessionCount */
};

/* Return values we name in messages; stale: a fresh session and a fresh lookup
 * may cure it (the token was reset, the session closed behind our back). */
#define CKR(rv, stale)                                                                             \
	{                                                                                          \
		rv, #rv, stale                                                                     \
	}
static const struct {
	CK_RV rv;
	const char *name;
	int stale;
} ckrs[] = {
    CKR(CKR_OK, 0),
    CKR(CKR_PIN_INCORRECT, 0),
    CKR(CKR_PIN_LOCKED, 0),
    CKR(CKR_PIN_LEN_RANGE, 0),
    CKR(CKR_PIN_EXPIRED, 0),
    CKR(CKR_SESSION_HANDLE_INVALID, 1),
    CKR(CKR_SESSION_CLOSED, 1),
    CKR(CKR_OBJECT_HANDLE_INVALID, 1),
    CKR(CKR_KEY_HANDLE_INVALID, 1),
    CKR(CKR_USER_NOT_LOGGED_IN, 1),
    CKR(CKR_DEVICE_ERROR, 1),
    CKR(CKR_DEVICE_REMOVED, 1),
    CKR(CKR_TOKEN_NOT_PRESENT, 1),
    CKR(CKR_CRYPTOKI_NOT_INITIALIZED, 1),
    CKR(CKR_OPERATION_ACTIVE, 1),
    CKR(CKR_MECHANISM_INVALID, 0),
    CKR(CKR_KEY_TYPE_INCONSISTENT, 0),
    CKR(CKR_KEY_FUNCTION_NOT_PERMITTED, 0),
    CKR(CKR_TEMPLATE_INCONSISTENT, 0),
    CKR(CKR_ATTRIBUTE_VALUE_INVALID, 0),
    CKR(CKR_DEVICE_MEMORY, 0),
    CKR(CKR_GENERAL_ERROR, 0),
    CKR(CKR_FUNCTION_FAILED, 0),
};
#undef CKR

static const char *ckr_name(CK_RV rv)
{
	size_t i;

	for (i = 0; i < sizeof(ckrs) / sizeof(ckrs[0]); i++)
		if (ckrs[i].rv == rv)
			return ckrs[i].name;
	return "CKR_?";
}

static int ckr_is_stale(CK_RV rv)
{
	size_t i;

	for (i = 0; i < sizeof(ckrs) / sizeof(ckrs[0]); i++)
		if (ckrs[i].rv == rv)
			return ckrs[i].stale;
	return 0;
}

/* Maps a failed raw call: -EAGAIN asks the caller to reconnect and retry. */
static int p11_fail(struct key_store *ks, CK_RV rv, int r, const char *what)
{
	if (ckr_is_stale(rv))
		r = -EAGAIN;
	return ks_fail(ks, r, "pkcs11: %s: %s (0x%lx)", what, ckr_name(rv), (unsigned long)rv);
}

/* ---- keys remembered by CKA_ID ---- */

static size_t p11_obj_hash(const uint8_t *id)
{
	uint64_t h;

	memcpy(&h, id, sizeof(h)); /* our CKA_IDs are random: any 64 bits hash */
	return (size_t)(h ^ (h >> 31));
}

/* The slot of id: the one holding it, or the empty one where it would go. */
static struct p11_obj *p11_obj_slot(const struct p11 *p, const uint8_t *id)
{
	size_t i = p11_obj_hash(id) & (p->objs_cap - 1);

	while (p->objs[i].used && memcmp(p->objs[i].id, id, P11_ID_LEN) != 0)
		i = (i + 1) & (p->objs_cap - 1);
	return &p->objs[i];
}

static struct p11_obj *p11_obj_get(const struct p11 *p, const uint8_t *id, size_t id_len)
{
	struct p11_obj *o;

	if (p->objs_cap == 0 || id_len != P11_ID_LEN)
		return NULL;
	o = p11_obj_slot(p, id);
	return o->used ? o : NULL;
}

static void p11_obj_drop(struct p11 *p)
{
	free(p->objs);
	p->objs = NULL;
	p->objs_cap = p->objs_n = 0;
	p->indexed = 0;
}

/* Remembers a key's objects.  Best effort: without memory, or past
 * P11_KEYS_MAX, keys are searched for as they would be without it. */
static void p11_obj_put(struct p11 *p, const uint8_t *id, CK_OBJECT_HANDLE priv,
			CK_OBJECT_HANDLE pub, int confirmed)
{
	struct p11_obj *old = p->objs, *o;
	size_t i, cap = p->objs_cap;

	if ((p->objs_n + 1) * 2 > p->objs_cap) {
		if (p->objs_n >= P11_KEYS_MAX) {
			p11_obj_drop(p);
			return;
		}
		p->objs_cap = cap ? 2 * cap : 1024;
		if ((p->objs = calloc(p->objs_cap, sizeof(*p->objs))) == NULL) {
			p->objs = old;
			p->objs_cap = cap;
			p11_obj_drop(p);
			return;
		}
		/* Forgotten ones are not moved. */
		for (i = p->objs_n = 0; i < cap; i++)
			if (old[i].used && old[i].priv != CK_INVALID_HANDLE) {
				*p11_obj_slot(p, old[i].id) = old[i];
				p->objs_n++;
			}
		free(old);
	}
	o = p11_obj_slot(p, id);
	if (!o->used)
		p->objs_n++;
	memcpy(o->id, id, P11_ID_LEN);
	o->used = 1;
	o->priv = priv;
	o->pub = pub;
	o->confirmed = confirmed;
}

static void p11_obj_forget(struct p11_obj *o)
{
	if (o == NULL)
		return;
	o->priv = o->pub = CK_INVALID_HANDLE;
	o->confirmed = 0;
}

/* Whether handle h names an object of class cls with CKA_ID id, now. */
static int p11_obj_is(struct p11 *p, CK_OBJECT_HANDLE h, CK_OBJECT_CLASS cls, const uint8_t *id)
{
	CK_OBJECT_CLASS c = (CK_OBJECT_CLASS)-1;
	uint8_t got[P11_ID_LEN];
	CK_ATTRIBUTE a[2] = {
	    {CKA_CLASS, &c, sizeof(c)},
	    {CKA_ID, got, sizeof(got)},
	};

	return h != CK_INVALID_HANDLE && p->fl->C_GetAttributeValue(p->sess, h, a, 2) == CKR_OK &&
	       c == cls && a[1].ulValueLen == P11_ID_LEN && memcmp(got, id, P11_ID_LEN) == 0;
}

static void p11_disconnect(struct p11 *p)
{
	size_t i;

	p11_obj_drop(p);
	for (i = 0; i < p->nsessions; i++) {
		if (p->sessions[i]->open && p->fl != NULL)
			p->fl->C_CloseSession(p->sessions[i]->h);
		p->sessions[i]->open = 0;
	}
	if (p->have_sess && p->fl != NULL)
		p->fl->C_CloseSession(p->sess);
	p->have_sess = 0;
	if (p->slots != NULL)
		PKCS11_release_all_slots(p->ctx, p->slots, p->nslots);
	p->slots = NULL;
	p->nslots = 0;
	p->slot = NULL;
}

/* Finds the token, opens libp11's session and ours, and logs in. */
static int p11_connect(struct key_store *ks, struct p11 *p)
{
	CK_C_GetFunctionList get_fl;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	void *dl;
	unsigned int i;
	int logged_in = 0;

	if (p->ctx == NULL) {
		if (access(p->module, R_OK) < 0)
			return ks_fail(ks, -CIMD_ENOMODULE, "pkcs11: module %s: %s", p->module,
				       strerror(errno));
		if ((p->ctx = PKCS11_CTX_new()) == NULL)
			return -ENOMEM;
		if (PKCS11_CTX_load(p->ctx, p->module) < 0) {
			PKCS11_CTX_free(p->ctx);
			p->ctx = NULL;
			return ks_fail(ks, -CIMD_ENOMODULE, "pkcs11: cannot load module %s",
				       p->module);
		}
		/* The same instance libp11 loaded: RTLD_NOLOAD never loads a second copy. */
		if ((dl = dlopen(p->module, RTLD_NOW | RTLD_NOLOAD)) == NULL ||
		    (get_fl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL ||
		    get_fl(&p->fl) != CKR_OK) {
			if (dl != NULL)
				dlclose(dl);
			PKCS11_CTX_unload(p->ctx);
			PKCS11_CTX_free(p->ctx);
			p->ctx = NULL;
			return ks_fail(ks, -CIMD_ENOMODULE, "pkcs11: %s has no C_GetFunctionList",
				       p->module);
		}
		dlclose(dl); /* drops our reference only; libp11 keeps the module */
	}
	if (PKCS11_enumerate_slots(p->ctx, &p->slots, &p->nslots) < 0)
		return ks_fail(ks, -CIMD_EUNAVAILABLE, "pkcs11: cannot enumerate slots");
	for (i = 0; i < p->nslots; i++) {
		PKCS11_TOKEN *t = p->slots[i].token;
		if (t != NULL && t->initialized && t->label != NULL &&
		    strcmp(t->label, p->token) == 0) {
			p->slot = &p->slots[i];
			break;
		}
	}
	if (p->slot == NULL) {
		PKCS11_release_all_slots(p->ctx, p->slots, p->nslots);
		p->slots = NULL;
		p->nslots = 0;
		return ks_fail(ks, -CIMD_ENOTOKEN, "pkcs11: no token labelled '%s' in %s", p->token,
			       p->module);
	}
	if (PKCS11_open_session(p->slot, 1) < 0) {
		p11_disconnect(p);
		return ks_fail(ks, -CIMD_EUNAVAILABLE, "pkcs11: cannot open a session on '%s'",
			       p->token);
	}
	rv = p->fl->C_OpenSession(PKCS11_get_slotid_from_slot(p->slot),
				  CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &p->sess);
	if (rv != CKR_OK) {
		p11_disconnect(p);
		return p11_fail(ks, rv, -CIMD_EUNAVAILABLE, "C_OpenSession");
	}
	p->have_sess = 1;
	/* Our C_Login gives the exact reason a PIN is refused; libp11 then only needs
	 * to learn that the application is logged in. */
	rv = p->fl->C_Login(p->sess, CKU_USER, (CK_UTF8CHAR_PTR)p->pin, strlen(p->pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		p11_disconnect(p);
		if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_LEN_RANGE ||
		    rv == CKR_PIN_EXPIRED)
			return ks_fail(ks, -CIMD_EPIN, "pkcs11: C_Login on '%s': %s", p->token,
				       ckr_name(rv));
		return p11_fail(ks, rv, -CIMD_EUNAVAILABLE, "C_Login");
	}
	if (p->fl->C_GetTokenInfo(PKCS11_get_slotid_from_slot(p->slot), &ti) == CKR_OK)
		p->max_sessions = ti.ulMaxSessionCount;
	if (PKCS11_is_logged_in(p->slot, 0, &logged_in) < 0 || !logged_in) {
		if (PKCS11_login(p->slot, 0, p->pin) < 0) {
			ERR_clear_error();
			if (PKCS11_is_logged_in(p->slot, 0, &logged_in) < 0 || !logged_in) {
				p11_disconnect(p);
				return ks_fail(ks, -CIMD_EUNAVAILABLE,
					       "pkcs11: libp11 login on '%s' failed", p->token);
			}
		}
	}
	return 0;
}

static int p11_reconnect(struct key_store *ks, struct p11 *p)
{
	int r;

	p11_disconnect(p);
	if ((r = p11_connect(ks, p)) < 0 && r != -CIMD_EPIN && r != -ENOMEM)
		r = -CIMD_EUNAVAILABLE;
	return r;
}

/*
 * A key the caller knows exists is not found: the module's view of the token
 * may be stale in a way no session can cure (SoftHSM2 keeps its object list
 * in memory; a token store that went away and came back is read again only by
 * C_Initialize).  Unloads the module (C_Finalize), loads it again and logs in:
 * at most once per P11_RELOAD_SEC, so that a key that is really gone costs
 * one reload, not one per call.  1 when it reloaded and the caller may retry.
 */
#define P11_RELOAD_SEC 2
static int p11_reload(struct key_store *ks, struct p11 *p, int *r)
{
	time_t now = time(NULL);

	if (*r != -CIMD_ENOKEY || now - p->reloaded < P11_RELOAD_SEC)
		return 0;
	p->reloaded = now;
	p11_disconnect(p);
	if (p->ctx != NULL) {
		PKCS11_CTX_unload(p->ctx);
		PKCS11_CTX_free(p->ctx);
		p->ctx = NULL;
		p->fl = NULL;
	}
	/* Gone token, missing module: the hardware is unavailable, not the key. */
	if ((*r = p11_connect(ks, p)) < 0 && *r != -CIMD_EPIN && *r != -ENOMEM)
		*r = -CIMD_EUNAVAILABLE;
	return *r == 0;
}

static void p11_free(struct p11 *p)
{
	if (p == NULL)
		return;
	p11_disconnect(p);
	if (p->ctx != NULL) {
		PKCS11_CTX_unload(p->ctx);
		PKCS11_CTX_free(p->ctx);
	}
	free(p->module);
	free(p->token);
	secret_free(&p->pin);
	free(p);
}

static int p11_open(struct key_store *ks, const struct ks_param *params, size_t n, void **ret_be)
{
	struct p11 *p;
	const char *pin_file = NULL;
	size_t i;
	int r;

	if ((p = calloc(1, sizeof(*p))) == NULL)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		char **dst = NULL;
		if (strcmp(params[i].name, "module") == 0)
			dst = &p->module;
		else if (strcmp(params[i].name, "token") == 0)
			dst = &p->token;
		else if (strcmp(params[i].name, "pin-file") == 0)
			pin_file = params[i].value;
		else {
			r = ks_fail(ks, -CIMD_ECONFIG, "pkcs11: unknown parameter '%s'",
				    params[i].name);
			goto out;
		}
		if (dst != NULL && (*dst = strdup(params[i].value)) == NULL) {
			r = -ENOMEM;
			goto out;
		}
	}
	if (p->module == NULL || p->token == NULL || pin_file == NULL) {
		r = ks_fail(ks, -CIMD_ECONFIG, "pkcs11: module, token and pin-file are required");
		goto out;
	}
	if ((r = secret_read_file(pin_file, &p->pin)) < 0) {
		r = ks_fail(ks, -CIMD_EPIN, "pkcs11: pin-file %s: %s%s", pin_file, strerror(-r),
			    r == -EPERM ? " (must be a regular file readable only by its owner)"
					: "");
		goto out;
	}
	if ((r = p11_connect(ks, p)) < 0)
		goto out;
	*ret_be = p;
	p = NULL;
	r = 0;
out:
	p11_free(p);
	return r;
}

static void p11_close(void *be)
{
	p11_free(be);
}

/* ---- raw PKCS#11 calls: the few that libp11 0.4.12 lacks ---- */

/* Object handles with CKA_ID = id (and class, unless (CK_ULONG)-1). */
static int p11_raw_find(struct key_store *ks, struct p11 *p, const uint8_t *id, size_t id_len,
			CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *ret_objs, CK_ULONG *ret_n)
{
	CK_ATTRIBUTE tmpl[2] = {
	    {CKA_ID, (void *)id, id_len},
	    {CKA_CLASS, &cls, sizeof(cls)},
	};
	CK_ULONG n = 0;
	CK_RV rv;

	rv = p->fl->C_FindObjectsInit(p->sess, tmpl, cls == (CK_ULONG)-1 ? 1 : 2);
	if (rv != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_FindObjectsInit");
	rv = p->fl->C_FindObjects(p->sess, ret_objs, P11_FIND_MAX, &n);
	p->fl->C_FindObjectsFinal(p->sess);
	if (rv != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_FindObjects");
	*ret_n = n;
	return 0;
}

/* One attribute into buf (at most *len bytes); *len becomes its length. */
static int p11_raw_attr(struct key_store *ks, struct p11 *p, CK_OBJECT_HANDLE obj,
			CK_ATTRIBUTE_TYPE type, void *buf, size_t *len)
{
	CK_ATTRIBUTE a = {type, buf, *len};
	CK_RV rv;

	if ((rv = p->fl->C_GetAttributeValue(p->sess, obj, &a, 1)) != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_GetAttributeValue");
	*len = a.ulValueLen;
	return 0;
}

/* The public JWK of the public key object pub, checked against alg. */
static int p11_raw_public_jwk(struct key_store *ks, struct p11 *p, CK_OBJECT_HANDLE pub,
			      enum cimd_alg alg, json_t **ret_jwk)
{
	uint8_t buf[1024], e[16];
	size_t len = sizeof(buf), elen = sizeof(e), size = cimd_alg_ec_size(alg);
	const uint8_t *oid = alg == CIMD_ALG_ES384 ? oid_p384 : oid_p256;
	size_t oid_len = alg == CIMD_ALG_ES384 ? sizeof(oid_p384) : sizeof(oid_p256);
	CK_KEY_TYPE kt = 0;
	size_t ktlen = sizeof(kt);
	const uint8_t *pt;
	int r;

	if ((r = p11_raw_attr(ks, p, pub, CKA_KEY_TYPE, &kt, &ktlen)) < 0)
		return r;
	if (size == 0) {
		if (kt != CKK_RSA)
			return ks_fail(ks, -CIMD_EALG, "pkcs11: key is not an RSA key");
		if ((r = p11_raw_attr(ks, p, pub, CKA_MODULUS, buf, &len)) < 0 ||
		    (r = p11_raw_attr(ks, p, pub, CKA_PUBLIC_EXPONENT, e, &elen)) < 0)
			return r;
		return jwk_new_rsa(buf, len, e, elen, ret_jwk);
	}
	if (kt != CKK_EC)
		return ks_fail(ks, -CIMD_EALG, "pkcs11: key is not an EC key");
	if ((r = p11_raw_attr(ks, p, pub, CKA_EC_PARAMS, buf, &len)) < 0)
		return r;
	if (len != oid_len || memcmp(buf, oid, oid_len) != 0)
		return ks_fail(ks, -CIMD_EALG, "pkcs11: key is not on the curve of %s",
			       cimd_alg_name(alg));
	len = sizeof(buf);
	if ((r = p11_raw_attr(ks, p, pub, CKA_EC_POINT, buf, &len)) < 0)
		return r;
	/* PKCS#11 v2.40 §2.3.3: CKA_EC_POINT is DER OCTET STRING(0x04 || x || y);
	 * some modules return the bare point, which we accept too. */
	if (len == 3 + 2 * size && buf[0] == 0x04 && buf[1] == 1 + 2 * size && buf[2] == 0x04)
		pt = buf + 3;
	else if (len == 1 + 2 * size && buf[0] == 0x04)
		pt = buf + 1;
	else
		return ks_fail(ks, -CIMD_EFORMAT, "pkcs11: CKA_EC_POINT of %zu bytes", len);
	return jwk_new_ec(alg, pt, pt + size, ret_jwk);
}

/* "cimdd", or "cimdd:TAG" when the caller tags its keys (reconciliation). */
#define P11_LABEL "cimdd"
#define P11_LABEL_MAX (sizeof(P11_LABEL) + 1 + CIMD_TAG_MAX)

static int p11_raw_generate(struct key_store *ks, struct p11 *p, enum cimd_alg alg,
			    const uint8_t *id, const char *tag, json_t **ret_jwk)
{
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG bits = P11_RSA_BITS;
	uint8_t e65537[] = {0x01, 0x00, 0x01};
	const uint8_t *oid = alg == CIMD_ALG_ES384 ? oid_p384 : oid_p256;
	CK_ULONG oid_len = alg == CIMD_ALG_ES384 ? sizeof(oid_p384) : sizeof(oid_p256);
	char label[P11_LABEL_MAX + 1];
	int ec = cimd_alg_ec_size(alg) != 0;
	CK_MECHANISM mech = {ec ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pub[] = {
	    {CKA_TOKEN, &yes, sizeof(yes)},
	    {CKA_PRIVATE, &no, sizeof(no)},
	    {CKA_VERIFY, &yes, sizeof(yes)},
	    {CKA_ID, (void *)id, P11_ID_LEN},
	    {CKA_LABEL, label, 0},
	    /* the last one or two differ by key type */
	    {ec ? CKA_EC_PARAMS : CKA_MODULUS_BITS, ec ? (void *)oid : (void *)&bits,
	     ec ? oid_len : sizeof(bits)},
	    {CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537)},
	};
	/* Sensitive and never extractable: the private key cannot leave the token.
	 * Signing only: no decrypt, derive, unwrap (PKCS#11 v2.40 §4.9). */
	CK_ATTRIBUTE priv[] = {
	    {CKA_TOKEN, &yes, sizeof(yes)},	{CKA_PRIVATE, &yes, sizeof(yes)},
	    {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
	    {CKA_SIGN, &yes, sizeof(yes)},	{CKA_DECRYPT, &no, sizeof(no)},
	    {CKA_DERIVE, &no, sizeof(no)},	{CKA_UNWRAP, &no, sizeof(no)},
	    {CKA_ID, (void *)id, P11_ID_LEN},	{CKA_LABEL, label, 0},
	};
	CK_OBJECT_HANDLE hpub, hpriv;
	CK_RV rv;
	int r;

	snprintf(label, sizeof(label), "%s%s%s", P11_LABEL, tag ? ":" : "", tag ? tag : "");
	pub[4].ulValueLen = priv[9].ulValueLen = strlen(label);

	rv = p->fl->C_GenerateKeyPair(p->sess, &mech, pub, ec ? 6 : 7, priv,
				      sizeof(priv) / sizeof(priv[0]), &hpub, &hpriv);
	if (rv != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_GenerateKeyPair");
	if ((r = p11_raw_public_jwk(ks, p, hpub, alg, ret_jwk)) < 0) {
		p->fl->C_DestroyObject(p->sess, hpriv);
		p->fl->C_DestroyObject(p->sess, hpub);
		return r;
	}
	p11_obj_put(p, id, hpriv, hpub, 1);
	return 0;
}

static int p11_raw_index(struct key_store *ks, struct p11 *p, size_t max, struct ks_ref **ret_refs,
			 size_t *ret_n);

/*
 * The private and public key objects of the key id: remembered ones, confirmed
 * now unless trust allows one confirmed on this connection; otherwise, once per
 * connection, the token is listed (which remembers every key on it); otherwise
 * searched for by CKA_ID, exactly one of each, and remembered.
 */
static int p11_key_objs(struct key_store *ks, struct p11 *p, const uint8_t *id, size_t id_len,
			int trust, CK_OBJECT_HANDLE *ret_priv, CK_OBJECT_HANDLE *ret_pub)
{
	CK_OBJECT_HANDLE objs[P11_FIND_MAX], priv;
	struct p11_obj *o = p11_obj_get(p, id, id_len);
	CK_ULONG n;
	int r;

	if (o == NULL && !p->indexed && id_len == P11_ID_LEN) {
		if ((r = p11_raw_index(ks, p, 0, NULL, NULL)) < 0)
			return r;
		o = p11_obj_get(p, id, id_len);
	}
	if (o != NULL && o->priv != CK_INVALID_HANDLE &&
	    ((trust && o->confirmed) || (p11_obj_is(p, o->priv, CKO_PRIVATE_KEY, id) &&
					 p11_obj_is(p, o->pub, CKO_PUBLIC_KEY, id)))) {
		o->confirmed = 1;
		*ret_priv = o->priv;
		*ret_pub = o->pub;
		return 0;
	}
	p11_obj_forget(o);
	if ((r = p11_raw_find(ks, p, id, id_len, CKO_PRIVATE_KEY, objs, &n)) < 0)
		return r;
	if (n != 1)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: %lu private keys with this CKA_ID",
			       (unsigned long)n);
	priv = objs[0];
	if ((r = p11_raw_find(ks, p, id, id_len, CKO_PUBLIC_KEY, objs, &n)) < 0)
		return r;
	if (n != 1)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: %lu public keys with this CKA_ID",
			       (unsigned long)n);
	if (id_len == P11_ID_LEN)
		p11_obj_put(p, id, priv, objs[0], 1);
	*ret_priv = priv;
	*ret_pub = objs[0];
	return 0;
}

static int p11_raw_load(struct key_store *ks, struct p11 *p, enum cimd_alg alg, const uint8_t *id,
			size_t id_len, json_t **ret_jwk)
{
	CK_OBJECT_HANDLE priv, pub;
	int r;

	if ((r = p11_key_objs(ks, p, id, id_len, 0, &priv, &pub)) < 0)
		return r;
	return p11_raw_public_jwk(ks, p, pub, alg, ret_jwk);
}

static int p11_raw_destroy(struct key_store *ks, struct p11 *p, const uint8_t *id, size_t id_len)
{
	CK_OBJECT_HANDLE objs[P11_FIND_MAX];
	struct p11_obj *o = p11_obj_get(p, id, id_len);
	CK_ULONG i, n;
	CK_RV rv;
	int r, found = 0;

	/* The two objects we know, when they are still what we knew. */
	if (o != NULL && p11_obj_is(p, o->priv, CKO_PRIVATE_KEY, id) &&
	    p11_obj_is(p, o->pub, CKO_PUBLIC_KEY, id)) {
		if ((rv = p->fl->C_DestroyObject(p->sess, o->priv)) != CKR_OK ||
		    (rv = p->fl->C_DestroyObject(p->sess, o->pub)) != CKR_OK) {
			p11_obj_forget(o);
			return p11_fail(ks, rv, -CIMD_EBACKEND, "C_DestroyObject");
		}
		p11_obj_forget(o);
		return 0;
	}
	p11_obj_forget(o);
	/* In rounds of P11_FIND_MAX, until nothing carries the CKA_ID. */
	do {
		if ((r = p11_raw_find(ks, p, id, id_len, (CK_ULONG)-1, objs, &n)) < 0)
			return r;
		for (i = 0; i < n; i++)
			if ((rv = p->fl->C_DestroyObject(p->sess, objs[i])) != CKR_OK)
				return p11_fail(ks, rv, -CIMD_EBACKEND, "C_DestroyObject");
		found += (int)n;
	} while (n == P11_FIND_MAX);
	if (found == 0)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: no object with this CKA_ID");
	return 0;
}

/* One private or public key object, as a listing of the token saw it. */
struct p11_seen {
	CK_OBJECT_HANDLE h;
	CK_OBJECT_CLASS cls;
	uint8_t id[P11_ID_LEN * 4];
	size_t id_len;
	int ours;		    /* a private key labelled "cimdd" or "cimdd:TAG" */
	char tag[CIMD_TAG_MAX + 1]; /* "" when none */
};

static int p11_seen_cmp(const void *a, const void *b)
{
	const struct p11_seen *x = a, *y = b;

	if (x->id_len != y->id_len)
		return x->id_len < y->id_len ? -1 : 1;
	return memcmp(x->id, y->id, x->id_len);
}

#define P11_LIST_BATCH 1024 /* handles fetched per C_FindObjects */

/* One object's class, CKA_ID and label into e, in one C_GetAttributeValue:
 * 1 when it is a key with a CKA_ID a key of ours could have, 0 when it is
 * anything else (e then holds nothing of use). */
static int p11_seen_read(struct key_store *ks, struct p11 *p, CK_OBJECT_HANDLE h,
			 struct p11_seen *e)
{
	char label[P11_LABEL_MAX + 1];
	CK_OBJECT_CLASS cls = (CK_OBJECT_CLASS)-1;
	CK_ATTRIBUTE a[3];
	size_t tlen;
	CK_RV rv;
	int r;

	a[0] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	a[1] = (CK_ATTRIBUTE){CKA_ID, e->id, sizeof(e->id)};
	a[2] = (CK_ATTRIBUTE){CKA_LABEL, label, sizeof(label) - 1};
	rv = p->fl->C_GetAttributeValue(p->sess, h, a, 3);
	/* PKCS#11 v2.40 §5.7.5: with these three, each attribute that could not
	 * be returned has the length CK_UNAVAILABLE_INFORMATION, and the others
	 * are filled in. */
	if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL && rv != CKR_ATTRIBUTE_SENSITIVE &&
	    rv != CKR_ATTRIBUTE_TYPE_INVALID) {
		/* An object the module cannot say the class of is no key: SoftHSM2
		 * answers this for an object file that holds no attribute, which a
		 * process killed inside C_GenerateKeyPair leaves (the file is made
		 * before its attributes are written).  Not a failure of the token:
		 * failing the listing for it would fail every load after the crash. */
		r = rv == CKR_ATTRIBUTE_VALUE_INVALID
			? 0
			: p11_fail(ks, rv, -CIMD_EBACKEND, "C_GetAttributeValue");
		goto out;
	}
	if (a[0].ulValueLen != sizeof(cls) || (cls != CKO_PRIVATE_KEY && cls != CKO_PUBLIC_KEY) ||
	    a[1].ulValueLen == CK_UNAVAILABLE_INFORMATION || a[1].ulValueLen > sizeof(e->id)) {
		r = 0; /* no key, or no CKA_ID a key of ours has */
		goto out;
	}
	e->h = h;
	e->cls = cls;
	e->id_len = a[1].ulValueLen;
	e->ours = 0;
	e->tag[0] = '\0';
	if (cls == CKO_PRIVATE_KEY && a[2].ulValueLen < sizeof(label)) {
		label[a[2].ulValueLen] = '\0';
		tlen =
		    a[2].ulValueLen > sizeof(P11_LABEL) ? a[2].ulValueLen - sizeof(P11_LABEL) : 0;
		e->ours = strcmp(label, P11_LABEL) == 0 ||
			  strncmp(label, P11_LABEL ":", sizeof(P11_LABEL)) == 0;
		if (e->ours && label[sizeof(P11_LABEL) - 1] == ':' && tlen <= CIMD_TAG_MAX)
			memcpy(e->tag, label + sizeof(P11_LABEL), tlen + 1);
	}
	r = 1;
out:
	return r;
}

/* Every key object on the token, unsorted: one C_FindObjectsInit, handles
 * P11_LIST_BATCH at a time, at most P11_OBJECTS_MAX objects. */
static int p11_list_keys(struct key_store *ks, struct p11 *p, struct p11_seen **ret_seen,
			 size_t *ret_n)
{
	CK_OBJECT_HANDLE *objs;
	struct p11_seen *seen = NULL, *ns;
	size_t n = 0, cap = 0;
	CK_ULONG k, o;
	CK_RV rv;
	int r = 0, key;

	if ((objs = calloc(P11_LIST_BATCH, sizeof(*objs))) == NULL)
		return -ENOMEM;
	if ((rv = p->fl->C_FindObjectsInit(p->sess, NULL, 0)) != CKR_OK) {
		free(objs);
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_FindObjectsInit");
	}
	do {
		if ((rv = p->fl->C_FindObjects(p->sess, objs, P11_LIST_BATCH, &k)) != CKR_OK) {
			r = p11_fail(ks, rv, -CIMD_EBACKEND, "C_FindObjects");
			break;
		}
		for (o = 0; o < k && r == 0; o++) {
			if (n == cap) {
				cap = cap ? 2 * cap : 1024;
				if (cap > P11_OBJECTS_MAX) {
					r = ks_fail(ks, -E2BIG, "pkcs11: more than %d objects",
						    P11_OBJECTS_MAX);
					break;
				}
				if ((ns = realloc(seen, cap * sizeof(*seen))) == NULL) {
					r = -ENOMEM;
					break;
				}
				seen = ns;
			}
			if ((key = p11_seen_read(ks, p, objs[o], &seen[n])) < 0) {
				r = key;
				break;
			}
			n += (size_t)key;
		}
	} while (r == 0 && k == P11_LIST_BATCH);
	p->fl->C_FindObjectsFinal(p->sess);
	free(objs);
	if (r < 0) {
		free(seen);
		return r;
	}
	*ret_seen = seen;
	*ret_n = n;
	return 0;
}

/* The private keys of ours among one CKA_ID's objects appended to *refs
 * (*nrefs of them, at most max); whole when the CKA_ID names exactly one
 * private and one public object. */
static int p11_refs_add(const struct p11_seen *grp, size_t count, int whole, size_t max,
			struct ks_ref **refs, size_t *nrefs)
{
	struct ks_ref *nr;
	size_t i;

	for (i = 0; i < count && *nrefs < max; i++) {
		if (!grp[i].ours)
			continue;
		if (*nrefs % 64 == 0) {
			if ((nr = realloc(*refs, (*nrefs + 64) * sizeof(**refs))) == NULL)
				return -ENOMEM;
			*refs = nr;
		}
		nr = &(*refs)[*nrefs];
		if ((nr->ref = malloc(grp[i].id_len ? grp[i].id_len : 1)) == NULL)
			return -ENOMEM;
		memcpy(nr->ref, grp[i].id, grp[i].id_len);
		nr->len = grp[i].id_len;
		memcpy(nr->tag, grp[i].tag, sizeof(nr->tag));
		nr->whole = whole;
		(*nrefs)++;
	}
	return 0;
}

/*
 * One listing of the token: every object read once.  One C_FindObjectsInit
 * for all objects, their handles fetched P11_LIST_BATCH at a time, and one
 * C_GetAttributeValue per object for its class, CKA_ID and label together: a
 * module may cost a lot per call (SoftHSM2 checks each object's file on every
 * call), so the calls are what this keeps low.  From it:
 *
 *   - every key with exactly one private and one public object is remembered
 *     (p11_obj_put), so that no later call on it searches the token;
 *   - when ret_refs is not NULL, the CKA_IDs (and tags) of the private keys
 *     labelled "cimdd" or "cimdd:TAG" (PKCS#11 finds by whole attribute values
 *     only, so the label is checked here), at most max, each whole when its
 *     CKA_ID names exactly one private and one public object, as a load needs.
 *
 * The listing is what reconciliation believes about the whole token, so it is
 * all or nothing: an attribute that cannot be ours (too long, sensitive,
 * absent) makes that object not ours, any other failure fails the listing.
 */
static int p11_raw_index(struct key_store *ks, struct p11 *p, size_t max, struct ks_ref **ret_refs,
			 size_t *ret_n)
{
	struct p11_seen *seen = NULL;
	struct ks_ref *refs = NULL;
	size_t n = 0, nrefs = 0, j, g, npriv, npub;
	int r;

	if ((r = p11_list_keys(ks, p, &seen, &n)) < 0)
		goto out;
	if (n > 0)
		qsort(seen, n, sizeof(*seen), p11_seen_cmp);
	/* By CKA_ID: how many private and public objects carry it. */
	for (g = 0; r == 0 && g < n; g = j) {
		for (j = g, npriv = npub = 0; j < n && p11_seen_cmp(&seen[g], &seen[j]) == 0; j++)
			*(seen[j].cls == CKO_PRIVATE_KEY ? &npriv : &npub) += 1;
		if (npriv == 1 && npub == 1 && seen[g].id_len == P11_ID_LEN)
			p11_obj_put(p, seen[g].id,
				    seen[g].cls == CKO_PRIVATE_KEY ? seen[g].h : seen[g + 1].h,
				    seen[g].cls == CKO_PRIVATE_KEY ? seen[g + 1].h : seen[g].h, 1);
		if (ret_refs != NULL)
			r = p11_refs_add(seen + g, j - g, npriv == 1 && npub == 1, max, &refs,
					 &nrefs);
	}
	if (r < 0)
		goto out;
	p->indexed = 1;
	if (ret_refs != NULL) {
		*ret_refs = refs;
		*ret_n = nrefs;
		refs = NULL;
	}
	r = 0;
out:
	free(seen);
	ks_refs_free(&refs, nrefs);
	return r;
}

/* A blank-padded CK_UTF8CHAR field (PKCS#11 v2.40 §3.2, CK_TOKEN_INFO) as a C
 * string without the padding; out holds n + 1 bytes. */
static void p11_field(const CK_UTF8CHAR *f, size_t n, char *out)
{
	while (n > 0 && (f[n - 1] == ' ' || f[n - 1] == '\0'))
		n--;
	memcpy(out, f, n);
	out[n] = '\0';
}

/* A CK_BBOOL attribute: 1 or 0, or -1 when the token does not report it
 * (PKCS#11 v2.40 §5.7.5, C_GetAttributeValue: CKR_ATTRIBUTE_SENSITIVE,
 * CKR_ATTRIBUTE_TYPE_INVALID, or a length of CK_UNAVAILABLE_INFORMATION). */
static int p11_raw_bool(struct key_store *ks, struct p11 *p, CK_OBJECT_HANDLE obj,
			CK_ATTRIBUTE_TYPE type, int *ret)
{
	CK_BBOOL v = CK_FALSE;
	CK_ATTRIBUTE a = {type, &v, sizeof(v)};
	CK_RV rv;

	rv = p->fl->C_GetAttributeValue(p->sess, obj, &a, 1);
	if (rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID ||
	    (rv == CKR_OK && a.ulValueLen != sizeof(v))) {
		*ret = -1;
		return 0;
	}
	if (rv != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_GetAttributeValue");
	*ret = v == CK_TRUE;
	return 0;
}

/* What the token says about itself and the private key of id: self-reported
 * (nothing in PKCS#11 proves it), but read from the token, not assumed. */
static int p11_raw_evidence(struct key_store *ks, struct p11 *p, const uint8_t *id, size_t id_len,
			    struct ks_p11_evidence *ret)
{
	struct ks_p11_evidence ev;
	CK_OBJECT_HANDLE priv, pub;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	int r;

	memset(&ev, 0, sizeof(ev));
	rv = p->fl->C_GetTokenInfo(PKCS11_get_slotid_from_slot(p->slot), &ti);
	if (rv != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EBACKEND, "C_GetTokenInfo");
	p11_field(ti.manufacturerID, sizeof(ti.manufacturerID), ev.manufacturer);
	p11_field(ti.model, sizeof(ti.model), ev.model);
	p11_field(ti.serialNumber, sizeof(ti.serialNumber), ev.serial);
	p11_field(ti.label, sizeof(ti.label), ev.label);
	if ((r = p11_key_objs(ks, p, id, id_len, 0, &priv, &pub)) < 0)
		return r;
	if ((r = p11_raw_bool(ks, p, priv, CKA_SENSITIVE, &ev.sensitive)) < 0 ||
	    (r = p11_raw_bool(ks, p, priv, CKA_ALWAYS_SENSITIVE, &ev.always_sensitive)) < 0 ||
	    (r = p11_raw_bool(ks, p, priv, CKA_EXTRACTABLE, &ev.extractable)) < 0 ||
	    (r = p11_raw_bool(ks, p, priv, CKA_NEVER_EXTRACTABLE, &ev.never_extractable)) < 0 ||
	    (r = p11_raw_bool(ks, p, priv, CKA_LOCAL, &ev.local)) < 0)
		return r;
	*ret = ev;
	return 0;
}

/* ---- signing: C_Sign on the key's private object ---- */

/* The worker's session, opened on this connection. */
static int p11_sess_ready(struct key_store *ks, struct p11 *p, struct p11_sess *ss)
{
	CK_RV rv;

	if (ss->open)
		return 0;
	if (p->slot == NULL)
		return -EAGAIN;
	rv = p->fl->C_OpenSession(PKCS11_get_slotid_from_slot(p->slot), CKF_SERIAL_SESSION, NULL,
				  NULL, &ss->h);
	if (rv != CKR_OK)
		return p11_fail(ks, rv, -CIMD_EUNAVAILABLE, "C_OpenSession");
	ss->open = 1;
	return 0;
}

/*
 * The digest, computed by the caller, is signed by the token (PKCS#11 v2.40
 * §2.3.6, CKM_ECDSA: the signature is r || s, each as long as the curve's
 * order, which is what JWS wants, RFC 7518 §3.4; §2.1.14, CKM_RSA_PKCS_PSS on
 * the digest with MGF1 of the same hash and a salt as long as the hash, RFC
 * 7518 §3.5).  Shared (beside other workers): only a key remembered and
 * confirmed on this connection, and any failure a fresh connection may cure
 * comes back as KS_ALONE, for the call with the backend alone to look up or
 * reconnect.
 */
static int p11_sign_once(struct key_store *ks, struct p11 *p, struct p11_sess *ss, int shared,
			 const struct ks_tbs *t, uint8_t *ret_sig, size_t *ret_len)
{
	size_t size = cimd_alg_ec_size(t->alg);
	CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
	CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
	CK_OBJECT_HANDLE priv, pub;
	const struct p11_obj *o;
	uint8_t sig[CIMD_SIG_MAX];
	CK_ULONG siglen = sizeof(sig);
	CK_RV rv;
	int r;

	if (shared) {
		o = p11_obj_get(p, t->ref, t->ref_len);
		if (p->slot == NULL || o == NULL || o->priv == CK_INVALID_HANDLE || !o->confirmed)
			return KS_ALONE;
		priv = o->priv;
	} else if ((r = p11_key_objs(ks, p, t->ref, t->ref_len, 1, &priv, &pub)) < 0) {
		return r;
	}
	if (size == 0) {
		mech = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
		if (t->dlen != pss.sLen)
			return ks_fail(ks, -CIMD_EALG, "pkcs11: no PSS for %s",
				       cimd_alg_name(t->alg));
	}
	if ((r = p11_sess_ready(ks, p, ss)) < 0)
		goto out;
	if ((rv = p->fl->C_SignInit(ss->h, &mech, priv)) != CKR_OK) {
		r = p11_fail(ks, rv, rv == CKR_KEY_TYPE_INCONSISTENT ? -CIMD_EALG : -CIMD_EBACKEND,
			     "C_SignInit");
		goto out;
	}
	/* C_Sign ends the operation whatever it answers, but for a buffer too
	 * small (§5.2): ours holds any signature of ours. */
	if ((rv = p->fl->C_Sign(ss->h, (CK_BYTE_PTR)t->digest, t->dlen, sig, &siglen)) != CKR_OK) {
		r = p11_fail(ks, rv, -CIMD_EBACKEND, "C_Sign");
		goto out;
	}
	/* A key of another curve or size signs, but not at the length alg needs. */
	if ((size != 0 && siglen != 2 * size) || (size == 0 && siglen != P11_RSA_BITS / 8))
		return ks_fail(ks, -CIMD_EALG, "pkcs11: a %lu-byte signature is not one of %s",
			       (unsigned long)siglen, cimd_alg_name(t->alg));
	memcpy(ret_sig, sig, siglen);
	*ret_len = siglen;
	return 0;
out:
	return shared && r == -EAGAIN ? KS_ALONE : r;
}

/* ---- backend operations: each retries once on a fresh session ---- */

/*
 * A fresh session is opened before a call when the last reconnect failed, and
 * after a call that failed in a way a fresh session may cure (-EAGAIN); the call
 * is then made once more, and a second failure is final.
 */
static int p11_ready(struct key_store *ks, struct p11 *p)
{
	return p->slot != NULL ? 0 : p11_reconnect(ks, p);
}

static int p11_again(struct key_store *ks, struct p11 *p, int *r)
{
	if (*r != -EAGAIN)
		return 0;
	return (*r = p11_reconnect(ks, p)) == 0;
}

static int p11_final(int r)
{
	return r == -EAGAIN ? -CIMD_EBACKEND : r;
}

static int p11_generate(struct key_store *ks, void *be, enum cimd_alg alg, const char *tag,
			uint8_t **ret_ref, size_t *ret_ref_len, json_t **ret_jwk)
{
	struct p11 *p = be;
	uint8_t *id;
	int r;

	if ((id = malloc(P11_ID_LEN)) == NULL)
		return -ENOMEM;
	if (RAND_bytes(id, P11_ID_LEN) != 1) {
		free(id);
		return ks_fail(ks, -CIMD_ECRYPTO, "pkcs11: no random bytes for CKA_ID");
	}
	if ((r = p11_ready(ks, p)) == 0) {
		r = p11_raw_generate(ks, p, alg, id, tag, ret_jwk);
		/* The lost session may have created the pair before failing: remove
		 * whatever carries the old CKA_ID, and retry under a new one, so that
		 * one CKA_ID never names two keys. */
		if (p11_again(ks, p, &r)) {
			p11_raw_destroy(ks, p, id, P11_ID_LEN);
			if (RAND_bytes(id, P11_ID_LEN) != 1)
				r = ks_fail(ks, -CIMD_ECRYPTO,
					    "pkcs11: no random bytes for CKA_ID");
			else
				r = p11_raw_generate(ks, p, alg, id, tag, ret_jwk);
		}
	}
	if ((r = p11_final(r)) < 0) {
		free(id);
		return r;
	}
	*ret_ref = id;
	*ret_ref_len = P11_ID_LEN;
	return 0;
}

static int p11_load(struct key_store *ks, void *be, enum cimd_alg alg, const uint8_t *ref,
		    size_t ref_len, json_t **ret_jwk)
{
	struct p11 *p = be;
	int r;

	if (ref_len != P11_ID_LEN)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: a key reference is %zu bytes, not %d",
			       ref_len, P11_ID_LEN);
	if ((r = p11_ready(ks, p)) < 0)
		return r;
	r = p11_raw_load(ks, p, alg, ref, ref_len, ret_jwk);
	if (p11_again(ks, p, &r))
		r = p11_raw_load(ks, p, alg, ref, ref_len, ret_jwk);
	if (p11_reload(ks, p, &r))
		r = p11_raw_load(ks, p, alg, ref, ref_len, ret_jwk);
	return p11_final(r);
}

static int p11_sign(struct key_store *ks, void *be, void *sess, int shared, const struct ks_tbs *t,
		    uint8_t *ret_sig, size_t *ret_len)
{
	struct p11 *p = be;
	int r;

	if (t->ref_len != P11_ID_LEN)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: malformed key reference");
	if (shared)
		return p11_sign_once(ks, p, sess, 1, t, ret_sig, ret_len);
	if ((r = p11_ready(ks, p)) < 0)
		return r;
	r = p11_sign_once(ks, p, sess, 0, t, ret_sig, ret_len);
	if (p11_again(ks, p, &r))
		r = p11_sign_once(ks, p, sess, 0, t, ret_sig, ret_len);
	if (p11_reload(ks, p, &r))
		r = p11_sign_once(ks, p, sess, 0, t, ret_sig, ret_len);
	return p11_final(r);
}

static void *p11_session_new(void *be)
{
	struct p11 *p = be;
	struct p11_sess *ss;

	if (p->nsessions == P11_SESS_MAX || (ss = calloc(1, sizeof(*ss))) == NULL)
		return NULL;
	p->sessions[p->nsessions++] = ss;
	return ss;
}

static void p11_session_free(void *be, void *sess)
{
	struct p11 *p = be;
	struct p11_sess *ss = sess;
	size_t i;

	for (i = 0; i < p->nsessions; i++)
		if (p->sessions[i] == ss)
			p->sessions[i] = p->sessions[--p->nsessions];
	if (ss->open && p->fl != NULL)
		p->fl->C_CloseSession(ss->h);
	free(ss);
}

/* What the token allows (CK_TOKEN_INFO.ulMaxSessionCount, PKCS#11 v2.40
 * §3.2), less libp11's session and the control session; 0: no limit known
 * (CK_EFFECTIVELY_INFINITE, or CK_UNAVAILABLE_INFORMATION). */
static int p11_max_sessions(void *be)
{
	struct p11 *p = be;

	if (p->max_sessions == CK_EFFECTIVELY_INFINITE ||
	    p->max_sessions == CK_UNAVAILABLE_INFORMATION)
		return 0;
	return p->max_sessions > 3 ? (int)(p->max_sessions - 2) : 1;
}

static int p11_destroy(struct key_store *ks, void *be, const uint8_t *ref, size_t ref_len)
{
	struct p11 *p = be;
	int r;

	if (ref_len != P11_ID_LEN)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: malformed key reference");
	if ((r = p11_ready(ks, p)) < 0)
		return r;
	r = p11_raw_destroy(ks, p, ref, ref_len);
	if (p11_again(ks, p, &r))
		r = p11_raw_destroy(ks, p, ref, ref_len);
	return p11_final(r);
}

static int p11_list(struct key_store *ks, void *be, size_t max, struct ks_ref **ret_refs,
		    size_t *ret_n)
{
	struct p11 *p = be;
	int r;

	if ((r = p11_ready(ks, p)) < 0)
		return r;
	r = p11_raw_index(ks, p, max, ret_refs, ret_n);
	if (p11_again(ks, p, &r))
		r = p11_raw_index(ks, p, max, ret_refs, ret_n);
	return p11_final(r);
}

/* An attestation key on a token is an ordinary ES256 key: PKCS#11 has no
 * restricted keys, and no way for the token to prove where a key lives. */
static int p11_generate_attest(struct key_store *ks, void *be, const char *tag, uint8_t **ret_ref,
			       size_t *ret_ref_len, json_t **ret_jwk)
{
	return p11_generate(ks, be, CIMD_ALG_ES256, tag, ret_ref, ret_ref_len, ret_jwk);
}

static int p11_certify(struct key_store *ks, void *be, const uint8_t *ak_ref, size_t ak_len,
		       const uint8_t *ref, size_t ref_len, const uint8_t *qualifying, size_t qlen,
		       struct ks_certify *ret)
{
	(void)be, (void)ak_ref, (void)ak_len, (void)ref, (void)ref_len, (void)qualifying,
	    (void)qlen, (void)ret;
	return ks_fail(ks, -ENOTSUP, "pkcs11: a token has no TPM2_Certify (use its evidence)");
}

/* PKCS#11 has no standard monotonic counter to rely on: the hardware feature
 * object CKH_MONOTONIC_COUNTER is optional, few tokens (not SoftHSM2) have it,
 * and no standard call advances it on request.  So no counter on a token. */
static int p11_counter(struct key_store *ks, void *be, int increment, uint64_t *ret_value)
{
	(void)be, (void)increment, (void)ret_value;
	return ks_fail(ks, -ENOTSUP,
		       "pkcs11: a token has no standard monotonic counter (use a tpm2 backend "
		       "for rollback detection)");
}

static int p11_evidence(struct key_store *ks, void *be, const uint8_t *ref, size_t ref_len,
			struct ks_p11_evidence *ret)
{
	struct p11 *p = be;
	int r;

	if (ref_len != P11_ID_LEN)
		return ks_fail(ks, -CIMD_ENOKEY, "pkcs11: malformed key reference");
	if ((r = p11_ready(ks, p)) < 0)
		return r;
	r = p11_raw_evidence(ks, p, ref, ref_len, ret);
	if (p11_again(ks, p, &r))
		r = p11_raw_evidence(ks, p, ref, ref_len, ret);
	return p11_final(r);
}

static int p11_ref_restricted(const uint8_t *ref, size_t ref_len)
{
	(void)ref, (void)ref_len;
	return 0;
}

/* What load checks before asking the token: a reference is a CKA_ID of ours. */
static int p11_ref_check(enum cimd_alg alg, const uint8_t *ref, size_t ref_len)
{
	(void)alg, (void)ref;
	return ref_len == P11_ID_LEN ? 0 : -CIMD_ENOKEY;
}

static int p11_tpm_public(const uint8_t *ref, size_t ref_len, uint8_t **ret_pub, size_t *ret_len)
{
	(void)ref, (void)ref_len, (void)ret_pub, (void)ret_len;
	return -ENOTSUP;
}

const struct ks_backend ks_pkcs11_backend = {
    .name = "pkcs11",
    .exclusive_param = "module",
    .holds_keys = 1,
    .open = p11_open,
    .close = p11_close,
    .generate = p11_generate,
    .load = p11_load,
    .sign = p11_sign,
    .destroy = p11_destroy,
    .list = p11_list,
    .generate_attest = p11_generate_attest,
    .certify = p11_certify,
    .p11_evidence = p11_evidence,
    .counter = p11_counter,
    .session_new = p11_session_new,
    .session_free = p11_session_free,
    .max_sessions = p11_max_sessions,
    .ref_restricted = p11_ref_restricted,
    .ref_check = p11_ref_check,
    .tpm_public = p11_tpm_public,
};
