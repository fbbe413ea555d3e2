// The Grafana dashboard, as committed (dashboards/bfo-alive.json) for now.
{
  grafanaDashboards+:: {
    'bfo-alive.json': import '../dashboards/bfo-alive.json',
  },
}
