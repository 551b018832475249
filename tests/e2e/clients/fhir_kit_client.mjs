// The scenario of tests/e2e/test_clients.py with fhir-kit-client, unmodified: each step prints what the
// client returned (HTTP status and parsed body) as one JSON document on stdout; the test asserts on it.
// Usage: node fhir_kit_client.mjs BASE_URL TOKEN MRN_SYSTEM MRN_VALUE
import { Client } from 'fhir-kit-client';

const [baseUrl, token, system, value] = process.argv.slice(2);
const client = new Client({ baseUrl, bearerToken: token });
const identifier = `${system}|${value}`;
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

const patient = {
  resourceType: 'Patient',
  identifier: [{ system, value }],
  name: [{ family: 'Gómez', given: ['Ana'] }],
  birthDate: '1980-02-03',
};
const ifNoneExist = { headers: { 'If-None-Exist': `identifier=${identifier}` } };
const created = await step('create', () => client.create({ resourceType: 'Patient', body: patient, options: ifNoneExist }));
await step('create-again', () => client.create({ resourceType: 'Patient', body: patient, options: ifNoneExist }));
const id = created.id;
await step('observation', () => client.create({
  resourceType: 'Observation',
  body: {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
    subject: { reference: `Patient/${id}` },
    valueQuantity: { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  },
}));
await step('batch', () => client.batch({
  body: {
    resourceType: 'Bundle',
    type: 'batch',
    entry: [
      { request: { method: 'GET', url: `Patient?identifier=${encodeURIComponent(identifier)}` } },
      { request: { method: 'GET', url: `Observation?subject=Patient/${id}&code=http://loinc.org|8867-4` } },
      { request: { method: 'GET', url: `Patient/${id}` } },
      { request: { method: 'GET', url: 'Patient/never-written' } },
    ],
  },
}));
const noParameters = { resourceType: 'Parameters' };
await step('everything', () => client.operation({ name: '$everything', resourceType: 'Patient', id, method: 'POST', input: noParameters }));
await step('summary', () => client.operation({ name: '$summary', resourceType: 'Patient', id, method: 'POST', input: noParameters }));
// Conditional patch (R4 §3.1.0.5 with §3.1.0.8's search): the client's raw request, with a JSON Patch.
await step('patch', () => client.request(`Patient?identifier=${encodeURIComponent(identifier)}`, {
  method: 'PATCH',
  body: [{ op: 'add', path: '/active', value: true }],
  options: { headers: { 'Content-Type': 'application/json-patch+json' } },
}));
await step('history-instance', () => client.history({ resourceType: 'Patient', id }));
await step('history-type', () => client.history({ resourceType: 'Patient' }));
await step('history-system', () => client.history());

process.stdout.write(JSON.stringify(steps));
