"""Parse Server's request counter (``parse-server/request-counts.js``) over real HTTP, in Node without Parse.

A Node ``http`` server runs the counter's middleware in front of a handler that answers one request and
never answers another, whose caller gives up. Each must be counted once: the answered one emits both
'finish' and 'close', the abandoned one 'close' alone. No stack needed.
"""

from __future__ import annotations

import subprocess

from toolkit.settings import REPO_ROOT
from toolkit.stack.parse_server import node_binary
from toolkit.validation.perf import server_counts

REQUEST_COUNTS_JS = REPO_ROOT / "parse-server" / "request-counts.js"
# Bounds a hang only: the script takes well under a second.
HANG_BOUND_S = 60.0

SCRIPT = r"""
const http = require('http');
const { requestCounter } = require(process.argv[2]);

const counts = requestCounter('/parse');
const events = {};
const once = (name) => new Promise((resolve) => { events[name] = resolve; });
const answeredClosed = once('answeredClosed');
const abandonedArrived = once('abandonedArrived');
const abandonedClosed = once('abandonedClosed');

const server = http.createServer((req, res) => {
  req.path = new URL(req.url, 'http://localhost').pathname.slice('/parse'.length); // as Express mounts it
  counts.middleware(req, res, () => {
    // Listeners run in the order they were added: the counter's 'close' has run when these do.
    if (req.path.startsWith('/classes/Abandoned')) {
      res.on('close', () => events.abandonedClosed());
      events.abandonedArrived(); // never answered: its caller gives up
      return;
    }
    res.on('close', () => events.answeredClosed());
    res.end('{}');
  });
});

server.listen(0, '127.0.0.1', async () => {
  const { port } = server.address();
  await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/parse/classes/Memory/abc' }, (res) => {
      res.resume();
      res.on('end', resolve);
    }).on('error', reject);
  });
  await answeredClosed;
  const abandoned = http.get({ host: '127.0.0.1', port, path: '/parse/classes/Abandoned/x' });
  abandoned.on('error', () => {});
  await abandonedArrived;
  abandoned.destroy();
  await abandonedClosed;
  process.stdout.write(counts.render(), () => process.exit(0));
});
"""


def test_each_request_is_counted_once_whether_answered_or_abandoned(tmp_path) -> None:
    script = tmp_path / "count_requests.js"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [str(node_binary()), str(script), str(REQUEST_COUNTS_JS)],
        capture_output=True,
        text=True,
        timeout=HANG_BOUND_S,
    )
    assert result.returncode == 0, result.stderr
    requests, errors, _ = server_counts.parse_counts_from_text(result.stdout)
    assert requests == {"GET classes/Memory": 1, "GET classes/Abandoned": 1}, result.stdout
    assert errors == 0
    assert 'class="Memory",status="2xx"} 1' in result.stdout
    assert 'class="Abandoned",status="aborted"} 1' in result.stdout
