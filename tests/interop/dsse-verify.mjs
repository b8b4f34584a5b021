// An independent DSSE check, written from the DSSE protocol text
// (github.com/secure-systems-lab/dsse, protocol.md) with node's crypto only:
//
//   node dsse-verify.mjs ENVELOPE_FILE TRUST_JWKS_FILE [FILE_FOR_SUBJECT_0 [FILE_FOR_SUBJECT_1]]
//
// Rebuilds PAE(payloadType, payload) = "DSSEv1" SP len SP type SP len SP body, finds
// the signature whose keyid is a kid of the JWKS, verifies the DER ECDSA
// signature with SHA-256, parses the in-toto statement and compares each given
// file's SHA-256 with the subject's digest.  Prints "ok PREDICATE_TYPE KID" and
// exits 0, or prints the reason and exits 1.
import { readFileSync } from 'node:fs';
import { createHash, createPublicKey, verify } from 'node:crypto';

const [envFile, trustFile, ...subjectFiles] = process.argv.slice(2);
try {
  const env = JSON.parse(readFileSync(envFile, 'utf8'));
  const trust = JSON.parse(readFileSync(trustFile, 'utf8'));
  const body = Buffer.from(env.payload, 'base64');
  const type = Buffer.from(env.payloadType, 'utf8');
  const pae = Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${body.length} `), body,
  ]);
  let kid = null;
  for (const s of env.signatures) {
    const jwk = trust.keys.find((k) => k.kid === s.keyid);
    if (!jwk) continue;
    const key = createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, format: 'jwk' });
    if (verify('sha256', pae, { key, dsaEncoding: 'der' }, Buffer.from(s.sig, 'base64'))) kid = s.keyid;
  }
  if (!kid) throw new Error('no signature by a trusted key verifies');
  if (env.payloadType !== 'application/vnd.in-toto+json') throw new Error(`payloadType ${env.payloadType}`);
  const st = JSON.parse(body.toString('utf8'));
  if (st._type !== 'https://in-toto.io/Statement/v1') throw new Error(`_type ${st._type}`);
  subjectFiles.forEach((f, i) => {
    const hex = createHash('sha256').update(readFileSync(f)).digest('hex');
    if (st.subject[i]?.digest?.sha256 !== hex) throw new Error(`subject ${i} digest differs from ${f}`);
  });
  console.log(`ok ${st.predicateType} ${kid}`);
} catch (e) {
  console.log(`dsse: ${e.message}`);
  process.exit(1);
}
