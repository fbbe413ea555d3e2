// Alerting rules. Each has a severity, summary, description (naming the dueslag or the
// exporter and the value) and runbook_url; alerts/runbook.md has a section per alert.
//
// Three layers, which deploy/alertmanager/alertmanager.yml groups and inhibits by:
//   - causes, per exporter (instance): exporter down, broker connection down, many dueslag
//     failing at once (critical: one page for everything they explain), token renewal
//     failing (a warning: it holds back only the failure-ratio alerts);
//   - symptoms, per dueslag: no success, failure ratio, round trips, lost and duplicate
//     messages, and the SLO burn (per job and dueslag);
//   - set-up and inventory: reloads, certificates, shards, messages that are not Alive.
local lib = import 'lib.libsonnet';

{
  prometheusAlerts+:: {
    local c = $._config,
    local d(x) = lib.dur(c, x),
    local secs(x) = lib.secs(c, x),
    local last(m) = lib.last(c, m),
    local inst = lib.by(c.instanceLabels),
    local dues = lib.by(c.instanceLabels + ['dueslag']),
    local pct(x) = lib.num(x * 100) + '%',
    local num = lib.num,
    local alert(name, severity, o) = {
      alert: name,
      labels: { severity: severity } + std.get(o, 'labels', {}),
      annotations: std.mapWithKey(function(k, v) lib.line(v), o.annotations) { runbook_url: lib.runbook(c, name) },
      expr: o.expr,
    } + (if std.objectHas(o, 'for') then { 'for': d(o['for']) } else {})
      + (if std.objectHas(o, 'keep') then { keep_firing_for: d(o.keep) } else {}),
    local cause(name, o) = alert(name, 'critical', o { keep: c.causeKeepFiringFor }),

    groups+: [
      {
        name: 'bfo-alive',
        rules: [
          alert('BfoAliveNoSuccess', 'critical', {
            expr: |||
              dueslag:bfo_alive_last_success_timestamp_seconds:age
                > on (%(d)s) group_left ()
              (%(k)s * dueslag:bfo_alive_probe_cycle_seconds)
            ||| % { d: dues, k: num(c.noSuccess.multiple) },
            'for': c.noSuccess['for'],
            annotations: {
              summary: 'No Alive message has come back through a dueslag for several probe intervals.',
              description: |||
                Dueslag {{ $labels.dueslag }} ({{ $labels.mode }}) on {{ $labels.instance }} has had
                no successful Alive round trip for {{ $value | humanizeDuration }}{{ with printf
                "last_over_time(bfo_alive_last_success_timestamp_seconds{job=%%q,instance=%%q,dueslag=%%q,mode=%%q}[%(gap)s]) == 0"
                $labels.job $labels.instance $labels.dueslag $labels.mode | query }}{{ if . }}, none
                since its probe loop started{{ end }}{{ end }} (limit %(k)s × (interval + timeout) =
                {{ with printf "%(k)s * dueslag:bfo_alive_probe_cycle_seconds{job=%%q,instance=%%q,dueslag=%%q}"
                $labels.job $labels.instance $labels.dueslag | query }}{{ . | first | value |
                humanizeDuration }}{{ end }}).
              ||| % { k: num(c.noSuccess.multiple), gap: d(c.gapWindow) },
            },
          }),
          alert('BfoAliveProbeFailureRatioHigh', 'warning', {
            expr: |||
              (1 - dueslag:bfo_alive_probes_success:ratio_rate%(w)s) > %(limit)s
              and
              dueslag:bfo_alive_probes:increase%(w)s >= %(min)s
            ||| % { w: c.failureRatio.window, limit: num(c.failureRatio.limit), min: num(c.failureRatio.minProbes) },
            'for': c.failureRatio['for'],
            annotations: {
              summary: 'Many Alive probes of a dueslag fail.',
              description: |||
                {{ $value | humanizePercentage }} of the Alive probes of dueslag {{ $labels.dueslag }}
                ({{ $labels.mode }}) on {{ $labels.instance }} failed over the last %(w)s (limit %(p)s).
              ||| % { w: c.failureRatio.window, p: pct(c.failureRatio.limit) },
            },
          }),
          alert('BfoAliveRoundTripSlow', 'warning', {
            expr: |||
              (
                dueslag:bfo_alive_roundtrip_slow:increase%(w)s
                /
                dueslag:bfo_alive_roundtrip:increase%(w)s
              ) > %(share)s
              and
              dueslag:bfo_alive_roundtrip_slow:increase%(w)s >= %(min)s
            ||| % { w: c.roundTrip.window, share: num(c.roundTrip.share), min: num(c.roundTrip.minSlow) },
            'for': c.roundTrip['for'],
            annotations: {
              summary: 'Alive messages take long to come back through a dueslag.',
              description: |||
                {{ $value | humanizePercentage }} of the Alive round trips of dueslag {{ $labels.dueslag }}
                ({{ $labels.mode }}) on {{ $labels.instance }} took longer than %(t)ss over the last %(w)s
                (limit %(p)s, and at least %(min)s).
              ||| % { t: num(c.roundTrip.seconds), w: c.roundTrip.window, p: pct(c.roundTrip.share), min: num(c.roundTrip.minSlow) },
            },
          }),
          alert('BfoAliveMessagesLost', 'warning', {
            expr: 'increase(bfo_alive_lost_total[%s]) >= %s\n' % [d(c.messageEvents.window), num(c.messageEvents.min)],
            annotations: {
              summary: 'Alive messages sent to a dueslag never arrived.',
              description: |||
                {{ $value | printf "%%.0f" }} Alive messages sent to dueslag {{ $labels.dueslag }}
                ({{ $labels.mode }}) on {{ $labels.instance }} in the last %s never arrived.
              ||| % c.messageEvents.window,
            },
          }),
          alert('BfoAliveDuplicateMessages', 'warning', {
            expr: 'increase(bfo_alive_received_total{kind="duplicate"}[%s]) >= %s\n' % [d(c.messageEvents.window), num(c.messageEvents.min)],
            annotations: {
              summary: 'A dueslag delivers Alive messages more than once.',
              description: |||
                Dueslag {{ $labels.dueslag }} ({{ $labels.mode }}) on {{ $labels.instance }} delivered
                {{ $value | printf "%%.0f" }} duplicate Alive messages in the last %s.
              ||| % c.messageEvents.window,
            },
          }),
          alert('BfoAliveUnexpectedMessages', 'warning', {
            expr: 'increase(bfo_alive_received_total{kind="unexpected"}[%s]) > 0\n' % d(c.unexpected.window),
            annotations: {
              summary: 'A dueslag watched by the exporter received messages that are not Alive messages.',
              description: |||
                Dueslag {{ $labels.dueslag }} ({{ $labels.mode }}) on {{ $labels.instance }} received
                {{ $value | printf "%%.0f" }} message(s) in the last %s that are not Alive messages of
                any exporter. They were not taken: check who they belong to.
              ||| % c.unexpected.window,
            },
          }),
          alert('BfoAliveMisrouted', 'warning', {
            expr: 'increase(bfo_alive_received_total{kind="misrouted"}[%s]) > 0\n' % d(c.misrouted.window),
            'for': c.misrouted['for'],
            annotations: {
              summary: 'A dueslag receives the Alive messages of other dueslag; its abonnement does not filter on RelateretObjekt.',
              description: |||
                Dueslag {{ $labels.dueslag }} ({{ $labels.mode }}) on {{ $labels.instance }} received
                {{ $value | printf "%%.0f" }} Alive message(s) in the last %s that the exporter
                addressed to its other dueslag. Its abonnement selects the Alive beskedtype without
                the RelateretObjekt filter; `bfo-alive-exporter setup` prints the filter to add.
              ||| % c.misrouted.window,
            },
          }),
          alert('BfoAliveMessagesHeld', 'warning', {
            expr: '%s > 0\n' % last('bfo_alive_held_messages'),
            'for': c.held['for'],
            annotations: {
              summary: 'Messages that are not Alive messages are held unacknowledged in a pull dueslag.',
              description: |||
                The exporter holds {{ $value | printf "%.0f" }} message(s) that are not Alive messages
                unacknowledged in dueslag {{ $labels.dueslag }} on {{ $labels.instance }}. They stay in
                the dueslag until their owner takes them.
              |||,
            },
          }),
          alert('BfoAliveConsumerPaused', 'warning', {
            expr: '%s == 1\n' % last('bfo_alive_consumer_paused'),
            'for': c.consumerPaused['for'],
            annotations: {
              summary: 'The exporter stopped consuming a pull dueslag that holds too many foreign messages.',
              description: |||
                The exporter stopped consuming dueslag {{ $labels.dueslag }} on {{ $labels.instance }}
                because too many messages that are not Alive messages are held in it; its probes fail
                until they are removed.
              |||,
            },
          }),
        ],
      },
      {
        name: 'bfo-alive-causes',
        rules: [
          alert('BfoAliveExporterDown', 'critical', {
            expr: 'up{%s} == 0\n' % c.jobSelector,
            'for': c.exporterDown['for'],
            annotations: {
              summary: 'Prometheus cannot scrape bfo-alive-exporter.',
              description: |||
                Prometheus has failed to scrape {{ $labels.instance }} (job {{ $labels.job }}) for more
                than %s: none of its dueslag are monitored.
              ||| % c.exporterDown['for'],
            },
          }),
          alert('BfoAliveExporterAbsent', 'critical', {
            expr: 'absent(up{%s})\n' % c.jobSelector,
            'for': c.exporterAbsent['for'],
            annotations: {
              summary: 'Prometheus has no bfo-alive-exporter target.',
              description: |||
                Prometheus has had no target matching {%s} for more than %s: the dueslag are
                not monitored.
              ||| % [c.jobSelector, c.exporterAbsent['for']],
            },
          }),
          alert('BfoAliveExporterRestarting', 'warning', {
            expr: 'changes(process_start_time_seconds{%s}[%s]) > %s\n' % [c.jobSelector, d(c.restarts.window), num(c.restarts.max)],
            annotations: {
              summary: 'bfo-alive-exporter restarts again and again.',
              description: |||
                {{ $labels.instance }} restarted {{ $value | printf "%%.0f" }} times in the last %s.
                Each restart starts the probe loops and their no-success clocks over.
              ||| % c.restarts.window,
            },
          }),
          cause('BfoAliveBrokerConnectionDown', {
            expr: '%s == 0\n' % last('bfo_alive_connection_up'),
            'for': c.connectionDown['for'],
            annotations: {
              summary: 'The exporter has no connection to the Beskedfordeler.',
              description: |||
                The {{ $labels.connection }} connection of {{ $labels.instance }} to the Beskedfordeler
                {{ with $labels.cvr }}for municipality CVR {{ . }} {{ end }}has been down for more
                than %s: every dueslag of that municipality fails, and the dueslag alerts of this
                exporter are held back while this one fires.
              ||| % c.connectionDown['for'],
            },
          }),
          cause('BfoAliveManyDueslagFailing', {
            // Not while the broker connection is down, or was in the last
            // causeKeepFiringFor: BfoAliveBrokerConnectionDown explains it, and keeps
            // firing that long after the connection is back. Were this alert to fire in
            // that time, it would outlive the connection alert by up to a probe interval
            // (its dueslag recover one by one) and page on its own when that resolves.
            expr: |||
              (
                instance:bfo_alive_dueslag_failing:count >= %(min)s
                and
                instance:bfo_alive_dueslag_failing:count >= %(share)s * instance:bfo_alive_dueslag:count
              )
              unless on (%(i)s)
              min_over_time(bfo_alive_connection_up[%(keep)s]) == 0
            ||| % { min: num(c.manyFailing.minCount), share: num(c.manyFailing.share), i: inst, keep: d(c.causeKeepFiringFor) },
            'for': c.manyFailing['for'],
            annotations: {
              summary: 'Many dueslag of one exporter fail at once: the cause is common to them.',
              description: |||
                {{ $value | printf "%%.0f" }} of the {{ with printf "instance:bfo_alive_dueslag:count{job=%%q,instance=%%q}"
                $labels.job $labels.instance | query }}{{ . | first | value | printf "%%.0f" }}{{ end }}
                dueslag on {{ $labels.instance }} have had no success for longer than one interval plus
                timeout (limit: %(p)s of them and at least %(min)s). Suspect what they share: the
                exporter, its broker connection or token, the network or the Beskedfordeler.
              ||| % { p: pct(c.manyFailing.share), min: num(c.manyFailing.minCount) },
            },
          }),
          alert('BfoAliveTokenRenewalFailing', 'warning', {
            expr: 'increase(bfo_alive_token_renewal_failures_total[%s]) > 0\n' % d(c.tokenRenewal.window),
            'for': c.tokenRenewal['for'],
            keep: c.causeKeepFiringFor,
            annotations: {
              summary: 'The exporter keeps failing to renew a Beskedfordeler token.',
              description: |||
                {{ $labels.instance }} has failed to renew its {{ $labels.service }} token{{ with
                $labels.cvr }} for municipality CVR {{ . }}{{ end }} again and again for more than %s
                ({{ $value | printf "%%.0f" }} failures in the last %s).
              ||| % [c.tokenRenewal['for'], c.tokenRenewal.window],
            },
          }),
          alert('BfoAliveTokenExpiringSoon', 'warning', {
            expr: '(%s > 0) - time() < %s\n' % [last('bfo_alive_token_expiry_timestamp_seconds'), secs(c.tokenExpiry.remaining)],
            'for': c.tokenExpiry['for'],
            annotations: {
              summary: 'A Beskedfordeler token is about to expire and has not been renewed.',
              description: |||
                The {{ $labels.service }} token of {{ $labels.instance }}{{ with $labels.cvr }} for
                municipality CVR {{ . }}{{ end }} expires in
                {{ $value | humanizeDuration }} (negative: it has expired) and has not been renewed.
              |||,
            },
          }),
          alert('BfoAliveConfigReloadFailed', 'warning', {
            expr: '%s == 0\n' % last('bfo_alive_config_last_reload_successful'),
            'for': c.configReload['for'],
            annotations: {
              summary: 'bfo-alive-exporter could not reload its configuration.',
              description: |||
                The last configuration reload of {{ $labels.instance }} failed; it still runs the
                previous configuration.
              |||,
            },
          }),
        ] + [
          alert('BfoAliveCertificateExpiring', s.severity, {
            expr: '%s - time() < %s\n' % [last('bfo_alive_certificate_expiry_timestamp_seconds'), secs(s.left)],
            'for': c.certificate['for'],
            annotations: {
              summary: 'A certificate of bfo-alive-exporter expires soon.',
              description: |||
                The {{ $labels.use }} certificate of {{ $labels.instance }} expires in
                {{ $value | humanizeDuration }} (limit %s; negative: it has expired).
              ||| % s.left,
            },
          })
          for s in [
            { severity: 'warning', left: c.certificate.warning },
            { severity: 'critical', left: c.certificate.critical },
          ]
        ],
      },
      {
        name: 'bfo-alive-inventory',
        rules: [
          alert('BfoAliveShardMissing', 'critical', {
            expr: |||
              count by (%(l)s) (group by (%(l)s, shard) (%(info)s))
                < on (%(l)s)
              max by (%(l)s) (%(shards)s)
            ||| % { l: lib.by(c.shardLabels), info: last('bfo_alive_shard_info'), shards: last('bfo_alive_shards') },
            'for': c.shards.missingFor,
            annotations: {
              summary: 'A shard of bfo-alive-exporter runs nowhere: its dueslag are not probed.',
              description: |||
                Job {{ $labels.job }} runs {{ $value | printf "%%.0f" }} of its {{ with printf
                "max(last_over_time(bfo_alive_shards{job=%%q}[%s]))" $labels.job | query }}{{ . | first
                | value | printf "%%.0f" }}{{ end }} shards (--shard=i/n): the dueslag of the missing
                ones are not probed and raise no other alert.
              ||| % d(c.gapWindow),
            },
          }),
          alert('BfoAliveShardDuplicated', 'warning', {
            expr: 'count by (%s, shard, shards) (%s) > 1\n' % [lib.by(c.shardLabels), last('bfo_alive_shard_info')],
            'for': c.shards.duplicatedFor,
            annotations: {
              summary: 'A shard of bfo-alive-exporter runs more than once.',
              description: |||
                Shard {{ $labels.shard }}/{{ $labels.shards }} of job {{ $labels.job }} runs on
                {{ $value | printf "%.0f" }} exporters at once: they consume the same pull dueslag and
                take each other's Alive messages (false timeouts, foreign arrivals).
              |||,
            },
          }),
          alert('BfoAliveDueslagCountDropped', 'warning', {
            expr: |||
              instance:bfo_alive_dueslag:count
                < max_over_time(instance:bfo_alive_dueslag:count[%s])
            ||| % d(c.dueslagDropped.window),
            annotations: {
              summary: 'bfo-alive-exporter probes fewer dueslag than before a reload.',
              description: |||
                {{ $labels.instance }} probes {{ $value | printf "%%.0f" }} dueslag, fewer than the
                {{ with printf "max_over_time(instance:bfo_alive_dueslag:count{job=%%q,instance=%%q}[%s])"
                $labels.job $labels.instance | query }}{{ . | first | value | printf "%%.0f" }}{{ end }}
                it probed in the last %s: a reload removed some. Were they meant to go?
              ||| % [d(c.dueslagDropped.window), c.dueslagDropped.window],
            },
          }),
        ],
      },
      {
        // Availability SLO: `objective` of the finished probes of each dueslag succeed
        // (per job and dueslag, over the SLO period). Multi-window, multi-burn-rate alerts:
        // each pair needs its long and its short window above the burn rate, and at least
        // minProbes finished probes in the long window, so that one failed probe of a few
        // cannot page. The value is the error ratio of the long window.
        name: 'bfo-alive-slo',
        rules: [
          alert('BfoAliveErrorBudgetBurn', p.severity, {
            local threshold = if p.burn == 1 then '(1 - %s)' % num(c.slo.objective) else '(%s * (1 - %s))' % [num(p.burn), num(c.slo.objective)],
            expr: |||
              job_dueslag:bfo_alive_probes_error:ratio_rate%(long)s > %(t)s
              and
              job_dueslag:bfo_alive_probes_error:ratio_rate%(short)s > %(t)s
              and
              job_dueslag:bfo_alive_probes:increase%(long)s >= %(min)s
            ||| % { long: p.long, short: p.short, t: threshold, min: num(c.slo.minProbes) },
            'for': p['for'],
            labels: { long: p.long, short: p.short },
            annotations: {
              summary: 'A dueslag is %s its availability error budget%s.' % (
                if p.burn >= 10 then ['burning', ' very fast']
                else if p.burn > 3 then ['burning', ' fast']
                else if p.burn > 1 then ['burning', '']
                else ['using up', '']
              ),
              description: |||
                {{ $value | humanizePercentage }} of the Alive probes of dueslag {{ $labels.dueslag }}
                (job {{ $labels.job }}) failed over the last %(long)s, %(rate)s the %(budget)s error
                budget of the %(slo)s availability SLO.
              ||| % {
                long: p.long,
                rate: if p.burn == 1 then 'more than' else '%s times' % num(p.burn),
                budget: pct(1 - c.slo.objective),
                slo: pct(c.slo.objective),
              },
            },
          })
          for p in c.slo.pairs
        ],
      },
    ],
  },
}
