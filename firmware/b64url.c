/* b64url.c — base64url without padding (RFC 4648 §5, as JWS uses it, RFC 7515 §2),
 * and lower-case hex (RFC 4648 §8) for digests in records. */
#include <errno.h>
#include <stdlib.h>

#include "fw.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t b64url_encoded_len(size_t n)
{
	return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

void b64url_encode(const uint8_t *in, size_t n, char *out)
{
	size_t i = 0;
	char *o = out;

	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = alphabet[v >> 18 & 63];
		*o++ = alphabet[v >> 12 & 63];
		*o++ = alphabet[v >> 6 & 63];
		*o++ = alphabet[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		*o++ = alphabet[v >> 18 & 63];
		*o++ = alphabet[v >> 12 & 63];
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*o++ = alphabet[v >> 18 & 63];
		*o++ = alphabet[v >> 12 & 63];
		*o++ = alphabet[v >> 6 & 63];
	}
	*o = '\0';
}

int b64url_encode_alloc(const uint8_t *in, size_t n, char **ret_s)
{
	char *s;

	if (n > SIZE_MAX / 2)
		return -EOVERFLOW;
	if ((s = malloc(b64url_encoded_len(n) + 1)) == NULL)
		return -ENOMEM;
	b64url_encode(in, n, s);
	*ret_s = s;
	return 0;
}

static int value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

int b64url_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_n)
{
	uint8_t *buf;
	size_t i, n = 0;
	uint32_t acc = 0;
	int bits = 0, v;

	/* A single leftover character carries only 6 bits: never a whole octet. */
	if (len % 4 == 1)
		return -CIMD_EFORMAT;
	if ((buf = malloc(len / 4 * 3 + 3)) == NULL)
		return -ENOMEM;
	for (i = 0; i < len; i++) {
		if ((v = value(in[i])) < 0) {
			free(buf);
			return -CIMD_EFORMAT;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[n++] = (uint8_t)(acc >> bits);
		}
	}
	/* RFC 4648 §3.5: the unused trailing bits must be zero (canonical encoding). */
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
		free(buf);
		return -CIMD_EFORMAT;
	}
	*ret_buf = buf;
	*ret_n = n;
	return 0;
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
