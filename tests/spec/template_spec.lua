-- The template engine: Pinpoint's Handlebars subset compiled and rendered in C.
local template = require('herald').template

local endpoint = {
  Id = 'ep-1', Address = 'jane@example.com', ChannelType = 'EMAIL', OptOut = 'NONE',
  EffectiveDate = '2026-11-01T10:00:00.000Z', CreationDate = '2026-01-15T08:30:00.000Z',
  User = { UserId = 'user-42', UserAttributes = {
    FirstName = { 'jane' }, LastName = { 'Doe' }, ['Last Name'] = { 'Smith' },
    Interests = { 'hiking', 'cooking', 'jazz' } } },
  Attributes = { plan = { 'gold' }, age = { '30' }, empty = {}, blank = { '' },
                 html = { '<b>"Tom" & \'Jerry\' `=`</b>' } },
  Metrics = { visits = 17, spend = 12.5, zero = 0 },
  Demographic = { Platform = 'ios', Timezone = 'Europe/Lisbon' },
  Location = { City = 'Lisbon', Country = 'PT' },
}

-- Compiles and renders; a failure comes back as the error text so specs compare one string.
local function R(text, ctx, subs, opts)
  local t, err = template.compile(text, opts or { name = 'spec' })
  if not t then return 'compile error: ' .. err end
  local out, rerr = t:render(ctx == nil and endpoint or ctx, subs)
  if not out then return 'render error: ' .. rerr end
  return out
end

local function compile_error(text, name)
  local t, err = template.compile(text, { name = name or 'welcome(v2)' })
  assert.is_nil(t)
  return err
end

describe('template variables', function()
  it('reads dotted endpoint paths', function()
    assert.are.equal('ep-1 jane@example.com EMAIL NONE user-42 Lisbon ios',
      R('{{Id}} {{Address}} {{ChannelType}} {{OptOut}} {{User.UserId}} {{Location.City}} {{Demographic.Platform}}'))
    assert.are.equal('2026-11-01T10:00:00.000Z 2026-01-15T08:30:00.000Z',
      R('{{EffectiveDate}} {{CreationDate}}'))
  end)

  it('reads list items with .[0] and names with spaces in brackets (Pinpoint examples)', function()
    assert.are.equal('Doe', R('{{User.UserAttributes.LastName.[0]}}'))
    assert.are.equal('Smith', R('{{User.UserAttributes.[Last Name].[0]}}'))
    assert.are.equal('cooking', R('{{User.UserAttributes.Interests.[1]}}'))
    assert.are.equal('jazz', R('{{User.UserAttributes.Interests.2}}'))
    assert.are.equal('', R('{{User.UserAttributes.Interests.[3]}}'))
  end)

  it('renders a list where text is expected joined with "," as Handlebars.js does', function()
    assert.are.equal('hiking,cooking,jazz', R('{{User.UserAttributes.Interests}}'))
    assert.are.equal('gold', R('{{Attributes.plan}}'))
    assert.are.equal('3', R('{{User.UserAttributes.Interests.length}}'))
  end)

  it('renders numbers as JavaScript prints them', function()
    assert.are.equal('17 12.5 0', R('{{Metrics.visits}} {{Metrics.spend}} {{Metrics.zero}}'))
    assert.are.equal('0.30000000000000004', R('{{add 0.1 0.2}}'))
    -- fixed notation from 1e-7 to 1e21 (printf's %g switched at 1e-5 and 1e17), shortest digits
    assert.are.equal('0.00001|100000000000000000000|123456789012345680|1000000000000000|0.000001',
      R('{{a}}|{{b}}|{{c}}|{{multiply 1000000 1000000000}}|{{d}}', { a = 0.00001, b = 1e20, c = 123456789012345678, d = 1e-6 }))
    assert.are.equal('1e-7|1e+21|-1.5e-7|1.7976931348623157e+308|-0.5|0|-12.25|5e-324',
      R('{{a}}|{{b}}|{{c}}|{{d}}|{{e}}|{{f}}|{{g}}|{{h}}',
        { a = 1e-7, b = 1e21, c = -1.5e-7, d = 1.7976931348623157e308, e = -0.5, f = -0.0, g = -12.25, h = 5e-324 }))
    assert.are.equal('1,0.00001,2e+21', R('{{l}}', { l = { 1, 0.00001, 2e21 } }))
  end)

  it('renders a missing value as nothing, at any depth', function()
    assert.are.equal('[][][][]', R('[{{Nope}}][{{Attributes.nope.[0]}}][{{User.UserId.deeper}}][{{Metrics.visits.[0]}}]'))
    assert.are.equal('Hi !', R('Hi {{User.UserAttributes.FirstName.[0]}}!', {}))
    assert.are.equal('x', template.compile('x{{Id}}'):render())
  end)

  it('HTML-escapes {{x}} and leaves {{{x}}} and {{& x}} raw', function()
    assert.are.equal('&lt;b&gt;&quot;Tom&quot; &amp; &#x27;Jerry&#x27; &#x60;&#x3D;&#x60;&lt;/b&gt;',
      R('{{Attributes.html.[0]}}'))
    assert.are.equal('<b>"Tom" & \'Jerry\' `=`</b>', R('{{{Attributes.html.[0]}}}'))
    assert.are.equal('<b>"Tom" & \'Jerry\' `=`</b>', R('{{& Attributes.html.[0]}}'))
    assert.are.equal('<p>&amp;</p>', R('<p>{{"&"}}</p>'))
  end)

  it('does not escape when compiled for plain text', function()
    assert.are.equal('<b>"Tom" & \'Jerry\' `=`</b>',
      R('{{Attributes.html.[0]}}', nil, nil, { name = 'text', escape = false }))
  end)

  it("percent-encodes {{x}} in a URI template (escape 'uri'), keeping its own text and {{{x}}} as written", function()
    local core = require 'herald.core.template'
    local context = core.context
    local t = assert(core.compile('<https://example.com/u?e={{Address}}&n={{User.UserAttributes.[Last Name]}}'
      .. '&k={{Attributes.keep.[0]}}&r={{{Attributes.html.[0]}}}>, <mailto:u@example.com?subject=u-{{lower Id}}'
      .. '{{#each Attributes.list}},{{this}}{{/each}}>', 'spec', 'uri'))
    local ep = context { Id = 'ÉP 1', Address = 'a+b c@x.com', User = { UserAttributes = { ['Last Name'] = { 'Zoë, 100%' } } },
                         Attributes = { keep = { 'Az09-._~' }, html = { '<"#?&>' }, list = { 'a/b', 'c=d' } } }
    -- every byte but A-Z a-z 0-9 - . _ ~ encoded, UTF-8 byte by byte; a helper's output too
    assert.are.equal('<https://example.com/u?e=a%2Bb%20c%40x.com&n=Zo%C3%AB%2C%20100%25&k=Az09-._~&r=<"#?&>>, '
      .. '<mailto:u@example.com?subject=u-%C3%A9p%201,a%2Fb,c%3Dd>', t:render(ep))
    -- missing values render as nothing; errors name the template
    assert.are.equal('<https://example.com/u?e=&n=&k=&r=>, <mailto:u@example.com?subject=u->', t:render())
    local bad, err = core.compile('x{{#if}}', 'profiles.mail.list_unsubscribe', 'uri')
    assert.is_nil(bad)
    assert.are.equal('profiles.mail.list_unsubscribe: line 1, column 5: #if needs one argument', err)
  end)

  it('reads this, ../ and @root', function()
    assert.are.equal('user-42 ep-1 ep-1', R('{{#with User}}{{this.UserId}} {{../Id}} {{@root.Id}}{{/with}}'))
  end)

  it('reads a bracketed name even when it names a helper', function()
    assert.are.equal('a b', R('{{[if]}} {{[upper].x}}', { ['if'] = 'a', upper = { x = 'b' } }))
  end)

  it('treats \\{{ as literal braces', function()
    assert.are.equal('{{Id}} ep-1', R('\\{{Id}} {{Id}}'))
  end)

  it('reads \\\\{{ as a backslash and then a tag, as Handlebars does', function()
    assert.are.equal('\\1|{{x}}|a\\\\1|\\1', R('\\\\{{x}}|\\{{x}}|a\\\\\\{{x}}|\\\\{{~ x}}', { x = 1 }))
  end)

  it('reads a name the #each item or #with object lacks from the scopes around it, as Handlebars.java', function()
    assert.are.equal('hiking for jane; cooking for jane; jazz for jane; ',
      R('{{#each User.UserAttributes.Interests}}{{this}} for {{User.UserAttributes.FirstName.[0]}}; {{/each}}'))
    assert.are.equal('Lisbon / jane / ep-1',
      R('{{#with Location}}{{City}} / {{User.UserAttributes.FirstName.[0]}} / {{[Id]}}{{/with}}'))
    -- the top level includes the substitutions
    assert.are.equal('hiking-Sub;cooking-Sub;',
      R('{{#each L}}{{this}}-{{Name}};{{/each}}', { L = { 'hiking', 'cooking' } }, { Name = { 'Sub' } }))
    -- the nearest scope that has the name wins, the item first
    assert.are.equal('Porto/PT Paris/FR ',
      R('{{#with Location}}{{#each @root.Trips}}{{City}}/{{Country}} {{/each}}{{/with}}',
        { Country = 'US', Location = { City = 'Lisbon', Country = 'PT' },
          Trips = { { City = 'Porto' }, { City = 'Paris', Country = 'FR' } } }))
    -- an empty value is a value; only a missing one is looked for further out
    assert.are.equal('[][x]', R('{{#each L}}[{{Name}}]{{/each}}', { Name = 'x', L = { { Name = '' }, { Other = 1 } } }))
    -- this, ./ and ../ name one scope
    assert.are.equal('[][][]ep-1', R('{{#with Location}}[{{this.Id}}][{{./Id}}][{{../City}}]{{Id}}{{/with}}'))
  end)
end)

describe('template blocks', function()
  it('#if / {{else}} / {{else if}} on truthiness', function()
    assert.are.equal('yes', R('{{#if User.UserId}}yes{{else}}no{{/if}}'))
    assert.are.equal('no', R('{{#if Nope}}yes{{else}}no{{/if}}'))
    assert.are.equal('no no no yes', R('{{#if Attributes.empty}}yes{{else}}no{{/if}} '
      .. '{{#if Attributes.blank.[0]}}yes{{else}}no{{/if}} {{#if Metrics.zero}}yes{{else}}no{{/if}} '
      .. '{{#if Location}}yes{{else}}no{{/if}}'))
    assert.are.equal('b', R('{{#if Nope}}a{{else if Metrics.visits}}b{{else}}c{{/if}}'))
    assert.are.equal('c', R('{{#if Nope}}a{{else if Nope2}}b{{else}}c{{/if}}'))
  end)

  it('#unless', function()
    assert.are.equal('in', R('{{#unless Nope}}in{{else}}out{{/unless}}'))
    assert.are.equal('out', R('{{#unless Id}}in{{else}}out{{/unless}}'))
  end)

  it('#each over a list with this, @index, @first, @last', function()
    assert.are.equal('[0:hiking first][1:cooking][2:jazz last]',
      R('{{#each User.UserAttributes.Interests}}[{{@index}}:{{this}}{{#if @first}} first{{/if}}{{#if @last}} last{{/if}}]{{/each}}'))
  end)

  it('#each over an object gives @key, and {{else}} when empty', function()
    assert.are.equal('City=Lisbon;', R('{{#each Location}}{{@key}}={{this}};{{/each}}', { Location = { City = 'Lisbon' } }))
    -- a Lua table has no order: both entries appear, in either order
    local both = R('{{#each Location}}{{@key}}={{this}};{{/each}}')
    assert.is_true(both == 'City=Lisbon;Country=PT;' or both == 'Country=PT;City=Lisbon;', both)
    assert.are.equal('none', R('{{#each Attributes.empty}}x{{else}}none{{/each}}'))
    assert.are.equal('none', R('{{#each Nope}}x{{else}}none{{/each}}'))
  end)

  it('#each visits at most 15 items, as Pinpoint', function()
    local list = {}
    for i = 1, 40 do list[i] = tostring(i) end
    assert.are.equal('1,2,3,4,5,6,7,8,9,10,11,12,13,14,15!',
      R('{{#each Attributes.n}}{{this}}{{#if @last}}!{{else}},{{/if}}{{/each}}', { Attributes = { n = list } }))
  end)

  it('#with changes the scope and falls to {{else}} when empty', function()
    assert.are.equal('Lisbon/PT', R('{{#with Location}}{{City}}/{{Country}}{{/with}}'))
    assert.are.equal('none', R('{{#with Nope}}x{{else}}none{{/with}}'))
  end)

  it('nests blocks', function()
    assert.are.equal('hiking!cooking.jazz.',
      R('{{#each User.UserAttributes.Interests}}{{#if @first}}{{#with this}}{{.}}!{{/with}}{{else}}{{this}}.{{/if}}{{/each}}'))
  end)

  it('drops comments and honours whitespace control', function()
    assert.are.equal('ab', R('a{{!-- a comment with }} and {{x}} --}}b'))
    assert.are.equal('ab', R('a{{! short }}b'))
    assert.are.equal('[ep-1]', R('[  {{~Id~}}  ]'))
    assert.are.equal('<li>hiking</li><li>cooking</li><li>jazz</li>',
      R('{{#each User.UserAttributes.Interests~}}\n  <li>{{this}}</li>\n{{~/each}}'))
    assert.are.equal('ab', R('a {{~!-- x --~}}   {{"b"}}'))
  end)

  it("drops a block tag's or comment's line when the tag stands alone on it, as Handlebars does", function()
    local vip = { Attributes = { vip = { 'yes' }, items = { 'a', 'b' } } }
    -- the tags' lines go, indentation and line break with them
    assert.are.equal('Hi\nGold\nBye\n', R('Hi\n{{#if Attributes.vip}}\nGold\n{{/if}}\nBye\n', vip))
    assert.are.equal('Hi\nBye\n', R('Hi\n{{#if Attributes.vip}}\nGold\n{{/if}}\nBye\n', {}))
    assert.are.equal('<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>',
      R('<ul>\n  {{#each Attributes.items}}\n  <li>{{this}}</li>\n  {{/each}}\n</ul>', vip))
    assert.are.equal('no\n', R('{{#if Attributes.vip}}\nyes\n{{else}}\nno\n{{/if}}', {}))
    assert.are.equal('two\n', R('{{#if Nope}}\none\n\t{{else if Attributes.vip}} \ntwo\n{{/if}}\n', vip))
    assert.are.equal('Hi\nThere', R('Hi\n  {{! a note }}  \nThere'))
    assert.are.equal('yes\r\n', R('{{#if Attributes.vip}}\r\nyes\r\n{{/if}}\r\n', vip))
    assert.are.equal('a\nb', R('a\n{{#* inline "p"}}\nx\n{{/inline}}\nb'))
    -- a tag with text beside it keeps its line, and so does an output tag or a partial call
    assert.are.equal('x yes\n', R('x {{#if Attributes.vip}}yes{{/if}}\n', vip))
    assert.are.equal('yes z\n', R('{{#if Attributes.vip}}\nyes {{/if}}z\n', vip))
    assert.are.equal('ep-1\n', R('{{Id}}\n'))
    assert.are.equal('x\n\n', R('{{#* inline "p"}}x{{/inline}}{{> p}}\n\n'))
  end)

  it('strips whitespace around a triple-stash written as Handlebars does, {{~{x}~}}', function()
    assert.are.equal('[<b>]|[<b> ]|[ <b>]', R('[ {{~{x}~}} ]|[ {{~{x}}} ]|[ {{{x}~}} ]', { x = '<b>' }))
    assert.are.equal('[<b>]', R('[\n  {{~{ lower x }~}}\n]', { x = '<B>' }))
    -- Handlebars refuses a ~ inside the braces
    assert.are.equal('welcome(v2): line 1, column 6: whitespace control on {{{x}}} is written {{~{x}~}}',
      compile_error('[ {{{~x}}} ]'))
    assert.are.equal('welcome(v2): line 1, column 7: whitespace control on {{{x}}} is written {{~{x}~}}',
      compile_error('[ {{{x~}}} ]'))
    assert.are.equal('welcome(v2): line 1, column 1: unterminated tag: expected }}}', compile_error('{{~{x'))
  end)

  it('takes an {{else if}} chain of any length: a chain is not nesting', function()
    local parts = { '{{#if Nope}}0' }
    for i = 1, 300 do parts[#parts + 1] = '{{else if Attributes.n' .. i .. '}}' .. i end
    parts[#parts + 1] = '{{else}}none{{/if}}'
    local chain = table.concat(parts)
    assert.are.equal('300', R(chain, { Attributes = { n300 = { 'x' } } }))
    assert.are.equal('40', R(chain, { Attributes = { n40 = { 'x' }, n41 = { 'x' } } }))
    assert.are.equal('none', R(chain, {}))
    -- the chain counts as one block inside 31 others
    local deep = ('{{#if Id}}'):rep(31) .. chain .. ('{{/if}}'):rep(31)
    assert.are.equal('7', R(deep, { Id = 'x', Attributes = { n7 = { 'x' } } }))
    -- chained after #each and #with too, sharing the first block's close tag
    assert.are.equal('b', R('{{#each Nope}}a{{else if Id}}b{{else}}c{{/each}}'))
    assert.are.equal('Lisbon', R('{{#with Nope}}a{{else with Location}}{{City}}{{else}}c{{/with}}'))
    assert.are.equal('welcome(v2): line 1, column 31: {{/each}} does not close {{#if}} (opened at line 1, column 1)',
      compile_error('{{#if Nope}}a{{else if Nope}}b{{/each}}'))
  end)
end)

describe('template conditional helpers', function()
  it('eq in #if with a subexpression (Pinpoint example)', function()
    assert.are.equal('Gold member', R('{{#if (eq Attributes.plan.[0] "gold")}}Gold member{{else}}Member{{/if}}'))
    assert.are.equal('Member', R('{{#if (eq Attributes.plan.[0] "silver")}}Gold member{{else}}Member{{/if}}'))
  end)

  it('every comparison as a block', function()
    assert.are.equal('eq neq gt gte lt lte',
      R('{{#eq 1 1}}eq{{/eq}} {{#neq 1 2}}neq{{/neq}} {{#gt 2 1}}gt{{/gt}} {{#gte 2 2}}gte{{/gte}} '
        .. '{{#lt 1 2}}lt{{/lt}} {{#lte 2 2}}lte{{/lte}}'))
    assert.are.equal('no', R('{{#gt 1 2}}yes{{else}}no{{/gt}}'))
  end)

  it('and, or, not as blocks and inline', function()
    assert.are.equal('both', R('{{#and Id Address}}both{{else}}not both{{/and}}'))
    assert.are.equal('not both', R('{{#and Id Nope}}both{{else}}not both{{/and}}'))
    assert.are.equal('one', R('{{#or Nope Id}}one{{else}}none{{/or}}'))
    assert.are.equal('none', R('{{#or Nope Attributes.empty}}one{{else}}none{{/or}}'))
    assert.are.equal('negated', R('{{#not Nope}}negated{{/not}}'))
    assert.are.equal('true false true', R('{{and Id Address}} {{or Nope Metrics.zero}} {{not Nope}}'))
  end)

  it('inline forms return a boolean, or the yes= / no= values', function()
    assert.are.equal('true false', R('{{eq Metrics.visits 17}} {{eq Metrics.visits 18}}'))
    assert.are.equal('y n', R("{{eq Attributes.plan.[0] 'gold' yes='y' no='n'}} {{gt Metrics.visits 20 yes='y' no='n'}}"))
    assert.are.equal('Y', R("{{if Id yes='Y' no='N'}}"))
  end)

  it('compares numbers held as strings numerically and a one-value list as its value', function()
    assert.are.equal('true true true', R('{{gt Attributes.age.[0] 9}} {{eq Attributes.plan "gold"}} {{lt "9" "10"}}'))
    assert.are.equal('true false', R('{{lt "apple" "banana"}} {{eq "a" "A"}}'))
    -- equal strings are equal as text: ids, phone numbers and postal codes are not numbers
    assert.are.equal('false false true true', R('{{eq "007" "7"}} {{eq "+15550101" "15550101"}} {{neq "1.0" "1"}} {{eq "30" 30}}'))
    assert.are.equal('false true', R('{{eq Nope "x"}} {{eq Nope Nope2}}'))
  end)
end)

describe('template string and math helpers', function()
  it('nests helpers (Pinpoint example)', function()
    assert.are.equal('Jane', R('{{capitalizeFirst (lower "JANE")}}'))
    assert.are.equal('JANE DOE', R('{{upper (join User.UserAttributes.FirstName User.UserAttributes.LastName " ")}}'))
  end)

  it('changes case', function()
    assert.are.equal('JANE jane Jane', R('{{upper User.UserAttributes.FirstName}} {{lower "JaNe"}} {{capitalizeFirst User.UserAttributes.FirstName.[0]}}'))
    assert.are.equal('This Is Text|ABc DeF|Abc Def', R('{{capitalize "this is text"}}|{{capitalize "aBc deF"}}|{{capitalize "aBc deF" fully=true}}'))
  end)

  it('pads, centres and abbreviates', function()
    assert.are.equal('########13#########', R('{{center "13" size=19 pad="#"}}'))
    assert.are.equal('13#################', R('{{ljust "13" size=19 pad="#"}}'))
    assert.are.equal('#################13', R('{{rjust "13" size=19 pad="#"}}'))
    assert.are.equal('[ab   ][   ab][  ab  ]', R('[{{ljust "ab" 5}}][{{rjust "ab" 5}}][{{center "ab" 6}}]'))
    assert.are.equal('toolong', R('{{ljust "toolong" 3}}'))
    -- the fill counts characters of the pad, and a pad of several repeats from its start
    assert.are.equal('abééé|——ab——|çéab|abxyzx|xabxy|ab\x80\x80\x80', R('{{ljust "ab" 5 "é"}}|{{center "ab" 6 "—"}}|'
      .. '{{rjust "ab" 4 pad="çé"}}|{{ljust "ab" 6 "xyz"}}|{{center "ab" 5 "xyz"}}|{{{ljust "ab" 5 (decode64 "gA==")}}}'))
    assert.are.equal('Fi...|First Last|Now is the t...', R('{{abbreviate "First Last" 5}}|{{abbreviate "First Last" 10}}|{{abbreviate "Now is the time for all good men" 15}}'))
  end)

  it('cuts, replaces, slugifies, strips tags, takes substrings', function()
    assert.are.equal('MobilePhone|Mob-le Phone', R('{{cut "Mobile Phone" " "}}|{{replace "Mobile Phone" "i" "-"}}'))
    assert.are.equal('joel-is-a-slug', R('{{slugify "  Joel is a Slug!  "}}'))
    assert.are.equal('Mobile Phone', R('{{stripTags "<html><b>Mobile</b> Phone</html>"}}'))
    assert.are.equal('Phone|Mob|', R('{{substring "Mobile Phone" 7}}|{{substring "Mobile Phone" 0 3}}|{{substring "ab" 5}}'))
    assert.are.equal('ção', R('{{substring "Ação" 1}}'))
  end)

  it('joins lists and values', function()
    assert.are.equal('hiking, cooking, jazz', R('{{join User.UserAttributes.Interests ", "}}'))
    assert.are.equal('<b>a // b</b>', R('{{{join "a" "b" " // " prefix="<b>" suffix="</b>"}}}'))
  end)

  it('ordinalizes and encodes', function()
    assert.are.equal('1st 2nd 3rd 4th 11th 12th 13th 21st 102nd 17th x', R('{{ordinalize 1}} {{ordinalize 2}} {{ordinalize 3}} '
      .. '{{ordinalize 4}} {{ordinalize 11}} {{ordinalize "12"}} {{ordinalize 13}} {{ordinalize 21}} {{ordinalize 102}} '
      .. '{{ordinalize Metrics.visits}} {{ordinalize "x"}}'))
    assert.are.equal('amFuZUBleGFtcGxlLmNvbQ== jane@example.com [] TQ== TWE=',
      R('{{{encode64 Address}}} {{decode64 (encode64 Address)}} [{{decode64 "*"}}] {{{encode64 "M"}}} {{{encode64 "Ma"}}}'))
  end)

  it('yesno', function()
    assert.are.equal('yes no maybe', R('{{yesno true}} {{yesno false}} {{yesno Nope}}'))
    assert.are.equal('on off ?', R("{{yesno true yes='on'}} {{yesno Metrics.zero no='off'}} {{yesno Nope maybe='?'}}"))
  end)

  it('does arithmetic on numbers and numeric attributes', function()
    assert.are.equal('19 15 34 8.5 1', R('{{add Metrics.visits 2}} {{subtract Metrics.visits 2}} {{multiply Metrics.visits 2}} {{divide Metrics.visits 2}} {{modulo Metrics.visits 2}}'))
    assert.are.equal('31 2 1 3 -2', R('{{add Attributes.age.[0] 1}} {{ceiling 1.1}} {{floor 1.9}} {{round 2.5}} {{round -2.5}}'))
    assert.are.equal('[][]', R('[{{divide 1 0}}][{{add Nope 1}}]'))
    -- Math.round: floor(a + 0.5) rounded the sum, giving 1 and the even neighbour of an odd integer past 2^52
    assert.are.equal('0|4503599627370497|-9007199254740991|3|-3|0|1',
      R('{{round 0.49999999999999994}}|{{round 4503599627370497}}|{{round -9007199254740991}}|{{round 2.5}}|'
        .. '{{round -2.6}}|{{round -0.4}}|{{round 0.5}}'))
  end)

  it('uses helpers inside blocks and their results in comparisons', function()
    assert.are.equal('big spender', R('{{#if (gt (multiply Metrics.spend 2) 20)}}big spender{{/if}}'))
  end)

  it('changes the case of letters in every script, as Java does, and keeps bytes that are not UTF-8', function()
    assert.are.equal('MÜLLER|ålesund|Élodie|Élodie Dupré|Иван Петров|Élodie Dupré',
      R('{{upper "Müller"}}|{{lower "ÅLESUND"}}|{{capitalizeFirst "élodie"}}|{{capitalize "élodie dupré"}}|'
        .. '{{capitalize "иван петров"}}|{{capitalize "ÉLODIE DUPRÉ" fully=true}}'))
    -- a word may start after any space, here an ideographic one
    assert.are.equal('Élan\u{3000}Über', R('{{capitalize "élan\u{3000}über"}}'))
    -- a character whose other case is longer or shorter in UTF-8 (ı is 2 bytes, I 1; Ⱥ 2, ⱥ 3)
    assert.are.equal('II|ⱥb', R('{{upper "ıi"}}|{{lower "ȺB"}}'))
    -- one character for one: Java's toUpperCase writes SS for ß, towupper keeps ß
    assert.are.equal('STRAßE', R('{{upper "Straße"}}'))
    -- a\x80 é \xff \xc3: the stray and cut-off bytes pass through, the letters change
    assert.are.equal('A\x80\xc3\x89\xff\xc3|X\xc3', R('{{{upper (decode64 "YYDDqf/D")}}}|{{{capitalizeFirst (decode64 "eMM=")}}}'))
  end)

  it('slugify keeps letters and digits of every script', function()
    assert.are.equal('zürich-straße-8|東京-タワー|ålesund', R('{{slugify "Zürich Straße 8"}}|{{slugify "東京\u{3000}タワー"}}|{{slugify " ÅLESUND! "}}'))
  end)
end)

describe('template date, digest and id helpers', function()
  local clock = require 'herald.core.clock'
  -- 2026-11-29T15:04:05.007Z, a Sunday
  local NOW = 1795964645007
  before_each(function() clock.set_manual(NOW) end)
  after_each(function() clock.set_manual(nil) end)

  it('resolves every helper Pinpoint documents', function()
    local names = { 'and', 'eq', 'gt', 'gte', 'if', 'lt', 'lte', 'neq', 'not', 'or', 'abbreviate', 'capitalize',
      'capitalizeFirst', 'center', 'cut', 'dateFormat', 'inflect', 'join', 'ljust', 'lower', 'now', 'ordinalize',
      'replace', 'rjust', 'slugify', 'stripTags', 'substring', 'upper', 'yesno', 'add', 'ceiling', 'decode64',
      'divide', 'encode64', 'floor', 'md5', 'modulo', 'multiply', 'round', 'sha256', 'sha512', 'subtract', 'uuid' }
    for _, name in ipairs(names) do
      local t, err = template.compile('{{' .. name .. ' 1 2 3 4 5 6}}')
      assert.is_nil(err and err:match('unknown helper'), name .. ': ' .. tostring(err))
    end
  end)

  it('now prints the clock in the medium style, or with a Java pattern or a style, in a zone', function()
    assert.are.equal('Nov 29, 2026', R('{{now}}'))
    local iso = [["yyyy-MM-dd'T'HH:mm:ss.SSSXXX"]]
    assert.are.equal('2026-11-29T15:04:05.007Z', R('{{now ' .. iso .. '}}'))
    assert.are.equal('2026-11-29', R('{{now "yyyy-MM-dd"}}'))
    assert.are.equal('Sunday, November 29, 2026 3:04:05.007 PM UTC +0000 Z',
      R('{{now "EEEE, MMMM d, yyyy h:mm:ss.SSS a z Z XXX"}}'))
    assert.are.equal('Sun Nov 29 26 10 10 10 04 5 7 EST -05 -0500 -05:00',
      R('{{now "EEE MMM dd yy HH H hh mm s S z X XX XXX" tz="America/New_York"}}'))
    assert.are.equal('2026-11-29T10:04:05.007-05:00', R('{{now ' .. iso .. ' tz="America/New_York"}}'))
    assert.are.equal('2026-11-29T20:34:05.007+05:30', R('{{now ' .. iso .. ' tz="UTC+05:30"}}'))
    assert.are.equal('Sunday, November 29, 2026|November 29, 2026|Nov 29, 2026|11/29/26',
      R('{{now "full"}}|{{now "long"}}|{{now "medium"}}|{{now "short"}}'))
    assert.are.equal("3 o'clock PM, '26", R([[{{now "h 'o''clock' a, ''yy"}}]], nil, nil, { name = 'q', escape = false }))
    -- the zone from the endpoint; one that is no zone renders nothing
    assert.are.equal('2026-11-29 15:04 WET', R('{{now "yyyy-MM-dd HH:mm z" tz=Demographic.Timezone}}'))
    assert.are.equal('[]', R('[{{now tz=Location.City}}]'))
    assert.are.equal('2026-11-30 00:04', R('{{now "yyyy-MM-dd HH:mm" tz=zone}}', { zone = { 'Asia/Tokyo' } }))
  end)

  it('dateFormat reads ISO 8601, an inputFormat or milliseconds, and renders nothing for what it cannot read', function()
    assert.are.equal('Nov 1, 2026', R('{{dateFormat EffectiveDate}}'))
    assert.are.equal('Sunday, November 1, 2026', R('{{dateFormat EffectiveDate "full"}}'))
    assert.are.equal('Nov 1, 2026 10:00', R('{{dateFormat EffectiveDate outputFormat="MMM d, yyyy HH:mm"}}'))
    -- an instant is shown in the zone; a date without a zone is read in it
    assert.are.equal('2026-11-01 02:00 PST', R('{{dateFormat "2026-11-01T10:00:00Z" "yyyy-MM-dd HH:mm z" tz="America/Los_Angeles"}}'))
    assert.are.equal('2026-11-01 00:00 -07:00', R('{{dateFormat "2026-11-01" "yyyy-MM-dd HH:mm XXX" tz="America/Los_Angeles"}}'))
    assert.are.equal('2026-03-05 09:00 +01:00',
      R('{{dateFormat "2026-03-05T10:00:00+02:00" "yyyy-MM-dd HH:mm XXX" tz="Europe/Paris"}}'))
    assert.are.equal('Mar 5, 2026', R('{{dateFormat "03/05/2026" "medium" inputFormat="MM/dd/yyyy"}}'))
    assert.are.equal('5 Mar 2026', R('{{dateFormat "20260305" "d MMM yyyy" inputFormat="yyyyMMdd"}}'))
    assert.are.equal('2026-03-05 15:07', R('{{dateFormat "5 march 26 3:07 pm" "yyyy-MM-dd HH:mm" inputFormat="d MMMM yy h:mm a"}}'))
    assert.are.equal('2026-03-05 09:00 Z',
      R('{{dateFormat "Thu, 05 Mar 2026 10:00:00 +0100" "yyyy-MM-dd HH:mm XXX" inputFormat="EEE, dd MMM yyyy HH:mm:ss Z"}}'))
    assert.are.equal('1970-01-01', R('{{dateFormat 0 "yyyy-MM-dd"}}'))
    assert.are.equal('July 14', R('{{dateFormat Attributes.birthday "MMMM d"}}', { Attributes = { birthday = { '1990-07-14' } } }))
    assert.are.equal('[][][][]', R('[{{dateFormat "soon"}}][{{dateFormat "2026-02-30"}}][{{dateFormat Nope}}]'
      .. '[{{dateFormat "03/05/2026" inputFormat="yyyy-MM-dd"}}]'))
    -- a field wider than a number holds (found by the template fuzzer: the value overflowed)
    assert.are.equal('[]', R('[{{dateFormat "' .. string.rep('0', 30) .. '1' .. string.rep('0', 24)
      .. 'y" inputFormat="' .. string.rep('S', 55) .. 'y"}}]'))
    assert.are.equal('[2026]', R('[{{dateFormat "0000000000000000012026" "yyyy" inputFormat="SSSSSSSSSSSSSSSSSSyyyy"}}]'))
  end)

  it('refuses a literal date pattern or zone it cannot use, or an unknown argument, when compiling', function()
    assert.are.equal("welcome(v2): line 1, column 7: 'now': unsupported letter 'Y' in date pattern \"YYYY\" "
      .. "(supported: y M d H h m s S a E z Z X, or full, long, medium, short; quote literal text as 'text')",
      compile_error('{{now "YYYY"}}'))
    assert.are.equal([[welcome(v2): line 1, column 48: 'dateFormat': unterminated quote in date pattern "'at"]],
      compile_error([[{{dateFormat x inputFormat="yyyy" outputFormat="'at"}}]]))
    assert.are.equal("welcome(v2): line 1, column 10: 'now': unknown time zone 'Mars/Olympus' (expected a tz database "
      .. 'name like Europe/Paris or a fixed offset like UTC+05:30)', compile_error('{{now tz="Mars/Olympus"}}'))
    assert.are.equal("welcome(v2): line 1, column 16: 'dateFormat': unknown argument format= (known: inputFormat=, "
      .. 'outputFormat=, tz=)', compile_error('{{dateFormat x format="yyyy"}}'))
    assert.are.equal("welcome(v2): line 1, column 3: 'now' takes 0 to 1 arguments, got 2", compile_error('{{now "a" "b"}}'))
  end)

  it('inflect picks the singular for 1 and the plural otherwise, with the count on request', function()
    assert.are.equal('item|items|items|3 items|1 item|2 items',
      R('{{inflect 1 "item" "items"}}|{{inflect 0 "item" "items"}}|{{inflect 0.5 "item" "items"}}|'
        .. '{{inflect 3 "item" "items" true}}|{{inflect Metrics.n "item" "items" true}}|'
        .. '{{inflect Attributes.n singular="item" plural="items" includeCount=true}}',
        { Metrics = { n = 1 }, Attributes = { n = { '2' } } }))
    assert.are.equal('visits|[]', R('{{inflect 17 "visit" "visits" false}}|[{{inflect Nope "a" "b"}}]'))
  end)

  it('md5, sha256 and sha512 print the hex digest of the text', function()
    assert.are.equal('5d41402abc4b2a76b9719d911017c592', R('{{md5 "hello"}}'))
    assert.are.equal('2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824', R('{{sha256 Attributes.w}}',
      { Attributes = { w = { 'hello' } } }))
    assert.are.equal('cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce'
      .. '47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e', R('{{sha512 ""}}'))
    assert.are.equal('d41d8cd98f00b204e9800998ecf8427e', R('{{md5 Nope}}'))
  end)

  it('uuid prints a new random version 4 UUID each time', function()
    local a, b = R('{{uuid}}'), R('{{uuid}}')
    local shape = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
    assert.matches(shape, a)
    assert.matches(shape, b)
    assert.are_not.equal(a, b)
    assert.are.equal(a:lower(), a)
  end)

  it('now and dateFormat print the medium style when given no format, as Pinpoint documents', function()
    assert.are.equal('Nov 29, 2026|Nov 30, 2026|Sep 19, 2020|Nov 1, 2026',
      R('{{now}}|{{now tz="Asia/Tokyo"}}|{{dateFormat User.UserAttributes.StartDate.[0] inputFormat="MM/dd/yyyy"}}|'
        .. '{{dateFormat EffectiveDate}}',
        { User = { UserAttributes = { StartDate = { '09/19/2020' } } }, EffectiveDate = '2026-11-01T10:00:00.000Z' }))
  end)

  it('reads tz= written without quotes as the zone it names (Pinpoint examples), and a variable as a variable', function()
    assert.are.equal('Nov 29, 2026 7:04 AM PST|Sep 18, 2020|00:04|15:04 UTC',
      R('{{now "MMM d, yyyy h:mm a z" tz=America/Los_Angeles}}|{{dateFormat "2020-09-19T03:00:00Z" tz=America/Los_Angeles}}|'
        .. '{{now "HH:mm" tz=Asia/Tokyo}}|{{now "HH:mm z" tz=UTC}}'))
    -- inside a block too, where paths are relative to the item
    assert.are.equal('[-05:00][-05:00]',
      R('{{#each Attributes.list}}[{{now "XXX" tz=America/New_York}}]{{/each}}', { Attributes = { list = { 'a', 'b' } } }))
    -- a variable that has a value wins; an endpoint field is a variable even when it is missing
    assert.are.equal('09:04 CST|15:04 UTC',
      R('{{now "HH:mm z" tz=America/New_York}}|{{now "HH:mm z" tz=Demographic.Timezone}}',
        { America = { New_York = 'America/Chicago' } }))
  end)
end)

describe('template substitutions', function()
  local t = assert(template.compile('{{FirstName}}|{{User.UserAttributes.FirstName.[0]}}|{{Attributes.plan}}',
    { name = 'subs', escape = false }))

  it('reads per-message substitutions as lists or single values', function()
    assert.are.equal('Jo|Ann|silver', t:render(endpoint, {
      FirstName = { 'Jo' }, ['User.UserAttributes.FirstName'] = 'Ann', ['Attributes.plan'] = { 'silver' } }))
  end)

  it('lets message substitutions win over the endpoint, and the endpoint fill the rest', function()
    assert.are.equal('|jane|platinum', t:render(endpoint, { ['Attributes.plan'] = 'platinum' }))
    assert.are.equal('|jane|gold', t:render(endpoint))
  end)

  it('keeps objects from the endpoint when a substitution sets one of their leaves', function()
    local w = assert(template.compile('{{#with User}}{{UserId}}/{{UserAttributes.FirstName}}{{/with}}'))
    assert.are.equal('user-42/jane', w:render(endpoint, { ['User.UserAttributes.FirstName'] = 'Sub' }))
  end)

  it('renders with an empty substitutions table as with none', function()
    assert.are.equal('|jane|gold', t:render(endpoint, {}))
    assert.are.equal('x', template.compile('{{#if Id}}x{{/if}}'):render(endpoint, {}))
  end)

  it('reads false, 0 and "" substitutions as falsy, as the same values on the endpoint', function()
    local f = assert(template.compile('{{#if Flag}}promo{{else}}none{{/if}}|{{#if Count}}n={{Count}}{{else}}zero{{/if}}|'
      .. '{{#if Coupon}}code={{Coupon}}{{else}}nocode{{/if}}', { name = 'falsy' }))
    local values = { Flag = false, Count = 0, Coupon = '' }
    assert.are.equal('none|zero|nocode', f:render(values))
    assert.are.equal('none|zero|nocode', f:render({}, values))
    -- false and 0 are values and win over the endpoint; "" is no value, as on the endpoint
    assert.are.equal('none|zero|code=E', f:render({ Flag = true, Count = 5, Coupon = 'E' }, values))
    -- a list of one value is a list, truthy as in Handlebars, here as on the endpoint
    local lists = { Flag = { false }, Count = { 0 }, Coupon = { '' } }
    assert.are.equal('promo|n=0|code=', f:render(lists))
    assert.are.equal('promo|n=0|code=', f:render({}, lists))
    -- a single value still reads with .[0], also inside #with
    assert.are.equal('0 false', R('{{Count.[0]}} {{Flag.[0]}}', {}, values))
    assert.are.equal('free', R('{{#with Attributes}}{{Plan.[0]}}{{/with}}', {}, { Attributes = { Plan = 'free' } }))
  end)

  -- Pinpoint's Substitutions are a plain map of names to values: a key that is no variable path
  -- (a space in it, a helper's name, "a..b") is a name as it is, reached as {{[name]}} and
  -- otherwise unused, never a failure of the whole message.
  it('takes any substitution key: one that is no path is a name as it is', function()
    local n = assert(template.compile('{{[Last Name]}}|{{[round]}}|{{[if]}}|{{[a..b]}}|{{FirstName}}|{{User.[Last Name]}}',
      { name = 'names', escape = false }))
    assert.are.equal('Lee|r|i|x|Jo|U', n:render(endpoint, { ['Last Name'] = { 'Lee' }, round = { 'r' }, ['if'] = 'i',
      ['a..b'] = 'x', FirstName = { 'Jo' }, ['User.[Last Name]'] = 'U' }))
    -- unused names change nothing
    assert.are.equal('|jane|gold', t:render(endpoint, { ['a..b'] = 'x', ['Last Name'] = 'Lee', now = 'n' }))
  end)
end)

describe('template compile errors', function()
  it('names the template, line and column of an unclosed block', function()
    assert.are.equal('welcome(v2): line 3, column 14: unclosed {{#if}}',
      compile_error('Hello\nthere\nplan is gold {{#if Attributes.plan}}yes'))
    assert.are.equal('welcome(v2): line 1, column 1: unclosed {{#each}}', compile_error('{{#each x}}{{#if y}}{{/if}}'))
  end)

  it('reports mismatched and stray closing tags', function()
    assert.are.equal('welcome(v2): line 1, column 12: {{/each}} does not close {{#if}} (opened at line 1, column 1)',
      compile_error('{{#if x}}a {{/each}}'))
    assert.are.equal('welcome(v2): line 1, column 3: {{/if}} closes no open block', compile_error('a {{/if}}'))
    assert.are.equal('welcome(v2): line 1, column 1: {{else}} outside a block', compile_error('{{else}}'))
    assert.are.equal('welcome(v2): line 1, column 19: a second {{else}} in {{#if}}',
      compile_error('{{#if x}}a{{else}}{{else}}b{{/if}}'))
  end)

  it('reports unknown helpers, with the column counted in characters', function()
    assert.are.equal("welcome(v2): line 2, column 6: unknown helper 'frobnicate'",
      compile_error('Olá\nçé {{frobnicate Id}}'))
    assert.are.equal("welcome(v2): line 1, column 4: unknown helper 'nope'", compile_error('{{(nope 1)}}'))
    assert.are.equal("welcome(v2): line 1, column 4: unknown block helper 'frob'", compile_error('{{#frob x}}{{/frob}}'))
    assert.are.equal("welcome(v2): line 1, column 4: 'upper' is not a block helper (blocks: if, unless, each, with, eq, neq, gt, gte, lt, lte, and, or, not)",
      compile_error('{{#upper x}}{{/upper}}'))
  end)

  it('checks helper arity', function()
    assert.are.equal("welcome(v2): line 1, column 3: 'eq' takes 2 arguments, got 1", compile_error('{{eq Id}}'))
    assert.are.equal("welcome(v2): line 1, column 3: 'substring' takes 2 to 3 arguments, got 4",
      compile_error('{{substring "a" 1 2 3}}'))
    assert.are.equal('welcome(v2): line 1, column 4: #if needs one argument', compile_error('{{#if}}{{/if}}'))
    assert.are.equal('welcome(v2): line 1, column 11: #each takes one argument', compile_error('{{#each a b}}{{/each}}'))
  end)

  it('reports bad syntax', function()
    assert.are.equal('welcome(v2): line 1, column 3: unterminated tag: expected }}', compile_error('a {{Id'))
    assert.are.equal('welcome(v2): line 1, column 3: empty tag', compile_error('{{}}'))
    assert.are.equal("welcome(v2): line 1, column 14: unclosed '[' in a path", compile_error('{{User.Attrs.[Last Name}}'))
    assert.are.equal('welcome(v2): line 1, column 12: unterminated string', compile_error('{{lower Id "abc}}'))
    assert.are.equal("welcome(v2): line 1, column 3: unclosed '('", compile_error('{{(lower Id}}'))
    assert.are.equal('welcome(v2): line 1, column 1: unclosed comment', compile_error('{{!-- no end }}'))
    assert.are.equal('welcome(v2): line 1, column 1: unknown partial \'footer\' (a template defines its partials with {{#* inline "footer"}})',
      compile_error('{{> footer}}'))
    assert.are.equal("welcome(v2): line 1, column 3: unknown data variable '@foo' (known: @index, @first, @last, @key, @root)",
      compile_error('{{@foo}}'))
    assert.are.equal('welcome(v2): line 1, column 14: positional argument after a key=value argument',
      compile_error('{{eq 1 2 x=1 3}}'))
    assert.are.equal("welcome(v2): line 1, column 6: unexpected '}': expected }}}", compile_error('{{{Id}}'))
  end)

  it('check() reports the same errors for herald.campaign', function()
    assert.is_true(template.check('{{#if x}}{{/if}}'))
    local ok, err = template.check('{{#if x}}')
    assert.is_nil(ok)
    assert.are.equal('template: line 1, column 1: unclosed {{#if}}', err)
  end)

  it('reports a tag cut off by the end of the text as unterminated, and shows an unprintable byte', function()
    assert.are.equal('welcome(v2): line 2, column 7: unterminated tag: expected }}', compile_error('Hello\nthere {{'))
    assert.are.equal('welcome(v2): line 1, column 7: unterminated tag: expected }}}', compile_error('Hello {{{'))
    assert.are.equal('welcome(v2): line 1, column 4: unterminated tag: expected }}', compile_error('Hi {{User.'))
    for _, text in ipairs { '{{~', '{{#', '{{/', '{{^', '{{&', '{{>', '{{#*', '{{#* inline "p"', '{{lower x=' } do
      assert.are.equal('welcome(v2): line 1, column 1: unterminated tag: expected }}', compile_error(text), text)
    end
    assert.are.equal('welcome(v2): line 1, column 11: unterminated tag: expected }}', compile_error('{{#if Id}}{{else'))
    assert.are.equal('welcome(v2): line 1, column 4: unexpected byte 0x00 in a path', compile_error('{{a\0}}'))
  end)
end)

describe('template limits on hostile input', function()
  it('refuses blocks nested deeper than 32', function()
    local deep = ('{{#if Id}}'):rep(40) .. 'x' .. ('{{/if}}'):rep(40)
    local err = compile_error(deep, 'deep')
    assert.matches('deep: line 1, column 321: blocks nested deeper than 32', err, 1, true)
    local ok = ('{{#if Id}}'):rep(31) .. 'x' .. ('{{/if}}'):rep(31)
    assert.are.equal('x', R(ok))
  end)

  it('refuses subexpressions nested deeper than 32', function()
    local deep = '{{' .. ('(lower '):rep(40) .. '"x"' .. (')'):rep(40) .. '}}'
    assert.matches('subexpressions nested deeper than 32', compile_error('{{lower ' .. deep:sub(3)), 1, true)
  end)

  it('stops nested #each within the step budget', function()
    local list = {}
    for i = 1, 15 do list[i] = i end
    local text = ('{{#each @root.L}}'):rep(6) .. 'x' .. ('{{/each}}'):rep(6)
    local out, err = template.compile(text, { name = 'bomb' }):render({ L = list })
    assert.is_nil(out)
    assert.matches('^bomb: line %d+, column %d+: rendering took more than 1000000 steps$', err)
  end)

  it('charges helpers for the bytes they read, so big arguments in nested #each end at the step budget', function()
    local l = {}
    for i = 1, 15 do l[i] = i end
    local function nest(depth, body)
      return ('{{#each @root.l}}'):rep(depth) .. body .. ('{{/each}}'):rep(depth)
    end
    local limit = '^render error: spec: line 1, column %d+: rendering took more than 1000000 steps$'
    -- 50,625 digests of 200 KB: 10 GB hashed, 13 s of CPU when a call cost one step
    assert.matches(limit, R(nest(4, '{{#if (eq (md5 "' .. ('a'):rep(200000) .. '") "x")}}y{{/if}}'), { l = l }))
    -- a list of one string is read as the string, and costs as much
    assert.matches(limit, R(nest(2, '{{sha256 big}}'), { l = l, big = { ('a'):rep(4 * 1024 * 1024) } }))
    -- a replace that finds nothing builds nothing, so the memory limit never stopped it
    assert.matches(limit, R(nest(3, '{{#if (eq (replace big "b" "x") "")}}{{/if}}'), { l = l, big = ('a'):rep(1024 * 1024) }))
    -- the same helpers on ordinary text stay well within the budget
    assert.are.equal(('0cc175b9c0f1b6a831c399e269772661'):rep(15 ^ 3),
      R(nest(3, '{{md5 (replace "ab" "b" "")}}'), { l = l }))
  end)

  it('replaces and strips tags in time linear in the text', function()
    -- comparing the target at every position took 1.65 s for this one call
    local a = ('a'):rep(600000)
    assert.are.equal(a, R('{{replace "' .. a .. '" "' .. ('a'):rep(300000) .. 'b" "x"}}'))
    assert.are.equal('bb|ba|axx|aa', R('{{replace "aaaa" "aa" "b"}}|{{replace "aaa" "aa" "b"}}|'
      .. '{{replace "aabab" "ab" "x"}}|{{replace "aa" "aaa" "x"}}'))
    -- looking for a '>' after each '<' made a text of many '<' quadratic
    local lt = ('<'):rep(300000)
    assert.are.equal(lt .. 'x', R('{{{stripTags "' .. lt .. 'x"}}}'))
    assert.are.equal('ac<d', R('{{{stripTags "a<b>c<d"}}}'))
  end)

  it('stops output past 4 MiB', function()
    local big = ('x'):rep(1024 * 1024)
    local out, err = template.compile('{{#each L}}{{{this}}}{{/each}}', { name = 'big' })
      :render({ L = { big, big, big, big, big } })
    assert.is_nil(out)
    assert.are.equal('big: line 1, column 12: output exceeds 4194304 bytes', err)
  end)

  it('stops helpers that would build huge strings', function()
    local out, err = R('{{ljust "x" 100000000}}')
    assert.are.equal('render error: spec: line 1, column 3: helpers built more than 8388608 bytes of text', out)
  end)

  it('names the line and column of the tag that passed a limit while rendering', function()
    assert.are.equal('render error: welcome: line 3, column 5: helpers built more than 8388608 bytes of text',
      R('line one\nline two\n  {{ljust "a" 99999999}}', nil, nil, { name = 'welcome' }))
    assert.are.equal('render error: welcome: line 2, column 20: helpers built more than 8388608 bytes of text',
      R('Olá\n{{#if Id}}{{lower (ljust "a" 99999999 pad="é")}}{{/if}}', nil, nil, { name = 'welcome' }))
    local a = {}
    for i = 1, 15 do a[i] = i end
    local nest = '{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}{{{../../../../big}}}'
      .. '{{/each}}{{/each}}{{/each}}{{/each}}'
    assert.are.equal('render error: welcome: line 3, column 65: output exceeds 4194304 bytes',
      R('line one\nline two\n  ' .. nest, { a = a, big = ('x'):rep(200) }, nil, { name = 'welcome' }))
  end)

  it('holds memory in proportion to the source, however many string literals it has', function()
    -- a 420 KB email whose first part compares 1,000 attributes with a string literal each
    local parts = {}
    for i = 1, 1000 do parts[i] = '<td>{{#eq Attributes.Plan.[0] "gold"}}Gold{{/eq}}</td>\n' end
    parts[#parts + 1] = ('<p style="margin:0;padding:0">static text</p>\n'):rep(8000)
    local src = table.concat(parts)
    local t = assert(template.compile(src, { name = 'big' }))
    -- about 4 times the source (the tree of 1,000 blocks); a copy of the rest of the source
    -- per literal made it 400 MB
    assert.is_true(t:memory() < 10 * #src, t:memory() .. ' bytes for a source of ' .. #src)
    local small = assert(template.compile('{{#eq Attributes.Plan.[0] "gold"}}Gold{{/eq}}'))
    assert.is_true(small:memory() < 16 * 1024, small:memory() .. ' bytes for one tag')
    -- literals keep their escaped quotes
    assert.are.equal([[a"b|c'd|e\\f]], R([[{{{"a\"b"}}}|{{{'c\'d'}}}|{{{"e\\f"}}}]]))
  end)

  it('refuses templates over 1 MiB', function()
    local t, err = template.compile(('x'):rep(1024 * 1024 + 1), { name = 'huge' })
    assert.is_nil(t)
    assert.are.equal('huge: template is 1048577 bytes, more than the 1048576 allowed', err)
  end)

  it('survives arbitrary bytes', function()
    local seed = 12345
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    end
    local alphabet = { '{{', '}}', '{{{', '}}}', '#if', '#each', '/if', '/each', 'else', '(', ')', '"', "'",
      '[', ']', '.', '../', '@index', 'this', 'eq', 'Id', ' ', '~', '!--', '--', '=', 'x', '\0', '\255' }
    local compiled = 0
    for _ = 1, 2000 do
      local parts = {}
      for i = 1, rnd(30) + 1 do parts[i] = alphabet[rnd(#alphabet) + 1] end
      local t, err = template.compile(table.concat(parts), { name = 'fuzz' })
      if t then
        compiled = compiled + 1
        assert.is_string((t:render(endpoint)))
      else
        assert.matches('^fuzz: ', err)
      end
    end
    assert.is_true(compiled > 0)
  end)
end)

describe('template.render for campaign messages', function()
  it('renders plain text unless asked to escape, with the endpoint as a Lua table', function()
    assert.are.equal('Hi jane & <Doe>', template.render('Hi {{User.UserAttributes.FirstName}} & <{{User.UserAttributes.LastName.[0]}}>', endpoint))
    assert.are.equal('&lt;b&gt;', template.render('{{x}}', { x = '<b>' }, { escape = true }))
  end)

  it('returns nil and the error for bad text', function()
    local out, err = template.render('{{#if x}}', endpoint)
    assert.is_nil(out)
    assert.are.equal('template: line 1, column 1: unclosed {{#if}}', err)
  end)

  it('renders several templates against one prepared context', function()
    local ctx = assert(template.context(endpoint))
    local a = assert(template.compile('{{Id}}'))
    local b = assert(template.compile('{{Location.City}}'))
    assert.are.equal('ep-1 Lisbon', a:render(ctx) .. ' ' .. b:render(ctx))
  end)

  it('refuses data it cannot convert', function()
    local out, err = template.compile('{{x}}'):render({ x = print })
    assert.is_nil(out)
    assert.are.equal('cannot use a function as template data', err)
  end)
end)

describe('template inline partials', function()
  it('renders an inline partial with the scope it is called in (Pinpoint example)', function()
    assert.are.equal('Hello jane',
      R('{{#* inline "fullName"}}{{User.UserAttributes.FirstName.[0]}}{{/inline}}Hello {{> fullName}}'))
    -- defined after its use, called for each item
    assert.are.equal('<hiking><cooking><jazz>',
      R('{{#each User.UserAttributes.Interests}}{{> item}}{{/each}}{{#*inline "item"}}<{{this}}>{{/inline}}'))
    -- escapes as the template does; the definition leaves nothing where it stands
    assert.are.equal('[&lt;b&gt;|<b>]', R('{{~#*inline "x"~}}\n {{x}}|{{{x}}}\n{{~/inline~}}\n[{{> x}}]', { x = '<b>' }))
    assert.are.equal('Lisbon-ep-1-ep-1',
      R('{{#*inline "p"}}{{#with Location}}{{City}}-{{../Id}}-{{@root.Id}}{{/with}}{{/inline}}{{> p}}'))
  end)

  it('takes a context argument and key=value arguments', function()
    assert.are.equal('Lisbon, PT', R('{{#*inline "place"}}{{City}}, {{Country}}{{/inline}}{{> place Location}}'))
    assert.are.equal('Olá jane',
      R('{{#*inline "greet"}}{{greeting}} {{User.UserAttributes.FirstName.[0]}}{{/inline}}{{> greet greeting="Olá"}}'))
    assert.are.equal('Lisbon X cooking 3', R('{{#*inline "p"}}{{City}} {{label}} {{list.[1]}} {{list.length}}{{/inline}}'
      .. '{{> p Location label=(upper "x") list=User.UserAttributes.Interests}}'))
    -- what the context lacks is read from the scopes around it
    assert.are.equal('Lisbon/ep-1', R('{{#*inline "p"}}{{City}}/{{Id}}{{/inline}}{{> p Location}}'))
    -- a single substitution value reads with .[0] through an argument too
    assert.are.equal('Sub|Sub', R('{{#*inline "p"}}{{v.[0]}}|{{v}}{{/inline}}{{> p v=Name}}', {}, { Name = 'Sub' }))
    -- partials call partials; a name may be quoted
    assert.are.equal('[ep-1]', R('{{#*inline "a"}}[{{> "b-c"}}]{{/inline}}{{#*inline "b-c"}}{{Id}}{{/inline}}{{> a}}'))
  end)

  it('renders a partial that calls itself until the data ends, and stops one that never ends', function()
    assert.are.equal('a(b(c()))', R('{{#*inline "node"}}{{name}}({{#each ./kids}}{{> node}}{{/each}}){{/inline}}{{> node}}',
      { name = 'a', kids = { { name = 'b', kids = { { name = 'c' } } } } }))
    assert.are.equal("render error: spec: line 1, column 21: partial 'loop' called inside 32 partials (does a partial call itself?)",
      R('{{#*inline "loop"}}x{{> loop}}{{/inline}}{{> loop}}'))
    -- each call fans out: the step budget ends it
    local fan = {}
    for i = 1, 20 do fan[#fan + 1] = ('{{#*inline "p%d"}}{{> p%d}}{{> p%d}}{{/inline}}'):format(i, i + 1, i + 1) end
    fan[#fan + 1] = '{{#*inline "p21"}}x{{/inline}}{{> p1}}'
    assert.matches('^render error: spec: line 1, column %d+: rendering took more than 1000000 steps$', R(table.concat(fan)))
  end)

  it('reports unknown and duplicate partials and what is not supported, with line and column', function()
    assert.are.equal([[welcome(v2): line 2, column 3: unknown partial 'footer' (a template defines its partials with {{#* inline "footer"}})]],
      compile_error('Hi\n  {{> footer}}'))
    assert.are.equal("welcome(v2): line 2, column 1: partial 'a' is already defined at line 1, column 1",
      compile_error('{{#*inline "a"}}x{{/inline}}\n{{#*inline "a"}}y{{/inline}}'))
    assert.are.equal('welcome(v2): line 1, column 1: unclosed {{#* inline "a"}}', compile_error('{{#*inline "a"}}x'))
    assert.are.equal('welcome(v2): line 1, column 18: {{/if}} does not close {{#* inline "a"}} (opened at line 1, column 1)',
      compile_error('{{#*inline "a"}}x{{/if}}'))
    assert.are.equal('welcome(v2): line 1, column 18: {{else}} in {{#* inline "a"}}', compile_error('{{#*inline "a"}}x{{else}}y{{/inline}}'))
    assert.are.equal([[welcome(v2): line 1, column 12: expected the partial's name in quotes: {{#* inline "name"}}]],
      compile_error('{{#*inline a}}x{{/inline}}'))
    assert.are.equal("welcome(v2): line 1, column 16: {{#* inline}} takes only the partial's name",
      compile_error('{{#*inline "a" b}}x{{/inline}}'))
    local decorators = 'decorators are not supported, except inline partials: {{#* inline "name"}}...{{/inline}}'
    assert.are.equal('welcome(v2): line 1, column 1: ' .. decorators, compile_error('{{* log}}'))
    assert.are.equal('welcome(v2): line 1, column 1: ' .. decorators, compile_error('{{#* log "x"}}{{/log}}'))
    assert.are.equal('welcome(v2): line 1, column 1: partial blocks ({{#> name}}) are not supported',
      compile_error('{{#> footer}}x{{/footer}}'))
    assert.are.equal('welcome(v2): line 1, column 5: dynamic partial names ({{> (expr)}}) are not supported',
      compile_error('{{> (lookup)}}'))
    assert.are.equal('welcome(v2): line 1, column 43: a partial takes at most one context argument and key=value arguments, got 2 arguments',
      compile_error('{{#*inline "a"}}{{/inline}}{{> a Location User}}'))
    local ok, err = template.check('{{> nope}}')
    assert.is_nil(ok)
    assert.are.equal([[template: line 1, column 1: unknown partial 'nope' (a template defines its partials with {{#* inline "nope"}})]], err)
  end)

  it('survives arbitrary partial syntax', function()
    local seed = 54321
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed // 65536 % n   -- the high bits: the low ones of this generator repeat quickly
    end
    local alphabet = { '{{#*inline "p"}}', '{{#* inline "q"}}', '{{/inline}}', '{{> p}}', '{{> q Location}}',
      '{{> p x=Id}}', '{{>', '{{#*', '"', 'inline', '{{#if Id}}', '{{else if x}}', '{{else}}', '{{/if}}',
      '{{#each L}}', '{{/each}}', '{{x}}', '{{this}}', '}}', ' ', '\0',
      '{{#*inline "r"}}{{> p}}{{/inline}}', '{{#*inline "p"}}{{> r}}{{/inline}}', '{{#*inline "q"}}{{x}}{{/inline}}' }
    local compiled = 0
    for _ = 1, 2000 do
      local parts = {}
      for i = 1, rnd(8) + 1 do parts[i] = alphabet[rnd(#alphabet) + 1] end
      local t, err = template.compile(table.concat(parts), { name = 'fuzz' })
      if t then
        compiled = compiled + 1
        local out, rerr = t:render({ Id = 'i', L = { 1, 2 }, x = 'y' })
        assert.is_true(type(out) == 'string' or rerr:match('^fuzz: ') ~= nil, rerr)
      else
        assert.matches('^fuzz: ', err)
      end
    end
    assert.is_true(compiled > 50, compiled)
  end)
end)
