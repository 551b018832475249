// The scenario of tests/e2e/test_clients.py with the SMART JS client (fhirclient), unmodified, server-side:
// each step prints what the client returned (HTTP status and parsed body) as one JSON document on stdout.
// Usage: node fhirclient.cjs BASE_URL TOKEN MRN_SYSTEM MRN_VALUE
'use strict';
const smart = require('fhirclient');

async function main() {
  const [serverUrl, token, system, value] = process.argv.slice(2);
  // No request or session: the client is built from a known server and token (SMART "client" API).
  const client = smart({}, {}).client({ serverUrl, tokenResponse: { access_token: token } });
  const identifier = `${system}|${value}`;
  const steps = {};
  const step = async (name, call) => {
    try {
      const { body, response } = await call();
      steps[name] = { status: response.status, body: body === undefined ? null : body };
    } catch (error) {
      if (!error.response) throw error;
      let body = null;
      try { body = await error.response.json(); } catch { body = null; }
      steps[name] = { status: error.status, body };
    }
    return steps[name].body;
  };
  const withResponse = (extra = {}) => ({ includeResponse: true, ...extra });
  const fhir = { 'Content-Type': 'application/fhir+json' };

  const patient = {
    resourceType: 'Patient',
    identifier: [{ system, value }],
    name: [{ family: 'Gómez', given: ['Ana'] }],
    birthDate: '1980-02-03',
  };
  const ifNoneExist = withResponse({ headers: { 'If-None-Exist': `identifier=${identifier}` } });
  const created = await step('create', () => client.create(patient, ifNoneExist));
  await step('create-again', () => client.create(patient, ifNoneExist));
  const id = created.id;
  await step('observation', () => client.create({
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
    subject: { reference: `Patient/${id}` },
    valueQuantity: { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  }, withResponse()));
  const batch = {
    resourceType: 'Bundle',
    type: 'batch',
    entry: [
      { request: { method: 'GET', url: `Patient?identifier=${encodeURIComponent(identifier)}` } },
      { request: { method: 'GET', url: `Observation?subject=Patient/${id}&code=http://loinc.org|8867-4` } },
      { request: { method: 'GET', url: `Patient/${id}` } },
      { request: { method: 'GET', url: 'Patient/never-written' } },
    ],
  };
  await step('batch', () => client.request(withResponse({ url: '', method: 'POST', body: JSON.stringify(batch), headers: fhir })));
  const noParameters = JSON.stringify({ resourceType: 'Parameters' });
  for (const operation of ['everything', 'summary']) {
    await step(operation, () => client.request(withResponse({
      url: `Patient/${id}/$${operation}`, method: 'POST', body: noParameters, headers: fhir,
    })));
  }
  await step('patch', () => client.patch(
    `Patient?identifier=${encodeURIComponent(identifier)}`,
    [{ op: 'add', path: '/active', value: true }],
    withResponse(),
  ));
  await step('history-instance', () => client.request(withResponse({ url: `Patient/${id}/_history` })));
  await step('history-type', () => client.request(withResponse({ url: 'Patient/_history' })));
  await step('history-system', () => client.request(withResponse({ url: '_history' })));
  process.stdout.write(JSON.stringify(steps));
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
