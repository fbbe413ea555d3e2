// A Prometheus rule file as YAML in the order people read it (name, interval, rules; record
// or alert, expr, for, keep_firing_for, labels, annotations), with plain scalars where YAML
// allows them and block scalars for multi-line text. std.manifestYamlDoc sorts keys.
local keyOrder = [
  'name', 'interval', 'record', 'alert', 'expr', 'for', 'keep_firing_for', 'labels', 'annotations', 'rules',
  'severity', 'summary', 'description', 'runbook_url',
];
// Values of these keys are identifiers or durations by construction: written plain.
// Other one-line strings are written JSON-quoted (valid YAML, and cheap to decide: jsonnet
// is slow at scanning strings character by character).
local plainKeys = std.set(['name', 'interval', 'record', 'alert', 'for', 'keep_firing_for', 'severity', 'long', 'short']);

local scalar(k, s) = if std.setMember(k, plainKeys) then s else std.manifestJson(s);

// Long prose (descriptions) as a folded block scalar, wrapped at spaces: YAML reads it
// back as the same single line. Only for text that folding keeps intact.
// Whether s contains the character ch (std.findSubstr is slow).
local has(s, ch) = std.length(std.split(s, ch)) > 1;
// Words separated by single spaces, none empty (no leading, trailing or double spaces).
local foldable(s) =
  local words = std.split(s, ' ');
  std.length(s) > 80
  && std.length(words) > 1
  && std.length([w for w in words if w == '']) == 0
  && !has(s, '\t');

// Words, with each Go template action ({{ ... }}) kept whole.
// (The accumulator is [chunks, inside an action?]: jsonnet re-evaluates object fields.)
local chunks(words) =
  local open(w) = std.length(std.split(w, '{')) > std.length(std.split(w, '}'));
  std.foldl(
    function(acc, w)
      local out = acc[0];
      local n = std.length(out);
      if acc[1] then
        local joined = out[n - 1] + ' ' + w;
        [out[:n - 1] + [joined], open(joined)]
      else [out + [w], open(w)],
    words,
    [[], false]
  )[0];

local wrap(words, width) =
  std.foldl(
    function(lines, w)
      local lastLine = lines[std.length(lines) - 1];
      if lastLine == '' then lines[:std.length(lines) - 1] + [w]
      else if std.length(lastLine) + 1 + std.length(w) <= width then lines[:std.length(lines) - 1] + [lastLine + ' ' + w]
      else lines + [w],
    words,
    ['']
  );

local keys(o) =
  [k for k in keyOrder if std.objectHas(o, k)]
  + std.sort([k for k in std.objectFields(o) if std.count(keyOrder, k) == 0]);

local indent(n) = std.repeat(' ', n);

local value(k, v, n) =
  if std.isString(v) && has(v, '\n') then
    local body = if std.endsWith(v, '\n') then std.substr(v, 0, std.length(v) - 1) else v;
    (if std.endsWith(v, '\n') then ' |\n' else ' |-\n')
    + std.join('\n', [if l == '' then '' else indent(n + 2) + l for l in std.split(body, '\n')])
  else if std.isString(v) && foldable(v) then
    ' >-\n' + std.join('\n', [indent(n + 2) + l for l in wrap(chunks(std.split(v, ' ')), 92 - n)])
  else if std.isString(v) then ' ' + scalar(k, v)
  else if std.isNumber(v) || std.isBoolean(v) then ' ' + std.toString(v)
  else if std.isObject(v) then '\n' + object(v, n + 2)
  else if std.isArray(v) then '\n' + array(v, n + 2)
  else error 'cannot write ' + std.type(v),
      object(o, n) = std.join('\n', [indent(n) + k + ':' + value(k, o[k], n) for k in keys(o)]),
      array(a, n) = std.join('\n', [
  local ks = keys(e);
  indent(n) + '- ' + ks[0] + ':' + value(ks[0], e[ks[0]], n + 2)
  + std.join('', ['\n' + indent(n + 2) + k + ':' + value(k, e[k], n + 2) for k in ks[1:]])
  for e in a
]);

{
  // The rule file `{ groups: [...] }` as YAML text, ending with a newline.
  ruleFile(groups):: 'groups:\n' + array(groups, 2) + '\n',
}
