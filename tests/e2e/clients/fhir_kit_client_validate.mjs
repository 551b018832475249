// The $validate scenario of tests/e2e/test_clients.py with fhir-kit-client, unmodified: its `operation`
// call, at type and instance level; each step prints the HTTP status and the parsed body as one JSON
// document on stdout, and the test asserts on it.
// Usage: node fhir_kit_client_validate.mjs BASE_URL TOKEN BROKEN_PATIENT_JSON PROFILE_URL
import { Client } from 'fhir-kit-client';

const [baseUrl, token, brokenJson, profile] = process.argv.slice(2);
const client = new Client({ baseUrl, bearerToken: token });
const broken = JSON.parse(brokenJson);
const steps = {};

async function step(name, call) {
  try {
    const body = await call();
    steps[name] = { status: Client.httpFor(body).response.status, body };
  } catch (error) {
    if (!error.response) throw error;
    steps[name] = { status: error.response.status, body: error.response.data };
  }
  return steps[name].body;
}

const valid = { resourceType: 'Patient', name: [{ family: 'Gómez', given: ['Ana'] }], gender: 'female' };
await step('type-valid', () => client.operation({ name: '$validate', resourceType: 'Patient', input: valid }));
await step('type-broken', () => client.operation({ name: '$validate', resourceType: 'Patient', input: broken }));
const created = await step('create', () => client.create({ resourceType: 'Patient', body: valid }));
const { id } = created;
const parameters = {
  resourceType: 'Parameters',
  parameter: [
    { name: 'resource', resource: { ...valid, id } },
    { name: 'mode', valueCode: 'update' },
    { name: 'profile', valueUri: profile },
  ],
};
await step('instance-profile', () => client.operation({ name: '$validate', resourceType: 'Patient', id, input: parameters }));
// The stored instance, by GET, against the profile (its inputs as the query string).
await step('instance-stored', () => client.operation({ name: '$validate', resourceType: 'Patient', id, method: 'GET', input: { profile } }));

process.stdout.write(JSON.stringify(steps));
