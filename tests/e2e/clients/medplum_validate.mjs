// The $validate scenario of tests/e2e/test_clients.py with @medplum/core's MedplumClient, unmodified: its
// `validateResource` at type level and its `post` to an instance's $validate; each step prints the HTTP
// status (seen by the `fetch` the client is configured with) and the body the client returned, as one JSON
// document on stdout, and the test asserts on it.
// Usage: node medplum_validate.mjs BASE_URL TOKEN BROKEN_PATIENT_JSON PROFILE_URL
import { MedplumClient, OperationOutcomeError } from '@medplum/core';

const [baseUrl, token, brokenJson, profile] = process.argv.slice(2);
const statuses = [];
const recordingFetch = async (url, init) => {
  const response = await fetch(url, init);
  statuses.push(response.status);
  return response;
};
// The FHIR base is BASE_URL: the client's base is its origin and path, its FHIR path the last segment.
const base = new URL(baseUrl);
const fhirPath = base.pathname.replace(/^\/+|\/+$/g, '');
const medplum = new MedplumClient({ baseUrl: base.origin + '/', fhirUrlPath: fhirPath, fetch: recordingFetch });
medplum.setAccessToken(token);
const broken = JSON.parse(brokenJson);
const steps = {};

async function step(name, call) {
  try {
    const body = await call();
    steps[name] = { status: statuses.at(-1), body };
  } catch (error) {
    if (!(error instanceof OperationOutcomeError)) throw error;
    steps[name] = { status: statuses.at(-1), body: error.outcome };
  }
  return steps[name].body;
}

const valid = { resourceType: 'Patient', name: [{ family: 'Gómez', given: ['Ana'] }], gender: 'female' };
await step('type-valid', () => medplum.validateResource(valid));
await step('type-broken', () => medplum.validateResource(broken));
const created = await step('create', () => medplum.createResource(valid));
const { id } = created;
const parameters = {
  resourceType: 'Parameters',
  parameter: [
    { name: 'resource', resource: { ...valid, id } },
    { name: 'mode', valueCode: 'update' },
    { name: 'profile', valueUri: profile },
  ],
};
await step('instance-profile', () => medplum.post(medplum.fhirUrl('Patient', id, '$validate'), parameters));
await step('instance-stored', () => medplum.get(medplum.fhirUrl('Patient', id, '$validate').toString() + '?profile=' + encodeURIComponent(profile)));

process.stdout.write(JSON.stringify(steps));
