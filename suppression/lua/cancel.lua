-- Cancel a scheduled job (outbox jobs cancel, the admin API): only one still waiting (st 'W')
-- is cancelled; its record takes the final status 'cancelled', so the copy released when due
-- (or one already released and not yet claimed) is never sent.
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- KEYS[2]  job timeline             outbox:{acct:A}:tl:ID
-- ARGV     by name (suppression/schedule.py: CANCEL_ARGS; read into A by a generated
--          prelude): ttl (seconds the record is kept after the cancellation), timeline_keep
--          (entries kept in a timeline), timeline_ttl (seconds the timeline list is kept),
--          value_max (the longest value a hash keeps compactly), detail (who, why)
-- returns  {outcome, status, due ms}: 'cancelled'; 'already' (cancelled before); 'unknown'
--          (no record); 'too_late' (released and claimed, or sent, or ended otherwise)
-- GENERATED arguments
local job = KEYS[1]
KEYS[8] = KEYS[2]  -- where the timeline fragment writes the list
local ttl, timeline_keep, tl_ttl, value_max = A.ttl, A.timeline_keep, A.timeline_ttl,
  A.value_max
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
local detail = A.detail
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
