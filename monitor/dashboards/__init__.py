"""Grafana dashboards as code (grafana-foundation-sdk builders) and their push to a Grafana.

One module per dashboard (:mod:`overview`, :mod:`client`, :mod:`drift_map`,
:mod:`service`), shared pieces in :mod:`kit`, the alert thresholds the panels
draw in :mod:`alerts`, rendering and checking in :mod:`build`, the upload to
an existing Grafana in :mod:`push`, and the ``fedsentinel dashboards`` /
``fedsentinel grafana`` commands in :mod:`cli`.
"""

import warnings

with warnings.catch_warnings():
    # The SDK nudges towards its v2 dashboard model at import; file provisioning and
    # /api/dashboards/db read the v1 model (schemaVersion 42) these modules build.
    warnings.simplefilter("ignore", DeprecationWarning)
    from monitor.dashboards.kit import DATASOURCE_NAME, DATASOURCE_UID

__all__ = ["DATASOURCE_UID", "DATASOURCE_NAME"]
