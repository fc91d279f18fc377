// aws-amplify 6, unmodified, configured the way an app points it at stackpulse.
// Run by test/amplify.test.mjs as
//   NODE_EXTRA_CA_CERTS=cert.pem node --experimental-websocket amplify-subscriber.mjs
// with STACKPULSE_ENDPOINT (https://127.0.0.1:PORT/graphql), STACKPULSE_TOKEN (a
// Cognito access token) and STACKPULSE_DEPLOYMENT. It subscribes to
// onDeploymentUpdated and prints one JSON line per thing it sees; stdin lines
// `publish STATUS` (the publishDeploymentUpdate mutation through amplify) and
// `unsubscribe` drive it.
import { Amplify } from 'aws-amplify';
import { CONNECTION_STATE_CHANGE, generateClient } from 'aws-amplify/api';
import { decodeJWT } from 'aws-amplify/auth';
import { Hub } from 'aws-amplify/utils';
import { createInterface } from 'node:readline';

const endpoint = process.env.STACKPULSE_ENDPOINT;
const token = process.env.STACKPULSE_TOKEN;
const deploymentId = process.env.STACKPULSE_DEPLOYMENT;
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const describe = (e) => JSON.stringify(e?.errors ?? e?.message ?? String(e));

Amplify.configure(
  { API: { GraphQL: { endpoint, region: 'us-east-1', defaultAuthMode: 'userPool' } } },
  { Auth: { tokenProvider: { getTokens: async () => ({ accessToken: decodeJWT(token) }) } } },
);
Hub.listen('api', ({ payload }) => {
  if (payload.event === CONNECTION_STATE_CHANGE) out({ state: payload.data.connectionState });
});

const SUB = `subscription OnDeploymentUpdated($deploymentId: ID!) {
  onDeploymentUpdated(deployment_id: $deploymentId) {
    deployment_id
    status
    updated_at
  }
}`;
const PUBLISH = `mutation Publish($deploymentId: ID!, $status: String!) {
  publishDeploymentUpdate(deployment_id: $deploymentId, status: $status) {
    deployment_id
    status
    seq
  }
}`;

const client = generateClient();
const sub = client.graphql({ query: SUB, variables: { deploymentId } }).subscribe({
  next: ({ data }) => out({ next: data }),
  error: (e) => out({ error: describe(e) }),
});

createInterface({ input: process.stdin }).on('line', async (line) => {
  const [cmd, arg] = line.trim().split(' ');
  if (cmd === 'publish') {
    try {
      const r = await client.graphql({ query: PUBLISH, variables: { deploymentId, status: arg } });
      out({ published: r.data.publishDeploymentUpdate });
    } catch (e) {
      out({ publishError: describe(e) });
    }
  } else if (cmd === 'unsubscribe') {
    sub.unsubscribe();
    out({ unsubscribed: true });
  }
});
