-- Pre-send gate for one job: claim it, or say why not. One round trip (with the global
-- suppression read the caller pipelines beside it).
-- KEYS[1]  job hash                 outbox:{acct:A}:job:ID
-- KEYS[2]  account state hash       outbox:{acct:A}:state
-- KEYS[3]  account settings hash    outbox:{acct:A}:cfg
-- KEYS[4]  per-account suppression  outbox:{acct:A}:supp:<channel>:<addr>
-- KEYS[5]  consent record           outbox:{acct:A}:consent:<channel>:<addr>
-- KEYS[6]  notification prefs       outbox:{acct:A}:prefs:<addr>
-- KEYS[7]  token bucket             outbox:{acct:A}:tb:<channel>
-- KEYS[8]  job timeline             outbox:{acct:A}:tl:ID
-- KEYS[9]  recipient's job index    outbox:{acct:A}:hist:<channel>:<addr>
-- KEYS[10] verified sending domains outbox:{acct:A}:senders (domain -> '1' DMARC, '0' none)
-- KEYS[11] frequency cap counter    outbox:{acct:A}:cap:<category>:<channel>:<addr>
-- KEYS[12] daily quota counter      outbox:{acct:A}:quota
-- KEYS[13] topic cap counter        outbox:{acct:A}:tcap:<channel>:<addr>:<topic>
-- ARGV     by name, as suppression/gate.py declares them (PRE_SEND_ARGS; the prelude that reads
--          them into A is generated from that declaration, suppression/script_args.py):
--   owner (one per delivery), redelivered, expired, ttl (seconds), attempt, category,
--   pref_field ('<topic>:<channel>' or ''),
--   recipient: its digest (stored as 'rc' on the claim: a bounce that quotes the job must
--     name this recipient),
--   job_id, history_keep (jobs kept in the recipient's index), timeline_keep (entries kept in
--     a timeline),
--   metadata: the job's metadata as JSON, or '' (stored as 'md' on the claim: provider events
--     about the job carry it in their status events); its first piece when it is longer than
--     a hash keeps compactly; metadata_more: its further pieces, stored as 'md1', 'md2'...
--     (gate.metadata_chunks),
--   timeline_ttl, history_ttl: seconds the timeline list is kept, and the recipient's job
--     index (0: not written),
--   value_max: the longest value a hash keeps in its compact encoding
--     (hash-max-listpack-value),
--   senders: who the job sends as (suppression/senders.py: check_arg), or '' for no check:
--     JSON {f = {{domain, parent...}, ...} (from), r = {...} (reply_to), m = 1 for marketing,
--     s = SMS sender},
--   and the reputation parameters declared for this script (config/reputation.py), read by
--   policy(KEYS[3]) into P: the account's override where it may have one, else the default.
-- A refusal's timeline entry is stored packed as post_send.lua says; and so is the entry a
-- deferred job's hash holds ('et', 'ed') when the job is claimed again.
-- returns  {verdict, status, provider, provider_message_id, attempt, reason, wait_ms}, and for
--          a marketing job that may be sent, the account's sender information after them:
--          business_name, address, contact_email, contact_phone ('' when unset; UEMO s.8),
--          and the consent status ('granted' or ''; consent lifts the DNC register, s.11(2))
--   verdict: send | done | duplicate | expired | rejected | held | suppressed | no_consent |
--            quiet_hours | capped | over_quota | rate_limited | wait; for 'rejected' (a sender
--            the account may not use), 'quiet_hours', 'capped' and 'over_quota' the detail
--            follows; 'wait' (a limit whose mode is wait: the quiet hours, a frequency cap,
--            the daily quota) the detail and the epoch ms it waits until; 'held' (the account is blocked or suspended) writes nothing: the caller
--            holds the job (hold.lua, which checks the state again)
-- Order: claim/done/duplicate, expired, account state, suppression, consent/preferences,
-- quiet hours (parameter quiet_<category>_<channel> 'drop' or 'wait': a job whose recipient's
-- local minute, A.local_offset seconds east of UTC, is in [quiet_start, quiet_end) ends
-- quiet_hours, or waits until quiet_end; the window may wrap midnight), frequency cap
-- (parameter cap_<category>_<channel>: jobs to the recipient within P.cap_period seconds,
-- rolling; 0 or none declared: no cap; over it, per cap_mode, the job ends capped or waits
-- for a place), daily quota (P.daily_quota claims in the day that starts at midnight
-- P.quota_utc_offset seconds east of UTC; 0: none; over it, per quota_mode, over_quota or a
-- wait for the next day), and the rate token last, so a refused job never consumes one; the
-- cap and the quota count a job only when it is claimed (a job claimed again, after a
-- retry, a crash or a wait, counts once).
-- GENERATED arguments
local job = KEYS[1]
local owner, redelivered, expired = A.owner, A.redelivered, A.expired
local ttl, attempt = A.ttl, A.attempt
local category, pref_field = A.category, A.pref_field
local job_id, history_keep, timeline_keep = A.job_id, A.history_keep, A.timeline_keep
local tl_ttl, hist_ttl, value_max = A.timeline_ttl, A.history_ttl, A.value_max

local st = redis.call('HGET', job, 'st')
-- 'held' is not final: a held job published again (or released) is evaluated again;
-- 'W': a scheduled job released when due (suppression/schedule.py), claimed like a new one
if st and st ~= 'R' and st ~= 'held' and st ~= 'W' then
  if st ~= 'S' then
    local f = redis.call('HMGET', job, 'p', 'pm', 'a', 'r')
    return {'done', st, f[1] or '', f[2] or '', f[3] or '0', f[4] or '', 0}
  end
  if not redelivered and redis.call('HGET', job, 'o') ~= owner then
    -- held by another live delivery: this one is a duplicate publish of the same id (the
    -- same owner is this very delivery again: its earlier call ran but the reply was lost)
    return {'duplicate', st, '', '', redis.call('HGET', job, 'a') or '0', '', 0}
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- the recipient's index of the account's jobs (first seen, in microseconds; the newest kept)
if hist_ttl > 0 then
  if redis.call('ZADD', KEYS[9], 'NX', tonumber(t[1]) * 1000000 + tonumber(t[2]), job_id) == 1 then
    redis.call('ZREMRANGEBYRANK', KEYS[9], 0, -history_keep - 1)
  end
  redis.call('EXPIRE', KEYS[9], hist_ttl)
end

-- INCLUDE timeline_push
-- a deferred (or scheduled) job's hash holds that entry: it joins the earlier ones before
-- the hash changes
local function push_held()
  if st == 'R' or st == 'W' then
    local h = redis.call('HMGET', job, 'et', 'r', 'ed', 'p', 'pm', 'a', 'ea')
    if h[1] then
      push({tonumber(h[1]), st == 'W' and 'scheduled' or 'deferred', h[2] or '', h[3] or '',
        h[4] or '', h[5] or '', tonumber(h[7] or h[6]) or 0})
      redis.call('HDEL', job, 'et', 'ed', 'ea')
    end
  end
end

-- A refusal is final: record it so a redelivery answers 'done' without re-evaluating, and
-- add it to the job's timeline.
local function refuse(verdict, status, reason, detail)
  push_held()
  redis.call('HSET', job, 'st', status, 'a', attempt, 'r', reason)
  redis.call('HDEL', job, 'o')
  redis.call('EXPIRE', job, ttl)
  push({now, status, reason, detail or '', '', '', tonumber(attempt) or 0})
  return {verdict, status, '', '', attempt, reason, 0}
end

if expired then
  return refuse('expired', 'expired', 'expired', 'past not_after')
end

local P, cfg = policy(KEYS[3], 'business_name', 'address', 'contact_email', 'contact_phone',
  'sms_senders', 'allow_any_reply_to', 'allow_missing_dmarc', 'topic_caps')

-- Who the job sends as: a domain verified for the account (or a parent of one), an SMS
-- sender configured for it (suppression/senders.py).
local function verified(candidates)
  for _, domain in ipairs(candidates) do
    local flag = redis.call('HGET', KEYS[10], domain)
    if flag then return flag end
  end
  return false
end

local function sender_problem(want)
  if want.s then
    if not string.find(',' .. (cfg[5] or '') .. ',', ',' .. want.s .. ',', 1, true) then
      return 'sender_not_verified', 'from ' .. want.s .. ' is not among the account\'s sms_senders'
    end
    return nil
  end
  if not want.f then return nil end  -- an SMS from Outbox's own sender
  local first = nil
  for i, candidates in ipairs(want.f) do
    local flag = verified(candidates)
    if not flag then
      return 'sender_not_verified', 'from ' .. (candidates[1] or '(no valid domain)') ..
        ' is not a domain verified for the account'
    end
    if i == 1 then first = flag end
  end
  if cfg[6] ~= '1' then
    for _, candidates in ipairs(want.r or {}) do
      if not verified(candidates) then
        return 'sender_not_verified', 'reply_to ' .. (candidates[1] or '(no valid domain)') ..
          ' is not a domain verified for the account'
      end
    end
  end
  if want.m == 1 and first == '0' and cfg[7] ~= '1' then
    return 'dmarc_missing', 'marketing from ' .. want.f[1][1] .. ', which has no DMARC record'
  end
  return nil
end

if A.senders ~= '' then
  local why, detail = sender_problem(cjson.decode(A.senders))
  if why then
    local reply = refuse('rejected', 'rejected', why, detail)
    reply[8] = detail
    return reply
  end
end

local state = redis.call('HGET', KEYS[2], 'state') or 'active'
if state == 'blocked' or state == 'suspended' then
  return {'held', '', '', '', attempt, 'account_' .. state, 0}
end

local entry = redis.call('HGET', KEYS[4], 'reason')
if entry then
  return refuse('suppressed', 'suppressed', entry)
end

local consent = false
if category == 'marketing' then
  consent = redis.call('HGET', KEYS[5], 'status')
  local mode = P.consent_mode
  if consent == 'revoked' or (consent ~= 'granted' and mode ~= 'opt_out') then
    return refuse('no_consent', 'no_consent', consent == 'revoked' and 'revoked' or 'no_consent')
  end
elseif category == 'notification' and pref_field ~= '' then
  if redis.call('HGET', KEYS[6], pref_field) == '0' then
    return refuse('suppressed', 'suppressed', 'preference')
  end
end

-- a limit's refusal carries its detail (reply[8]) for the status event
local function over(verdict, reason, detail)
  local reply = refuse(verdict, verdict, reason, detail)
  reply[8] = detail
  return reply
end

-- A limit whose mode is 'wait': the job waits in the schedule until due_ms (the caller adds
-- it there: suppression/schedule.py, which finds st 'W'), unclaimed and uncounted; the entry
-- it held joins the timeline first, and a crashed holder's claim goes with the old state.
local function wait(reason, detail, due_ms)
  push_held()
  redis.call('HSET', job, 'st', 'W', 'sa', due_ms, 'a', attempt, 'et', now, 'ed', detail)
  redis.call('HDEL', job, 'o')
  redis.call('EXPIRE', job, math.ceil((due_ms - now) / 1000) + ttl)
  return {'wait', 'W', '', '', attempt, reason, due_ms - now, detail, due_ms}
end

local function hhmm(minutes)
  return string.format('%02d:%02d', math.floor(minutes / 60), minutes % 60)
end

-- Quiet hours: the recipient's local minute, from Redis's clock and the offset of the
-- recipient's time zone passed in (A.local_offset, seconds east of UTC). 'drop' ends the
-- job; 'wait' keeps it until the window's end (quiet_end, the recipient's time).
local quiet = P['quiet_' .. category .. '_' .. A.channel]
if quiet == 'drop' or quiet == 'wait' then
  local local_s = (math.floor(now / 1000) + A.local_offset) % 86400
  local m = math.floor(local_s / 60)
  local from, to = P.quiet_start, P.quiet_end
  local inside
  if from <= to then inside = m >= from and m < to else inside = m >= from or m < to end
  if inside then
    local detail = string.format('%s in the recipient\'s time, quiet from %s to %s',
      hhmm(m), hhmm(from), hhmm(to))
    if quiet == 'drop' then return over('quiet_hours', 'quiet_hours', detail) end
    local left = ((to * 60 - local_s) % 86400) * 1000 - now % 1000
    return wait('quiet_hours', detail .. ': waits until ' .. hhmm(to), now + math.max(left, 1))
  end
end

-- Frequency cap and daily quota: read here, counted below once the job is claimed. A job
-- counted once (field 'q': the quota; the cap's set holds the job's id) is not counted again
-- when it is claimed again, after a retry, a crash or a wait.

-- A cap of n jobs in P.cap_period on the counter at KEYS[key]: the refusal (or the wait,
-- per cap_mode) when the job would be over it, else nil. The place frees when the n-th
-- newest leaves the period (older ones leave before it).
local function over_cap(n, key, what)
  if n <= 0 or st == 'R' then return nil end
  redis.call('ZREMRANGEBYSCORE', KEYS[key], '-inf', now - P.cap_period * 1000)
  if redis.call('ZSCORE', KEYS[key], job_id) or redis.call('ZCARD', KEYS[key]) < n then
    return nil
  end
  local detail = string.format('%d %s %s to this recipient in %d s', n, what, A.channel,
    P.cap_period)
  if P.cap_mode ~= 'wait' then return over('capped', 'frequency_cap', detail) end
  local oldest = redis.call('ZREVRANGE', KEYS[key], n - 1, n - 1, 'WITHSCORES')
  return wait('frequency_cap', detail .. ': waits for a place',
    math.max(now + 1, tonumber(oldest[2]) + P.cap_period * 1000 + 1))
end

local cap = tonumber(P['cap_' .. category .. '_' .. A.channel]) or 0
-- the account's cap on the job's topic and channel (cfg topic_caps: 'topic:channel=N,...',
-- canonical: suppression/store.py), counted in KEYS[13]
local tcap = 0
if category ~= 'transactional' and pref_field ~= '' and cfg[8] then
  local list = ',' .. cfg[8] .. ','
  local at = string.find(list, ',' .. pref_field .. '=', 1, true)
  if at then tcap = tonumber(string.match(list, '^%d+', at + #pref_field + 2)) or 0 end
end
local capped = over_cap(cap, 11, category) or
  over_cap(tcap, 13, string.sub(pref_field, 1, -#A.channel - 2))
if capped then return capped end
local day = math.floor((math.floor(now / 1000) + P.quota_utc_offset) / 86400)
local quota = P.daily_quota
-- read only with a quota: without one a job pays no command for it
local counted = quota > 0 and ((st and st ~= 'W') or redis.call('HEXISTS', job, 'q') == 1)
local used = 0
if quota > 0 then
  local q = redis.call('HMGET', KEYS[12], 'day', 'n')
  if tonumber(q[1]) == day then used = tonumber(q[2]) or 0 end
  if used >= quota and not counted then
    local detail = string.format('%d messages a day, all used (day %d)', quota, day)
    -- a receipt that arrives tomorrow is no receipt: transactional jobs never wait
    if P.quota_mode ~= 'wait' or category == 'transactional' then
      return over('over_quota', 'daily_quota', detail)
    end
    return wait('daily_quota', detail .. ': waits for the next day',
      ((day + 1) * 86400 - P.quota_utc_offset) * 1000)
  end
end

-- Token bucket on Redis's clock; a throttled account gets the reduced rate and burst.
local rate, burst = P.rate, P.burst
if state == 'throttled' then
  local factor = P.throttle_factor
  rate = rate * factor
  burst = math.max(1, math.floor(burst * factor))
end
local b = redis.call('HMGET', KEYS[7], 't', 'ts')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
if tokens < 1 then
  -- not claimed, not counted: the caller parks it; a crashed holder's claim is released
  if st == 'S' then
    redis.call('HSET', job, 'st', 'R')
    redis.call('HDEL', job, 'o')
  end
  return {'rate_limited', '', '', '', attempt, 'speeding', math.ceil((1 - tokens) * 1000 / rate)}
end
redis.call('HSET', KEYS[7], 't', tostring(tokens - 1), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[7], math.ceil(burst * 1000 / rate) + 1000)
if cap > 0 and redis.call('ZADD', KEYS[11], 'NX', now, job_id) == 1 then
  redis.call('PEXPIRE', KEYS[11], P.cap_period * 1000)
end
if tcap > 0 and redis.call('ZADD', KEYS[13], 'NX', now, job_id) == 1 then
  redis.call('PEXPIRE', KEYS[13], P.cap_period * 1000)
end
if quota > 0 and not counted then
  redis.call('HSET', job, 'q', 1)
  if used == 0 then
    redis.call('HSET', KEYS[12], 'day', day, 'n', 1)
  else
    redis.call('HINCRBY', KEYS[12], 'n', 1)
  end
  redis.call('EXPIRE', KEYS[12], 2 * 86400)
end

push_held()
redis.call('HSET', job, 'st', 'S', 'o', owner, 'a', attempt, 'rc', A.recipient)
if A.metadata ~= '' then
  redis.call('HSET', job, 'md', A.metadata)
  for i, piece in ipairs(A.metadata_more) do redis.call('HSET', job, 'md' .. i, piece) end
end
redis.call('EXPIRE', job, ttl)
if category == 'marketing' then
  return {'send', '', '', '', attempt, '', 0, cfg[1] or '', cfg[2] or '', cfg[3] or '',
    cfg[4] or '', consent or ''}
end
return {'send', '', '', '', attempt, '', 0}
