-- Take one held job out of the account's held jobs (suppression/held.py), if it is still the
-- one the caller read (same time held: a job held again since is left alone), with a timeline
-- entry; for a discard or an expiry also its final status. A release leaves the job's status
-- ('held', not final): the copy it published is evaluated and claimed as any new job.
-- KEYS[1]  job hash; KEYS[2] held index; KEYS[3] held bodies; KEYS[4] held size
-- KEYS[5..7] the job hash again (not used: the timeline writer reads KEYS[8])
-- KEYS[8]  job timeline
-- ARGV by name (suppression/held.py: TAKE_ARGS): job_id, since (the time it was held, ms,
-- as the caller read it), status (the final status to write; '' for none: a release), the
-- timeline entry's entry (status), reason, detail and at (ms); ttl, timeline_ttl,
-- timeline_keep, value_max as hold.lua
-- returns 1 taken, 0 not (gone, or held again since)
-- GENERATED arguments
local job = KEYS[1]
local job_id = A.job_id
local ttl, tl_ttl, timeline_keep, value_max = A.ttl, A.timeline_ttl, A.timeline_keep, A.value_max
local since = redis.call('ZSCORE', KEYS[2], job_id)
if not since or tonumber(since) ~= A.since then
  return 0
end
redis.call('HDEL', job, 'rl')  -- a release's mark (hold.lua)
-- INCLUDE timeline_push
redis.call('ZREM', KEYS[2], job_id)
local bytes = redis.call('HSTRLEN', KEYS[3], job_id)
redis.call('HDEL', KEYS[3], job_id)
redis.call('HINCRBY', KEYS[4], 'jobs', -1)
redis.call('HINCRBY', KEYS[4], 'bytes', -bytes)
local attempt = tonumber(redis.call('HGET', job, 'a')) or 0
push({A.at, A.entry, A.reason, A.detail, '', '', attempt})
if A.status ~= '' and redis.call('HGET', job, 'st') == 'held' then
  redis.call('HSET', job, 'st', A.status, 'r', A.reason)
  redis.call('EXPIRE', job, ttl)
elseif redis.call('TTL', job) == -1 then
  redis.call('EXPIRE', job, ttl)  -- a record gone meanwhile, begun again by the entry
end
return 1
