-- herald.json: encode/decode (jansson). json.null stands for JSON null; json.array(t) and
-- json.object(t) mark a table's kind (an unmarked empty table encodes as {}). Decoded tables
-- carry those marks, so encode(decode(s)) keeps [] and {} apart.
return require 'herald.core.json'
