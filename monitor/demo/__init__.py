"""``fedsentinel demo``: the service, Prometheus and Alertmanager on loopback, a faulty federation, the alert, the report."""
