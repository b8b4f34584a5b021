// The usual alternative to cimdd's signing socket, for `make bench`: node's
// jose signing ES256 client assertions in-process with a key file.
//
//   node peer-jose-sign.mjs SECONDS
//
// Builds the same header and claims cimdd builds (typ, kid, iss = sub, aud,
// iat, nbf, exp, 128-bit jti) for every assertion, verifies the first one, and
// prints "jose <assertions per second> <count>".
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync, readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, importPKCS8, jwtVerify, exportJWK, calculateJwkThumbprint } from 'jose';

const seconds = Number(process.argv[2] ?? 3);
// The key file a hand-rolled deployment keeps beside the agent.
const dir = mkdtempSync(join(tmpdir(), 'jose-peer-'));
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
writeFileSync(join(dir, 'key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
const key = await importPKCS8(readFileSync(join(dir, 'key.pem'), 'utf8'), 'ES256');
const kid = await calculateJwkThumbprint(await exportJWK(publicKey));
const clientId = 'https://keys.example.com/clients/agent-a';
const aud = 'https://as.example.com/token';

async function one() {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ jti: randomBytes(16).toString('base64url') })
    .setProtectedHeader({ alg: 'ES256', kid, typ: 'client-authentication+jwt' })
    .setIssuer(clientId).setSubject(clientId).setAudience(aud)
    .setIssuedAt(now).setNotBefore(now).setExpirationTime(now + 60)
    .sign(key);
}

await jwtVerify(await one(), publicKey, { issuer: clientId, audience: aud });
let n = 0;
const t0 = process.hrtime.bigint();
const end = t0 + BigInt(Math.round(seconds * 1e9));
while (process.hrtime.bigint() < end) {
  await one();
  n++;
}
const s = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(`jose ${(n / s).toFixed(0)} ${n}`);
