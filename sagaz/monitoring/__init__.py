"""What a sagaz deployment monitors, driver-free (``sagaz init`` and the local cluster share it):
the Prometheus scrape configuration, the alert rules and the Grafana dashboards with their
panels' PromQL. Rendered from the templates of ``sagaz/deploy/templates/monitoring``."""
