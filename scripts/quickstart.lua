-- herald quickstart: sample endpoints, a segment, and an A/B campaign with a holdout,
-- delivered through the built-in file channel (no server needed).
--
--   build/bin/herald --db quickstart.db run --until-idle scripts/quickstart.lua
--
-- Run it twice: the second run finds the run already materialised and delivered, and sends
-- nothing again.

local first_names = { 'Ada', 'Grace', 'Linus', 'Margaret', 'Dennis', 'Barbara', 'Ken', 'Frances' }
local zones = { 'Europe/Paris', 'America/New_York', 'Asia/Tokyo', 'Europe/Berlin', 'America/Sao_Paulo' }
local countries = { 'FR', 'US', 'JP', 'DE', 'BR' }
local interests = { 'books', 'music', 'travel', 'cooking' }

local N = 200
for i = 1, N do
  local k = (i * 7919) % 1000  -- a fixed spread, so every run creates the same sample
  local ok, err = herald.endpoints.put {
    Id = string.format('ep-%03d', i),
    ChannelType = 'EMAIL',
    Address = string.format('reader%03d@example.com', i),
    OptOut = (i % 25 == 0) and 'ALL' or 'NONE',
    User = {
      UserId = string.format('user-%03d', i),
      UserAttributes = { FirstName = { first_names[i % #first_names + 1] } },
    },
    Attributes = { Interests = { interests[i % #interests + 1], interests[(i + 1) % #interests + 1] } },
    Metrics = { visits = k % 10 },
    Demographic = { Timezone = zones[i % #zones + 1] },
    Location = { Country = countries[i % #countries + 1] },
  }
  if not ok then error('endpoint ' .. i .. ': ' .. err) end
end

-- Readers who care about books and came back at least twice.
local book_lovers = herald.segment {
  name = 'book-lovers',
  filter = function(ep)
    local likes = false
    for _, v in ipairs(ep.Attributes.Interests or {}) do
      if v == 'books' then likes = true end
    end
    return likes and (ep.Metrics.visits or 0) >= 2
  end,
}
print(string.format('%d endpoints stored; segment %s has %d members', N, book_lovers.name,
  book_lovers:count()))

herald.campaign {
  name = 'winter-reading',
  segment = book_lovers,
  holdout = 10,                      -- 10% of the audience gets nothing: the control group
  treatments = {
    { name = 'A: plain', size = 45, message = {
        subject = 'New books for you, {{User.UserAttributes.FirstName}}',
        body = 'Hi {{User.UserAttributes.FirstName}}, our winter list is out.' } },
    { name = 'B: urgent', size = 45, message = {
        subject = '{{User.UserAttributes.FirstName}}, 48 hours of free shipping',
        body = 'Hi {{User.UserAttributes.FirstName}}, free shipping ends on Sunday.' } },
  },
  deliver = { file = 'quickstart-messages.txt' },
}
print('messages go to quickstart-messages.txt')
