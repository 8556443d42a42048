-- Template rendering throughput: a typical 2 KB email template with 12 variables against a
-- 1 KB endpoint (about 1,020 bytes as JSON). Run with the release build:
--   build/bin/herald bench/template.lua [renders]
local template = require('herald').template
local clock = os.clock

local n = tonumber(arg and arg[1]) or 200000

local endpoint = {
  Id = 'ep-000123', Address = 'jane.doe@example.com', ChannelType = 'EMAIL', OptOut = 'NONE',
  EffectiveDate = '2026-11-01T10:00:00.000Z', CreationDate = '2026-01-15T08:30:00.000Z',
  User = { UserId = 'user-42', UserAttributes = {
    FirstName = { 'Jane' }, LastName = { 'Doe' }, ['Last Name'] = { 'Doe' },
    Interests = { 'hiking', 'cooking', 'jazz' } } },
  Attributes = { plan = { 'gold' }, city = { 'Lisbon' }, referral = { 'spring-campaign' },
                 tags = { 'vip', 'early', 'newsletter' }, last_order = { '2026-10-30T12:00:00Z' },
                 categories = { 'books', 'music', 'outdoor', 'kitchen', 'garden' },
                 company = { 'Example Trading Company Ltd' }, segment = { 'returning-high-value' } },
  Metrics = { visits = 17, spend = 1234.5, points = 880 },
  Demographic = { Platform = 'ios', PlatformVersion = '17.1', Locale = 'en_US',
                  Timezone = 'Europe/Lisbon', AppVersion = '3.2.1', Make = 'Apple',
                  Model = 'iPhone', ModelVersion = '15,2' },
  Location = { City = 'Lisbon', Country = 'PT', PostalCode = '1100-148', Region = 'Lisboa' },
}

local filler = ('<p style="margin:0 0 12px 0;font-family:Helvetica,Arial,sans-serif">'
  .. 'Thank you for being with us. Here is what is new this month in your account.</p>\n'):rep(12)
local text = table.concat({
  '<html><body><h1>Hello {{User.UserAttributes.FirstName.[0]}} {{User.UserAttributes.[Last Name].[0]}}</h1>',
  filler,
  '<p>Your plan: {{Attributes.plan.[0]}} in {{Location.City}}, {{Location.Country}}.</p>',
  '<p>Visits: {{Metrics.visits}}, points: {{Metrics.points}}.</p>',
  '<p>Reach you at {{Address}} ({{Demographic.Platform}} {{Demographic.AppVersion}}).</p>',
  '<p>Referred by {{Attributes.referral.[0]}}; endpoint {{Id}}.</p>',
  '</body></html>',
}, '\n')

local t = assert(template.compile(text, { name = 'bench' }))
local ctx = assert(template.context(endpoint))
local out = assert(t:render(ctx))

local function measure(label, f)
  local t0 = clock()
  for _ = 1, n do f() end
  local dt = clock() - t0
  print(string.format('%-44s %9.0f renders/s  (%.2f us each)', label, n / dt, dt / n * 1e6))
end

print(string.format('template %d bytes, endpoint context prepared once, output %d bytes, %d renders',
  #text, #out, n))
measure('render, prepared context', function() t:render(ctx) end)
measure('render, endpoint table converted each time', function() t:render(endpoint) end)
