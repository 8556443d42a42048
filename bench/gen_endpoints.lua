-- Writes N synthetic endpoints as NDJSON and the same rows as CSV (bench/import.sh).
--   herald bench/gen_endpoints.lua N OUT.ndjson OUT.csv
local n, json_path, csv_path = tonumber(arg[1]), arg[2], arg[3]
assert(n and json_path and csv_path, 'usage: gen_endpoints.lua N OUT.ndjson OUT.csv')
local zones = { 'Europe/Paris', 'America/New_York', 'Asia/Tokyo', 'Europe/Berlin', 'UTC',
  'America/Los_Angeles', 'Australia/Sydney', 'Africa/Lagos' }
local countries = { 'FR', 'US', 'JP', 'DE', 'GB', 'US', 'AU', 'NG' }
local interests = { 'sports', 'music', 'travel', 'food', 'books', 'tech' }
local plans = { 'free', 'pro', 'team' }
local fj = assert(io.open(json_path, 'w'))
local fc = assert(io.open(csv_path, 'w'))
fc:write('Id,ChannelType,Address,User.UserId,Attributes.Interests,Attributes.Plan,Metrics.score,',
  'Demographic.Timezone,Location.Country\n')
local fmt_json = '{"Id":"ep-%d","ChannelType":"EMAIL","Address":"user%d@example.com",' ..
  '"User":{"UserId":"user-%d"},"Attributes":{"Interests":["%s"],"Plan":["%s"]},' ..
  '"Metrics":{"score":%d.5},"Demographic":{"Timezone":"%s"},"Location":{"Country":"%s"}}\n'
local fmt_csv = 'ep-%d,EMAIL,user%d@example.com,user-%d,%s,%s,%d.5,%s,%s\n'
local jbuf, cbuf = {}, {}
for i = 1, n do
  local z = i % #zones + 1
  local it, pl, score = interests[i % #interests + 1], plans[i % #plans + 1], i % 1000
  jbuf[#jbuf + 1] = fmt_json:format(i, i, i, it, pl, score, zones[z], countries[z])
  cbuf[#cbuf + 1] = fmt_csv:format(i, i, i, it, pl, score, zones[z], countries[z])
  if #jbuf == 10000 then
    fj:write(table.concat(jbuf)); fc:write(table.concat(cbuf))
    jbuf, cbuf = {}, {}
  end
end
fj:write(table.concat(jbuf)); fc:write(table.concat(cbuf))
fj:close(); fc:close()
