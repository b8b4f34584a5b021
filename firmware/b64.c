/*
 * b64.c — the one base64 codec (RFC 4648), in the two forms this project
 * speaks, and lower-case hex (RFC 4648 §8) for digests in records:
 *
 *   BASE64_URL  §5 alphabet "-_", no padding: JWS and JWK (RFC 7515 §2).
 *            Decoding accepts that alphabet only, and no "=".
 *   BASE64_STD  §4 alphabet "+/", padded with "=" to whole quanta: DSSE
 *            envelopes, signed notes, checkpoints.  Decoding requires the
 *            padding and accepts the URL-safe alphabet too, one alphabet per
 *            string (DSSE protocol: "Base64 ... either standard or URL-safe").
 *
 * Both decoders are strict: nothing outside the alphabet (no whitespace), and
 * the unused bits of the last quantum must be zero (§3.5, canonical encoding).
 */
#include <errno.h>
#include <stdlib.h>

#include "fmt.h"

/* Which alphabets a character belongs to (RFC 4648 §4 and §5). */
#define ALPHA_STD 1
#define ALPHA_URL 2

static const struct form {
	const char *alphabet; /* the 64 characters an encoder writes */
	int pad;	      /* "=" to whole quanta: written, and required */
	int alphabets;	      /* ALPHA_* a decoder accepts, one per string */
} forms[] = {
    [BASE64_URL] = {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 0,
		    ALPHA_URL},
    [BASE64_STD] = {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", 1,
		    ALPHA_STD | ALPHA_URL},
};

size_t base64_encoded_len(enum base64_form form, size_t n)
{
	if (forms[form].pad)
		return (n + 2) / 3 * 4;
	return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

void base64_encode(enum base64_form form, const uint8_t *in, size_t n, char *out)
{
	const char *a = forms[form].alphabet;
	size_t i = 0;
	uint32_t v;
	char *o = out;

	for (; i + 3 <= n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = a[v >> 18 & 63];
		*o++ = a[v >> 12 & 63];
		*o++ = a[v >> 6 & 63];
		*o++ = a[v & 63];
	}
	/* A final quantum of 8 or 16 bits: 2 or 3 characters, then (§4) "=" to
	 * make 4; §5 as JWS uses it drops the padding. */
	if (n - i == 1) {
		v = (uint32_t)in[i] << 16;
		*o++ = a[v >> 18 & 63];
		*o++ = a[v >> 12 & 63];
		if (forms[form].pad) {
			*o++ = '=';
			*o++ = '=';
		}
	} else if (n - i == 2) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*o++ = a[v >> 18 & 63];
		*o++ = a[v >> 12 & 63];
		*o++ = a[v >> 6 & 63];
		if (forms[form].pad)
			*o++ = '=';
	}
	*o = '\0';
}

int base64_encode_alloc(enum base64_form form, const uint8_t *in, size_t n, char **ret_s)
{
	char *s;

	/* base64_encoded_len(n) + 1 stays well below SIZE_MAX. */
	if (n > SIZE_MAX / 2)
		return -EOVERFLOW;
	if ((s = malloc(base64_encoded_len(form, n) + 1)) == NULL)
		return -ENOMEM;
	base64_encode(form, in, n, s);
	*ret_s = s;
	return 0;
}

/* The value of a character of either alphabet, and the alphabets it belongs to
 * in *alpha (ALPHA_STD, ALPHA_URL, or both: the 62 they share). */
static int value(char c, int *alpha)
{
	*alpha = ALPHA_STD | ALPHA_URL;
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '/') {
		*alpha = ALPHA_STD;
		return c == '+' ? 62 : 63;
	}
	if (c == '-' || c == '_') {
		*alpha = ALPHA_URL;
		return c == '-' ? 62 : 63;
	}
	return -1;
}

int base64_decode(enum base64_form form, const char *in, size_t len, uint8_t **ret_buf,
		  size_t *ret_n)
{
	const struct form *f = &forms[form];
	uint8_t *buf;
	size_t i, n = 0, pad = 0;
	uint32_t acc = 0;
	int bits = 0, v, alpha, seen = ALPHA_STD | ALPHA_URL, r = -CIMD_EFORMAT;

	if (in == NULL && len > 0)
		return -EINVAL;
	if (f->pad) {
		/* §4: padded to whole 4-character quanta, at most two "=", and
		 * only at the end (an "=" elsewhere is outside the alphabet). */
		if (len % 4 != 0)
			return -CIMD_EFORMAT;
		if (len > 0 && in[len - 1] == '=')
			pad = len > 1 && in[len - 2] == '=' ? 2 : 1;
	} else if (len % 4 == 1) {
		/* A single leftover character carries only 6 bits: never a whole octet. */
		return -CIMD_EFORMAT;
	}
	if ((buf = malloc(len / 4 * 3 + 3)) == NULL)
		return -ENOMEM;
	for (i = 0; i < len - pad; i++) {
		if ((v = value(in[i], &alpha)) < 0)
			goto out;
		/* One alphabet per string, and one this form accepts: "+/" and
		 * "-_" together is neither encoding. */
		if ((seen &= alpha & f->alphabets) == 0)
			goto out;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[n++] = (uint8_t)(acc >> bits);
		}
	}
	/* §3.5: the unused trailing bits must be zero (canonical encoding). */
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		goto out;
	*ret_buf = buf;
	*ret_n = n;
	buf = NULL;
	r = 0;
out:
	free(buf);
	return r;
}

/* ---- the names the rest of the project calls each form by ---- */

size_t b64url_encoded_len(size_t n)
{
	return base64_encoded_len(BASE64_URL, n);
}

void b64url_encode(const uint8_t *in, size_t n, char *out)
{
	base64_encode(BASE64_URL, in, n, out);
}

int b64url_encode_alloc(const uint8_t *in, size_t n, char **ret_s)
{
	return base64_encode_alloc(BASE64_URL, in, n, ret_s);
}

int b64url_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n)
{
	return base64_decode(BASE64_URL, in, len, ret_buf, ret_n);
}

int b64_encode_alloc(const uint8_t *in, size_t n, char **ret_s)
{
	return base64_encode_alloc(BASE64_STD, in, n, ret_s);
}

int b64_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n)
{
	return base64_decode(BASE64_STD, in, len, ret_buf, ret_n);
}

void hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}
