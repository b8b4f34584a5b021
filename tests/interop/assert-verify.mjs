// Independent check of cimdd's client assertions with panva/jose.
//
//   node assert-verify.mjs remote JWKS_URL CLIENT_ID AUD TTL FILE
//       every line of FILE is an assertion; the JWKS is fetched over HTTPS
//       (createRemoteJWKSet; trust the dev CA with NODE_EXTRA_CA_CERTS)
//   node assert-verify.mjs local CLIENT_ID AUD TTL FILE
//       every line of FILE is "ASSERTION JWKS_FILE": each assertion is checked
//       against the JWKS that was published when it was issued
//
// Checks per assertion: the signature; header alg/kid/typ exactly; iss = sub =
// CLIENT_ID; aud = AUD (one string); iat = nbf, integers; exp - iat = TTL; jti
// is 128 bits in base64url; no other claim.  Prints one JSON line
// {"verified":N,"failed":N,"distinct_jti":N,"kids":[...],"first_error":"..."}.
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, createLocalJWKSet, jwtVerify, decodeProtectedHeader } from 'jose';

const [mode, ...args] = process.argv.slice(2);
let remote, clientId, aud, ttl, file;
if (mode === 'remote') [remote, clientId, aud, ttl, file] = args;
else [clientId, aud, ttl, file] = args;
ttl = Number(ttl);

const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
const remoteSet = remote ? createRemoteJWKSet(new URL(remote)) : null;
const jtis = new Set();
const kids = new Set();
let verified = 0, failed = 0, firstError = null;

for (const line of lines) {
  try {
    const [jwt, jwksFile] = line.split(' ');
    const keys = remoteSet ?? createLocalJWKSet(JSON.parse(readFileSync(jwksFile, 'utf8')));
    const { payload, protectedHeader: h } = await jwtVerify(jwt, keys, {
      issuer: clientId,
      subject: clientId,
      audience: aud,
      typ: 'client-authentication+jwt',
      algorithms: ['ES256', 'ES384', 'PS256'],
      clockTolerance: 5,
    });
    const hk = Object.keys(decodeProtectedHeader(jwt)).sort().join(',');
    if (hk !== 'alg,kid,typ') throw new Error(`header members ${hk}`);
    const ck = Object.keys(payload).sort().join(',');
    if (ck !== 'aud,exp,iat,iss,jti,nbf,sub') throw new Error(`claims ${ck}`);
    if (typeof payload.aud !== 'string') throw new Error('aud is not one string');
    for (const c of ['iat', 'nbf', 'exp'])
      if (!Number.isInteger(payload[c])) throw new Error(`${c} is not an integer`);
    if (payload.nbf !== payload.iat) throw new Error('nbf != iat');
    if (payload.exp - payload.iat !== ttl) throw new Error(`lifetime ${payload.exp - payload.iat} != ${ttl}`);
    if (!/^[A-Za-z0-9_-]{22}$/.test(payload.jti)) throw new Error(`jti ${payload.jti}`);
    jtis.add(payload.jti);
    kids.add(h.kid);
    verified++;
  } catch (e) {
    failed++;
    if (firstError === null) firstError = `${e.code ?? ''} ${e.message}`;
  }
}
console.log(JSON.stringify({ verified, failed, distinct_jti: jtis.size, kids: [...kids], first_error: firstError }));
