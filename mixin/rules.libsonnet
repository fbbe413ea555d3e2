// Recording rules: what the alerts and your own panels build on.
local lib = import 'lib.libsonnet';

{
  prometheusRules+:: {
    local c = $._config,
    local d(x) = lib.dur(c, x),
    local last(m) = lib.last(c, m),
    local inst = lib.by(c.instanceLabels),
    local dues = lib.by(c.instanceLabels + ['dueslag']),
    local slo = lib.by(c.sloLabels),
    local sloWindows = std.set([p.long for p in c.slo.pairs] + [p.short for p in c.slo.pairs if p.short != '5m'] + [c.slo.period], lib.seconds),
    local longWindows = std.set([p.long for p in c.slo.pairs], lib.seconds),
    local ratio(window) = |||
      sum without (result) (rate(bfo_alive_probes_total{result="success"}[%(w)s]))
      /
      sum without (result) (rate(bfo_alive_probes_total[%(w)s]))
    ||| % { w: d(window) },

    groups+: [
      {
        name: 'bfo-alive.rules',
        rules: [
          {
            // Seconds since the last successful round trip of each dueslag; without a
            // success since its loop (re)started (at start, or a reload that added or
            // changed it), seconds since that start. Falls back to the process start, then
            // to the raw timestamp (0 = never), for exporters that do not report the start.
            record: 'dueslag:bfo_alive_last_success_timestamp_seconds:age',
            expr: |||
              time() - (
                  (%(s)s >= on (%(d)s) group_left () %(started)s)
                or on (%(d)s)
                  (0 * %(s)s + on (%(d)s) group_left () %(started)s)
                or on (%(d)s)
                  (%(s)s >= on (%(i)s) group_left () %(process)s)
                or on (%(d)s)
                  (0 * %(s)s + on (%(i)s) group_left () %(process)s)
                or
                  %(s)s
              )
            ||| % {
              s: last('bfo_alive_last_success_timestamp_seconds'),
              started: last('bfo_alive_dueslag_started_timestamp_seconds'),
              process: last('process_start_time_seconds'),
              d: dues,
              i: inst,
            },
          },
          {
            // One probe cycle of a dueslag: its interval plus its timeout, the longest a
            // healthy dueslag waits for a success. The no-success threshold is a multiple
            // of it, so a dueslag probed every 15 minutes is judged by its own pace.
            record: 'dueslag:bfo_alive_probe_cycle_seconds',
            expr: |||
              %(interval)s + %(timeout)s
              or on (%(d)s)
              0 * max without (mode) (%(s)s) + %(default)s
            ||| % {
              interval: last('bfo_alive_probe_interval_seconds'),
              timeout: last('bfo_alive_probe_timeout_seconds'),
              s: last('bfo_alive_last_success_timestamp_seconds'),
              d: dues,
              default: lib.num((lib.seconds(c.noSuccess.defaultInterval) + lib.seconds(c.noSuccess.defaultTimeout)) / c.timeCompression),
            },
          },
          // Share of finished probes that succeeded (success / all results), per exporter.
          { record: 'dueslag:bfo_alive_probes_success:ratio_rate5m', expr: ratio('5m') },
          { record: 'dueslag:bfo_alive_probes_success:ratio_rate%s' % c.failureRatio.window, expr: ratio(c.failureRatio.window) },
          {
            // Finished probes in the failure-ratio window: its minimum-sample guard.
            record: 'dueslag:bfo_alive_probes:increase%s' % c.failureRatio.window,
            expr: 'sum without (result) (increase(bfo_alive_probes_total[%s]))\n' % d(c.failureRatio.window),
          },
          // The round-trip rules read classic buckets (`_count`, `_bucket`) or, after `or`,
          // a native histogram (the exporter's [exporter] histograms = "native" or "both",
          // scraped by a Prometheus with --enable-feature=native-histograms): either works.
          {
            // Round trips, and those slower than the limit, in the round-trip window.
            record: 'dueslag:bfo_alive_roundtrip:increase%s' % c.roundTrip.window,
            expr: |||
              increase(bfo_alive_roundtrip_duration_seconds_count[%(w)s])
              or
              histogram_count(increase(bfo_alive_roundtrip_duration_seconds[%(w)s]))
            ||| % { w: d(c.roundTrip.window) },
          },
          {
            record: 'dueslag:bfo_alive_roundtrip_slow:increase%s' % c.roundTrip.window,
            // Native: the share above the limit is interpolated within the native bucket
            // the limit falls in (±4.4 %% wide at schema 3).
            expr: |||
              (
                increase(bfo_alive_roundtrip_duration_seconds_count[%(w)s])
                - ignoring (le)
                increase(bfo_alive_roundtrip_duration_seconds_bucket{le=~"%(le)s"}[%(w)s])
              )
              or
              (
                histogram_count(increase(bfo_alive_roundtrip_duration_seconds[%(w)s]))
                * (1 - histogram_fraction(0, %(s)s, increase(bfo_alive_roundtrip_duration_seconds[%(w)s])))
              )
            ||| % {
              w: d(c.roundTrip.window),
              s: std.toString(c.roundTrip.seconds),
              // Text format writes le="30", OpenMetrics le="30.0".
              le: if std.isNumber(c.roundTrip.seconds) && c.roundTrip.seconds == std.floor(c.roundTrip.seconds)
              then '%d(\\\\.0)?' % c.roundTrip.seconds
              else std.strReplace(std.toString(c.roundTrip.seconds), '.', '\\\\.'),
            },
          },
        ] + [
          // Round-trip quantiles over 5 minutes, for panels (NaN while nothing came back).
          {
            record: 'dueslag_quantile:bfo_alive_roundtrip_duration_seconds:histogram_quantile_rate5m',
            expr: |||
              histogram_quantile(%(q)s, rate(bfo_alive_roundtrip_duration_seconds_bucket[%(w)s]))
              or
              histogram_quantile(%(q)s, rate(bfo_alive_roundtrip_duration_seconds[%(w)s]))
            ||| % { q: q, w: d('5m') },
            labels: { quantile: q },
          }
          for q in ['0.5', '0.95', '0.99']
        ] + [
          {
            // Dueslag an exporter probes, and how many of them have had no success for
            // longer than one probe cycle.
            record: 'instance:bfo_alive_dueslag:count',
            expr: 'count without (dueslag, mode) (%s)\n' % last('bfo_alive_probe_success'),
          },
          {
            record: 'instance:bfo_alive_dueslag_failing:count',
            expr: |||
              count without (dueslag, mode) (
                dueslag:bfo_alive_last_success_timestamp_seconds:age
                  > on (%s) group_left ()
                dueslag:bfo_alive_probe_cycle_seconds
              )
            ||| % dues,
          },
        ],
      },
      {
        // The availability SLO, by job and dueslag (sloLabels), not by pod: a restarted or
        // rescheduled pod continues the same budget. Long windows are sums over recorded
        // 5-minute rates, cheap at any window length.
        name: 'bfo-alive-slo.rules',
        interval: d(c.slo.evaluationInterval),
        rules: [
          {
            record: 'job_dueslag:bfo_alive_probes:rate5m',
            expr: 'sum by (%s) (rate(bfo_alive_probes_total[%s]))\n' % [slo, d('5m')],
          },
          {
            record: 'job_dueslag:bfo_alive_probes_failed:rate5m',
            expr: 'sum by (%s) (rate(bfo_alive_probes_total{result!="success"}[%s]))\n' % [slo, d('5m')],
          },
          {
            // Share of finished probes that failed.
            record: 'job_dueslag:bfo_alive_probes_error:ratio_rate5m',
            expr: 'job_dueslag:bfo_alive_probes_failed:rate5m / job_dueslag:bfo_alive_probes:rate5m\n',
          },
        ] + [
          {
            record: 'job_dueslag:bfo_alive_probes_error:ratio_rate%s' % w,
            expr: |||
              sum_over_time(job_dueslag:bfo_alive_probes_failed:rate5m[%(w)s])
              /
              sum_over_time(job_dueslag:bfo_alive_probes:rate5m[%(w)s])
            ||| % { w: d(w) },
          }
          for w in sloWindows
        ] + [
          {
            // Finished probes in a long window (the sample guard of each burn-rate pair):
            // the recorded rates summed over the window, times the evaluation interval.
            record: 'job_dueslag:bfo_alive_probes:increase%s' % w,
            expr: 'sum_over_time(job_dueslag:bfo_alive_probes:rate5m[%s]) * %s\n' % [d(w), lib.secs(c, c.slo.evaluationInterval)],
          }
          for w in longWindows
        ] + [
          {
            // Share of the error budget of the SLO period still unspent: 1 = untouched,
            // 0 = used up, below 0 = overspent.
            record: 'job_dueslag:bfo_alive_error_budget_remaining:ratio_rate%s' % c.slo.period,
            expr: '1 - job_dueslag:bfo_alive_probes_error:ratio_rate%s / (1 - %s)\n' % [c.slo.period, lib.num(c.slo.objective)],
          },
        ],
      },
    ],
  },
}
