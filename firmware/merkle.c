/*
 * merkle.c — RFC 9162 Merkle trees (Certificate Transparency v2, §2.1), over
 * SHA-256: the tree head, inclusion and consistency proofs, their verification,
 * and a frontier that keeps the head of a growing tree in O(log n) per leaf.
 *
 *   leaf hash  SHA-256(0x00 || data)            (§2.1.1)
 *   node hash  SHA-256(0x01 || left || right)
 *   MTH({})    SHA-256("")
 *   MTH(D[n])  node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
 *
 * Proofs are generated from a struct merkle_tree, which keeps the aligned
 * perfect subtrees at or above a base level (every level for base 0): a proof
 * costs O(log² n) hashes plus at most 2^base leaf hashes read back, and memory
 * is 2n / 2^base nodes.  They are verified with the iterative algorithms of
 * §2.1.3.2 and §2.1.4.2, which need nothing but the proof.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "fmt.h"

/* SHA-256 fetched once (OpenSSL 3, "Explicit fetching"): with EVP_sha256()
 * every EVP_DigestInit_ex fetches the implementation again, under a lock,
 * which cost more than the hash itself (0.63 us a node against 0.28 us on
 * this machine).  Kept for the life of the process. */
static CRYPTO_ONCE sha256_once = CRYPTO_ONCE_STATIC_INIT;
static EVP_MD *sha256_fetched;

static void sha256_fetch(void)
{
	sha256_fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* With a context x the caller may reuse: a run of hashes (perfect_root, up
 * to 2^base - 1 nodes of a subtree a proof reads back) allocates once. */
static void sha256_parts_ctx(EVP_MD_CTX *x, const uint8_t *a, size_t an, const uint8_t *b,
			     size_t bn, const uint8_t *c, size_t cn, uint8_t out[32])
{
	const EVP_MD *md = NULL;
	unsigned int l = 0;

	if (CRYPTO_THREAD_run_once(&sha256_once, sha256_fetch) == 1)
		md = sha256_fetched;
	if (x == NULL || EVP_DigestInit_ex(x, md != NULL ? md : EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(x, a, an) != 1 || (bn && EVP_DigestUpdate(x, b, bn) != 1) ||
	    (cn && EVP_DigestUpdate(x, c, cn) != 1) || EVP_DigestFinal_ex(x, out, &l) != 1)
		memset(out, 0, 32); /* unreachable short of OpenSSL failing: never a valid hash */
}

static void sha256_parts(const uint8_t *a, size_t an, const uint8_t *b, size_t bn, const uint8_t *c,
			 size_t cn, uint8_t out[32])
{
	EVP_MD_CTX *x = EVP_MD_CTX_new();

	sha256_parts_ctx(x, a, an, b, bn, c, cn, out);
	EVP_MD_CTX_free(x);
}

void merkle_leaf_hash(const uint8_t *data, size_t len, uint8_t ret[32])
{
	static const uint8_t zero = 0x00;

	sha256_parts(&zero, 1, data, len, NULL, 0, ret);
}

void merkle_node_hash(const uint8_t left[32], const uint8_t right[32], uint8_t ret[32])
{
	static const uint8_t one = 0x01;

	sha256_parts(&one, 1, left, 32, right, 32, ret);
}

/* The largest power of two smaller than n (n > 1). */
static uint64_t split(uint64_t n)
{
	uint64_t k = 1;

	while (k << 1 < n)
		k <<= 1;
	return k;
}

/* ---- the frontier: the head of a growing tree ---- */

void merkle_frontier_init(struct merkle_frontier *f)
{
	memset(f, 0, sizeof(*f));
}

/* nodes[i] is the root of the perfect subtree of 2^i leaves that bit i of
 * size stands for; appending is a binary increment that merges equal sizes. */
void merkle_frontier_append(struct merkle_frontier *f, const uint8_t leaf[32])
{
	uint8_t carry[32];
	unsigned i;

	memcpy(carry, leaf, 32);
	for (i = 0; f->size >> i & 1; i++)
		merkle_node_hash(f->nodes[i], carry, carry);
	memcpy(f->nodes[i], carry, 32);
	f->size++;
}

void merkle_frontier_root(const struct merkle_frontier *f, uint8_t ret[32])
{
	uint8_t acc[32];
	int have = 0;
	unsigned i;

	if (f->size == 0) {
		sha256_parts(NULL, 0, NULL, 0, NULL, 0, ret);
		return;
	}
	/* From the smallest subtree (rightmost) to the largest (leftmost). */
	for (i = 0; i < 64; i++) {
		if (!(f->size >> i & 1))
			continue;
		if (!have) {
			memcpy(acc, f->nodes[i], 32);
			have = 1;
		} else {
			merkle_node_hash(f->nodes[i], acc, acc);
		}
	}
	memcpy(ret, acc, 32);
}

/* ---- a whole tree, for proofs ---- */

/*
 * Level l holds the n >> l aligned perfect subtrees of 2^l leaves, for l at
 * or above the tree's base.  Below the base nothing is kept but the leaves of
 * the last, incomplete block of 2^base; the few smaller subtrees a proof needs
 * elsewhere are hashed from leaves the fetch callback reads (at most 2^base - 1
 * per proof side).  Base 0 keeps everything.
 */
int merkle_tree_new(unsigned base, struct merkle_tree **ret)
{
	struct merkle_tree *t;

	if (base > MERKLE_BASE_MAX)
		return -EINVAL;
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return -ENOMEM;
	t->base = base;
	if (base > 0 && (t->pending = malloc((1ULL << base) * 32)) == NULL) {
		free(t);
		return -ENOMEM;
	}
	*ret = t;
	return 0;
}

void merkle_tree_set_fetch(struct merkle_tree *t, merkle_fetch_fn fn, void *arg)
{
	t->fetch = fn;
	t->fetch_arg = arg;
}

int merkle_tree_build(const uint8_t (*leaves)[32], uint64_t n, struct merkle_tree **ret)
{
	struct merkle_tree *t;
	int r;

	if ((r = merkle_tree_new(0, &t)) < 0)
		return r;
	if ((r = merkle_tree_extend(t, leaves, n)) < 0) {
		merkle_tree_free(&t);
		return r;
	}
	*ret = t;
	return 0;
}

/* MTH of a perfect run of 2^lv leaf hashes, hashed up in place. */
static void perfect_root(uint8_t (*h)[32], unsigned lv, uint8_t ret[32])
{
	static const uint8_t one = 0x01;
	EVP_MD_CTX *x = EVP_MD_CTX_new();
	uint64_t count = 1ULL << lv, i;

	for (; count > 1; count >>= 1)
		for (i = 0; i < count / 2; i++)
			sha256_parts_ctx(x, &one, 1, h[2 * i], 32, h[2 * i + 1], 32, h[i]);
	memcpy(ret, h[0], 32);
	EVP_MD_CTX_free(x);
}

/* Growing the tree computes only the subtrees the new leaves complete. */
int merkle_tree_extend(struct merkle_tree *t, const uint8_t (*leaves)[32], uint64_t k)
{
	uint64_t n = t->n + k, count, i, block = 1ULL << t->base;
	uint8_t(*p)[32], tmp[(1U << MERKLE_BASE_MAX)][32];
	unsigned l;

	if (k > MERKLE_LEAVES_MAX || n > MERKLE_LEAVES_MAX)
		return -E2BIG;
	/* Allocate every level first, so that a failure changes nothing. */
	for (l = t->base, count = n >> l; l < 64 && count > 0; l++, count >>= 1) {
		if (count == t->n >> l)
			continue;
		if ((p = realloc(t->level[l], (size_t)count * 32)) == NULL)
			return -ENOMEM;
		t->level[l] = p;
	}
	if (t->base == 0) {
		for (i = 0; i < k; i++)
			memcpy(t->level[0][t->n + i], leaves[i], 32);
	} else {
		/* Leaves go through the last block; each full block gives one
		 * node of the base level. */
		for (i = 0; i < k; i++) {
			memcpy(t->pending[(t->n + i) % block], leaves[i], 32);
			if ((t->n + i + 1) % block == 0) {
				memcpy(tmp, t->pending, block * 32);
				perfect_root(tmp, t->base, t->level[t->base][(t->n + i) / block]);
			}
		}
	}
	for (l = t->base + 1, count = n >> l; l < 64 && count > 0; l++, count >>= 1)
		for (i = t->n >> l; i < count; i++)
			merkle_node_hash(t->level[l - 1][2 * i], t->level[l - 1][2 * i + 1],
					 t->level[l][i]);
	for (l = t->base; l < 64 && n >> l > 0; l++)
		t->levels = l + 1;
	t->n = n;
	return 0;
}

void merkle_tree_free(struct merkle_tree **pt)
{
	unsigned l;

	if (*pt == NULL)
		return;
	for (l = 0; l < 64; l++)
		free((*pt)->level[l]);
	free((*pt)->pending);
	free(*pt);
	*pt = NULL;
}

/* An aligned perfect subtree below the base: from the last block's leaves in
 * memory, or from leaves the fetch callback reads. */
static int low_hash(const struct merkle_tree *t, uint64_t a, unsigned lv, uint8_t ret[32])
{
	uint8_t tmp[(1U << MERKLE_BASE_MAX)][32];
	uint64_t block = 1ULL << t->base, count = 1ULL << lv;
	int r;

	if (a >= t->n / block * block) {
		memcpy(tmp, t->pending[a % block], count * 32);
	} else {
		if (t->fetch == NULL)
			return -EINVAL;
		if ((r = t->fetch(t->fetch_arg, a, count, tmp)) < 0)
			return r;
	}
	perfect_root(tmp, lv, ret);
	return 0;
}

/* MTH of leaves [a, b) (b > a): an aligned perfect subtree is looked up, any
 * other range split as §2.1.1 splits it. */
static int range_hash(const struct merkle_tree *t, uint64_t a, uint64_t b, uint8_t ret[32])
{
	uint64_t n = b - a, k;
	uint8_t l[32], r[32];
	unsigned lv = 0;
	int e;

	if ((n & (n - 1)) == 0) {
		while ((1ULL << lv) < n)
			lv++;
		if (a % n == 0) {
			if (lv < t->base)
				return low_hash(t, a, lv, ret);
			memcpy(ret, t->level[lv][a >> lv], 32);
			return 0;
		}
	}
	k = split(n);
	if ((e = range_hash(t, a, a + k, l)) < 0 || (e = range_hash(t, a + k, b, r)) < 0)
		return e;
	merkle_node_hash(l, r, ret);
	return 0;
}

int merkle_tree_root(const struct merkle_tree *t, uint64_t size, uint8_t ret[32])
{
	if (size > t->n)
		return -EINVAL;
	if (size == 0) {
		sha256_parts(NULL, 0, NULL, 0, NULL, 0, ret);
		return 0;
	}
	return range_hash(t, 0, size, ret);
}

/* PATH(m, D[a:b]) of §2.1.3.1, appended to out. */
static int path(const struct merkle_tree *t, uint64_t m, uint64_t a, uint64_t b, uint8_t (*out)[32],
		size_t *n)
{
	uint64_t k;
	int r;

	if (b - a <= 1)
		return 0;
	k = split(b - a);
	if (m < k) {
		if ((r = path(t, m, a, a + k, out, n)) < 0)
			return r;
		return range_hash(t, a + k, b, out[(*n)++]);
	}
	if ((r = path(t, m - k, a + k, b, out, n)) < 0)
		return r;
	return range_hash(t, a, a + k, out[(*n)++]);
}

int merkle_inclusion_proof(const struct merkle_tree *t, uint64_t index, uint64_t size,
			   uint8_t (*ret)[32], size_t *ret_len)
{
	size_t n = 0;
	int r;

	if (size > t->n || index >= size)
		return -EINVAL;
	if ((r = path(t, index, 0, size, ret, &n)) < 0)
		return r;
	*ret_len = n;
	return 0;
}

/* SUBPROOF(m, D[a:b], b) of §2.1.4.1. */
static int subproof(const struct merkle_tree *t, uint64_t m, uint64_t a, uint64_t b, int whole,
		    uint8_t (*out)[32], size_t *n)
{
	uint64_t k, size = b - a;
	int r;

	if (m == size)
		return whole ? 0 : range_hash(t, a, b, out[(*n)++]);
	k = split(size);
	if (m <= k) {
		if ((r = subproof(t, m, a, a + k, whole, out, n)) < 0)
			return r;
		return range_hash(t, a + k, b, out[(*n)++]);
	}
	if ((r = subproof(t, m - k, a + k, b, 0, out, n)) < 0)
		return r;
	return range_hash(t, a, a + k, out[(*n)++]);
}

int merkle_consistency_proof(const struct merkle_tree *t, uint64_t old_size, uint64_t size,
			     uint8_t (*ret)[32], size_t *ret_len)
{
	size_t n = 0;
	int r;

	if (size > t->n || old_size > size || old_size == 0)
		return -EINVAL;
	if (old_size < size && (r = subproof(t, old_size, 0, size, 1, ret, &n)) < 0)
		return r;
	*ret_len = n;
	return 0;
}

/* ---- verification, from the proof alone ---- */

int merkle_verify_inclusion(uint64_t index, uint64_t size, const uint8_t leaf[32],
			    const uint8_t (*proof)[32], size_t len, const uint8_t root[32])
{
	uint64_t fn = index, sn = size - 1;
	uint8_t r[32];
	size_t i;

	/* §2.1.3.2 */
	if (index >= size)
		return -CIMD_EVERIFY;
	memcpy(r, leaf, 32);
	for (i = 0; i < len; i++) {
		if (sn == 0)
			return -CIMD_EVERIFY;
		if ((fn & 1) || fn == sn) {
			merkle_node_hash(proof[i], r, r);
			if (!(fn & 1))
				while (fn != 0 && !(fn & 1)) {
					fn >>= 1;
					sn >>= 1;
				}
		} else {
			merkle_node_hash(r, proof[i], r);
		}
		fn >>= 1;
		sn >>= 1;
	}
	return sn == 0 && CRYPTO_memcmp(r, root, 32) == 0 ? 0 : -CIMD_EVERIFY;
}

int merkle_verify_consistency(uint64_t old_size, uint64_t size, const uint8_t (*proof)[32],
			      size_t len, const uint8_t old_root[32], const uint8_t root[32])
{
	uint64_t fn, sn;
	uint8_t fr[32], sr[32];
	const uint8_t(*p)[32] = proof;
	size_t i = 0, n = len;

	/* §2.1.4.2 */
	if (old_size == 0 || old_size > size)
		return -CIMD_EVERIFY;
	if (old_size == size)
		return len == 0 && CRYPTO_memcmp(old_root, root, 32) == 0 ? 0 : -CIMD_EVERIFY;
	if (len == 0)
		return -CIMD_EVERIFY;
	/* If old_size is a power of two, the old root is the proof's first node. */
	if ((old_size & (old_size - 1)) == 0) {
		memcpy(fr, old_root, 32);
		memcpy(sr, old_root, 32);
	} else {
		memcpy(fr, p[0], 32);
		memcpy(sr, p[0], 32);
		i = 1;
	}
	fn = old_size - 1;
	sn = size - 1;
	while (fn & 1) {
		fn >>= 1;
		sn >>= 1;
	}
	for (; i < n; i++) {
		if (sn == 0)
			return -CIMD_EVERIFY;
		if ((fn & 1) || fn == sn) {
			merkle_node_hash(p[i], fr, fr);
			merkle_node_hash(p[i], sr, sr);
			if (!(fn & 1))
				while (fn != 0 && !(fn & 1)) {
					fn >>= 1;
					sn >>= 1;
				}
		} else {
			merkle_node_hash(sr, p[i], sr);
		}
		fn >>= 1;
		sn >>= 1;
	}
	return sn == 0 && CRYPTO_memcmp(fr, old_root, 32) == 0 && CRYPTO_memcmp(sr, root, 32) == 0
		   ? 0
		   : -CIMD_EVERIFY;
}
