/*
 * fuzz_checkpoint — signed checkpoints as they come off the network or out of
 * an audit bundle (firmware/note.c: checkpoint_verify, note_verify,
 * checkpoint_parse, checkpoint_extension).
 *
 * Input: one mode byte, then bytes.
 *   mode even: the bytes are a whole signed note, verified against the fuzz
 *              key (a real signature is out of reach: this explores parsing).
 *   mode odd:  the bytes are a note's text; the target signs it with the fuzz
 *              key as its first line names, so that what lies behind a valid
 *              signature is reached: it must verify exactly when the text is
 *              a checkpoint, and then say what checkpoint_parse says.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *trust(void)
{
	json_t *t = json_pack("{s[O]}", "keys", fz_jwk());

	if (t == NULL)
		abort();
	return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct checkpoint c, p;
	char err[256], name[NOTE_NAME_MAX + 1], *note = NULL, *b64 = NULL;
	uint8_t *der = NULL, *blob = NULL, id[4];
	const char *kid = NULL, *nl;
	size_t der_len, len, n;
	uint64_t v;
	json_t *t;
	int r, rp;

	if (size < 1 || size > NOTE_MAX)
		return 0;
	t = trust();
	if (!(data[0] & 1)) {
		r = checkpoint_verify((const char *)data + 1, size - 1, t, &c, &kid, err,
				      sizeof(err));
		if (r == 0 || (r != -CIMD_EFORMAT && r != -CIMD_EVERIFY && r != -ENOENT))
			abort(); /* nothing here is signed by the fuzz key */
		goto out;
	}
	/* Sign the text as its first line names it. */
	len = size - 1;
	if (len == 0 || data[len] != '\n' || (nl = memchr(data + 1, '\n', len)) == NULL ||
	    (n = (size_t)(nl - (const char *)data - 1)) == 0 || n > NOTE_NAME_MAX)
		goto out;
	memcpy(name, data + 1, n);
	name[n] = '\0';
	if (fz_sign_der(data + 1, len, &der, &der_len) < 0 || note_key_id(fz_jwk(), id) < 0 ||
	    (blob = malloc(4 + der_len)) == NULL)
		abort();
	memcpy(blob, id, 4);
	memcpy(blob + 4, der, der_len);
	if (b64_encode_alloc(blob, 4 + der_len, &b64) < 0 ||
	    asprintf(&note, "%.*s\n\xe2\x80\x94 %s %s\n", (int)len, (const char *)data + 1, name,
		     b64) < 0)
		abort();
	r = checkpoint_verify(note, strlen(note), t, &c, &kid, err, sizeof(err));
	rp = checkpoint_parse((const char *)data + 1, len, &p);
	/* A NUL or a control character in the text makes strlen/the note differ:
	 * only texts without them are held to the invariant. */
	if (memchr(data + 1, '\0', len) == NULL && strlen(note) < NOTE_MAX) {
		int clean = 1;
		size_t i;

		for (i = 1; i <= len; i++)
			if ((data[i] < 0x20 && data[i] != '\n') || data[i] == 0x7f)
				clean = 0;
		/* The text ends at the last blank line: a text with one inside
		 * is another note. */
		if (clean && memmem(data + 1, len, "\n\n", 2) == NULL) {
			if ((r == 0) != (rp == 0 && strcmp(p.origin, name) == 0))
				abort();
			if (r == 0 &&
			    (c.size != p.size || memcmp(c.root, p.root, 32) != 0 || kid == NULL))
				abort();
		}
	}
	if (r == 0)
		checkpoint_extension(note, strlen(note), &c, "nv-counter", &v);
out:
	free(note);
	free(b64);
	free(blob);
	free(der);
	json_decref(t);
	return 0;
}
