-- Cart abandonment: one hour after `cart.add`, unless a `purchase` arrives first.
--
--   herald --db cart.db run scripts/cart_abandonment.lua &      # the scheduler, real time
--   herald --db cart.db -e "herald.events.put('buyer-1', {EventType='cart.add',
--       Timestamp=os.date('!%Y-%m-%dT%H:%M:%SZ'), Attributes={store='web'}, Metrics={total=42}})"
--   herald --db cart.db why cart-reminder buyer-1
--
-- Events reach the trigger from herald.events.put, the PutEvents API and imports alike: the
-- scheduler reads the events table in order and records how far it got together with the
-- messages it made, so an event never fires twice.
for i = 1, 20 do
  assert(herald.endpoints.put {
    Id = 'buyer-' .. i, ChannelType = 'EMAIL', Address = 'buyer' .. i .. '@example.com',
    Attributes = { plan = { i % 2 == 0 and 'member' or 'guest' } },
  })
end

herald.campaign {
  name = 'cart-reminder',
  segment = herald.segment { name = 'buyers' },
  schedule = {
    event = {
      types = { 'cart.add' },
      attributes = { store = { 'web' } },   -- only web carts
      metrics = { total = { '>=', 20 } },   -- worth a reminder
      predicate = function(event, endpoint) return endpoint.Address ~= nil end,
      delay = '1h',
      cancel_on = { 'purchase' },
      expiry = '6h',                        -- an event older than this fires nothing
    },
  },
  limits = { total = 3 },
  message = { subject = 'You left something in your cart', body = 'Your cart is waiting.' },
  deliver = { file = 'cart-messages.txt' },
}
