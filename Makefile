# cimdd — top-level GNU Makefile.  See docs/architecture.md for the layout.
#
#   make          build everything into build/
#   make check    install what is missing, build, run every test (STORE=sqlite|postgresql)
#   make ci       what CI runs: every test on PostgreSQL, then on SQLite under ASan, then fuzz
#   make asan     the same tests under AddressSanitizer + UBSan (ASAN_STORE=sqlite|postgresql)
#   make tsan     the threaded tests (key store, signer) under ThreadSanitizer
#   make fuzz     libFuzzer targets (clang), FUZZ_SECONDS each (docs/fuzzing.md)
#   make bench    benchmarks against peers measured in the same run, every figure
#                 also in build/bench/results.json (bench/run.sh)
#   make bench-scale  the appliance at 1 client and at SCALE_N clients (docs/benchmarks.md)
#   make run      install what is missing, build, run a development instance
#   make install  programs (cimdd-publisher in PREFIX/libexec/cimdd) and man pages under PREFIX
#   make clean

PKGS      := openssl libp11 tss2-esys tss2-mu tss2-rc tss2-tctildr jansson sqlite3 libpq libmicrohttpd libseccomp
CC        ?= cc
BUILD     ?= build
OPT       ?= -O2 -g
SAN       ?=
WARN      := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wformat=2 -Wvla
HARDEN    := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIC
BASE_CFLAGS := -std=c11 -D_DEFAULT_SOURCE -D_GNU_SOURCE $(OPT) $(WARN) $(HARDEN) $(SAN)
CFLAGS    += $(BASE_CFLAGS) \
             $(shell pkg-config --cflags $(PKGS) p11-kit-1)
LDLIBS    += $(shell pkg-config --libs $(PKGS)) -ldl -lpthread
LDFLAGS   += $(SAN) -Wl,-z,relro,-z,now

# Include paths, one per layer, so that a layer cannot include a header of a
# layer above it: firmware/ sees only itself; libcimd only tools/; cimdctl
# and audit.c firmware/ and tools/; service/ firmware/, codec/ and itself;
# codec/ itself, publisher/ codec/ and itself.  tests/,
# bench/ and the fuzz targets (tests/fuzz/) see every layer: INC's default.
# Pattern-specific, so the asan, fuzz and bench builds (BUILD=...) get them too.
INC       := -Ifirmware -Iservice -Icodec -Ipublisher -Itools
$(BUILD)/obj/firmware/%.o: INC := -Ifirmware
$(BUILD)/obj/service/%.o: INC := -Ifirmware -Iservice -Icodec
$(BUILD)/obj/tools/%.o: INC := -Ifirmware -Itools
$(BUILD)/obj/tools/libcimd.o $(BUILD)/obj/tools/cimd-assert.o $(BUILD)/obj/tools/lineio.o: INC := -Itools
$(BUILD)/obj/codec/%.o: INC := -Icodec
$(BUILD)/obj/publisher/%.o: INC := -Icodec -Ipublisher

# firmware/ is two libraries (fmt.h, ks.h): libcimdfmt.a, the formats and
# their verifiers, touches no hardware; libcimdks.a is the key store, its
# backends and the signing halves of the formats, built on libcimdfmt.a.
# cimdctl links libcimdfmt.a alone (tests/test_links.c checks it).  A new
# firmware file goes to libcimdfmt.a unless it is named here.
KS_SRC    := firmware/key_store.c firmware/ks_pool.c firmware/ks_pkcs11.c firmware/ks_tpm2.c \
             firmware/jws_sign.c firmware/dsse_sign.c firmware/note_sign.c
FMT_SRC   := $(filter-out $(KS_SRC),$(wildcard firmware/*.c))
FMT_OBJ   := $(FMT_SRC:%.c=$(BUILD)/obj/%.o)
FMT_LIB   := $(BUILD)/lib/libcimdfmt.a
KS_OBJ    := $(KS_SRC:%.c=$(BUILD)/obj/%.o)
KS_LIB    := $(BUILD)/lib/libcimdks.a
FW_LIB    := $(KS_LIB) $(FMT_LIB)
# What libcimdfmt.a needs, and no more: no libp11, tss2-esys/tctildr, sqlite
# or libmicrohttpd in a program that verifies the appliance offline.
FMT_LIBS  := $(shell pkg-config --libs libcrypto jansson tss2-mu)

# codec/: the publication channel's codec and the hash table, which both the
# daemon and the publisher link (libc only).
CODEC_SRC := $(wildcard codec/*.c)
CODEC_OBJ := $(CODEC_SRC:%.c=$(BUILD)/obj/%.o)
CODEC_LIB := $(BUILD)/lib/libcimdcodec.a

# publisher/: cimdd-publisher, its own program, exec'd by cimdd from
# ../libexec/cimdd/ beside its bin/ (service/publish.c).  It links codec/,
# libmicrohttpd (GnuTLS) and libseccomp only, and is compiled without
# service/ or firmware/ on the include path, so that no custody library can
# reach its image (tests/test_publisher.c).  Everything but its main() is a
# library the fuzz targets link.
PUB_PKGS  := libmicrohttpd libseccomp
PUB_SRC   := $(filter-out publisher/publisher.c,$(wildcard publisher/*.c))
PUB_OBJ   := $(PUB_SRC:%.c=$(BUILD)/obj/%.o)
PUB_LIB   := $(BUILD)/lib/libcimdpub.a
PUB_BIN   := $(BUILD)/libexec/cimdd/cimdd-publisher
$(CODEC_OBJ) $(PUB_OBJ) $(BUILD)/obj/publisher/publisher.o: \
	CFLAGS = $(BASE_CFLAGS) $(shell pkg-config --cflags $(PUB_PKGS))

# service/: everything but the daemon's main() is a library the tests link.
SVC_SRC   := $(filter-out service/cimdd.c,$(wildcard service/*.c))
SVC_OBJ   := $(SVC_SRC:%.c=$(BUILD)/obj/%.o)
SVC_LIB   := $(BUILD)/lib/libcimdsvc.a

# tools/libcimd: the signing socket's client library, static and shared.
# tools/lineio.o, the client side of the line protocol, is in it but hidden
# from the .so's exports (lineio.h); cimdctl and the tests link it too.
LINEIO_OBJ := $(BUILD)/obj/tools/lineio.o
CIMD_OBJ  := $(BUILD)/obj/tools/libcimd.o $(LINEIO_OBJ)
CIMD_A    := $(BUILD)/lib/libcimd.a
CIMD_SO   := $(BUILD)/lib/libcimd.so.0
CIMD_LIBS := $(shell pkg-config --libs jansson)

TEST_HARN := $(BUILD)/obj/tests/harness.o
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps check ci test asan tsan fuzz fuzz-build bench bench-scale run clean format install
.SECONDARY:
BINS      := $(BUILD)/bin/cimdd $(BUILD)/bin/cimdctl $(BUILD)/bin/cimd-assert

all: $(FW_LIB) $(CODEC_LIB) $(SVC_LIB) $(PUB_LIB) $(CIMD_A) $(CIMD_SO) $(BINS) $(PUB_BIN) \
	$(TEST_BIN) $(BENCH_BIN)

deps:
	@bash scripts/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) $(INC) -MMD -MP -c $< -o $@

$(FMT_LIB): $(FMT_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	@rm -f $@
	@$(AR) rcs $@ $^

$(KS_LIB): $(KS_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	@rm -f $@
	@$(AR) rcs $@ $^

$(SVC_LIB): $(SVC_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	@rm -f $@
	@$(AR) rcs $@ $^

$(CODEC_LIB): $(CODEC_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	@rm -f $@
	@$(AR) rcs $@ $^

$(PUB_LIB): $(PUB_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	@rm -f $@
	@$(AR) rcs $@ $^

$(BUILD)/bin/cimdd: $(BUILD)/obj/service/cimdd.o $(SVC_LIB) $(CODEC_LIB) $(FW_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(PUB_BIN): $(BUILD)/obj/publisher/publisher.o $(PUB_LIB) $(CODEC_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs $(PUB_PKGS)) -lpthread

$(BUILD)/bin/cimdctl: $(BUILD)/obj/tools/cimdctl.o $(BUILD)/obj/tools/audit.o $(LINEIO_OBJ) $(FMT_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(FMT_LIBS)

$(CIMD_A): $(CIMD_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	@rm -f $@
	@$(AR) rcs $@ $^

$(CIMD_SO): $(CIMD_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -shared -Wl,-soname,libcimd.so.0 -o $@ $^ $(CIMD_LIBS)

# cimd-assert is built on the library, as a workload would use it.
$(BUILD)/bin/cimd-assert: $(BUILD)/obj/tools/cimd-assert.o $(CIMD_A)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(CIMD_LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_HARN) $(BUILD)/obj/tools/audit.o $(CIMD_A) $(SVC_LIB) \
		$(CODEC_LIB) $(FW_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# test_publisher also checks the publisher's own functions (publisher/conns.c).
$(BUILD)/tests/test_publisher: $(PUB_LIB)

# test_pkcs11 and test_faults load a PKCS#11 module that hangs on demand
# (tests/p11hang/).
$(BUILD)/tests/test_pkcs11 $(BUILD)/tests/test_faults: | $(BUILD)/tests/p11hang.so
$(BUILD)/tests/p11hang.so: tests/p11hang/p11hang.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) -std=c11 -D_DEFAULT_SOURCE -O2 $(WARN) -fPIC -shared \
		$(shell pkg-config --cflags p11-kit-1) -o $@ $< -ldl

# bench/out.c writes a benchmark's figures, bench/load.c runs libcimd clients.
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BUILD)/obj/bench/out.o $(BUILD)/obj/bench/load.o \
		$(TEST_HARN) $(CIMD_A) $(SVC_LIB) $(CODEC_LIB) $(FW_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Tests run from the built tree; each test makes its own temporary directory,
# token, simulator and ports (tests/harness.c).
# STORE=postgresql: every daemon a test starts keeps its state in a throwaway
# PostgreSQL cluster of its own (tests/harness.c, t_store_pg).
STORE     ?= sqlite
test: all
	@CIMD_TEST_STORE=$(STORE) bash tests/run.sh $(BUILD)/tests

check: deps
	@$(MAKE) --no-print-directory test

# What CI runs (.ci/run, README): the whole suite once on each store, the
# PostgreSQL one plain and the SQLite one under ASan+UBSan, then every fuzz
# target.  The three tests that start PostgreSQL clusters of their own whatever
# the store (test_pg, test_dbdown, test_cluster) run once, in the sanitized
# pass; test_scale, whose checks are ratios of times at 200 and 2,000
# clients, once, in the plain one (docs/scaling.md, "What CI runs").
ci: deps
	@CIMD_TEST_SKIP="test_pg test_dbdown test_cluster" $(MAKE) --no-print-directory \
		STORE=postgresql test
	@CIMD_TEST_SKIP="test_scale" $(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory fuzz

# The sanitized run's store (ASAN_STORE=postgresql: every daemon's state on a
# throwaway PostgreSQL cluster).  SQLite by default: CI runs the plain suite on
# PostgreSQL and this one on SQLite (.ci/run, docs/scaling.md "What CI runs").
ASAN_STORE ?= sqlite
asan: deps
	@CIMD_TEST_SANITIZED=1 $(MAKE) --no-print-directory BUILD=build/asan STORE=$(ASAN_STORE) \
		OPT="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" test

# make tsan: the threaded parts (the key store's workers, the signer's
# threads) under ThreadSanitizer.  Any report, from a test or from a daemon
# it starts, fails it: every process writes its reports beside the build.
TSAN_TESTS := test_pkcs11 test_faults test_sign
tsan: deps
	@$(MAKE) --no-print-directory BUILD=build/tsan OPT="-O1 -g" SAN=-fsanitize=thread \
		all $(TSAN_TESTS:%=build/tsan/tests/%)
	@rm -f build/tsan/tsan.log.*
	@for t in $(TSAN_TESTS); do \
		TSAN_OPTIONS="log_path=$(CURDIR)/build/tsan/tsan.log" build/tsan/tests/$$t \
			>build/tsan/$$t.out 2>&1 || { tail -20 build/tsan/$$t.out; exit 1; }; \
		tail -1 build/tsan/$$t.out; \
	done
	@if ls build/tsan/tsan.log.* >/dev/null 2>&1; then \
		cat build/tsan/tsan.log.*; echo "ThreadSanitizer reported races"; exit 1; fi

# Fuzzing (docs/fuzzing.md): every parser of outside input has a libFuzzer
# target in tests/fuzz/fuzz_*.c with its seeds in tests/fuzz/corpus/TARGET/.
# firmware/ and the service library are rebuilt with clang into build/fuzz;
# each target runs FUZZ_SECONDS on a copy of its corpus and any crash, leak,
# timeout or sanitizer report fails the run.  -Wno-format-nonliteral: clang,
# unlike gcc, flags log.c's va_list helper, which has no format attribute.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/%)

fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=$(FUZZ_CC) \
		OPT="-O1 -g -fno-omit-frame-pointer" WARN="$(WARN) -Wno-format-nonliteral" \
		SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all" \
		fuzz-build
	@bash tests/fuzz/run.sh build/fuzz $(FUZZ_SECONDS)

fuzz-build: $(FUZZ_BIN)

$(BUILD)/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(BUILD)/obj/tests/fuzz/common.o \
		$(PUB_LIB) $(SVC_LIB) $(CODEC_LIB) $(FW_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

# bench/bench_scale measures at 1 client and at each of SCALE_N clients (at most
# 10000, the appliance's bound); bench/run.sh runs it last.
SCALE_N   ?= 1000 10000

bench: deps
	@$(MAKE) --no-print-directory all
	@CIMD_BENCH_SCALE_N="$(SCALE_N)" bash bench/run.sh $(BUILD)/bench

bench-scale: deps
	@$(MAKE) --no-print-directory all
	@CIMD_BENCH_SCALE_N="$(SCALE_N)" $(BUILD)/bench/bench_scale

run: deps
	@$(MAKE) --no-print-directory all
	@exec $(BUILD)/bin/cimdd --dev ./var/dev

PREFIX    ?= /usr/local
LIBDIR    ?= $(PREFIX)/lib
# cimdd-publisher: cimdd looks for it in ../libexec/cimdd/ from its own bin/
# (service/publish.c), so this stays PREFIX/libexec.
LIBEXECDIR ?= $(PREFIX)/libexec
# /etc for a system installation (PREFIX=/usr), PREFIX/etc otherwise.
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
# systemd reads units, sysusers.d and tmpfiles.d from /usr/lib and /usr/local/lib alike.
UNITDIR   ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR    ?= $(PREFIX)/share/doc/cimdd
# dist/ names /usr/bin/cimdd and /etc/cimdd; this makes them the installation's own.
DIST_SED  := sed -e 's|/usr/bin/|$(PREFIX)/bin/|g' -e 's|/usr/libexec/|$(LIBEXECDIR)/|g' \
	     -e 's|/etc/cimdd|$(SYSCONFDIR)/cimdd|g'
.PHONY: install-files
install: all
	@$(MAKE) --no-print-directory install-files

# Installs what is built, without building (tests/test_install.c runs it).
install-files:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man8 \
		$(DESTDIR)$(PREFIX)/include $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 0755 $(BUILD)/bin/cimdd $(BUILD)/bin/cimdctl $(BUILD)/bin/cimd-assert \
		$(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)$(LIBEXECDIR)/cimdd
	install -m 0755 $(PUB_BIN) $(DESTDIR)$(LIBEXECDIR)/cimdd/
	install -m 0644 tools/cimd.h $(DESTDIR)$(PREFIX)/include/
	install -m 0644 $(CIMD_A) $(DESTDIR)$(LIBDIR)/
	install -m 0755 $(CIMD_SO) $(DESTDIR)$(LIBDIR)/
	ln -sf libcimd.so.0 $(DESTDIR)$(LIBDIR)/libcimd.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@VERSION@|$(shell sed -n 's/^#define CIMD_VERSION "\(.*\)"/\1/p' service/service.h)|g' \
		tools/libcimd.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/libcimd.pc
	install -m 0644 docs/man/cimd-assert.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 docs/man/cimdctl.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 docs/man/cimdd.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 0644 docs/man/cimdd.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(DOCDIR)
	$(DIST_SED) dist/systemd/cimdd.service > $(DESTDIR)$(UNITDIR)/cimdd.service
	$(DIST_SED) dist/sysusers.d/cimdd.conf > $(DESTDIR)$(SYSUSERSDIR)/cimdd.conf
	$(DIST_SED) dist/tmpfiles.d/cimdd.conf > $(DESTDIR)$(TMPFILESDIR)/cimdd.conf
	$(DIST_SED) dist/cimdd.conf.example > $(DESTDIR)$(DOCDIR)/cimdd.conf.example
	chmod 0644 $(DESTDIR)$(UNITDIR)/cimdd.service $(DESTDIR)$(SYSUSERSDIR)/cimdd.conf \
		$(DESTDIR)$(TMPFILESDIR)/cimdd.conf $(DESTDIR)$(DOCDIR)/cimdd.conf.example \
		$(DESTDIR)$(LIBDIR)/pkgconfig/libcimd.pc

format:
	clang-format -i $(shell git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
