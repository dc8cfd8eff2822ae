// Parse Server for the toolkit's local stack. Started by `toolkit stack up`; every setting comes
// from the environment so the Python side stays the one place that decides them.
const express = require('express');
const { ParseServer } = require('parse-server');
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

const config = {
  databaseURI: env('PARSE_DATABASE_URI'),
  appId: env('PARSE_APP_ID'),
  masterKey: env('PARSE_MASTER_KEY'),
  restAPIKey: env('PARSE_REST_API_KEY'),
  serverURL: env('PARSE_SERVER_URL'),
  masterKeyIps: ['127.0.0.1', '::1'],
  // Files go to <cwd>/files/<subdirectory>; the stack sets cwd to a directory under .stack/.
  filesAdapter: new FSFilesAdapter({ filesSubDirectory: env('PARSE_FILES_SUBDIR', 'batches') }),
  maxUploadSize: env('PARSE_MAX_UPLOAD_SIZE', '256mb'),
  allowCustomObjectId: true,
  allowClientClassCreation: false,
  enableAnonymousUsers: false,
  fileUpload: {
    enableForPublic: false,
    enableForAnonymousUser: false,
    enableForAuthenticatedUser: true,
    allowedFileUrlDomains: [],
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

async function main() {
  const server = new ParseServer(config);
  await server.start();
  const app = express();
  const counts = requestCounter();
  app.use(mountPath, counts.middleware);
  app.use(mountPath, server.app);
  app.get('/metrics', (req, res) => res.type('text/plain; version=0.0.4').send(counts.render()));
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
