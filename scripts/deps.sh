#!/usr/bin/env bash
# Installs what the build and the tests need and is missing; does nothing when
# everything is there.  Debian 12 (bookworm).  Run as root, or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(
	build-essential pkg-config
	clang libclang-rt-14-dev # make fuzz: clang with libFuzzer (libclang_rt.fuzzer)
	libssl-dev libp11-dev libp11-kit-dev libtss2-dev libmicrohttpd-dev
	libjansson-dev libsqlite3-dev libseccomp-dev
	softhsm2 swtpm swtpm-tools tpm2-tools openssl curl nginx-light wrk
	postgresql libpq-dev # the tests' throwaway clusters (tests/harness.c, t_pg_*)
	nodejs npm
)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
# npm may come with node from elsewhere; do not insist on Debian's npm then.
if command -v npm >/dev/null 2>&1; then
	m2=(); for p in "${missing[@]}"; do [ "$p" = npm ] || [ "$p" = nodejs ] || m2+=("$p"); done
	missing=("${m2[@]+"${m2[@]}"}")
fi

if [ ${#missing[@]} -gt 0 ]; then
	sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
	echo "deps: installing ${missing[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null
fi

# node packages for the interop tests (independent verifiers), from the lock file.
if [ ! -d tests/interop/node_modules ] ||
	[ tests/interop/package-lock.json -nt tests/interop/node_modules/.stamp ]; then
	echo "deps: npm ci in tests/interop" >&2
	(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.stamp)
fi
