// The bfo-alive monitoring mixin: prometheusRules (recording), prometheusAlerts and
// grafanaDashboards, all from _config (config.libsonnet).
(import 'config.libsonnet') +
(import 'rules.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboards.libsonnet')
