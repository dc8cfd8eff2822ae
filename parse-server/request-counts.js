// Counts the HTTP requests this Parse Server answers, and the sub-requests inside each /batch, so a
// measurement can say how many Parse round trips a batch costs (`toolkit saturation` reads them).
// Parse Server has no such counter of its own. Served as Prometheus text at GET /metrics, beside the
// /parse mount, only when PARSE_REQUEST_COUNTS=1 (server.js; `toolkit stack up` sets it for the local
// stack). Labels hold methods, route roots, class names and status classes only: never ids, keys or
// content. The number of series is capped, so requests to made-up paths cannot grow it.

const MAX_SERIES = 200;
const NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

// "/classes/Memory/abc" → ["classes", "Memory"]; "/batch" → ["batch", ""]; odd names → "other".
function routeOf(path) {
  const [root = '', second = ''] = path.split('/').filter(Boolean);
  const resource = NAME.test(root) ? root : 'other';
  const className = resource === 'classes' && NAME.test(second) ? second : '';
  return [resource, className];
}

function labelValue(value) {
  return String(value).replace(/\\/g, '\\\\').replace(/"/g, '\\"');
}

// A /batch request is labelled by the classes of its sub-requests ("Memory", "BatchSlot+BatchSlotHold"),
// so the memory writes can be told from the other transactions; more than three classes are "mixed".
function batchClasses(routes) {
  const names = [...new Set(routes.map(([resource, className]) => className || resource))].sort();
  return names.length > 3 ? 'mixed' : names.join('+');
}

function requestCounter(mountPath) {
  const requests = new Map(); // "method\tresource\tclass\tstatus" → count
  const subrequests = new Map(); // "method\tresource\tclass" of each /batch sub-request → count

  const bump = (map, key, by = 1) => {
    const known = map.has(key);
    if (!known && map.size >= MAX_SERIES) {
      key = map === requests ? 'OTHER\tother\t\tother' : 'OTHER\tother\t';
    }
    map.set(key, (map.get(key) || 0) + by);
  };
  // Sub-request paths carry the mount ("/parse/classes/Memory").
  const withoutMount = (path) =>
    typeof path === 'string' && path.startsWith(`${mountPath}/`) ? path.slice(mountPath.length) : '';

  // Mounted on the same path as Parse: req.path is relative to it. Counted once per request, when the
  // answer is sent ('finish', Parse's own body parser has read a /batch body by then) or when the
  // connection closed before it was ('close' alone: the caller gave up; status "aborted"). A finished
  // answer emits 'close' too, so the first of the two counts and the other is ignored.
  function middleware(req, res, next) {
    const [resource, className] = routeOf(req.path);
    let counted = false;
    const count = () => {
      if (counted) return;
      counted = true;
      const status = res.writableFinished ? `${Math.floor(res.statusCode / 100)}xx` : 'aborted';
      const inner = resource === 'batch' && req.body && Array.isArray(req.body.requests) ? req.body.requests : [];
      const subs = inner.map((sub) => {
        const method = sub && typeof sub.method === 'string' ? sub.method.toUpperCase() : 'OTHER';
        return [/^[A-Z]{1,10}$/.test(method) ? method : 'OTHER', ...routeOf(withoutMount(sub && sub.path))];
      });
      const label = resource === 'batch' ? batchClasses(subs.map(([, ...route]) => route)) : className;
      bump(requests, [req.method, resource, label, status].join('\t'));
      for (const key of subs) {
        bump(subrequests, key.join('\t'));
      }
    };
    res.on('finish', count);
    res.on('close', count);
    next();
  }

  function render() {
    const lines = [
      '# HELP parse_server_requests_total HTTP requests answered by Parse Server',
      '# TYPE parse_server_requests_total counter',
    ];
    for (const [key, count] of requests) {
      const [method, resource, className, status] = key.split('\t');
      lines.push(
        `parse_server_requests_total{method="${labelValue(method)}",resource="${labelValue(resource)}",` +
          `class="${labelValue(className)}",status="${labelValue(status)}"} ${count}`
      );
    }
    lines.push(
      '# HELP parse_server_batch_subrequests_total Sub-requests inside /batch requests, by method and route',
      '# TYPE parse_server_batch_subrequests_total counter'
    );
    for (const [key, count] of subrequests) {
      const [method, resource, className] = key.split('\t');
      lines.push(
        `parse_server_batch_subrequests_total{method="${labelValue(method)}",resource="${labelValue(resource)}",` +
          `class="${labelValue(className)}"} ${count}`
      );
    }
    return lines.join('\n') + '\n';
  }

  return { middleware, render };
}

module.exports = { requestCounter };
