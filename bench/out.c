/*
 * out.c — a benchmark's figures as JSON (out.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "out.h"

json_t *bench_num(double v)
{
	return v < 0 ? json_null() : json_real(v);
}

int bench_out_write(const char *name, json_t *root)
{
	const char *dir = getenv("CIMD_BENCH_OUT");
	char path[4096];
	int r = 0;

	if (dir == NULL || *dir == '\0')
		goto out;
	if ((size_t)snprintf(path, sizeof(path), "%s/%s.json", dir, name) >= sizeof(path)) {
		r = -ENAMETOOLONG;
		fprintf(stderr, "%s: CIMD_BENCH_OUT is too long\n", name);
		goto out;
	}
	/* Sorted keys and an indent: two runs' files compare line by line.  Seven
	 * significant digits: a rate to the unit, a ratio without binary noise. */
	if (root == NULL ||
	    json_dump_file(root, path, JSON_INDENT(1) | JSON_SORT_KEYS | JSON_REAL_PRECISION(7)) <
		0) {
		r = root == NULL ? -ENOMEM : -EIO;
		fprintf(stderr, "%s: cannot write %s\n", name, path);
	}
out:
	json_decref(root);
	return r;
}
