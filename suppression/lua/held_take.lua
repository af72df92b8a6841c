-- Take one held job out of the account's held jobs (suppression/held.py), if it is still the
-- one the caller read (same time held: a job held again since is left alone), with a timeline
-- entry; for a discard or an expiry also its final status. A release leaves the job's status
-- ('held', not final): the copy it published is evaluated and claimed as any new job.
-- KEYS[1]  job hash; KEYS[2] held index; KEYS[3] held bodies; KEYS[4] held size
-- KEYS[5..7] the job hash again (not used: the timeline writer reads KEYS[8])
-- KEYS[8]  job timeline
-- ARGV[1..2]  job id, the time it was held (ms) as the caller read it
-- ARGV[3]     the final status to write ('' for none: a release)
-- ARGV[4..7]  the timeline entry: status, reason, detail, time (ms)
-- ARGV[8..11] idempotency ttl, seconds the timeline list is kept, entries kept in a
--             timeline, the longest value a hash keeps compactly
-- returns 1 taken, 0 not (gone, or held again since)
local job = KEYS[1]
local job_id = ARGV[1]
local ttl, tl_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
local timeline_keep, value_max = tonumber(ARGV[10]), tonumber(ARGV[11])
local since = redis.call('ZSCORE', KEYS[2], job_id)
if not since or tonumber(since) ~= tonumber(ARGV[2]) then
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
push({tonumber(ARGV[7]), ARGV[4], ARGV[5], ARGV[6], '', '', attempt})
if ARGV[3] ~= '' and redis.call('HGET', job, 'st') == 'held' then
  redis.call('HSET', job, 'st', ARGV[3], 'r', ARGV[5])
  redis.call('EXPIRE', job, ttl)
elseif redis.call('TTL', job) == -1 then
  redis.call('EXPIRE', job, ttl)  -- a record gone meanwhile, begun again by the entry
end
return 1
