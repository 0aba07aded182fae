-- wrk script: replays precomputed signed Twilio webhooks, each line of the file once.
--
--   wrk -t1 -c64 -d10s --latency -s bench/twilio_replay.lua http://HOST:PORT/twilio/sms -- FILE
--
-- FILE holds one request per line: "<X-Twilio-Signature><TAB><form body>", written by
-- twilio_intake.py (HMAC-SHA1 needs the auth token; Lua here has no HMAC). Use one wrk thread:
-- every thread would read the file from its first line. done() prints one "BENCH ..." line:
-- requests sent, 2xx answers, answers carrying a TwiML <Message> (the acknowledgement), other
-- statuses, and how many requests had to start the file over (each is a replay: must be 0).

local signatures, bodies = {}, {}

function init(args)
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do
    local tab = line:find("\t", 1, true)
    signatures[#signatures + 1] = line:sub(1, tab - 1)
    bodies[#bodies + 1] = line:sub(tab + 1)
  end
  file:close()
  sent, ok, acked, other, wrapped = 0, 0, 0, 0, 0
end

function request()
  sent = sent + 1
  local i = (sent - 1) % #bodies + 1
  if sent > #bodies then wrapped = wrapped + 1 end
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Twilio-Signature"] = signatures[i],
  }, bodies[i])
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    if body:find("<Message>", 1, true) then acked = acked + 1 end
  else
    other = other + 1
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local s, o, a, x, w = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    o = o + t:get("ok")
    a = a + t:get("acked")
    x = x + t:get("other")
    w = w + t:get("wrapped")
  end
  io.write(string.format("BENCH sent=%d ok=%d acked=%d other=%d wrapped=%d\n", s, o, a, x, w))
end
