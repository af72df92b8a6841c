-- Hold a job of a blocked or suspended account (suppression/held.py): keep its body, index it
-- by channel and category under the time it was first held, mark the job held (not final: the
-- same id published again is evaluated again). In the account's slot, so an unblock
-- (support.lua) is either before it (the job is not held: 'again', the caller evaluates it
-- anew) or after it (the held job is there for the release).
-- KEYS[1]  job hash                  outbox:{acct:A}:job:ID
-- KEYS[2]  account state hash        outbox:{acct:A}:state
-- KEYS[3]  held index of the job's channel and category   outbox:{acct:A}:held:<ch>:<cat>
-- KEYS[4]  held bodies hash          outbox:{acct:A}:held-bodies
-- KEYS[5]  held size hash            outbox:{acct:A}:held-size (jobs, bytes)
-- KEYS[6..7] the job hash again (not used: the timeline writer reads KEYS[8])
-- KEYS[8]  job timeline              outbox:{acct:A}:tl:ID
-- ARGV by name (suppression/held.py: HOLD_ARGS): job_id, body, attempt; hold_seconds,
-- max_jobs, max_bytes (the account's cap); ttl (idempotency), timeline_ttl (seconds the
-- timeline list is kept), timeline_keep (entries kept in a timeline), value_max (the longest
-- value a hash keeps compactly)
-- The job hash's 'rl' is set by a release before it publishes the job (suppression/held.py).
-- returns {'held', reason, held at ms, held until ms}, {'again', state} when the account is
--         no longer blocked or suspended, or {'full', reason, jobs, bytes} over the cap
-- GENERATED arguments
local job = KEYS[1]
local job_id, body, attempt = A.job_id, A.body, A.attempt
local hold_s, max_jobs, max_bytes = A.hold_seconds, A.max_jobs, A.max_bytes
local ttl, tl_ttl, timeline_keep, value_max = A.ttl, A.timeline_ttl, A.timeline_keep, A.value_max

local state = redis.call('HGET', KEYS[2], 'state') or 'active'
if state ~= 'blocked' and state ~= 'suspended' then
  return {'again', state}
end
local reason = 'account_' .. state
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- INCLUDE timeline_push
local since = tonumber(redis.call('ZSCORE', KEYS[3], job_id))
local old = redis.call('HSTRLEN', KEYS[4], job_id)
if since and redis.call('HGET', job, 'rl') then
  -- its release published it ('rl') and the account was blocked again before the release
  -- took it out: held anew, under a new time, so that take (which checks the time) leaves it
  redis.call('HDEL', job, 'rl')
  since = now
  redis.call('ZADD', KEYS[3], since, job_id)
  push({now, 'held', reason, 'again after its release', '', '', tonumber(attempt) or 0})
elseif not since then
  local size = redis.call('HMGET', KEYS[5], 'jobs', 'bytes')
  local jobs, bytes = tonumber(size[1]) or 0, tonumber(size[2]) or 0
  if jobs + 1 > max_jobs or bytes - old + #body > max_bytes then
    return {'full', reason, jobs, bytes}
  end
  since = now
  redis.call('ZADD', KEYS[3], since, job_id)
  redis.call('HINCRBY', KEYS[5], 'jobs', 1)
  -- a deferred job's hash holds its deferral's entry: it joins the earlier ones first
  local h = redis.call('HMGET', job, 'st', 'et', 'r', 'ed', 'p', 'pm', 'a', 'ea')
  if h[1] == 'R' and h[2] then
    push({tonumber(h[2]), 'deferred', h[3] or '', h[4] or '', h[5] or '', h[6] or '',
      tonumber(h[8] or h[7]) or 0})
    redis.call('HDEL', job, 'et', 'ed', 'ea')
  end
  push({now, 'held', reason, 'for up to ' .. hold_s .. ' s, unless released or discarded',
    '', '', tonumber(attempt) or 0})
end
redis.call('HSET', KEYS[4], job_id, body)
redis.call('HINCRBY', KEYS[5], 'bytes', #body - old)
redis.call('HSET', job, 'st', 'held', 'a', attempt, 'r', reason)
redis.call('HDEL', job, 'o')
-- the record outlives the hold, so an expiry or a release still finds it
local keep = math.max(ttl, hold_s + 86400)
redis.call('EXPIRE', job, keep)
if tl_ttl > 0 and redis.call('EXISTS', KEYS[8]) == 1 then
  redis.call('EXPIRE', KEYS[8], math.max(tl_ttl, keep))
end
return {'held', reason, since, since + hold_s * 1000}
