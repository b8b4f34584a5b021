// Independent JWS check with panva/jose: node jws-verify.mjs JWK_FILE JWS_FILE
// Verifies the compact JWS against the public JWK, checks the JWK carries no
// private member, and that the RFC 7638 thumbprint equals the kid.
// Prints "ok <alg> <kid>" and exits 0, or prints the reason and exits 1.
import { readFileSync } from 'node:fs';
import { importJWK, compactVerify, calculateJwkThumbprint } from 'jose';

const [jwkFile, jwsFile] = process.argv.slice(2);
try {
  const jwk = JSON.parse(readFileSync(jwkFile, 'utf8'));
  const jws = readFileSync(jwsFile, 'utf8').trim();
  for (const m of ['d', 'p', 'q', 'dp', 'dq', 'qi'])
    if (m in jwk) throw new Error(`JWK has private member ${m}`);
  const key = await importJWK(jwk, jwk.alg);
  const { protectedHeader } = await compactVerify(jws, key, { algorithms: [jwk.alg] });
  const tp = await calculateJwkThumbprint(jwk, 'sha256');
  if (tp !== jwk.kid) throw new Error(`thumbprint ${tp} != kid ${jwk.kid}`);
  if (protectedHeader.kid !== jwk.kid) throw new Error('header kid differs');
  console.log(`ok ${protectedHeader.alg} ${jwk.kid}`);
} catch (e) {
  console.log(`jose: ${e.message}`);
  process.exit(1);
}
