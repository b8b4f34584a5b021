/*
 * note.c — C2SP signed notes (c2sp.org/signed-note) with ECDSA signatures,
 * and the checkpoints of a transparency log (c2sp.org/tlog-checkpoint) they
 * carry.
 *
 * A signed note is its text (ending in a newline), a blank line, and one line
 * per signature: U+2014 EM DASH, space, key name, space, base64 of the 4-byte
 * key ID followed by the signature.  cimdd signs with its attestation keys,
 * which are ECDSA P-256: signature type 0x02 ("ECDSA signatures as
 * implemented by github.com/transparency-dev/witness"), a DER ECDSA-Sig-Value
 * over SHA-256 of the note text, key ID = SHA-256(DER SubjectPublicKeyInfo)[:4].
 *
 * Signature lines are written by note_sign.c, through the key store.
 *
 * A checkpoint's text is the origin line, the tree size in decimal, the root
 * hash in base64, then optional extension lines.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "fmt.h"

/* A key name: non-empty, no space, no '+' (signed-note: "Key names ... MUST
 * NOT contain spaces or plus signs"), printable ASCII. */
int note_name_valid(const char *name)
{
	const char *p;

	if (name == NULL || *name == '\0' || strlen(name) > NOTE_NAME_MAX)
		return 0;
	for (p = name; *p != '\0'; p++)
		if (*p <= ' ' || *p > '~' || *p == '+')
			return 0;
	return 1;
}

int note_key_id(const json_t *jwk, uint8_t ret[4])
{
	struct evp_pkey_st *pk = NULL;
	uint8_t *der = NULL, md[SHA256_DIGEST_LENGTH];
	int n, r;

	if ((r = jwk_to_evp(jwk, &pk)) < 0)
		return r;
	/* signed-note, type 0x02: "the truncated SHA-256 hash of the DER encoded
	 * public key in SPKI format". */
	if ((n = i2d_PUBKEY(pk, &der)) <= 0) {
		r = -CIMD_ECRYPTO;
		goto out;
	}
	SHA256(der, (size_t)n, md);
	memcpy(ret, md, 4);
	r = 0;
out:
	OPENSSL_free(der);
	EVP_PKEY_free(pk);
	return r;
}

int note_verify(const char *note, size_t len, const char *name, const json_t *jwk,
		size_t *ret_text_len, char *errbuf, size_t errlen)
{
	const char *sep = NULL, *p, *end = note + len, *nl;
	size_t text_len, nlen = strlen(name), b64_len, blob_len, i;
	uint8_t id[4], *blob = NULL, raw[2 * 32];
	int found = 0, r;

	if (len == 0 || len > NOTE_MAX || note[len - 1] != '\n')
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				 "not a signed note (empty, over %d bytes, or no final newline)",
				 NOTE_MAX);
	/* signed-note: valid UTF-8 without control characters but newline; we
	 * write and accept ASCII only, the em dash of signature lines aside. */
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)note[i];

		if ((c < 0x20 && c != '\n') || c == 0x7f)
			return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
					 "a control character at byte %zu", i);
	}
	/* The text ends at the last blank line; signature lines follow it. */
	for (p = note; p + 1 < end; p++)
		if (p[0] == '\n' && p[1] == '\n')
			sep = p;
	if (sep == NULL)
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				 "no blank line before the signatures");
	text_len = (size_t)(sep - note) + 1;
	if ((r = note_key_id(jwk, id)) < 0)
		return cimd_fail(errbuf, errlen, r, "the trusted key is not a usable public key");
	for (p = sep + 2; p < end; p = nl + 1) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if ((size_t)(nl - p) < 4 + nlen + 1 || memcmp(p, NOTE_EM_DASH, 3) != 0 ||
		    p[3] != ' ') {
			r = cimd_fail(
			    errbuf, errlen, -CIMD_EFORMAT,
			    "a signature line that is not an em dash, a key name and a signature");
			goto out;
		}
		/* Signatures by other keys are ignored (signed-note: "Verifiers
		 * MUST ignore signatures from unknown keys"). */
		if (memcmp(p + 4, name, nlen) != 0 || p[4 + nlen] != ' ')
			continue;
		b64_len = (size_t)(nl - (p + 5 + nlen));
		free(blob);
		blob = NULL;
		if (b64_decode(p + 5 + nlen, b64_len, &blob, &blob_len) < 0 || blob_len < 5) {
			r = cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				      "a signature by %s is not base64", name);
			goto out;
		}
		if (CRYPTO_memcmp(blob, id, 4) != 0)
			continue; /* same name, another key */
		found = 1;
		if (ecdsa_der_to_raw(blob + 4, blob_len - 4, 32, raw) < 0 ||
		    jws_verify_signature(jwk, CIMD_ALG_ES256, (const uint8_t *)note, text_len, raw,
					 sizeof(raw)) < 0) {
			/* "If a signature from a known key fails to verify, clients
			 * SHOULD reject the whole note." */
			r = cimd_fail(errbuf, errlen, -CIMD_EVERIFY,
				      "the signature by %s does not verify", name);
			goto out;
		}
	}
	if (!found) {
		r = cimd_fail(errbuf, errlen, -ENOENT, "no signature by this key named %s", name);
		goto out;
	}
	if (ret_text_len != NULL)
		*ret_text_len = text_len;
	r = 0;
out:
	free(blob);
	return r;
}

/* ---- checkpoints, c2sp.org/tlog-checkpoint ---- */

int checkpoint_format(const char *origin, uint64_t size, const uint8_t root[32],
		      const char *extensions, char **ret_text)
{
	char *b64 = NULL, *text = NULL;
	int r;

	if (!note_name_valid(origin) ||
	    (extensions != NULL && *extensions != '\0' &&
	     (extensions[strlen(extensions) - 1] != '\n' || strstr(extensions, "\n\n") != NULL ||
	      extensions[0] == '\n')))
		return -EINVAL;
	if ((r = b64_encode_alloc(root, 32, &b64)) < 0)
		return r;
	if (asprintf(&text, "%s\n%" PRIu64 "\n%s\n%s", origin, size, b64,
		     extensions != NULL ? extensions : "") < 0) {
		free(b64);
		return -ENOMEM;
	}
	free(b64);
	*ret_text = text;
	return 0;
}

/* One line of text at *p (without its newline) into out, or -CIMD_EFORMAT. */
static int take_line(const char **p, const char *end, char *out, size_t outlen)
{
	const char *nl = memchr(*p, '\n', (size_t)(end - *p));
	size_t n;

	if (nl == NULL || (n = (size_t)(nl - *p)) == 0 || n >= outlen)
		return -CIMD_EFORMAT;
	memcpy(out, *p, n);
	out[n] = '\0';
	*p = nl + 1;
	return 0;
}

int checkpoint_parse(const char *text, size_t len, struct checkpoint *ret)
{
	const char *p = text, *end = text + len;
	char line[NOTE_NAME_MAX + 1], *e;
	uint8_t *root = NULL;
	size_t root_len;
	struct checkpoint c;

	memset(&c, 0, sizeof(c));
	if (take_line(&p, end, c.origin, sizeof(c.origin)) < 0 || !note_name_valid(c.origin))
		return -CIMD_EFORMAT;
	/* Size: decimal, no sign, no leading zero (tlog-checkpoint: "ASCII
	 * decimal"; a canonical form keeps one checkpoint one text). */
	if (take_line(&p, end, line, sizeof(line)) < 0 || line[0] < '0' || line[0] > '9' ||
	    (line[0] == '0' && line[1] != '\0'))
		return -CIMD_EFORMAT;
	errno = 0;
	c.size = strtoull(line, &e, 10);
	if (errno != 0 || *e != '\0')
		return -CIMD_EFORMAT;
	if (take_line(&p, end, line, sizeof(line)) < 0 ||
	    b64_decode(line, strlen(line), &root, &root_len) < 0)
		return -CIMD_EFORMAT;
	if (root_len != 32) {
		free(root);
		return -CIMD_EFORMAT;
	}
	memcpy(c.root, root, 32);
	free(root);
	c.extensions = (size_t)(p - text);
	*ret = c;
	return 0;
}

int checkpoint_extension(const char *text, size_t len, const struct checkpoint *c, const char *key,
			 uint64_t *ret_value)
{
	const char *p = text + c->extensions, *end = text + len, *nl;
	size_t klen = strlen(key);
	char num[24], *e;
	size_t n;

	for (; p < end; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			break;
		if ((size_t)(nl - p) <= klen + 1 || memcmp(p, key, klen) != 0 || p[klen] != ' ')
			continue;
		n = (size_t)(nl - p) - klen - 1;
		if (n == 0 || n >= sizeof(num))
			return -CIMD_EFORMAT;
		memcpy(num, p + klen + 1, n);
		num[n] = '\0';
		if (num[0] < '0' || num[0] > '9' || (num[0] == '0' && n > 1))
			return -CIMD_EFORMAT;
		errno = 0;
		*ret_value = strtoull(num, &e, 10);
		if (errno != 0 || *e != '\0')
			return -CIMD_EFORMAT;
		return 0;
	}
	return -ENOENT;
}

int checkpoint_verify(const char *note, size_t len, const json_t *trust,
		      struct checkpoint *ret_checkpoint, const char **ret_kid, char *errbuf,
		      size_t errlen)
{
	const json_t *keys = json_object_get(trust, "keys"), *k;
	const char *kid = NULL;
	struct checkpoint c;
	size_t text_len = 0, i;
	char why[256];
	int r;

	if (len == 0 || len > NOTE_MAX)
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT, "not a signed note");
	if (checkpoint_parse(note, len, &c) < 0)
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				 "not a checkpoint (origin, decimal size, base64 root hash)");
	/* The key name is the origin (tlog-checkpoint: the log's key signs as
	 * the origin).  Signatures by unknown keys are ignored; one by a known
	 * key that does not verify condemns the note (signed-note). */
	json_array_foreach(keys, i, k)
	{
		const char *kty = json_string_value(json_object_get(k, "kty"));
		const char *crv = json_string_value(json_object_get(k, "crv"));

		/* Type 0x02 keys only: others cannot have signed. */
		if (kty == NULL || crv == NULL || strcmp(kty, "EC") != 0 ||
		    strcmp(crv, "P-256") != 0)
			continue;
		r = note_verify(note, len, c.origin, k, &text_len, why, sizeof(why));
		if (r == -ENOENT)
			continue;
		if (r < 0)
			return cimd_fail(errbuf, errlen, r, "%s", why);
		if (kid == NULL)
			kid = json_string_value(json_object_get(k, "kid"));
	}
	if (kid == NULL)
		return cimd_fail(errbuf, errlen, -CIMD_EVERIFY,
				 "no signature by a trusted key named %s", c.origin);
	/* The checkpoint is the whole note text: nothing after its lines. */
	if (c.extensions > text_len)
		return cimd_fail(errbuf, errlen, -CIMD_EFORMAT,
				 "the checkpoint runs into the signatures");
	if (ret_checkpoint != NULL)
		*ret_checkpoint = c;
	if (ret_kid != NULL)
		*ret_kid = kid;
	return 0;
}
