// Test support: an OIDC-style issuer for auth tests. A fresh RSA key, its JWKS served
// over HTTP on 127.0.0.1, and RS256 tokens signed with it (Cognito id-token claims).
import { createSign, generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';

export const ISSUER = 'https://issuer.stackpulse.test';
export const CLIENT_ID = 'client-js';
const KID = 'kid-js-1';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export async function startIssuer() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: KID, alg: 'RS256', use: 'sig' };
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const jwksUrl = `http://127.0.0.1:${server.address().port}/.well-known/jwks.json`;

  /** An RS256 id token for `sub`, valid for `ttl` seconds. */
  function token(sub = 'user-1', ttl = 3600, extra = {}) {
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', kid: KID };
    const claims = {
      iss: ISSUER,
      sub,
      aud: CLIENT_ID,
      token_use: 'id',
      iat: now,
      exp: now + ttl,
      'cognito:username': sub,
      ...extra,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = createSign('RSA-SHA256').update(input).sign(privateKey);
    return `${input}.${b64url(signature)}`;
  }

  return {
    jwksUrl,
    token,
    /** Server flags turning authentication on with this issuer. */
    serverArgs: ['--jwt-issuer', ISSUER, '--jwks-url', jwksUrl, '--cognito-client-id', CLIENT_ID, '--jwt-leeway', '0'],
    close: () => new Promise((r) => server.close(r)),
  };
}
