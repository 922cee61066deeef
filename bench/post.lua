-- Cycles through pre-signed webhook requests (one per line: path, header name, signature, JSON body; tab-separated).
-- Arguments: the requests file, and the number of wrk threads (each thread starts in its own slice).
-- With BENCH_PACE_MS set, each connection waits that long on average between its requests: a paced load at about
-- connections * 1000 / BENCH_PACE_MS requests per second instead of as many as the server can take.
local requests = {}
local index = 0
local threads_started = 0

local pace = tonumber(os.getenv("BENCH_PACE_MS") or "")
if pace then
  function delay()
    return math.random(0, 2 * pace)
  end
end

function setup(thread)
  threads_started = threads_started + 1
  thread:set("slice", threads_started - 1)
end

function init(args)
  for line in io.lines(args[1]) do
    local path, header, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      [header] = signature,
    }, body)
  end
  local threads = tonumber(args[2]) or 1
  index = (slice or 0) * math.floor(#requests / threads)
end

function request()
  index = index % #requests + 1
  return requests[index]
end
