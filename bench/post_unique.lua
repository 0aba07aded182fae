-- wrk script: POST /v1/messages where every request is a new contact with a new text, so each
-- one creates a ticket (the store's worst case). The same bodies go to the bare server.
--
--   wrk -t1 -c64 -d10s --latency -s bench/post_unique.lua http://HOST:PORT/v1/messages -- TAG
--
-- TAG keeps the runs against one store apart (warm-up and measurement must not collide, or the
-- second would be `duplicate`s). done() prints one "BENCH ..." line that api_intake.py parses:
-- requests sent and answers by status, counted here because wrk's own tally lumps 2xx and 3xx.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

-- A mix of kinds, areas and priorities, so triage and the due-time calculation see realistic
-- input (complaint -> high, suggestion -> low on the business clock, ...).
local texts = {
  {"zh-CN", "订单一直没有发货，已经等了五天了，请帮忙查一下物流"},
  {"en", "The app crashes every time I open the settings page on my phone"},
  {"zh-CN", "我要投诉，客服态度太差了，问题到现在也没有解决"},
  {"en", "Could you add a dark mode to the dashboard? Just a suggestion"},
  {"en", "My invoice for last month shows a double charge, please refund one of them"},
  {"zh-CN", "请问你们的产品支持开具增值税专用发票吗"},
}

local headers = {["Content-Type"] = "application/json"}

function init(args)
  tag = args[1] or "run"
  sent = 0
  answered_2xx = 0
  answered_201 = 0
  answered_other = 0
end

function request()
  sent = sent + 1
  local who = tag .. "-" .. id .. "-" .. sent
  local t = texts[sent % #texts + 1]
  local body = '{"contact":{"email":"c-' .. who .. '@example.org"},"text":"' .. t[2]
    .. ' (ref ' .. who .. ')","locale":"' .. t[1] .. '"}'
  return wrk.format("POST", nil, headers, body)
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
