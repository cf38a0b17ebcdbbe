"""Shared pieces of the dashboards: the datasource, queries, thresholds, panels and a grid layout.

Every panel and every query names the one Prometheus datasource by its fixed
uid (:data:`DATASOURCE_UID`), the uid that ``dashboards/grafana/provisioning``
and ``fedsentinel grafana push`` give the datasource, so the dashboards work
unchanged in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    heatmap,
    prometheus,
    stat,
    statushistory,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from monitor.dashboards.alerts import AlertThreshold

__all__ = [
    "DATASOURCE_UID", "DATASOURCE_NAME", "DATASOURCE", "Board", "query", "steps", "alert_steps",
    "timeseries_panel", "stat_panel", "table_panel", "heatmap_panel", "status_panel", "bargauge_panel",
    "run_variable", "client_variable", "link", "thresholds_override", "color_override", "encode",
]  # fmt: skip

DATASOURCE_UID = "fedsentinel-prometheus"
DATASOURCE_NAME = "fedsentinel Prometheus"
DATASOURCE = common_model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
TAGS = ["fedsentinel", "federated-learning"]

Panel = Any  # a foundation-sdk panel builder


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False,
          table_format: bool = False) -> prometheus.Dataquery:  # fmt: skip
    """A Prometheus query on the fedsentinel datasource."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if table_format:
        q = q.format(PromQueryFormat.TABLE)
    return q


def steps(*levels: tuple[float, str], base: str = "green") -> dashboard.ThresholdsConfig:
    """Absolute thresholds: ``base`` below the first level, then each ``(value, color)``."""
    items = [model.Threshold(value=None, color=base)]
    items += [model.Threshold(value=float(v), color=c) for v, c in sorted(levels)]
    return dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(items)


def alert_steps(*alerts: AlertThreshold) -> dashboard.ThresholdsConfig:
    """Thresholds at the alert rules' values, orange for warning and red for critical."""
    return steps(*{(a.value, a.color) for a in alerts})


def _targets(panel: Panel, targets: Sequence[prometheus.Dataquery]) -> Panel:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(refs[i]))
    return panel


def _base(panel: Panel, title: str, description: str, targets: Sequence[prometheus.Dataquery],
          unit: str, thresholds: dashboard.ThresholdsConfig | None) -> Panel:  # fmt: skip
    panel = panel.title(title).description(description).datasource(DATASOURCE).unit(unit)
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    return _targets(panel, targets)


def timeseries_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    thresholds: dashboard.ThresholdsConfig | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    decimals: int | None = None,
    stacked: bool = False,
    fill: int = 10,
    legend_right: bool = False,
    overrides: Iterable[tuple[str, list[model.DynamicConfigValue]]] = (),
) -> timeseries.Panel:
    """A time series; thresholds, when given, are drawn as dashed lines (the alert levels)."""
    panel = _base(timeseries.Panel(), title, description, targets, unit, thresholds)
    panel = (
        panel.line_width(1)
        .fill_opacity(fill)
        .span_nulls(True)
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(
                common_model.LegendDisplayMode.TABLE
                if legend_right
                else common_model.LegendDisplayMode.LIST
            )
            .placement(
                common_model.LegendPlacement.RIGHT
                if legend_right
                else common_model.LegendPlacement.BOTTOM
            )
            .calcs(["lastNotNull", "max"] if legend_right else [])
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_model.TooltipDisplayMode.MULTI)
            .sort(common_model.SortOrder.DESCENDING)
        )
    )
    if thresholds is not None:
        panel = panel.thresholds_style(
            common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED)
        )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_model.StackingMode.NORMAL))
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    if decimals is not None:
        panel = panel.decimals(decimals)
    for name, properties in overrides:
        panel = panel.override_by_name(name, properties)
    return panel


def stat_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    thresholds: dashboard.ThresholdsConfig | None = None,
    decimals: int | None = None,
    graph: bool = True,
    color_by_value: bool = True,
) -> stat.Panel:
    """A single value (the latest), with a sparkline by default, coloured by its thresholds."""
    panel = _base(stat.Panel(), title, description, targets, unit, thresholds or steps(base="blue"))
    panel = (
        panel.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(
            common_model.BigValueGraphMode.AREA if graph else common_model.BigValueGraphMode.NONE
        )
        .color_mode(
            common_model.BigValueColorMode.VALUE
            if color_by_value
            else common_model.BigValueColorMode.NONE
        )
        .text_mode(common_model.BigValueTextMode.AUTO)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def bargauge_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    thresholds: dashboard.ThresholdsConfig | None = None,
) -> bargauge.Panel:
    panel = _base(
        bargauge.Panel(), title, description, targets, unit, thresholds or steps(base="blue")
    )
    return (
        panel.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .orientation(common_model.VizOrientation.HORIZONTAL)
        .display_mode(common_model.BarGaugeDisplayMode.GRADIENT)
        .min(0)
    )


def table_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    hide: Sequence[str] = ("Time",),
    rename: dict[str, str] | None = None,
    sort_by: str | None = None,
    overrides: Iterable[tuple[str, list[model.DynamicConfigValue]]] = (),
) -> table.Panel:
    """A table of instant queries joined on their labels (Grafana's merge), one row per series."""
    panel = _base(table.Panel(), title, description, targets, unit, steps(base="text"))
    panel = panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        model.DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": dict.fromkeys(hide, True), "renameByName": rename or {}},
        )
    )
    if sort_by:
        panel = panel.sort_by([common.TableSortByFieldState().display_name(sort_by).desc(True)])
    for name, properties in overrides:
        panel = panel.override_by_name(name, properties)
    return panel


def heatmap_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    scheme: str = "Oranges",
    maximum: float | None = None,
) -> heatmap.Panel:
    """A heatmap of already-computed cells: one row per series (its legend), one column per step."""
    panel = _base(heatmap.Panel(), title, description, targets, unit, None)
    color = (
        heatmap.HeatmapColorOptions()
        .mode(heatmap_model.HeatmapColorMode.SCHEME)
        .scheme(scheme)
        .fill("dark-orange")
    )
    color = (
        color.scale(heatmap_model.HeatmapColorScale.LINEAR)
        .exponent(0.5)
        .steps(64)
        .reverse(False)
        .min(0)
    )
    if maximum is not None:
        color = color.max(maximum)
    return (
        panel.calculate(False)
        .color(color)
        .y_axis(
            heatmap.YAxisConfig().axis_placement(common_model.AxisPlacement.LEFT).reverse(False)
        )
        .cell_gap(1)
        .show_value(common_model.VisibilityMode.NEVER)
        .show_legend()
        .tooltip(
            heatmap.HeatmapTooltip()
            .mode(common_model.TooltipDisplayMode.SINGLE)
            .y_histogram(False)
            .show_color_scale(True)
        )
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common_model.HeatmapCellLayout.UNKNOWN))
    )


def status_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    thresholds: dashboard.ThresholdsConfig | None = None,
    overrides: Iterable[tuple[str, list[model.DynamicConfigValue]]] = (),
) -> statushistory.Panel:
    """A status history: one row per series, one cell per step, coloured by the thresholds."""
    panel = _base(statushistory.Panel(), title, description, targets, unit, thresholds)
    for name, properties in overrides:
        panel = panel.override_by_name(name, properties)
    return (
        panel.show_value(common_model.VisibilityMode.AUTO)
        .row_height(0.9)
        .col_width(0.9)
        .fill_opacity(80)
        .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .legend(common.VizLegendOptions().show_legend(True).display_mode(common_model.LegendDisplayMode.LIST)
                .placement(common_model.LegendPlacement.BOTTOM))
        .tooltip(common.VizTooltipOptions().mode(common_model.TooltipDisplayMode.SINGLE).sort(common_model.SortOrder.NONE))
    )  # fmt: skip


def thresholds_override(name: str, *levels: tuple[float, str], base: str = "green",
                        cell: str | None = None) -> tuple[str, list[model.DynamicConfigValue]]:  # fmt: skip
    """A per-field override of the thresholds (and, for tables, a coloured cell)."""
    config = {"mode": "absolute", "steps": [{"color": base, "value": None}]
              + [{"color": c, "value": float(v)} for v, c in sorted(levels)]}  # fmt: skip
    properties = [model.DynamicConfigValue("thresholds", config)]
    if cell:
        properties.append(model.DynamicConfigValue("custom.cellOptions", {"type": cell}))
    return name, properties


def color_override(name: str, color: str) -> tuple[str, list[model.DynamicConfigValue]]:
    return name, [model.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": color})]


def link(title: str, url: str) -> dashboard.DashboardLink:
    """A data link (field ``links``) or a dashboard link."""
    return (
        dashboard.DashboardLink(title)
        .url(url)
        .target_blank(False)
        .type(model.DashboardLinkType.LINK)
    )


def run_variable(metric: str = "fl_run_round") -> dashboard.QueryVariable:
    """``$run``: the runs Prometheus has seen, newest label values first."""
    return (
        dashboard.QueryVariable("run")
        .label("Run")
        .description("The FL run (the id it was registered with).")
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, run)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .include_all(False)
        .multi(False)
    )


def client_variable() -> dashboard.QueryVariable:
    """``$client``: the run's exported clients (the capped set: top-k by anomaly plus flagged)."""
    return (
        dashboard.QueryVariable("client")
        .label("Client")
        .description(
            "A client with exported series (top-k by anomaly score plus every flagged client)."
        )
        .datasource(DATASOURCE)
        .query('label_values(fl_client_anomaly_score{run="$run"}, client)')
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .include_all(False)
        .multi(False)
    )


class Board:
    """A dashboard laid out on Grafana's 24-column grid, row by row, left to right.

    Positions are explicit (no panel overlaps, ``tests/dashboards`` checks it) and
    panel ids are assigned in order when the dashboard is built.
    """

    WIDTH = 24

    def __init__(self, uid: str, title: str, description: str, *, tags: Sequence[str] = (),
                 refresh: str = "30s", time_from: str = "now-3h") -> None:  # fmt: skip
        self.builder = (
            dashboard.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([*TAGS, *tags])
            .refresh(refresh)
            .time(time_from, "now")
            .timezone("browser")
            .editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .links([
                dashboard.DashboardLink("fedsentinel").type(model.DashboardLinkType.DASHBOARDS)
                .tags(["fedsentinel"]).as_dropdown(True).include_vars(True).keep_time(True)
            ])
        )  # fmt: skip
        self._x = 0
        self._y = 0
        self._line = 0

    def variable(self, variable: dashboard.QueryVariable) -> Board:
        self.builder = self.builder.with_variable(variable)
        return self

    def _newline(self) -> None:
        self._y += self._line
        self._x = 0
        self._line = 0

    def row(self, title: str) -> Board:
        if self._x:
            self._newline()
        self.builder = self.builder.with_row(
            dashboard.Row(title).grid_pos(model.GridPos(h=1, w=self.WIDTH, x=0, y=self._y))
        )
        self._y += 1
        return self

    def add(self, panel: Panel, w: int, h: int = 8) -> Board:
        if self._x + w > self.WIDTH:
            self._newline()
        self.builder = self.builder.with_panel(
            panel.grid_pos(model.GridPos(h=h, w=w, x=self._x, y=self._y))
        )
        self._x += w
        self._line = max(self._line, h)
        return self

    def build(self) -> dict[str, Any]:
        built = self.builder.build()
        for i, panel in enumerate(built.panels or [], start=1):
            panel.id_val = i
        return json.loads(JSONEncoder(sort_keys=True).encode(built))


def encode(board: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, trailing newline."""
    return json.dumps(board, indent=2, sort_keys=True) + "\n"
