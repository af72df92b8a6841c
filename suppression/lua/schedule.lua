-- A job whose send_at is ahead: its record says it waits (st 'W'), unless it is known already.
-- One round trip with the shard's writes beside it (suppression/schedule.py).
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- ARGV[1]  due (epoch ms), ARGV[2] seconds the record is kept after it is due (the
--          idempotency TTL), ARGV[3] attempt, ARGV[4] the timeline entry's detail
-- returns  as pre_send.lua: {verdict, status, provider, provider_message_id, attempt, reason,
--          wait_ms}; verdict 'scheduled' (also when it already was: a redelivery), 'done'
--          (a final status: never scheduled again) or 'duplicate' (being sent, or waiting
--          for a retry: that copy is the live one)
-- The entry 'scheduled' is the job's newest (fields et, ed beside st), as a deferral's is;
-- pre_send.lua and cancel.lua move it to the timeline when the status changes.
local job = KEYS[1]
local st = redis.call('HGET', job, 'st')
if st == 'W' then
  -- a redelivery, or the job published again with another send_at (the shard entry beside
  -- this script took the new time and bytes): the record says the same
  redis.call('HSET', job, 'sa', ARGV[1], 'ed', ARGV[4])
  return {'scheduled', 'W', '', '', redis.call('HGET', job, 'a') or '0', '', 0}
end
if st then
  local f = redis.call('HMGET', job, 'p', 'pm', 'a', 'r')
  local verdict = (st == 'S' or st == 'R') and 'duplicate' or 'done'
  return {verdict, st, f[1] or '', f[2] or '', f[3] or '0', f[4] or '', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = tonumber(ARGV[1])
redis.call('HSET', job, 'st', 'W', 'sa', ARGV[1], 'a', ARGV[3], 'et', now, 'ed', ARGV[4])
redis.call('EXPIRE', job, math.max(0, math.ceil((due - now) / 1000)) + tonumber(ARGV[2]))
return {'scheduled', 'W', '', '', ARGV[3], '', 0}
