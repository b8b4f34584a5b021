/*
 * test_layers.c — the shape of service/ (issue 14, STYLE.md 16): no file
 * calls a function defined in the daemon's main file, and the files' calls
 * make no circle.
 *
 * What calls what is read from the objects the build made, with nm(1): a
 * file depends on another when it has an undefined symbol that the other
 * defines.  So a call through a handler table counts (the table holds the
 * address), and a comment or a name in a string does not.  A circle is
 * printed file by file.
 */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define FILES_MAX 64
#define SYMS_MAX 4096

static struct file {
	char name[64];
	char *def[SYMS_MAX], *und[SYMS_MAX];
	size_t ndef, nund;
	int dep[FILES_MAX];
} files[FILES_MAX];
static size_t nfiles;

/* Reads the global symbols of obj that it defines (defined 1) or needs. */
static int read_syms(const char *obj, struct file *f, int defined)
{
	char cmd[PATH_MAX + 64], line[512], sym[256], type;
	FILE *p;

	/* POSIX format: "name type [value size]" per line. */
	snprintf(cmd, sizeof(cmd), "nm -P -g %s '%s'", defined ? "--defined-only" : "-u", obj);
	if ((p = popen(cmd, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), p) != NULL) {
		if (sscanf(line, "%255s %c", sym, &type) != 2)
			continue;
		if (defined && (type == 'T' || type == 'D' || type == 'B' || type == 'R') &&
		    f->ndef < SYMS_MAX)
			f->def[f->ndef++] = strdup(sym);
		else if (!defined && type == 'U' && f->nund < SYMS_MAX)
			f->und[f->nund++] = strdup(sym);
	}
	return pclose(p) == 0 ? 0 : -1;
}

static int defines(const struct file *f, const char *sym)
{
	size_t i;

	for (i = 0; i < f->ndef; i++)
		if (strcmp(f->def[i], sym) == 0)
			return 1;
	return 0;
}

/* Depth-first search for a circle: 0 white, 1 on the path, 2 done. */
static int color[FILES_MAX], path[FILES_MAX], npath;

static int circle_from(int u, char *out, size_t len)
{
	size_t v, k;
	int start;

	color[u] = 1;
	path[npath++] = u;
	for (v = 0; v < nfiles; v++) {
		if (!files[u].dep[v])
			continue;
		if (color[v] == 1) {
			for (start = 0; path[start] != (int)v; start++)
				;
			out[0] = '\0';
			for (k = (size_t)start; k < (size_t)npath; k++)
				snprintf(out + strlen(out), len - strlen(out), "%s -> ",
					 files[path[k]].name);
			snprintf(out + strlen(out), len - strlen(out), "%s", files[v].name);
			return 1;
		}
		if (color[v] == 0 && circle_from((int)v, out, len))
			return 1;
	}
	color[u] = 2;
	npath--;
	return 0;
}

/* Each file's level: 0 calls no other file, n calls one of level n - 1 at
 * most.  Printed from the top, as docs/architecture.md draws them. */
static int level_of(size_t u, int *memo)
{
	size_t v;
	int l = 0, lv;

	if (memo[u] >= 0)
		return memo[u];
	for (v = 0; v < nfiles; v++)
		if (files[u].dep[v] && (lv = level_of(v, memo) + 1) > l)
			l = lv;
	return memo[u] = l;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(files[*(const size_t *)a].name, files[*(const size_t *)b].name);
}

static void print_levels(void)
{
	int memo[FILES_MAX], top = 0, l;
	size_t i, order[FILES_MAX];

	for (i = 0; i < nfiles; i++)
		memo[i] = -1;
	for (i = 0; i < nfiles; i++)
		if (level_of(i, memo) > top)
			top = memo[i];
	for (i = 0; i < nfiles; i++)
		order[i] = i;
	qsort(order, nfiles, sizeof(order[0]), by_name);
	for (l = top; l >= 0; l--) {
		printf("# level %d:", l);
		for (i = 0; i < nfiles; i++)
			if (memo[order[i]] == l)
				printf(" %s", files[order[i]].name);
		printf("\n");
	}
}

int main(void)
{
	char exe[PATH_MAX], dir[PATH_MAX + 32], obj[PATH_MAX + 300], circle[4096] = "";
	struct dirent *e;
	DIR *dp;
	size_t i, j, k;
	int main_file = -1, up = 0, ok = 1;

	t_build_dir(exe, sizeof(exe));
	snprintf(dir, sizeof(dir), "%s/obj/service", exe);
	if (!t_ok((dp = opendir(dir)) != NULL, "the service objects are in %s", dir))
		return t_done();
	while ((e = readdir(dp)) != NULL && nfiles < FILES_MAX) {
		size_t l = strlen(e->d_name);

		if (l < 3 || strcmp(e->d_name + l - 2, ".o") != 0)
			continue;
		snprintf(files[nfiles].name, sizeof(files[nfiles].name), "%.*s.c", (int)(l - 2),
			 e->d_name);
		/* An object left by a file since removed is no part of the
		 * program (tests run from the source tree: tests/run.sh). */
		snprintf(obj, sizeof(obj), "service/%s", files[nfiles].name);
		if (access("service/service.h", F_OK) == 0 && access(obj, F_OK) < 0)
			continue;
		snprintf(obj, sizeof(obj), "%s/%s", dir, e->d_name);
		if (read_syms(obj, &files[nfiles], 1) < 0 || read_syms(obj, &files[nfiles], 0) < 0)
			ok = 0;
		if (strcmp(files[nfiles].name, "cimdd.c") == 0)
			main_file = (int)nfiles;
		nfiles++;
	}
	closedir(dp);
	t_ok(ok && nfiles >= 10, "nm read the symbols of %zu objects of service/", nfiles);
	t_ok(main_file >= 0, "cimdd.o, the daemon's main file, is among them");
	for (i = 0; i < nfiles; i++)
		for (k = 0; k < files[i].nund; k++)
			for (j = 0; j < nfiles; j++)
				if (j != i && defines(&files[j], files[i].und[k])) {
					files[i].dep[j] = 1;
					if ((int)j == main_file && (int)i != main_file) {
						printf("# %s calls %s, defined in cimdd.c\n",
						       files[i].name, files[i].und[k]);
						up = 1;
					}
				}
	t_ok(!up, "no file of service/ calls a function defined in cimdd.c");
	/* The database is the store's (docs/architecture.md, "The store"): the
	 * rest of the daemon speaks only store_*, and only store_sqlite.c speaks
	 * SQLite, so that a second engine is a
	 * change to the store alone. */
	{
		int in_store = 0, outside = 0;

		for (i = 0; i < nfiles; i++)
			for (k = 0; k < files[i].nund; k++)
				if (strncmp(files[i].und[k], "sqlite3_", 8) == 0) {
					if (strcmp(files[i].name, "store_sqlite.c") == 0) {
						in_store = 1;
					} else {
						printf("# %s calls %s\n", files[i].name,
						       files[i].und[k]);
						outside = 1;
					}
				}
		t_ok(in_store, "store_sqlite.c is seen to call SQLite");
		t_ok(!outside, "no other file of service/ calls SQLite");
	}
	/* The daemon as a whole is cimdd.c's: the modules are given struct svc. */
	if (access("service/service.h", F_OK) == 0) {
		char out[2048] = "";

		t_sh_out(out, sizeof(out),
			 "grep -l 'struct cimdd\\b' service/*.c service/*.h | grep -v "
			 "'^service/cimdd.c$' || true");
		t_ok(out[0] == '\0', "only cimdd.c names struct cimdd%s%s", out[0] ? ": " : "",
		     out);
	}
	for (i = 0; i < nfiles && circle[0] == '\0'; i++)
		if (color[i] == 0) {
			npath = 0;
			circle_from((int)i, circle, sizeof(circle));
		}
	if (circle[0] != '\0')
		printf("# circle: %s\n", circle);
	t_ok(circle[0] == '\0', "the files of service/ call each other in no circle");
	if (circle[0] == '\0')
		print_levels();
	/* The check itself: the main file depends on others, and a circle made
	 * up here is found. */
	for (j = 0, k = 0; main_file >= 0 && j < nfiles; j++)
		k += (size_t)files[main_file].dep[j];
	t_ok(k >= 5, "cimdd.c is seen to call into %zu other files", k);
	if (main_file >= 0 && nfiles > 1) {
		j = main_file == 0 ? 1 : 0;
		memset(color, 0, sizeof(color));
		files[j].dep[main_file] = 1; /* j -> cimdd.c as well as cimdd.c -> j */
		files[main_file].dep[j] = 1;
		circle[0] = '\0';
		npath = 0;
		circle_from(main_file, circle, sizeof(circle));
		t_ok(circle[0] != '\0', "a circle added by hand (%s <-> cimdd.c) is found",
		     files[j].name);
	}
	return t_done();
}
