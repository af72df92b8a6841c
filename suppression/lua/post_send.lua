-- Post-send record for one job. One round trip.
-- KEYS[1]  job hash
-- ARGV     status ('R' = retry scheduled, else a final status), attempt, provider,
--          provider_message_id, ttl seconds
local job = KEYS[1]
redis.call('HSET', job, 'st', ARGV[1], 'a', ARGV[2], 'p', ARGV[3], 'pm', ARGV[4])
redis.call('HDEL', job, 'o')
redis.call('EXPIRE', job, tonumber(ARGV[5]))
return 1
