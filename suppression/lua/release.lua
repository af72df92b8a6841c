-- The due jobs of one shard, leased to the mover that asks (suppression/schedule.py): their
-- score moves to the end of the lease, so no other mover takes them meanwhile; the mover
-- removes them once the broker has confirmed their publish, or puts them back (ARGV[3] ''),
-- and if it dies they are due again when the lease ends.
-- KEYS[1]  due jobs                 outbox:{sched:N}:due
-- KEYS[2]  the jobs' bytes          outbox:{sched:N}:jobs
-- ARGV     by name (suppression/schedule.py: RELEASE_ARGS): limit (at most this many
--          jobs), lease (ms)
-- returns  {now ms, next due ms or '' (when none was due), member, score, value, member...}
-- GENERATED arguments
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  A.limit)
if #due == 0 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {now, first[2] or ''}
end
local out = {now, ''}
local lease = now + A.lease
for i = 1, #due, 2 do
  local member = due[i]
  redis.call('ZADD', KEYS[1], 'XX', lease, member)
  out[#out + 1] = member
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], member) or ''
end
return out
