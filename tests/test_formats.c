/*
 * test_formats.c — the encodings against published vectors: base64url
 * (RFC 4648 §10), and the one base64 codec in both its forms (§4, §5), RFC 7638 §3.1 and RFC 8037
 * A.3 thumbprints, JWK member padding (RFC 7518 §6.2.1.2, §6.3.1.1), and ECDSA DER <-> raw r||s
 * (RFC 7518 §3.4) including short r and s.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static void test_b64url(void)
{
	/* RFC 4648 §10 vectors; base64url differs from base64 only in the alphabet
	 * and in dropping the padding (RFC 7515 §2). */
	static const struct {
		const char *in, *out;
	} v[] = {
	    {"", ""},		{"f", "Zg"},	      {"fo", "Zm8"},	      {"foo", "Zm9v"},
	    {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
	};
	static const uint8_t url_bytes[] = {0xfb, 0xff, 0xbf};
	static const char *const bad[] = {"Zg==", "Zm9v+", "Zm9v/", "Z", "Zh", "Zm9 v", "Zm8\n"};
	char out[64];
	uint8_t *dec;
	size_t i, n;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		b64url_encode((const uint8_t *)v[i].in, strlen(v[i].in), out);
		t_ok(strcmp(out, v[i].out) == 0, "base64url encode \"%s\" -> %s", v[i].in, out);
		t_ok(b64url_decode(v[i].out, strlen(v[i].out), &dec, &n) == 0 &&
			 n == strlen(v[i].in) && memcmp(dec, v[i].in, n) == 0,
		     "base64url decode %s", v[i].out);
		if (n == strlen(v[i].in))
			free(dec);
	}
	b64url_encode(url_bytes, sizeof(url_bytes), out);
	t_ok(strcmp(out, "-_-_") == 0, "base64url uses - and _ (%s)", out);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(out, sizeof(out), "%s", bad[i]);
		for (char *p = out; *p; p++)
			if (*p < 0x20)
				*p = '?';
		t_ok(b64url_decode(bad[i], strlen(bad[i]), &dec, &n) == -CIMD_EFORMAT,
		     "base64url rejects \"%s\"", out);
	}
}

/* The one codec (b64.c) in both forms: RFC 4648 §10 through the form-generic
 * calls, lengths as encoded, every length 0..64 round trip, and each decoder
 * as strict as its form: neither accepts what only the other writes, but for
 * the standard form's acceptance of the URL-safe alphabet (DSSE). */
static void test_base64_forms(void)
{
	static const struct {
		const char *in, *url, *std;
	} v[] = {
	    {"", "", ""},
	    {"f", "Zg", "Zg=="},
	    {"fo", "Zm8", "Zm8="},
	    {"foo", "Zm9v", "Zm9v"},
	    {"foob", "Zm9vYg", "Zm9vYg=="},
	    {"fooba", "Zm9vYmE", "Zm9vYmE="},
	    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
	};
	static const enum base64_form forms[] = {BASE64_URL, BASE64_STD};
	static const char *const names[] = {"url", "std"};
	static const uint8_t hi[] = {0xfb, 0xff, 0xbf};
	uint8_t bytes[64], *dec = NULL;
	char out[128], *s = NULL;
	size_t i, f, n, len;
	int ok, r;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		for (f = 0; f < 2; f++) {
			const char *want = forms[f] == BASE64_URL ? v[i].url : v[i].std;

			len = strlen(v[i].in);
			base64_encode(forms[f], (const uint8_t *)v[i].in, len, out);
			ok = strcmp(out, want) == 0 &&
			     base64_encoded_len(forms[f], len) == strlen(want);
			ok =
			    ok &&
			    base64_encode_alloc(forms[f], (const uint8_t *)v[i].in, len, &s) == 0 &&
			    strcmp(s, want) == 0;
			free(s);
			s = NULL;
			t_ok(ok, "base64 %s: encode \"%s\" -> %s (RFC 4648 §10)", names[f], v[i].in,
			     out);
			ok = base64_decode(forms[f], want, strlen(want), &dec, &n) == 0 &&
			     n == len && memcmp(dec, v[i].in, n) == 0;
			free(dec);
			dec = NULL;
			t_ok(ok, "base64 %s: decode %s (RFC 4648 §10)", names[f], want);
		}
	/* Each form's alphabet: 0xfb 0xff 0xbf is 62 63 62 63. */
	base64_encode(BASE64_URL, hi, sizeof(hi), out);
	t_ok(strcmp(out, "-_-_") == 0, "base64 url: 62 and 63 are - and _ (%s)", out);
	base64_encode(BASE64_STD, hi, sizeof(hi), out);
	t_ok(strcmp(out, "+/+/") == 0, "base64 std: 62 and 63 are + and / (%s)", out);

	/* Every length and every final quantum, both forms, against each other. */
	for (i = 0; i < sizeof(bytes); i++)
		bytes[i] = (uint8_t)(i * 151 + 7);
	ok = 1;
	for (len = 0; len <= sizeof(bytes) && ok; len++)
		for (f = 0; f < 2 && ok; f++) {
			base64_encode(forms[f], bytes, len, out);
			ok = strlen(out) == base64_encoded_len(forms[f], len) &&
			     base64_decode(forms[f], out, strlen(out), &dec, &n) == 0 && n == len &&
			     memcmp(dec, bytes, len) == 0;
			free(dec);
			dec = NULL;
			/* The standard form padded to a multiple of 4; the URL form
			 * the same characters without the "=". */
			if (ok && forms[f] == BASE64_STD) {
				char url[128];

				base64_encode(BASE64_URL, bytes, len, url);
				ok = strlen(out) % 4 == 0 &&
				     strspn(out + strlen(url), "=") == strlen(out) - strlen(url);
			}
		}
	t_ok(ok, "base64: lengths 0..%zu round trip in both forms, padding only in std",
	     sizeof(bytes));

	/* Strict by form: what one writes, the other refuses where it must. */
	r = base64_decode(BASE64_URL, "Zg==", 4, &dec, &n);
	t_ok(r == -CIMD_EFORMAT, "base64 url refuses the padded \"Zg==\"");
	r = base64_decode(BASE64_URL, "+/+/", 4, &dec, &n);
	t_ok(r == -CIMD_EFORMAT, "base64 url refuses the standard alphabet \"+/+/\"");
	r = base64_decode(BASE64_STD, "Zg", 2, &dec, &n);
	t_ok(r == -CIMD_EFORMAT, "base64 std refuses the unpadded \"Zg\"");
	r = base64_decode(BASE64_STD, "-_-_", 4, &dec, &n);
	t_ok(r == 0 && n == 3 && memcmp(dec, hi, 3) == 0,
	     "base64 std accepts the URL-safe alphabet \"-_-_\" (DSSE)");
	if (r == 0)
		free(dec);
	r = base64_decode(BASE64_STD, "+/-_", 4, &dec, &n);
	t_ok(r == -CIMD_EFORMAT, "base64 std refuses both alphabets in one string \"+/-_\"");
	r = base64_decode(BASE64_URL, NULL, 4, &dec, &n);
	t_ok(r == -EINVAL, "base64 refuses NULL with a length (%s)", cimd_strerror(r));

	/* The named calls are the forms. */
	b64url_encode(hi, sizeof(hi), out);
	ok = strcmp(out, "-_-_") == 0 && b64url_encoded_len(5) == base64_encoded_len(BASE64_URL, 5);
	ok = ok && b64_encode_alloc((const uint8_t *)"f", 1, &s) == 0 && strcmp(s, "Zg==") == 0;
	free(s);
	t_ok(ok, "b64url_* is BASE64_URL and b64_* is BASE64_STD");
}

static void test_thumbprints(void)
{
	/* RFC 7638 §3.1: the RSA key of RFC 7517 A.1 (whose kid is "2011-04-29"). */
	static const char rfc7638[] =
	    "{\"kty\":\"RSA\",\"n\":"
	    "\"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1"
	    "RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_"
	    "RN5w6Cf"
	    "0h4QyQ5v-65YGjQR0_"
	    "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08"
	    "qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
	    "kEgU8awapJzKnq"
	    "DKgw\",\"e\":\"AQAB\",\"alg\":\"RS256\",\"kid\":\"2011-04-29\"}";
	/* RFC 8037 A.3: the Ed25519 key of A.2. */
	static const char rfc8037[] = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_"
				      "7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}";
	/* RFC 7517 A.1 EC key: members in any order, extras ignored. */
	static const char ec_a[] =
	    "{\"y\":\"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM\",\"use\":\"enc\",\"kid\":\"1\","
	    "\"crv\":\"P-256\",\"x\":\"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\",\"kty\":"
	    "\"EC\"}";
	static const char ec_b[] = "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
				   "\"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\","
				   "\"y\":\"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM\"}";
	char tp[CIMD_KID_LEN + 1], tp2[CIMD_KID_LEN + 1];
	json_t *j, *j2;

	j = json_loads(rfc7638, 0, NULL);
	t_ok(j && jwk_thumbprint(j, tp) == 0 &&
		 strcmp(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs") == 0,
	     "RFC 7638 §3.1 thumbprint (%s)", tp);
	json_decref(j);
	j = json_loads(rfc8037, 0, NULL);
	t_ok(j && jwk_thumbprint(j, tp) == 0 &&
		 strcmp(tp, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k") == 0,
	     "RFC 8037 A.3 thumbprint (%s)", tp);
	json_decref(j);
	j = json_loads(ec_a, 0, NULL);
	j2 = json_loads(ec_b, 0, NULL);
	t_ok(jwk_thumbprint(j, tp) == 0 && jwk_thumbprint(j2, tp2) == 0 && strcmp(tp, tp2) == 0,
	     "thumbprint ignores member order and optional members");
	json_object_set_new(j2, "x", json_string("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\""));
	t_ok(jwk_thumbprint(j2, tp2) < 0, "thumbprint refuses a member that would need escaping");
	json_object_del(j2, "x");
	t_ok(jwk_thumbprint(j2, tp2) < 0, "thumbprint refuses a JWK missing a required member");
	json_decref(j);
	json_decref(j2);
}

static void test_jwk_padding(void)
{
	uint8_t x[48] = {0}, y[48], n[260], e[4] = {0, 1, 0, 1};
	json_t *j = NULL;
	const char *s;

	/* x with two leading zero octets still encodes all 32 (43 characters). */
	x[2] = 0x80;
	memset(y, 0xff, sizeof(y));
	s = jwk_new_ec(CIMD_ALG_ES256, x, y, &j) == 0 ? json_string_value(json_object_get(j, "x"))
						      : NULL;
	t_ok(s != NULL && strlen(s) == 43 && strncmp(s, "AACA", 4) == 0,
	     "EC x keeps its leading zeros: padded to the field size (%s)", s ? s : "-");
	json_decref(j);
	t_ok(jwk_new_ec(CIMD_ALG_ES384, x, y, &j) == 0 &&
		 strlen(json_string_value(json_object_get(j, "y"))) == 64 &&
		 strcmp(json_string_value(json_object_get(j, "crv")), "P-384") == 0,
	     "P-384 coordinates are 48 octets");
	json_decref(j);
	/* RSA: leading zero octets of n and e are dropped. */
	memset(n, 0, sizeof(n));
	n[4] = 0xc3;
	n[259] = 0x01;
	t_ok(jwk_new_rsa(n, sizeof(n), e, sizeof(e), &j) == 0 &&
		 strcmp(json_string_value(json_object_get(j, "e")), "AQAB") == 0 &&
		 strlen(json_string_value(json_object_get(j, "n"))) == b64url_encoded_len(256),
	     "RSA n and e without leading zeros (e = AQAB)");
	json_decref(j);
	t_ok(jwk_new_ec(CIMD_ALG_PS256, x, y, &j) == -CIMD_EALG,
	     "EC JWK for an RSA alg is refused");
}

static void test_ecdsa(void)
{
	/* r = 1 (31 leading zero octets), s with its top bit set (DER needs a 0x00). */
	uint8_t raw[64] = {0}, back[64], *der = NULL;
	static const uint8_t want[] = {0x30, 0x26, 0x02, 0x01, 0x01, 0x02, 0x21, 0x00};
	static const uint8_t ber_long[] = {0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01};
	static const uint8_t padded_int[] = {0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01};
	static const uint8_t negative[] = {0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01};
	uint8_t trailing[80], big[80];
	size_t n = 0, i;
	int r;

	raw[31] = 0x01;
	memset(raw + 32, 0xee, 32);
	r = ecdsa_raw_to_der(raw, 32, &der, &n);
	t_ok(r == 0 && n == 40 && memcmp(der, want, sizeof(want)) == 0,
	     "raw -> DER: short r shrinks, high-bit s gains a 0x00 (%zu bytes)", n);
	t_ok(der && ecdsa_der_to_raw(der, n, 32, back) == 0 && memcmp(back, raw, 64) == 0,
	     "DER -> raw: r left-padded back to 32 octets");
	memcpy(trailing, der, n);
	trailing[n] = 0;
	t_ok(ecdsa_der_to_raw(trailing, n + 1, 32, back) == -CIMD_EFORMAT,
	     "DER with trailing bytes is refused");
	t_ok(ecdsa_der_to_raw(der, n - 1, 32, back) == -CIMD_EFORMAT, "truncated DER is refused");
	t_ok(ecdsa_der_to_raw(ber_long, sizeof(ber_long), 32, back) == -CIMD_EFORMAT,
	     "BER long-form length is refused");
	t_ok(ecdsa_der_to_raw(padded_int, sizeof(padded_int), 32, back) == -CIMD_EFORMAT,
	     "non-minimal INTEGER is refused");
	t_ok(ecdsa_der_to_raw(negative, sizeof(negative), 32, back) == -CIMD_EFORMAT,
	     "negative INTEGER is refused");
	/* r of 33 octets does not fit P-256. */
	big[0] = 0x30, big[1] = 0x27, big[2] = 0x02, big[3] = 0x21, big[4] = 0x01;
	for (i = 5; i < 5 + 32; i++)
		big[i] = 0x11;
	big[37] = 0x02, big[38] = 0x02, big[39] = 0x01, big[40] = 0x01;
	big[1] = 39;
	t_ok(ecdsa_der_to_raw(big, 41, 32, back) == -CIMD_EFORMAT,
	     "r wider than the field is refused");
	free(der);
	/* P-384 round trip with both r and s short. */
	memset(raw, 0, sizeof(raw));
	{
		uint8_t r384[96] = {0}, b384[96];
		r384[47] = 7;
		r384[95] = 9;
		t_ok(ecdsa_raw_to_der(r384, 48, &der, &n) == 0 && n == 8 &&
			 ecdsa_der_to_raw(der, n, 48, b384) == 0 && memcmp(r384, b384, 96) == 0,
		     "P-384 short r and s round trip");
		free(der);
	}
}

static void test_alg_names(void)
{
	t_ok(cimd_alg_from_name("ES256") == CIMD_ALG_ES256 &&
		 cimd_alg_from_name("ES384") == CIMD_ALG_ES384 &&
		 cimd_alg_from_name("PS256") == CIMD_ALG_PS256,
	     "algorithm names");
	t_ok(cimd_alg_from_name("none") == CIMD_ALG_NONE &&
		 cimd_alg_from_name("es256") == CIMD_ALG_NONE &&
		 cimd_alg_from_name("HS256") == CIMD_ALG_NONE &&
		 cimd_alg_from_name(NULL) == CIMD_ALG_NONE,
	     "none, lower case, HMAC and NULL are not algorithms");
	t_ok(strcmp(cimd_strerror(-CIMD_EUNAVAILABLE), "backend unavailable") == 0 &&
		 strcmp(cimd_strerror(-ENOENT), "No such file or directory") == 0,
	     "cimd_strerror covers our codes and errno");
}

int main(void)
{
	test_b64url();
	test_base64_forms();
	test_thumbprints();
	test_jwk_padding();
	test_ecdsa();
	test_alg_names();
	return t_done();
}
