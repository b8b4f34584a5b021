/*
 * test_merkle.c — RFC 9162 Merkle trees (firmware/merkle.c): the Certificate
 * Transparency reference vectors (the eight leaves of the RFC 6962 test data:
 * tree heads for sizes 0..8, inclusion and consistency proofs), then trees of
 * every size from 1 to 300 against a naive recursive MTH written here from the
 * RFC's definition: the frontier's head at every size, every leaf's inclusion
 * proof, consistency from every size 1..n to n, and tampering refused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "harness.h"

static void unhex(const char *h, uint8_t *out)
{
	size_t i;

	for (i = 0; h[2 * i] && h[2 * i + 1]; i++) {
		unsigned v;

		sscanf(h + 2 * i, "%2x", &v);
		out[i] = (uint8_t)v;
	}
}

static const char *const roots_hex[9] = {
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

static const struct {
	uint64_t index, size;
	const char *proof[3];
	size_t len;
} inclusion[] = {
    {0,
     8,
     {"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"},
     3},
    {5,
     8,
     {"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
      "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"},
     3},
    {2, 3, {"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"}, 1},
    {1,
     5,
     {"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"},
     3},
};

static const struct {
	uint64_t old_size, size;
	const char *proof[3];
	size_t len;
} consistency[] = {
    {1, 1, {NULL}, 0},
    {1,
     8,
     {"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"},
     3},
    {6,
     8,
     {"0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
      "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"},
     3},
    {2,
     5,
     {"5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
      "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"},
     2},
};

/* MTH straight from RFC 9162 §2.1.1, recursively, for comparison. */
static void naive_mth(const uint8_t (*leaves)[32], size_t n, uint8_t out[32])
{
	uint8_t l[32], r[32];
	size_t k = 1;

	if (n == 0) {
		unsigned int len;
		EVP_Digest("", 0, out, &len, EVP_sha256(), NULL);
		return;
	}
	if (n == 1) {
		memcpy(out, leaves[0], 32);
		return;
	}
	while (k << 1 < n)
		k <<= 1;
	naive_mth(leaves, k, l);
	naive_mth(leaves + k, n - k, r);
	merkle_node_hash(l, r, out);
}

static void test_vectors(void)
{
	static const char *const data_hex[8] = {"",
						"00",
						"10",
						"2021",
						"3031",
						"40414243",
						"5051525354555657",
						"606162636465666768696a6b6c6d6e6f"};
	uint8_t leaves[8][32], root[32], want[32], proof[MERKLE_PROOF_MAX][32], exp[3][32];
	struct merkle_frontier f;
	struct merkle_tree *t = NULL;
	size_t i, j, len, ok_roots = 0, ok_front = 0;
	uint8_t data[16];

	merkle_frontier_init(&f);
	merkle_frontier_root(&f, root);
	unhex(roots_hex[0], want);
	t_ok(memcmp(root, want, 32) == 0, "the empty tree's head is SHA-256 of nothing");
	for (i = 0; i < 8; i++) {
		size_t n = strlen(data_hex[i]) / 2;

		unhex(data_hex[i], data);
		merkle_leaf_hash(data, n, leaves[i]);
		merkle_frontier_append(&f, leaves[i]);
		merkle_frontier_root(&f, root);
		unhex(roots_hex[i + 1], want);
		ok_front += memcmp(root, want, 32) == 0;
	}
	t_ok(ok_front == 8,
	     "the frontier's head after each of the 8 reference leaves is the "
	     "published one (%zu of 8)",
	     ok_front);
	if (!t_ok(merkle_tree_build((const uint8_t(*)[32])leaves, 8, &t) == 0, "a tree of 8"))
		return;
	for (i = 0; i <= 8; i++) {
		merkle_tree_root(t, i, root);
		unhex(roots_hex[i], want);
		ok_roots += memcmp(root, want, 32) == 0;
	}
	t_ok(ok_roots == 9, "tree heads of sizes 0..8 are the published ones");
	for (i = 0; i < sizeof(inclusion) / sizeof(inclusion[0]); i++) {
		int same;

		merkle_inclusion_proof(t, inclusion[i].index, inclusion[i].size, proof, &len);
		same = len == inclusion[i].len;
		for (j = 0; same && j < len; j++) {
			unhex(inclusion[i].proof[j], exp[j]);
			same = memcmp(proof[j], exp[j], 32) == 0;
		}
		unhex(roots_hex[inclusion[i].size], want);
		t_ok(same && merkle_verify_inclusion(
				 inclusion[i].index, inclusion[i].size, leaves[inclusion[i].index],
				 (const uint8_t(*)[32])exp, inclusion[i].len, want) == 0,
		     "inclusion of leaf %llu in %llu: the published proof, which verifies",
		     (unsigned long long)inclusion[i].index, (unsigned long long)inclusion[i].size);
	}
	for (i = 0; i < sizeof(consistency) / sizeof(consistency[0]); i++) {
		uint8_t old[32];
		int same;

		merkle_consistency_proof(t, consistency[i].old_size, consistency[i].size, proof,
					 &len);
		same = len == consistency[i].len;
		for (j = 0; same && j < len; j++) {
			unhex(consistency[i].proof[j], exp[j]);
			same = memcmp(proof[j], exp[j], 32) == 0;
		}
		unhex(roots_hex[consistency[i].old_size], old);
		unhex(roots_hex[consistency[i].size], want);
		t_ok(same && merkle_verify_consistency(consistency[i].old_size, consistency[i].size,
						       (const uint8_t(*)[32])exp,
						       consistency[i].len, old, want) == 0,
		     "consistency %llu -> %llu: the published proof, which verifies",
		     (unsigned long long)consistency[i].old_size,
		     (unsigned long long)consistency[i].size);
	}
	merkle_tree_free(&t);
}

enum { N = 300 };

static void test_sizes(void)
{
	static uint8_t leaves[N][32];
	uint8_t root[32], naive[32], old[32], bad[32], proof[MERKLE_PROOF_MAX][32];
	struct merkle_frontier f;
	struct merkle_tree *t = NULL;
	size_t n, i, len;
	long heads = 0, incl = 0, incl_bad = 0, cons = 0, cons_bad = 0, checked = 0;
	uint8_t data[8];

	merkle_frontier_init(&f);
	for (i = 0; i < N; i++) {
		memcpy(data, &i, sizeof(data));
		merkle_leaf_hash(data, sizeof(data), leaves[i]);
	}
	for (n = 1; n <= N; n++) {
		merkle_frontier_append(&f, leaves[n - 1]);
		merkle_frontier_root(&f, root);
		naive_mth((const uint8_t(*)[32])leaves, n, naive);
		heads += memcmp(root, naive, 32) == 0;
		if (merkle_tree_build((const uint8_t(*)[32])leaves, n, &t) < 0)
			break;
		for (i = 0; i < n; i++) {
			checked++;
			if (merkle_inclusion_proof(t, i, n, proof, &len) == 0 &&
			    merkle_verify_inclusion(i, n, leaves[i], (const uint8_t(*)[32])proof,
						    len, root) == 0)
				incl++;
			/* another leaf, another index, a changed node: each refused */
			if (merkle_verify_inclusion(i, n, leaves[(i + 1) % n],
						    (const uint8_t(*)[32])proof, len, root) != 0 ||
			    n == 1)
				incl_bad++;
			if (len > 0) {
				proof[len / 2][0] ^= 1;
				if (merkle_verify_inclusion(i, n, leaves[i],
							    (const uint8_t(*)[32])proof, len,
							    root) == 0)
					incl_bad--;
			}
		}
		for (i = 1; i <= n; i++) {
			merkle_tree_root(t, i, old);
			if (merkle_consistency_proof(t, i, n, proof, &len) == 0 &&
			    merkle_verify_consistency(i, n, (const uint8_t(*)[32])proof, len, old,
						      root) == 0)
				cons++;
			memcpy(bad, old, 32);
			bad[5] ^= 0x40;
			if (merkle_verify_consistency(i, n, (const uint8_t(*)[32])proof, len, bad,
						      root) != 0)
				cons_bad++;
		}
		merkle_tree_free(&t);
	}
	t_ok(heads == N, "the frontier's head equals the naive MTH at every size 1..%d (%ld)", N,
	     heads);
	t_ok(incl == checked,
	     "every leaf's inclusion proof verifies, in every tree of 1..%d leaves (%ld of %ld)", N,
	     incl, checked);
	t_ok(incl_bad == checked,
	     "and each is refused for another leaf and with one changed node (%ld of %ld)",
	     incl_bad, checked);
	t_ok(cons == (long)N * (N + 1) / 2,
	     "consistency from every size 1..n to n verifies, n = 1..%d (%ld proofs)", N, cons);
	t_ok(cons_bad == (long)N * (N + 1) / 2, "and each is refused against a changed old head");
	t_ok(merkle_verify_consistency(0, 5, NULL, 0, root, root) != 0 &&
		 merkle_verify_consistency(6, 5, NULL, 0, root, root) != 0 &&
		 merkle_verify_inclusion(5, 5, root, NULL, 0, root) != 0,
	     "sizes that make no sense are refused");
}

static uint8_t ext_leaves[N][32];
static long fetched;

/* The fetch callback of a sparse tree: leaves from the array, counted. */
static int fetch_leaves(void *arg, uint64_t first, uint64_t count, uint8_t (*ret)[32])
{
	(void)arg;
	if (first + count > N)
		return -EINVAL;
	memcpy(ret, ext_leaves[first], count * 32);
	fetched += (long)count;
	return 0;
}

/* A sparse tree (base 3: nothing below blocks of 8 kept, as the daemon keeps
 * base 8) gives the same heads and proofs as the full tree, at every step. */
static void test_sparse(void)
{
	struct merkle_tree *sp = NULL, *t = NULL;
	uint8_t a[MERKLE_PROOF_MAX][32], b[MERKLE_PROOF_MAX][32], ra[32], rb[32], data[8];
	size_t i, j, n = 0, step = 1, la, lb, checked = 0, same = 0;
	long max_fetch = 0;

	for (i = 0; i < N; i++) {
		memcpy(data, &i, sizeof(data));
		merkle_leaf_hash(data, sizeof(data), ext_leaves[i]);
	}
	if (!t_ok(merkle_tree_new(3, &sp) == 0 && merkle_tree_new(MERKLE_BASE_MAX + 1, &t) < 0,
		  "a sparse tree of base 3; a base over MERKLE_BASE_MAX refused"))
		return;
	merkle_tree_set_fetch(sp, fetch_leaves, NULL);
	while (n < N) {
		step = step % 5 + 1 + (n % 2 == 0 ? 7 : 0);
		if (n + step > N)
			step = N - n;
		if (merkle_tree_extend(sp, (const uint8_t(*)[32])ext_leaves + n, step) < 0)
			break;
		n += step;
		if (merkle_tree_build((const uint8_t(*)[32])ext_leaves, n, &t) < 0)
			break;
		for (i = 1; i <= n; i++) {
			checked++;
			same += merkle_tree_root(sp, i, ra) == 0 &&
				merkle_tree_root(t, i, rb) == 0 && memcmp(ra, rb, 32) == 0;
			/* Every proof in the tree as grown, and in a sample of its
			 * older sizes (all of them would take minutes under ASan). */
			if (i != n && i % 11 != 0)
				continue;
			for (j = 0; j < i; j++) {
				long before = fetched;

				checked += 2;
				same += merkle_inclusion_proof(sp, j, i, a, &la) == 0 &&
					merkle_inclusion_proof(t, j, i, b, &lb) == 0 && la == lb &&
					memcmp(a, b, la * 32) == 0;
				if (fetched - before > max_fetch)
					max_fetch = fetched - before;
				same += merkle_consistency_proof(sp, j + 1, i, a, &la) == 0 &&
					merkle_consistency_proof(t, j + 1, i, b, &lb) == 0 &&
					la == lb && memcmp(a, b, la * 32) == 0;
			}
		}
		merkle_tree_free(&t);
	}
	t_ok(n == N && same == checked,
	     "at every step: the head at every size, and every inclusion and consistency "
	     "proof at the grown size and every 11th, equal the full tree's (%zu of %zu)",
	     same, checked);
	t_ok(max_fetch > 0 && max_fetch <= 2 * 7,
	     "an inclusion proof read back at most %ld leaves (2 x (2^3 - 1) at most)", max_fetch);
	merkle_tree_set_fetch(sp, NULL, NULL);
	t_ok(merkle_inclusion_proof(sp, 0, N, a, &la) == -EINVAL,
	     "without its fetch callback, a proof that needs old leaves fails, not guesses");
	merkle_tree_free(&sp);
}

/* A tree grown in uneven steps (as the daemon grows its proof tree at each
 * checkpoint) is the tree built at once: every level, every size. */
static void test_extend(void)
{
	static uint8_t leaves[N][32];
	struct merkle_tree *grown = NULL, *t = NULL;
	uint8_t a[32], b[32], data[8];
	size_t i, n = 0, step = 1, same = 0, steps = 0;

	for (i = 0; i < N; i++) {
		memcpy(data, &i, sizeof(data));
		merkle_leaf_hash(data, sizeof(data), leaves[i]);
	}
	if (!t_ok(merkle_tree_build(NULL, 0, &grown) == 0 && grown->n == 0, "an empty tree"))
		return;
	while (n < N) {
		step = step % 7 + 1 + (n % 3 == 0 ? 13 : 0); /* 1..20, uneven */
		if (n + step > N)
			step = N - n;
		if (merkle_tree_extend(grown, (const uint8_t(*)[32])leaves + n, step) < 0)
			break;
		n += step;
		steps++;
		if (merkle_tree_build((const uint8_t(*)[32])leaves, n, &t) < 0)
			break;
		for (i = 1; i <= n; i++)
			if (merkle_tree_root(grown, i, a) == 0 && merkle_tree_root(t, i, b) == 0 &&
			    memcmp(a, b, 32) == 0)
				same++;
		merkle_tree_free(&t);
	}
	t_ok(n == N && grown->n == N, "grown to %d leaves in %zu uneven steps", N, steps);
	{
		size_t want = 0, k;

		for (k = 0, n = 0, step = 1; n < N; k++) {
			step = step % 7 + 1 + (n % 3 == 0 ? 13 : 0);
			if (n + step > N)
				step = N - n;
			n += step;
			want += n;
		}
		t_ok(
		    same == want,
		    "after every step, the head at every size equals the built tree's (%zu of %zu)",
		    same, want);
	}
	merkle_tree_free(&grown);
}

int main(void)
{
	test_vectors();
	test_sizes();
	test_extend();
	test_sparse();
	return t_done();
}
