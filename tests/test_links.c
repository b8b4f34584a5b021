/*
 * test_links.c — the layers of the build hold (issue 14, docs/architecture.md):
 *
 *   - cimdctl, whose offline checks (attest verify, audit verify, journal
 *     prove/consistency) must not trust the appliance, links firmware's
 *     hardware-free half only: no libp11, tss2-esys/sys/tctildr, sqlite or
 *     libmicrohttpd among its libraries (ldd), no key store, PKCS#11, ESAPI,
 *     TCTI, SQLite or libmicrohttpd symbol in it, defined or used (nm);
 *   - libcimdfmt.a refers to nothing of the key store or the hardware, and
 *     defines none of it, which libcimdks.a does;
 *   - each layer compiles with its own include path: firmware/ sees only
 *     firmware/, libcimd only tools/, service/ no tools/, codec/ only itself,
 *     publisher/ no custody layer (make -n).
 *
 * Each check has a positive control beside it (what must be there is), so
 * that a tool that printed nothing cannot pass it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static char build[4096]; /* BUILD, absolute: this binary is BUILD/tests/test_links */
static char root[4096];	 /* the source tree: where the Makefile is */

static int find_dirs(void)
{
	char bin[4096], probe[4200], *slash;

	t_bin("cimdctl", bin, sizeof(bin));
	snprintf(build, sizeof(build), "%s", bin);
	/* BUILD/bin/cimdctl -> BUILD */
	if ((slash = strrchr(build, '/')) != NULL)
		*slash = '\0';
	if ((slash = strrchr(build, '/')) != NULL)
		*slash = '\0';
	/* BUILD is build/ or build/asan ... under the tree: walk up to it. */
	snprintf(root, sizeof(root), "%s", build);
	while ((slash = strrchr(root, '/')) != NULL && slash != root) {
		*slash = '\0';
		snprintf(probe, sizeof(probe), "%s/firmware/fmt.h", root);
		if (access(probe, R_OK) == 0)
			return 0;
	}
	return -ENOENT;
}

/* Its first line, for a check's message. */
static const char *first_line(char *s)
{
	s[strcspn(s, "\n")] = '\0';
	return s;
}

static void test_cimdctl_libraries(void)
{
	static const char *const forbidden[] = {"libp11",	   "libtss2-esys", "libtss2-sys",
						"libtss2-tctildr", "libsqlite3",   "libmicrohttpd"};
	char out[16384];
	size_t i;
	int st;

	st = t_sh_out(out, sizeof(out), "ldd '%s/bin/cimdctl'", build);
	if (!t_ok(st == 0 && strstr(out, "libcrypto") != NULL && strstr(out, "libjansson") != NULL,
		  "ldd cimdctl names its libraries (libcrypto, libjansson)"))
		return;
	for (i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
		t_ok(strstr(out, forbidden[i]) == NULL, "cimdctl does not load %s", forbidden[i]);
}

/* The symbols of the key store and of the hardware and daemon libraries:
 * nm's lines end in the name, after a space. */
#define HW_SYMBOLS                                                                                 \
	"' (key_store_|ks_|secret_read_file|jws_sign|dsse_sign|note_sign_line|PKCS11_|C_[A-Z]|"    \
	"Esys_|Tss2_Tcti|Tss2_Sys_|sqlite3_|MHD_)'"

static void test_cimdctl_symbols(void)
{
	char out[16384];
	int st;

	st = t_sh_out(out, sizeof(out), "nm '%s/bin/cimdctl' | grep -cE ' T (attest_verify|main)$'",
		      build);
	if (!t_ok(st == 0 && atoi(out) == 2, "nm cimdctl shows its own symbols (%s)",
		  first_line(out)))
		return;
	st = t_sh_out(out, sizeof(out), "nm '%s/bin/cimdctl' | grep -E " HW_SYMBOLS, build);
	t_ok(st == 1 && out[0] == '\0',
	     "cimdctl neither defines nor uses a key store, PKCS#11, ESAPI, TCTI, SQLite or "
	     "libmicrohttpd symbol%s%s",
	     out[0] ? ": " : "", first_line(out));
}

static void test_libraries(void)
{
	char out[16384];
	int st;

	st = t_sh_out(out, sizeof(out), "nm -u '%s/lib/libcimdfmt.a' | grep -c ' EVP_'", build);
	if (!t_ok(st == 0 && atoi(out) > 0, "libcimdfmt.a uses OpenSSL (nm works)"))
		return;
	st = t_sh_out(out, sizeof(out), "nm '%s/lib/libcimdfmt.a' | grep -E " HW_SYMBOLS, build);
	t_ok(st == 1 && out[0] == '\0',
	     "libcimdfmt.a neither defines nor uses the key store or the hardware%s%s",
	     out[0] ? ": " : "", first_line(out));
	st = t_sh_out(out, sizeof(out),
		      "nm --defined-only '%s/lib/libcimdks.a' | grep -cE ' T "
		      "(key_store_open|jws_sign|dsse_sign|note_sign_line)$'",
		      build);
	t_ok(st == 0 && atoi(out) == 4,
	     "libcimdks.a defines the key store and the signing halves (%d of 4)", atoi(out));
	st = t_sh_out(out, sizeof(out),
		      "nm --defined-only '%s/lib/libcimdks.a' | grep -cE ' T "
		      "(jws_verify|dsse_verify|note_verify|b64url_decode|cimd_strerror)$'",
		      build);
	t_ok(st == 1 && atoi(out) == 0, "libcimdks.a does not define what libcimdfmt.a does");
}

/* The -I options make would compile object OBJ (under BUILD/obj) with. */
static int include_path(const char *obj, char *ret, size_t len)
{
	char out[16384], *line, *save = NULL, *tok, *tsave = NULL;
	int st;

	st = t_sh_out(out, sizeof(out),
		      "make -s -n -B --no-print-directory -C '%s' BUILD='%s' '%s/obj/%s'", root,
		      build, build, obj);
	if (st != 0)
		return -1;
	ret[0] = '\0';
	for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		if (strstr(line, " -c ") == NULL)
			continue;
		for (tok = strtok_r(line, " ", &tsave); tok != NULL;
		     tok = strtok_r(NULL, " ", &tsave))
			/* The project's folders: relative -I, not pkg-config's /usr paths. */
			if (strncmp(tok, "-I", 2) == 0 && tok[2] != '/' && tok[2] != '\0' &&
			    strlen(ret) + strlen(tok) + 2 < len) {
				strcat(ret, ret[0] ? " " : "");
				strcat(ret, tok);
			}
		return 0;
	}
	return -1;
}

static void test_include_paths(void)
{
	static const struct {
		const char *obj, *inc;
	} v[] = {
	    {"firmware/err.o", "-Ifirmware"},
	    {"firmware/key_store.o", "-Ifirmware"},
	    {"tools/libcimd.o", "-Itools"},
	    {"tools/cimd-assert.o", "-Itools"},
	    {"tools/cimdctl.o", "-Ifirmware -Itools"},
	    {"tools/audit.o", "-Ifirmware -Itools"},
	    {"tools/lineio.o", "-Itools"},
	    {"service/store.o", "-Ifirmware -Iservice -Icodec"},
	    {"service/cimdd.o", "-Ifirmware -Iservice -Icodec"},
	    {"codec/pubset.o", "-Icodec"},
	    {"publisher/publisher.o", "-Icodec -Ipublisher"},
	    {"publisher/confine.o", "-Icodec -Ipublisher"},
	    {"tests/harness.o", "-Ifirmware -Iservice -Icodec -Ipublisher -Itools"},
	};
	char inc[256];
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		if (include_path(v[i].obj, inc, sizeof(inc)) < 0) {
			t_ok(0, "make -n shows how %s is compiled", v[i].obj);
			continue;
		}
		t_ok(strcmp(inc, v[i].inc) == 0, "%s compiles with %s (%s)", v[i].obj, v[i].inc,
		     inc);
	}
}

int main(void)
{
	if (t_ok(find_dirs() == 0, "the build (%s) lies in the source tree (%s)", build, root)) {
		test_cimdctl_libraries();
		test_cimdctl_symbols();
		test_libraries();
		test_include_paths();
	}
	return t_done();
}
