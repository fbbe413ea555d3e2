// Helpers shared by rules.libsonnet and alerts.libsonnet.
{
  local units = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 },

  // Seconds of a one-unit Prometheus duration ('90s', '5m', '1h', '3d').
  seconds(d)::
    local n = std.length(d);
    local unit = std.substr(d, n - 1, 1);
    assert std.objectHas(units, unit) : 'not a one-unit duration: ' + d;
    std.parseInt(std.substr(d, 0, n - 1)) * units[unit],

  // The shortest exact duration string for whole seconds.
  format(s)::
    if s % 86400 == 0 then '%dd' % (s / 86400)
    else if s % 3600 == 0 then '%dh' % (s / 3600)
    else if s % 60 == 0 then '%dm' % (s / 60)
    else '%ds' % s,

  // A duration as the rules use it: as configured, or divided by timeCompression (tests).
  dur(c, d)::
    if c.timeCompression == 1 then d
    else self.format(std.max(1, std.floor(self.seconds(d) / c.timeCompression))),

  // A duration in seconds, as a number in an expression (divided by timeCompression).
  secs(c, d):: self.num(self.seconds(d) / c.timeCompression),

  // `last_over_time(metric[gapWindow])`: a gauge read across stale markers.
  last(c, metric):: 'last_over_time(%s[%s])' % [metric, self.dur(c, c.gapWindow)],

  // A number as people write it: 0.1, not 0.10000000000000001.
  num(x)::
    local s = std.format('%.10f', x);
    local trimmed = std.rstripChars(std.rstripChars(s, '0'), '.');
    if trimmed == '' || trimmed == '-' then '0' else trimmed,

  // Prose from a ||| block as one line (alert annotations).
  line(text):: std.strReplace(std.rstripChars(text, '\n'), '\n', ' '),

  // Label lists as PromQL wants them.
  by(labels):: std.join(', ', labels),

  // The runbook link of an alert.
  runbook(c, alert):: '%s#%s' % [c.runbookUrl, std.asciiLower(alert)],
}
