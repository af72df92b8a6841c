-- A job whose send_at is ahead: its record says it waits (st 'W'), unless it is known already.
-- One round trip with the shard's writes beside it (suppression/schedule.py).
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- ARGV     by name (suppression/schedule.py: SCHEDULE_ARGS; read into A by a generated
--          prelude): due (epoch ms), ttl (seconds the record is kept after it is due: the
--          idempotency TTL), attempt, detail (the timeline entry's)
-- returns  as pre_send.lua: {verdict, status, provider, provider_message_id, attempt, reason,
--          wait_ms}; verdict 'scheduled' (also when it already was: a redelivery), 'done'
--          (a final status: never scheduled again) or 'duplicate' (being sent, or waiting
--          for a retry: that copy is the live one)
-- The entry 'scheduled' is the job's newest (fields et, ed beside st), as a deferral's is;
-- pre_send.lua and cancel.lua move it to the timeline when the status changes.
-- GENERATED arguments
local job = KEYS[1]
local st = redis.call('HGET', job, 'st')
if st == 'W' then
  -- a redelivery, or the job published again with another send_at (the shard entry beside
  -- this script took the new time and bytes): the record says the same
  redis.call('HSET', job, 'sa', A.due, 'ed', A.detail)
  return {'scheduled', 'W', '', '', redis.call('HGET', job, 'a') or '0', '', 0}
end
if st then
  local f = redis.call('HMGET', job, 'p', 'pm', 'a', 'r')
  local verdict = (st == 'S' or st == 'R') and 'duplicate' or 'done'
  return {verdict, st, f[1] or '', f[2] or '', f[3] or '0', f[4] or '', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', job, 'st', 'W', 'sa', A.due, 'a', A.attempt, 'et', now, 'ed', A.detail)
redis.call('EXPIRE', job, math.max(0, math.ceil((A.due - now) / 1000)) + A.ttl)
return {'scheduled', 'W', '', '', A.attempt, '', 0}
