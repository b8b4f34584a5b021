// An independent checkpoint and inclusion-receipt check, written from the public
// spec texts with node's crypto only (no code from this repository was consulted):
//
//   node checkpoint-verify.mjs CHECKPOINT_FILE TRUST_JWKS_FILE [RECEIPT_JSON_FILE]
//
// - c2sp.org/signed-note, "Format": note text = everything up to and including the
//   newline before the last blank line; then lines "— <key name> base64(keyID || sig)".
//   "Signatures": ignore unknown keys; a known key (name AND ID match) must verify, a
//   failing one rejects the note; at least one known key must verify.  Signature type
//   0x02 (ECDSA, transparency-dev/witness): key ID = SHA-256(DER SPKI)[:4], signature
//   = DER ECDSA-Sig-Value over SHA-256 of the note text.  The key name is the origin.
// - c2sp.org/tlog-checkpoint, "Note text": origin, tree size (ASCII decimal, no leading
//   zeroes), base64 root hash, then optional non-empty extension lines.
// - RFC 9162 §2.1.1: leaf hash = SHA-256(0x00 || entry), node = SHA-256(0x01 || l || r);
//   §2.1.3.2: inclusion-proof verification (steps 1-5 below).
// Prints "ok ..." per check and exits 0, or prints "FAIL <reason>" and exits 1.
import { readFileSync } from 'node:fs';
import { createHash, createPublicKey, verify } from 'node:crypto';

const sha256 = (...parts) => createHash('sha256').update(Buffer.concat(parts)).digest();
const fail = (why) => { throw new Error(why); };
// Standard padded base64 (RFC 4648 §4), canonical only: re-encoding must give the input.
const b64 = (s, what) => {
  if (typeof s !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4) fail(`${what} is not base64`);
  const b = Buffer.from(s, 'base64');
  if (b.toString('base64') !== s) fail(`${what} is not canonical base64`);
  return b;
};

// RFC 9162 §2.1.3.2, with fn/sn as BigInt so sizes above 2^32 shift correctly.
function rootFromInclusion(leafHash, index, size, path) {
  if (index >= size) fail(`leaf index ${index} >= tree size ${size}`);     // step 1
  let fn = index, sn = size - 1n, r = leafHash;                             // steps 2, 3
  for (const p of path) {                                                   // step 4
    if (sn === 0n) fail('inclusion proof too long');                        // 4a
    if ((fn & 1n) === 1n || fn === sn) {                                    // 4b
      r = sha256(Buffer.from([1]), p, r);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = sha256(Buffer.from([1]), r, p);
    }
    fn >>= 1n; sn >>= 1n;                                                   // 4c
  }
  if (sn !== 0n) fail('inclusion proof too short');                         // step 5
  return r;
}

const [cpFile, trustFile, receiptFile] = process.argv.slice(2);
try {
  if (!cpFile || !trustFile) fail('usage: checkpoint-verify.mjs CHECKPOINT_FILE TRUST_JWKS_FILE [RECEIPT_JSON_FILE]');
  const raw = readFileSync(cpFile);
  let all;
  try { all = new TextDecoder('utf-8', { fatal: true }).decode(raw); } catch { fail('note is not valid UTF-8'); }
  if (/[\x00-\x09\x0b-\x1f]/.test(all)) fail('note contains a control character other than newline');
  // signed-note "Format": the text is separated from the signatures by the last blank line.
  const sep = raw.lastIndexOf('\n\n');
  if (sep < 0) fail('note has no blank line before the signatures');
  const text = raw.subarray(0, sep + 1);
  const sigBlock = raw.subarray(sep + 2).toString('utf8');
  if (!sigBlock.endsWith('\n')) fail('signature block is empty or does not end in newline');
  const sigLines = sigBlock.slice(0, -1).split('\n');
  if (sigLines.length > 100) fail('too many signature lines');
  // tlog-checkpoint "Note text": at least three non-empty lines.
  const lines = text.toString('utf8').slice(0, -1).split('\n');
  if (lines.length < 3 || lines.some((l) => l === '')) fail('checkpoint needs >= 3 non-empty lines');
  const [origin, sizeStr, rootStr] = lines;
  if (!/^(0|[1-9][0-9]*)$/.test(sizeStr)) fail(`tree size "${sizeStr}" is not canonical decimal`);
  const size = BigInt(sizeStr);
  const root = b64(rootStr, 'root hash');
  if (root.length !== 32) fail(`root hash is ${root.length} bytes, not 32`);

  // Trusted keys: key ID = SHA-256(DER SPKI)[:4] (signed-note, type 0x02); name = origin.
  const trust = JSON.parse(readFileSync(trustFile, 'utf8'));
  if (!Array.isArray(trust?.keys)) fail('trust file has no "keys" array');
  const known = trust.keys.filter((j) => j?.kty === 'EC' && j?.crv === 'P-256').map((j) => {
    const key = createPublicKey({ key: { kty: j.kty, crv: j.crv, x: j.x, y: j.y }, format: 'jwk' });
    return { kid: j.kid, key, id: sha256(key.export({ type: 'spki', format: 'der' })).subarray(0, 4) };
  });
  const verified = [];
  for (const line of sigLines) {
    const m = /^\u2014 ([^\s+]+) (\S+)$/u.exec(line);
    if (!m) fail(`malformed signature line "${line}"`);
    const sig = b64(m[2], `signature of ${m[1]}`);
    if (sig.length < 5) fail(`signature of ${m[1]} is too short`);
    if (m[1] !== origin) continue;                       // other names: unknown keys, ignore
    for (const k of known.filter((k) => k.id.equals(sig.subarray(0, 4)))) {
      if (!verify('sha256', text, { key: k.key, dsaEncoding: 'der' }, sig.subarray(4))) {
        fail(`signature by known key ${k.kid} does not verify`);
      }
      verified.push(k.kid);
    }
  }
  if (!verified.length) fail('no signature by a trusted key named for the origin');
  for (const kid of verified) console.log(`ok signature ${kid}`);
  console.log(`ok checkpoint ${origin} size ${size}`);

  if (receiptFile) {
    const rc = JSON.parse(readFileSync(receiptFile, 'utf8'));
    if (typeof rc.checkpoint !== 'string' || !Buffer.from(rc.checkpoint, 'utf8').equals(raw)) {
      fail('receipt checkpoint differs from CHECKPOINT_FILE');
    }
    for (const f of ['seq', 'leaf_index', 'tree_size']) {
      if (!Number.isSafeInteger(rc[f]) || rc[f] < 0) fail(`receipt ${f} is not a non-negative integer`);
    }
    if (rc.leaf_index !== rc.seq - 1) fail(`receipt leaf_index ${rc.leaf_index} != seq ${rc.seq} - 1`);
    if (BigInt(rc.tree_size) !== size) fail(`receipt tree_size ${rc.tree_size} != checkpoint size ${size}`);
    if (typeof rc.record !== 'string') fail('receipt record is not a string');
    if (!Array.isArray(rc.proof)) fail('receipt proof is not an array');
    const path = rc.proof.map((p, i) => {
      const b = b64(p, `proof[${i}]`);
      return b.length === 32 ? b : fail(`proof[${i}] is ${b.length} bytes, not 32`);
    });
    const leaf = sha256(Buffer.from([0]), Buffer.from(rc.record, 'utf8'));   // RFC 9162 §2.1.1
    if (!rootFromInclusion(leaf, BigInt(rc.leaf_index), size, path).equals(root)) {
      fail(`record ${rc.seq} does not hash up to the checkpoint root`);
    }
    console.log(`ok inclusion of record ${rc.seq} (leaf ${rc.leaf_index}) in ${size}`);
  }
} catch (e) {
  console.log(`FAIL ${e.message}`);
  process.exit(1);
}
