-- Reopen a job for a replay from outbox.dead: a job that ended without being handed over
-- ('failed' or 'rejected') loses its final status, so the replayed copy is claimed and sent;
-- any other state is left as it is (a job sent, or being sent, is never sent again).
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- returns  the state found ('' when none); reopened when it was 'failed' or 'rejected'
local st = redis.call('HGET', KEYS[1], 'st')
if st == 'failed' or st == 'rejected' then
  redis.call('HDEL', KEYS[1], 'st', 'o')
end
return st or ''
