-- Cancel a scheduled job (outbox jobs cancel, the admin API): only one still waiting (st 'W')
-- is cancelled; its record takes the final status 'cancelled', so the copy released when due
-- (or one already released and not yet claimed) is never sent.
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- KEYS[2]  job timeline             outbox:{acct:A}:tl:ID
-- ARGV[1..4] ttl seconds (the record after the cancellation), entries kept in a timeline,
--          seconds the timeline list is kept, the longest value a hash keeps compactly
-- ARGV[5]  the cancellation's detail (who, why)
-- returns  {outcome, status, due ms}: 'cancelled'; 'already' (cancelled before); 'unknown'
--          (no record); 'too_late' (released and claimed, or sent, or ended otherwise)
local job = KEYS[1]
KEYS[8] = KEYS[2]  -- where the timeline fragment writes the list
local ttl, timeline_keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local tl_ttl, value_max = tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', job, 'st', 'sa', 'et', 'ed', 'a')
local st, due = f[1], f[2] or ''
if not st then return {'unknown', '', ''} end
if st == 'cancelled' then return {'already', st, due} end
if st ~= 'W' then return {'too_late', st, due} end
-- INCLUDE timeline_push
if f[3] then
  push({tonumber(f[3]), 'scheduled', '', f[4] or '', '', '', tonumber(f[5]) or 0})
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local detail = ARGV[5]
if #detail > value_max then
  push({now, 'cancelled', 'cancelled', detail, '', '', tonumber(f[5]) or 0})
  redis.call('HSET', job, 'st', 'cancelled', 'r', 'cancelled')
  redis.call('HDEL', job, 'et', 'ed', 'o')
else
  redis.call('HSET', job, 'st', 'cancelled', 'r', 'cancelled', 'et', now, 'ed', detail)
  redis.call('HDEL', job, 'o')
end
redis.call('EXPIRE', job, ttl)
return {'cancelled', 'W', due}
