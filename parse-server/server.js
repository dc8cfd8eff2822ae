// Parse Server for the toolkit's local stack. Started by `toolkit stack up`; every setting comes
// from the environment so the Python side stays the one place that decides them.
const crypto = require('crypto');
const express = require('express');
const { ParseServer } = require('parse-server');
const { checkIp } = require('parse-server/lib/middlewares');
const FSFilesAdapter = require('@parse/fs-files-adapter');
const { requestCounter } = require('./request-counts');

const env = (name, fallback) => {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) throw new Error(`missing environment variable ${name}`);
    return fallback;
  }
  return value;
};

const port = Number(env('PARSE_PORT'));
const host = env('PARSE_HOST', '127.0.0.1');
const mountPath = '/parse';
const masterKeyIps = ['127.0.0.1', '::1'];

const config = {
  databaseURI: env('PARSE_DATABASE_URI'),
  appId: env('PARSE_APP_ID'),
  masterKey: env('PARSE_MASTER_KEY'),
  restAPIKey: env('PARSE_REST_API_KEY'),
  serverURL: env('PARSE_SERVER_URL'),
  masterKeyIps,
  // Files go to <cwd>/files/<subdirectory>; the stack sets cwd to a directory under .stack/.
  filesAdapter: new FSFilesAdapter({ filesSubDirectory: env('PARSE_FILES_SUBDIR', 'batches') }),
  maxUploadSize: env('PARSE_MAX_UPLOAD_SIZE', '256mb'),
  allowCustomObjectId: true,
  allowClientClassCreation: false,
  enableAnonymousUsers: false,
  // Files hold batches (memory content) and Temporal payloads: only the server (master key) uploads
  // them, and only the server reads them back. A file URL is therefore not a capability.
  fileUpload: {
    enableForPublic: false,
    enableForAnonymousUser: false,
    enableForAuthenticatedUser: false,
    allowedFileUrlDomains: [],
  },
  cloud: (Parse) => {
    // Every file read, the metadata route included (Parse runs beforeFind on both): only a request
    // recognised as master (masterKeyOnFileReads below) gets past it.
    Parse.Cloud.beforeFind(Parse.File, (request) => {
      if (!request.master) {
        throw new Parse.Error(Parse.Error.OPERATION_FORBIDDEN, 'files are readable with the master key only');
      }
    });
  },
  requestComplexity: { batchRequestLimit: Number(env('PARSE_BATCH_REQUEST_LIMIT', '100')) },
  // Options set explicitly so the server starts without deprecation warnings.
  encodeParseObjectInCloudFunction: true,
  enableInsecureAuthAdapters: false,
  pages: { enableRouter: false },
  logLevels: { triggerAfter: 'silent', triggerBeforeSuccess: 'silent' },
  verbose: false,
  silent: process.env.PARSE_SILENT === '1',
};

// Parse's GET file routes skip its header handling, so a master key sent on a file read is never seen
// (request.master stays false). This recognises it the way Parse does elsewhere, the key compared in
// constant time and the caller's address checked against masterKeyIps, and marks the request as
// master, the same auth object Parse's own file routes set for a public read ({ isMaster: false }).
const masterKeyDigest = crypto.createHash('sha256').update(config.masterKey).digest();
const masterKeyIpsStore = new Map();

function presentsMasterKey(req) {
  const presented = req.get('X-Parse-Master-Key');
  if (!presented) return false;
  const digest = crypto.createHash('sha256').update(presented).digest();
  return crypto.timingSafeEqual(digest, masterKeyDigest) && checkIp(req.ip, masterKeyIps, masterKeyIpsStore);
}

function masterKeyOnFileReads(req, res, next) {
  if ((req.method === 'GET' || req.method === 'HEAD') && presentsMasterKey(req)) {
    req.auth = { isMaster: true };
  }
  next();
}

async function main() {
  const server = new ParseServer(config);
  await server.start();
  const app = express();
  // Request counts (request-counts.js) are off unless asked for: /metrics is unauthenticated.
  const counts = process.env.PARSE_REQUEST_COUNTS === '1' ? requestCounter(mountPath) : null;
  if (counts) app.use(mountPath, counts.middleware);
  app.use(`${mountPath}/files`, masterKeyOnFileReads);
  app.use(mountPath, server.app);
  if (counts) app.get('/metrics', (req, res) => res.type('text/plain; version=0.0.4').send(counts.render()));
  const httpServer = app.listen(port, host, () => {
    console.log(`parse-server listening on http://${host}:${port}${mountPath}`);
  });
  const shutdown = () => {
    httpServer.close();
    Promise.resolve(server.handleShutdown && server.handleShutdown()).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main().catch((err) => {
  console.error('parse-server failed to start:', err);
  process.exit(1);
});
