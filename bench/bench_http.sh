#!/usr/bin/env bash
# bench_http.sh BUILD — the JWKS route served by cimdd's publisher against nginx
# serving the same bytes (cimdd's export_dir, the generated snippet: same
# headers), over plain HTTP and over TLS, measured with wrk in one run:
# keep-alive, 64 connections, 2 threads, CIMD_BENCH_SECONDS each (default 5).
# With CIMD_BENCH_OUT set, also writes the figures to CIMD_BENCH_OUT/bench_http.json
# (bench/out.h says how figures are named).
set -euo pipefail
build=${1:-build}
secs=${CIMD_BENCH_SECONDS:-5}
cimdd=$(realpath "$build/bin/cimdd")
ctl=$(realpath "$build/bin/cimdctl")
tmp=$(mktemp -d)
chmod 0711 "$tmp"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -f "$tmp/nginx.pid" ] && nginx -p "$tmp" -c "$tmp/nginx.conf" -s stop 2>/dev/null || true
	sleep 0.3
	rm -rf "$tmp"
}
trap cleanup EXIT
[ -n "${CIMD_BENCH_KEEP:-}" ] && trap - EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# instance: DIR PORT MODE(tls|plain) — a dev instance, one client, approved
instance() {
	local d=$1 p=$2 mode=$3
	"$cimdd" --dev "$d" --port "$p" >"$d.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 50); do [ -S "$d/admin.sock" ] && break; sleep 0.1; done
	kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
	if [ "$mode" = plain ]; then
		sed -i '/^tls_cert/d; /^tls_key/d' "$d/cimdd.conf"
		echo "allow_http = yes" >>"$d/cimdd.conf"
		sed -i "s|^base_url = https://|base_url = http://|" "$d/cimdd.conf"
	else
		echo "export_dir = $tmp/export" >>"$d/cimdd.conf"
	fi
	SOFTHSM2_CONF="$d/softhsm2.conf" "$cimdd" -c "$d/cimdd.conf" -f >>"$d.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 50); do "$ctl" -s "$d/admin.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
	echo '{"client_name":"Bench","redirect_uris":["https://a.example/cb"]}' >"$d/doc.json"
	"$ctl" -s "$d/admin.sock" client add bench --owner bench --metadata "$d/doc.json" >/dev/null
	"$ctl" -s "$d/admin.sock" key rotate bench >/dev/null   # two keys in the JWKS
	"$ctl" -s "$d/admin.sock" doc approve bench 1 >/dev/null
	sleep 0.5
}

ptls=$(port); pplain=$(port); ntls=$(port); nplain=$(port)
instance "$tmp/tls" "$ptls" tls
instance "$tmp/plain" "$pplain" plain
# nginx workers run as nobody: what they read is outside the dev instances (0700)
cp "$tmp/tls/tls.crt" "$tmp/nginx.crt"; cp "$tmp/tls/tls.key" "$tmp/nginx.key"
chmod 0644 "$tmp/nginx.crt" "$tmp/nginx.key"   # a throwaway key of this run
cat >"$tmp/nginx.conf" <<NGINX
worker_processes 2; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
events { worker_connections 1024; }
http {
  access_log off; server_tokens off;
  server { listen 127.0.0.1:$nplain; include $tmp/export/nginx.conf; }
  server { listen 127.0.0.1:$ntls ssl; ssl_certificate $tmp/nginx.crt;
           ssl_certificate_key $tmp/nginx.key; include $tmp/export/nginx.conf; }
}
NGINX
nginx -p "$tmp" -c "$tmp/nginx.conf"
sleep 0.3
path=/clients/bench/jwks.json
cmp <(curl -sk "https://127.0.0.1:$ptls$path") <(curl -s "http://127.0.0.1:$nplain$path") ||
	{ echo "bench_http: nginx and cimdd serve different bytes" >&2; exit 1; }

# wrk URL -> "requests/s p99_ms"
measure() {
	wrk -t2 -c64 -d"${secs}s" --latency "$1" 2>/dev/null | awk '
		/Requests\/sec/ { rps = $2 }
		/^ +99%/ { v = $2; u = v; gsub(/[0-9.]/, "", u); gsub(/[a-z]/, "", v);
			   ms = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
		/Non-2xx/ { bad = $NF }
		END { if (bad > 0) rps = -1; printf "%.0f %.2f\n", rps, ms }'
}

# a figure as JSON: wrk's -1 (non-2xx answers) is null, as bench/out.h has it
num() { awk -v v="$1" 'BEGIN { if (v < 0) print "null"; else print v + 0 }'; }

printf 'JWKS route, wrk -t2 -c64 keep-alive, %ss per figure; ratio = cimdd / nginx\n' "$secs"
printf '%-6s %12s %10s %12s %10s %8s\n' "" "cimdd req/s" "p99 ms" "nginx req/s" "p99 ms" "ratio"
rows=()
for mode in plain tls; do
	if [ $mode = plain ]; then c="http://127.0.0.1:$pplain$path"; n="http://127.0.0.1:$nplain$path";
	else c="https://127.0.0.1:$ptls$path"; n="https://127.0.0.1:$ntls$path"; fi
	read -r crps cp99 < <(measure "$c")
	read -r nrps np99 < <(measure "$n")
	ratio=$(echo "$crps $nrps" | awk '{ print ($1 >= 0 && $2 > 0) ? $1 / $2 : -1 }')
	printf '%-6s %12s %10s %12s %10s %8s\n' "$mode" "$crps" "$cp99" "$nrps" "$np99" \
		"$(awk -v r="$ratio" 'BEGIN { if (r < 0) print "-"; else printf "%.2f", r }')"
	rows+=("$(printf '{"mode": "%s", "cimdd_req_per_s": %s, "cimdd_p99_ms": %s, "nginx_req_per_s": %s, "nginx_p99_ms": %s, "ratio_cimdd_to_nginx": %s}' \
		"$mode" "$(num "$crps")" "$(num "$cp99")" "$(num "$nrps")" "$(num "$np99")" "$(num "$ratio")")")
done
if [ -n "${CIMD_BENCH_OUT:-}" ]; then
	{
		printf '{"seconds_per_figure": %s, "wrk": {"threads": 2, "connections": 64}, "path": "%s", "figures": [\n' "$(num "$secs")" "$path"
		for i in "${!rows[@]}"; do
			printf '  %s%s\n' "${rows[$i]}" "$([ "$i" -lt $((${#rows[@]} - 1)) ] && echo ,)"
		done
		printf ']}\n'
	} >"$CIMD_BENCH_OUT/bench_http.json"
fi
