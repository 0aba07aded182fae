-- wrk script: POST /v1/messages cycling over a small pool of Idempotency-Keys, each key always
-- with the same body. The first request of a key creates a ticket (201); every later one is a
-- replay (200) that must write nothing. For reference next to post_unique.lua.
--
--   wrk -t1 -c64 -d10s --latency -s bench/post_replay.lua http://HOST:PORT/v1/messages -- TAG [KEYS]
--
-- KEYS (default 64) keys named after TAG, shared by all threads. Prints the same "BENCH ..."
-- line as post_unique.lua.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  tag = args[1] or "replay"
  keys = tonumber(args[2] or "64")
  sent = 0
  answered_2xx = 0
  answered_201 = 0
  answered_other = 0
  prepared = {}
  for k = 0, keys - 1 do
    local who = tag .. "-" .. k
    local body = '{"contact":{"email":"r-' .. who .. '@example.org"},"text":'
      .. '"订单一直没有发货，请帮忙查一下物流 (ref ' .. who .. ')","locale":"zh-CN"}'
    prepared[k] = wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                           ["Idempotency-Key"] = "bench-" .. who}, body)
  end
end

function request()
  local r = prepared[sent % keys]
  sent = sent + 1
  return r
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    answered_2xx = answered_2xx + 1
    if status == 201 then answered_201 = answered_201 + 1 end
  else
    answered_other = answered_other + 1
  end
end

function done(summary, latency, requests)
  local s, ok, c, other = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    ok = ok + t:get("answered_2xx")
    c = c + t:get("answered_201")
    other = other + t:get("answered_other")
  end
  io.write(string.format("BENCH sent=%d answered_2xx=%d answered_201=%d answered_other=%d\n",
                         s, ok, c, other))
end
