-- Reopen a job for a replay from outbox.dead: a job that ended without being handed over
-- ('failed' or 'rejected') loses its final status, so the replayed copy is claimed and sent;
-- any other state is left as it is (a job sent, or being sent, is never sent again).
-- A job hash that holds its newest timeline entry itself (fields 'et' time, 'ed' detail,
-- 'ea' attempt beside 'st', 'r', 'p', 'pm', 'a') gets that entry moved to the timeline list
-- first, as a JSON object, so the story still says how the job ended.
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- KEYS[2]  job timeline             outbox:{acct:A}:tl:ID
-- ARGV     by name (suppression/gate.py: REOPEN_ARGS; read into A by a generated prelude):
--          timeline_ttl (seconds the timeline is kept), timeline_keep (entries kept in it)
-- returns  the state found ('' when none); reopened when it was 'failed' or 'rejected'
-- GENERATED arguments
local st = redis.call('HGET', KEYS[1], 'st')
if st == 'failed' or st == 'rejected' then
  local h = redis.call('HMGET', KEYS[1], 'et', 'ed', 'ea', 'r', 'p', 'pm', 'a')
  if h[1] then
    redis.call('RPUSH', KEYS[2], cjson.encode({at = tonumber(h[1]), status = st,
      reason = h[4] or '', detail = h[2] or '', provider = h[5] or '',
      provider_message_id = h[6] or '', attempt = tonumber(h[3] or h[7]) or 0}))
    redis.call('LTRIM', KEYS[2], -A.timeline_keep, -1)
    redis.call('EXPIRE', KEYS[2], A.timeline_ttl)
    redis.call('HDEL', KEYS[1], 'et', 'ed', 'ea')
  end
  redis.call('HDEL', KEYS[1], 'st', 'o')
end
return st or ''
