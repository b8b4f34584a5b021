/*
 * hmap.c — string-keyed hash table (hmap.h).  FNV-1a over the key; at most
 * 3/4 full, doubled when it would be more; deletion shifts the probe chain
 * back, so there are no tombstones and a lookup ends at the first empty slot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"

static uint32_t hash_key(const char *k)
{
	uint32_t h = 2166136261u;

	while (*k)
		h = (h ^ (uint8_t)*k++) * 16777619u;
	return h;
}

static size_t find(const struct hmap *m, const char *key, uint32_t h, int *ret_found)
{
	size_t mask = m->cap - 1, i = h & mask;

	while (m->slots[i] != NULL) {
		if (m->slots[i]->hash == h && strcmp(m->slots[i]->key, key) == 0) {
			*ret_found = 1;
			return i;
		}
		i = (i + 1) & mask;
	}
	*ret_found = 0;
	return i;
}

void *hmap_get(const struct hmap *m, const char *key)
{
	int found;
	size_t i;

	if (m->cap == 0)
		return NULL;
	i = find(m, key, hash_key(key), &found);
	return found ? m->slots[i] : NULL;
}

static int grow(struct hmap *m)
{
	struct hmap_item **ns;
	size_t cap = m->cap ? 2 * m->cap : 64, i, j;

	if ((ns = calloc(cap, sizeof(*ns))) == NULL)
		return -ENOMEM;
	for (i = 0; i < m->cap; i++) {
		if (m->slots[i] == NULL)
			continue;
		for (j = m->slots[i]->hash & (cap - 1); ns[j] != NULL; j = (j + 1) & (cap - 1))
			;
		ns[j] = m->slots[i];
	}
	free(m->slots);
	m->slots = ns;
	m->cap = cap;
	return 0;
}

int hmap_put(struct hmap *m, struct hmap_item *item, const char *key, struct hmap_item **ret_old)
{
	uint32_t h = hash_key(key);
	int found;
	size_t i;

	if ((m->n + 1) * 4 > m->cap * 3 && grow(m) < 0)
		return -ENOMEM;
	item->key = key;
	item->hash = h;
	i = find(m, key, h, &found);
	*ret_old = found ? m->slots[i] : NULL;
	if (!found)
		m->n++;
	m->slots[i] = item;
	return 0;
}

void *hmap_del(struct hmap *m, const char *key)
{
	struct hmap_item *it;
	size_t mask, i, j, k;
	int found;

	if (m->cap == 0)
		return NULL;
	mask = m->cap - 1;
	i = find(m, key, hash_key(key), &found);
	if (!found)
		return NULL;
	it = m->slots[i];
	m->slots[i] = NULL;
	m->n--;
	/* Backward shift: an item after the hole moves into it unless its home
	 * slot k lies cyclically in (i, j], where it is still reachable. */
	for (j = (i + 1) & mask; m->slots[j] != NULL; j = (j + 1) & mask) {
		k = m->slots[j]->hash & mask;
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		m->slots[i] = m->slots[j];
		m->slots[j] = NULL;
		i = j;
	}
	return it;
}

void hmap_clear(struct hmap *m, void (*free_item)(struct hmap_item *))
{
	size_t i;

	for (i = 0; i < m->cap; i++)
		if (m->slots[i] != NULL && free_item != NULL)
			free_item(m->slots[i]);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

struct hmap_item *hmap_next(const struct hmap *m, size_t *pos)
{
	while (*pos < m->cap) {
		struct hmap_item *it = m->slots[(*pos)++];

		if (it != NULL)
			return it;
	}
	return NULL;
}
