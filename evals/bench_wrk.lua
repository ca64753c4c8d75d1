-- wrk script of `make bench` (evals/bench.py): HTTP/JSON requests to Envoy's transcoder.
--
--   wrk ... -s evals/bench_wrk.lua URL -- QUESTIONS TEMPLATE UNIQUE DELAY_MS RUN
--
-- QUESTIONS: one JSON-escaped question a line; TEMPLATE: the JSON body, with @Q@ where
-- the question goes; UNIQUE "1": each request's question gets "(case RUN-T-N)" appended
-- (RUN names this wrk run, T the thread, N its count), so no two requests of a bench
-- ask the same thing, whichever run they belong to; DELAY_MS: the
-- pause before each request on a connection (0: back to back), which is how a closed
-- loop of connections is held below saturation. Counts the answers by HTTP status and
-- prints one "BENCH {json}" line at the end, which evals/bench_report.py reads.

local questions, prefix, suffix, unique, pause, run = {}, "", "", false, 0, ""
local counter = 0
-- Global: done() reads each thread's copy with thread:get.
statuses = {}
local threads, next_id = {}, 0

local function read_lines(path)
   local lines = {}
   for line in io.lines(path) do
      if #line > 0 then lines[#lines + 1] = line end
   end
   return lines
end

function setup(thread)
   next_id = next_id + 1
   thread:set("tid", next_id)
   threads[#threads + 1] = thread
end

function init(args)
   questions = read_lines(args[1])
   local template = read_lines(args[2])[1]
   local at = template:find("@Q@", 1, true)
   prefix, suffix = template:sub(1, at - 1), template:sub(at + 3)
   unique = args[3] == "1"
   pause = tonumber(args[4]) or 0
   run = args[5] or ""
end

function request()
   counter = counter + 1
   local question = questions[(counter - 1) % #questions + 1]
   if unique then
      question = question .. " (case " .. run .. "-" .. tid .. "-" .. counter .. ")"
   end
   return wrk.format("POST", nil, nil, prefix .. question .. suffix)
end

function delay()
   return pause
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      for code, n in pairs(thread:get("statuses")) do
         merged[code] = (merged[code] or 0) + n
      end
   end
   local parts = {}
   for code, n in pairs(merged) do
      parts[#parts + 1] = string.format('"%d": %d', code, n)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH {"duration_us": %d, "requests": %d, "statuses": {%s}, ' ..
      '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "mean": %.1f}}\n',
      summary.duration, summary.requests, table.concat(parts, ", "),
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
