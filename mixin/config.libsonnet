// Every threshold, window, `for:` and selector of the bfo-alive rules, in one place.
//
// Change a value here, run mixin/build.sh (it writes alerts/bfo-alive.rules.yml and
// deploy/kubernetes/prometheusrule.yaml), and update the case in alerts/tests/ that pins
// the old default. Or keep this file as is and override in your own jsonnet:
//
//   (import 'bfo-alive-mixin/mixin.libsonnet') + { _config+:: { noSuccess+: { multiple: 6 } } }
//
// Durations are Prometheus durations with one unit ('90s', '5m', '1h', '3d').
{
  _config+:: {
    // Selects the exporter's scrape job. The exporter-down, absent and restart alerts use
    // it; every other rule selects by metric name (bfo_alive_*).
    jobSelector: 'job="bfo-alive"',

    // The labels that tell one exporter process apart. Per-instance rules aggregate
    // `without (dueslag, mode)`, so target labels such as environment or namespace stay.
    instanceLabels: ['job', 'instance'],

    // The labels the SLO is kept by: a dueslag of a job, NOT its pod. Under the Prometheus
    // Operator `instance` is the pod's IP, so a restart would start the 30-day budget
    // over. Add labels that separate your deployments (e.g. 'namespace', 'environment').
    sloLabels: ['job', 'dueslag'],

    // The labels that separate the replica sets of --shard=i/n (one configuration each).
    shardLabels: ['job'],

    // One failed scrape writes stale markers: every instant selector loses its series and
    // a firing alert would resolve, a pending one start its `for:` over. Gauges are read
    // through last_over_time(...[gapWindow]), which skips stale markers, so a gap shorter
    // than this changes nothing. 5m is Prometheus' own look-back for series that just
    // stop being scraped.
    gapWindow: '5m',

    // Cause alerts (broker connection down, token renewal failing, many dueslag failing)
    // keep firing this long after their condition ends, so that the per-dueslag alerts they
    // explain (failure ratio over 15m, the short SLO windows) have cleared while Alertmanager
    // still inhibits them: the end of an outage sends one "resolved", not a second page.
    // Keep it above your longest probe interval plus timeout: a dueslag still waiting for
    // its first success after the outage would otherwise page when the cause resolves.
    // (After outages of more than about 35 minutes the 6h/30m SLO pair can outlive it: the
    // budget really was spent.)
    causeKeepFiringFor: '15m',

    // No successful round trip for longer than `multiple` × (interval + timeout) of the
    // dueslag, counted from its last success, or from when its loop (re)started if none.
    // The exporter reports interval and timeout per dueslag; defaultInterval and
    // defaultTimeout apply to an exporter too old to report them.
    noSuccess: {
      multiple: 4,
      'for': '2m',
      defaultInterval: '30s',
      defaultTimeout: '2m',
    },

    // Many dueslag of one exporter failing at once (no success for longer than one
    // interval + timeout): one cause, one page, instead of one page per dueslag.
    manyFailing: {
      share: 0.5,
      minCount: 3,
      'for': '5m',
    },

    failureRatio: {
      limit: 0.1,
      window: '15m',
      minProbes: 10,
      'for': '15m',
    },

    // Round trips slower than `seconds` (a bucket boundary of the exporter's
    // roundtrip_buckets), as a share of the round trips over `window`: the alert wants more
    // than `share` of them (1% = "p99 above the limit") and at least `minSlow`, so one slow
    // message is not an alert. A window of 1h sees 2 slow ones at intervals up to 30 minutes.
    roundTrip: {
      seconds: 30,
      share: 0.01,
      minSlow: 2,
      window: '1h',
      'for': '15m',
    },

    // Lost and duplicate Alive messages: at least `min` in `window`.
    messageEvents: {
      min: 2,
      window: '1h',
    },
    // Non-Alive messages: any in `window` (each is someone's message held or refused).
    unexpected: {
      window: '30m',
    },
    // Alive messages addressed to another dueslag of the same exporter: an abonnement without
    // the RelateretObjekt filter. Any in `window`, for `for`, so that one stray message (a
    // reload that changed a dueslag's id) leaves the window before the alert can fire.
    misrouted: { window: '15m', 'for': '15m' },
    held: { 'for': '15m' },
    consumerPaused: { 'for': '5m' },

    exporterDown: { 'for': '5m' },
    exporterAbsent: { 'for': '15m' },
    restarts: { max: 2, window: '30m' },
    connectionDown: { 'for': '3m' },
    tokenExpiry: { remaining: '5m', 'for': '1m' },
    tokenRenewal: { window: '10m', 'for': '15m' },
    configReload: { 'for': '5m' },

    // Certificates the exporter holds (broker, sts, push): warning and critical time left.
    certificate: {
      warning: '21d',
      critical: '7d',
      'for': '10m',
    },

    // --shard=i/n: a shard nobody runs (its dueslag are not probed), or one run twice
    // (two consumers take each other's messages). A replaced pod overlaps its successor
    // for up to gapWindow, hence the longer `for:` of duplicates.
    shards: {
      missingFor: '10m',
      duplicatedFor: '15m',
    },

    // The number of dueslag an exporter probes fell below its maximum over `window`: a
    // reload removed some.
    dueslagDropped: { window: '30m' },

    // Availability SLO of each dueslag: `objective` of finished probes succeed over
    // `period`. Multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5); each
    // pair needs both windows above burn × (1 - objective) and `minProbes` in its long
    // window. Long windows are read from 5-minute rates recorded every
    // `evaluationInterval` (sum_over_time), not from the raw counters.
    slo: {
      objective: 0.99,
      period: '30d',
      evaluationInterval: '1m',
      minProbes: 20,
      pairs: [
        { long: '1h', short: '5m', burn: 14.4, 'for': '2m', severity: 'critical' },
        { long: '6h', short: '30m', burn: 6, 'for': '15m', severity: 'critical' },
        { long: '1d', short: '2h', burn: 3, 'for': '1h', severity: 'warning' },
        { long: '3d', short: '6h', burn: 1, 'for': '3h', severity: 'warning' },
      ],
    },

    // Where each alert's runbook_url points (a "## AlertName" section of alerts/runbook.md).
    runbookUrl: 'https://github.com/bfo-alive-exporter/bfo-alive-exporter/blob/main/alerts/runbook.md',

    // Divides every duration by this (windows, for:, keep_firing_for, time thresholds and
    // the SLO's evaluation interval): only for tests that replay an hour of alerting in a
    // few minutes (scripts/ops/storm.sh). Leave it at 1.
    timeCompression: 1,
  },
}
