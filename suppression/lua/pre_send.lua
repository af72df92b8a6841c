-- Pre-send gate for one job: claim it, or say why not. One round trip.
-- KEYS[1]  job hash (outbox:{acct:A}:job:ID)
-- ARGV     owner, redelivered (0/1), expired (0/1), ttl seconds, attempt
-- returns  {verdict, status, provider, provider_message_id, attempt}
local job = KEYS[1]
local owner, redelivered, expired = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
local ttl, attempt = tonumber(ARGV[4]), ARGV[5]

local st = redis.call('HGET', job, 'st')
if st and st ~= 'R' then
  if st ~= 'S' then
    local f = redis.call('HMGET', job, 'p', 'pm', 'a')
    return {'done', st, f[1] or '', f[2] or '', f[3] or '0'}
  end
  if not redelivered then
    -- held by a live delivery: this one is a duplicate publish of the same id
    return {'duplicate', st, '', '', redis.call('HGET', job, 'a') or '0'}
  end
end
if expired then
  redis.call('HSET', job, 'st', 'expired', 'a', attempt)
  redis.call('EXPIRE', job, ttl)
  return {'expired', 'expired', '', '', attempt}
end
redis.call('HSET', job, 'st', 'S', 'o', owner, 'a', attempt)
redis.call('EXPIRE', job, ttl)
return {'send', '', '', '', attempt}
