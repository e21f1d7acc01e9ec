-- Feast's write rule for one entity row: write only when the row is newer than the stored one.
-- KEYS[1] entity key; ARGV[1] "_ts:<view>"; ARGV[2] Timestamp proto; ARGV[3] seconds;
-- ARGV[4] nanos; ARGV[5..] feature field / value pairs. Returns 1 when written, 0 when skipped.
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local secs, nanos, i = 0, 0, 1
  while i <= #prev do
    local tag = string.byte(prev, i)
    i = i + 1
    local value, mult = 0, 1
    while true do
      local b = string.byte(prev, i)
      i = i + 1
      value = value + (b % 128) * mult
      mult = mult * 128
      if b < 128 then break end
    end
    if tag == 8 then secs = value elseif tag == 16 then nanos = value end
  end
  local new_secs, new_nanos = tonumber(ARGV[3]), tonumber(ARGV[4])
  if secs > new_secs or (secs == new_secs and nanos >= new_nanos) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 5))
return 1
