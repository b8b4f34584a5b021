/*
 * hmap.h — a string-keyed hash table of caller-owned items (open addressing,
 * linear probing, backward-shift deletion): what the publication tables of
 * both processes are kept in (service/publish.c, publisher/publisher.c).  An item embeds
 * struct hmap_item first; the table owns no memory but its slots.  Depends on
 * nothing but libc, and never sorts (the publisher's seccomp filter: glibc's
 * qsort asks the kernel for the machine's memory size).
 */
#ifndef CIMD_HMAP_H
#define CIMD_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct hmap_item {
	const char *key; /* NUL-terminated, owned by the item, unchanged while in a table */
	uint32_t hash;
};

struct hmap {
	struct hmap_item **slots;
	size_t cap; /* 0 or a power of two */
	size_t n;
};

/* The item under key, or NULL. */
void *hmap_get(const struct hmap *m, const char *key);
/* Inserts item (its key and hash set here from key); an item already under
 * that key is replaced and returned in *ret_old (NULL when there was none).
 * 0, or -ENOMEM (nothing changed). */
int hmap_put(struct hmap *m, struct hmap_item *item, const char *key, struct hmap_item **ret_old);
/* Removes and returns the item under key, or NULL. */
void *hmap_del(struct hmap *m, const char *key);
/* Empties the table; free_item (may be NULL) is called for each item. */
void hmap_clear(struct hmap *m, void (*free_item)(struct hmap_item *));
/* Iteration: for (i = 0; (it = hmap_next(m, &i)) != NULL;) — the table must
 * not change meanwhile. */
struct hmap_item *hmap_next(const struct hmap *m, size_t *pos);

#endif
