/*
 * jwks.c — JWK Sets from the database alone (RFC 7517 §5): a client's, as its
 * jwks_uri serves it, and any rows of JWK text.  The publication renders
 * them, and attestations state the hash of the same bytes, so both build
 * them here.
 */
#include <jansson.h>

#include "service.h"

json_t *jwks_rows(struct store *st, struct store_rows *s)
{
	json_t *keys = json_array(), *k;

	while (keys != NULL && store_next(s) > 0)
		if ((k = json_loads(store_text(s, 0), 0, NULL)) != NULL)
			json_array_append_new(keys, k);
	store_done(st, s);
	return keys != NULL ? json_pack("{so}", "keys", keys) : NULL;
}

/* {"keys":[...]} of the client's keys in states next, active, retiring. */
char *jwks_client(struct store *st, const char *client)
{
	struct store_rows *s = NULL;
	json_t *jwks;
	char *out = NULL;

	if (store_query(st, &s,
			"SELECT jwk FROM keys WHERE client = ? AND state IN ('next', 'active', "
			"'retiring') AND jwk IS NOT NULL ORDER BY created, kid",
			"s", client) < 0)
		return NULL;
	if ((jwks = jwks_rows(st, s)) != NULL)
		out = json_dumps(jwks, JSON_COMPACT);
	json_decref(jwks);
	return out;
}
