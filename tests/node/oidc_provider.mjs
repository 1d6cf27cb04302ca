// An OpenID Connect provider for the gateway's OAuth tests: `oidc-provider` (the certified
// implementation) on loopback, with dynamic client registration, PKCE and resource indicators, so it
// issues JWT access tokens whose audience is the resource the client asked for (the gateway's).
//
// Usage: node oidc_provider.mjs --port N --keys FILE [--rotate] [--opaque]
//   FILE keeps the private signing keys across restarts; --rotate puts a new key first (the one
//   that signs from then on) and keeps the old one published. --opaque issues opaque access tokens
//   instead, to be introspected (RFC 7662) by the client `mcpgw-gateway` (secret
//   `gateway-introspection-secret`).
// Prints `listening <issuer>` once it serves.
//
// For the negative tests only, POST /test/sign signs arbitrary claims: with the current key
// (`"key": "current"`), a key that is not published (`"unpublished"`, its own kid), a key that is
// not published under the current key's kid (`"impostor"`), or HS256 keyed with the current
// public key's PEM (`"hs256-public"`), the classic algorithm-confusion forgery.

import { createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = Number(option('--port'));
const keysFile = option('--keys');
const issuer = `http://127.0.0.1:${port}`;
const opaque = args.includes('--opaque');

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

let keys = existsSync(keysFile) ? JSON.parse(readFileSync(keysFile, 'utf8')) : [];
if (keys.length === 0 || args.includes('--rotate')) {
  keys.unshift(newKey());
}
writeFileSync(keysFile, JSON.stringify(keys), { mode: 0o600 });

const provider = new Provider(issuer, {
  jwks: { keys },
  // mcp:tools is the gateway's scope: listed so that clients may register for it.
  scopes: ['openid', 'offline_access', 'email', 'mcp:tools'],
  claims: { openid: ['sub'], email: ['email'] },
  // Any login is an account whose e-mail is the login.
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id, email: id }) }),
  // The user claim the gateway maps to its users; logins starting with `eng-` are in the group
  // `engineering`.
  extraTokenClaims: async (ctx, token) => {
    if (token.kind !== 'AccessToken') return undefined;
    const groups = token.accountId.startsWith('eng-') ? ['engineering'] : [];
    return { email: token.accountId, groups };
  },
  pkce: { required: () => true },
  // The gateway's own client, which may only introspect.
  clients: [{
    client_id: 'mcpgw-gateway',
    client_secret: 'gateway-introspection-secret',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  }],
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: 'mcp:tools',
        audience: resourceIndicator,
        accessTokenTTL: 600,
        accessTokenFormat: opaque ? 'opaque' : 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

function signToken({ claims, key = 'current' }) {
  const current = keys[0];
  const now = Math.floor(Date.now() / 1000);
  const body = { iss: issuer, iat: now, exp: now + 300, jti: randomUUID(), ...claims };
  if (key === 'hs256-public') {
    const pem = createPublicKey({ key: current, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    const message = `${b64({ alg: 'HS256', typ: 'at+jwt', kid: current.kid })}.${b64(body)}`;
    return `${message}.${createHmac('sha256', pem).update(message).digest('base64url')}`;
  }
  const signer = key === 'current' ? current : newKey();
  const kid = key === 'unpublished' ? `unpublished-${randomUUID()}` : current.kid;
  const message = `${b64({ alg: 'RS256', typ: 'at+jwt', kid })}.${b64(body)}`;
  const signature = sign('sha256', Buffer.from(message), createPrivateKey({ key: signer, format: 'jwk' }));
  return `${message}.${signature.toString('base64url')}`;
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/test/sign') {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => {
      try {
        const token = signToken(JSON.parse(data));
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
      } catch (e) {
        res.writeHead(400).end(String(e));
      }
    });
    return;
  }
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
