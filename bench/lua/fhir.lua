-- wrk script of bench/wrk.py: POST distinct Patients, or GET Patients by id, cycling through a file.
-- Arguments (after `--`): mode (create|read), file (one JSON body or one id a line), bearer token,
-- threads, run tag (for X-Request-ID), first line (so successive runs send new persons).
-- Threads take interleaved lines (thread k: first + k, first + k + threads, ...), so no two requests
-- of a run send the same person: the master patient index would link copies and skew every figure.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode, token, tag = args[1], args[3], args[5]
  step = tonumber(args[4])
  index = tonumber(args[6]) + tid
  items = {}
  for line in io.lines(args[2]) do
    items[#items + 1] = line
  end
  path = wrk.path
  headers = { ["Accept"] = "application/fhir+json", ["Authorization"] = "Bearer " .. token }
  if mode == "create" then
    headers["Content-Type"] = "application/fhir+json"
  end
end

function request()
  local item = items[(index % #items) + 1]
  index = index + step
  if mode == "create" then
    headers["X-Request-ID"] = string.format("%s-%d", tag, index)
    return wrk.format("POST", path, headers, item)
  end
  return wrk.format("GET", path .. "/" .. item, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
