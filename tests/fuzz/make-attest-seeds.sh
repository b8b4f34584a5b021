#!/usr/bin/env bash
# Makes the real seeds of fuzz_attest_verify and fuzz_tpm2: a --dev instance
# per backend, one approved client, its attestation envelope and the trust
# JWKS fetched over HTTPS, written as the target's input (2 bytes big-endian
# length of the trust JWKS, then the JWKS, then the envelope).  For tpm2, the
# TPMS_ATTEST and TPMT_PUBLIC of the evidence become fuzz_tpm2 seeds too.
#
#   bash tests/fuzz/make-attest-seeds.sh [BUILD]     (BUILD defaults to build)
# Needs node-free tools only: curl, python3, softhsm2, swtpm.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=tests/fuzz/corpus
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for backend in pkcs11 tpm2; do
	dir=$tmp/$backend
	port=$(free_port)
	"$build/bin/cimdd" --dev "$dir" --backend "$backend" --port "$port" >"$tmp/$backend.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do [ -S "$dir/admin.sock" ] && break; sleep 0.1; done
	ctl=("$build/bin/cimdctl" -s "$dir/admin.sock")
	echo '{"client_name":"Agent A","redirect_uris":["http://127.0.0.1:9000/cb"]}' >"$tmp/doc.json"
	"${ctl[@]}" client add agent-a --owner team-a --metadata "$tmp/doc.json" >/dev/null
	"${ctl[@]}" doc approve agent-a 1 >/dev/null
	base=https://127.0.0.1:$port
	env=
	for _ in $(seq 100); do
		env=$(curl -sf --cacert "$dir/tls.crt" "$base/clients/agent-a/attestation.json" || true)
		[ -n "$env" ] && break
		sleep 0.2
	done
	trust=$(curl -sf --cacert "$dir/tls.crt" "$base/.well-known/cimdd/attestation-keys.json")
	jwks=$(curl -sf --cacert "$dir/tls.crt" "$base/clients/agent-a/jwks.json")
	# A revocation record too: revoke the active key (a replacement is made).
	kid=$("${ctl[@]}" --json key list agent-a |
		python3 -c 'import json,sys; print([k["kid"] for k in json.load(sys.stdin)["keys"] if k["state"]=="active"][0])')
	"${ctl[@]}" key revoke agent-a "$kid" --reason "fuzz seed" --replace >/dev/null
	rev=
	for _ in $(seq 100); do
		rev=$(curl -sf --cacert "$dir/tls.crt" "$base/clients/agent-a/revocations.json" || true)
		case $rev in *payload*) break ;; esac
		sleep 0.2
	done
	mkdir -p "$out/fuzz_attest_verify" "$out/fuzz_attest_statement" "$out/fuzz_tpm2"
	ENV="$env" TRUST="$trust" JWKS="$jwks" REV="$rev" BACKEND="$backend" OUT="$out" python3 - <<'PY'
import base64, json, os, struct
E = os.environ
env, trust, jwks, b, out = E["ENV"], E["TRUST"], E["JWKS"], E["BACKEND"], E["OUT"]
rev = json.loads(E["REV"])["revocations"][0]
# fuzz_attest_statement signs with its own fixed key (tests/fuzz/common.c): this is its kid.
FZ_KID = "VDJBuS1ZSL2aI4TFwNWHkdo7nzrXUUxb3b_Vuc_vp7c"
d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

def wr(path, data):
    with open(path, "wb") as f:
        f.write(data)

# fuzz_attest_verify: 2 bytes trust length, trust JWKS, envelope.
t = trust.encode()
wr(f"{out}/fuzz_attest_verify/real-{b}", struct.pack(">H", len(t)) + t + env.encode())
wr(f"{out}/fuzz_attest_verify/real-{b}-revocation",
   struct.pack(">H", len(t)) + t + json.dumps(rev).encode())
# fuzz_attest_statement: STATEMENT \0 JWKS \0 KEYS, the signer renamed to the target's key.
st = json.loads(base64.b64decode(json.loads(env)["payload"]))
st["predicate"]["appliance"]["attestation_key"] = FZ_KID
keys = json.dumps(json.loads(trust)["keys"]).encode()
wr(f"{out}/fuzz_attest_statement/real-{b}", json.dumps(st).encode() + b"\0" + jwks.encode() + b"\0" + keys)
wr(f"{out}/fuzz_attest_statement/real-{b}-nojwks", json.dumps(st).encode() + b"\0\0" + keys)
wr(f"{out}/fuzz_attest_statement/real-{b}-revocation", base64.b64decode(rev["payload"]))
if b == "tpm2":
    for k in st["predicate"]["keys"]:
        ev = k["evidence"]
        att, pub = d(ev["attest"]), d(ev["public"])
        # TPMS_ATTEST: magic(4) type(2) qualifiedSigner(TPM2B) extraData(TPM2B) ...
        n = struct.unpack(">H", att[6:8])[0]
        en = struct.unpack(">H", att[8 + n:10 + n])[0]
        extra = att[10 + n:10 + n + en]
        # fuzz_tpm2: 0 = TPMT_PUBLIC; 1 = attest length, attest, extra length, extra, public.
        wr(f"{out}/fuzz_tpm2/real-public", b"\0" + pub)
        wr(f"{out}/fuzz_tpm2/real-certify", b"\1" + struct.pack(">H", len(att)) + att +
           bytes([len(extra)]) + extra + pub)
        wr(f"{out}/fuzz_tpm2/real-certify-noextra", b"\1" + struct.pack(">H", len(att)) + att + b"\0" + pub)
    for k in json.loads(trust)["keys"]:
        if "tpm2_public" in k:
            wr(f"{out}/fuzz_tpm2/real-ak-public", b"\0" + d(k["tpm2_public"]))
PY
	echo "$backend: seeds written" >&2
done
