// Draws the fedsentinel run report from the JSON embedded in the page (no network).
// Every chart marks its element with data-points (finite points drawn) so tests and
// readers can tell an empty chart from a failed one.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const SEV = { critical: "#c62828", warning: "#e08a00", info: "#1e6fd9" };
  const config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  const base = { margin: { l: 60, r: 60, t: 10, b: 45 }, hovermode: "closest",
                 legend: { orientation: "h", y: -0.2 }, font: { size: 12 } };

  function finite(values) {
    return (values || []).filter(function (v) { return typeof v === "number" && isFinite(v); }).length;
  }

  function draw(id, traces, layout, points) {
    const el = document.getElementById(id);
    if (!el) { return; }
    el.dataset.points = String(points);
    if (points === 0) {
      el.innerHTML = '<p class="quiet">No data for this chart.</p>';
      el.style.height = "auto";
      return;
    }
    Plotly.newPlot(el, traces, Object.assign({}, base, layout), config).then(function () {
      el.dataset.drawn = "true";
    });
  }

  function roundAxis(extra) { return Object.assign({ title: { text: "round" }, zeroline: false }, extra || {}); }

  function globalChart() {
    const g = data.global;
    const traces = [
      { x: g.rounds, y: g.accuracy, name: "global accuracy", mode: "lines+markers",
        hovertemplate: "round %{x}<br>accuracy %{y:.3f}<extra></extra>" },
      { x: g.rounds, y: g.loss, name: "global loss", mode: "lines", yaxis: "y2", line: { dash: "dot" },
        hovertemplate: "round %{x}<br>loss %{y:.3f}<extra></extra>" },
    ];
    if (g.centralized_accuracy !== null) {
      traces.push({ x: g.rounds, y: g.rounds.map(function () { return g.centralized_accuracy; }),
        name: "centralized baseline", mode: "lines", line: { dash: "dash", color: "#555" },
        hovertemplate: "centralized baseline %{y:.3f}<extra></extra>" });
    }
    draw("chart-global", traces, { xaxis: roundAxis(), yaxis: { title: { text: "accuracy" }, range: [0, 1.02] },
      yaxis2: { title: { text: "loss" }, overlaying: "y", side: "right", showgrid: false } },
      finite(g.accuracy) + finite(g.loss));
  }

  function participationChart() {
    const p = data.participation;
    const colours = { ok: "#2e7d32", failed: "#c62828", dropped: "#8e24aa", timeout: "#e08a00", missing: "#9e9e9e" };
    const names = { ok: "reported", failed: "failed", dropped: "dropped", timeout: "timed out", missing: "absent" };
    const traces = ["ok", "failed", "dropped", "timeout", "missing"].map(function (k) {
      return { type: "bar", x: p.rounds, y: p[k], name: names[k], marker: { color: colours[k] },
               hovertemplate: "round %{x}<br>" + names[k] + " %{y}<extra></extra>" };
    });
    traces.push({ x: p.rounds, y: p.expected, name: "expected", mode: "lines", line: { color: "#000", dash: "dash" },
                  hovertemplate: "round %{x}<br>expected %{y}<extra></extra>" });
    draw("chart-participation", traces, { barmode: "stack", xaxis: roundAxis(), yaxis: { title: { text: "clients" } } },
      finite(p.ok) + finite(p.expected));
  }

  function fairnessChart() {
    const f = data.fairness;
    const traces = [
      { x: f.rounds, y: f.worst, name: "worst client", mode: "lines+markers", marker: { size: 4 },
        line: { color: "#c62828", width: 1 },
        hovertemplate: "round %{x}<br>worst client %{y:.3f}<extra></extra>" },
      { x: f.rounds, y: f.worst10, name: "worst 10% mean", mode: "lines", line: { color: "#e08a00" },
        hovertemplate: "round %{x}<br>worst 10% mean %{y:.3f}<extra></extra>" },
      { x: f.rounds, y: f.mean, name: "mean", mode: "lines", fill: "tonexty", line: { color: "#1e6fd9" },
        fillcolor: "rgba(30,111,217,0.12)", hovertemplate: "round %{x}<br>mean %{y:.3f}<extra></extra>" },
    ];
    draw("chart-fairness", traces, { xaxis: roundAxis(), yaxis: { title: { text: "evaluation accuracy" }, range: [0, 1.02] } },
      finite(f.mean));
  }

  function driftMap() {
    const m = data.drift_map;
    const points = m.z.reduce(function (n, row) { return n + finite(row); }, 0);
    const el = document.getElementById("chart-drift-map");
    el.style.height = Math.max(340, 90 + 16 * m.clients.length) + "px";
    const custom = m.clients.map(function (c, i) { return m.rounds.map(function () { return m.anomaly_max[i]; }); });
    draw("chart-drift-map", [{
      type: "heatmap", x: m.rounds, y: m.clients, z: m.z, customdata: custom, zmin: 0, zmax: 3, xgap: 1, ygap: 1,
      colorscale: [[0, "#f4f6f8"], [0.2, "#ffe9a8"], [0.333, "#f5a623"], [0.666, "#d0451b"], [1, "#7a0c0c"]],
      colorbar: { title: { text: "drift / threshold" } }, hoverongaps: false,
      hovertemplate: "client %{y}<br>round %{x}<br>drift ratio %{z:.2f}<br>max anomaly score %{customdata}<extra></extra>",
    }], { xaxis: roundAxis(), yaxis: { autorange: "reversed", type: "category", automargin: true },
          margin: { l: 80, r: 20, t: 10, b: 45 } }, points);
  }

  function divergenceChart() {
    const d = data.divergence;
    if (!d) { draw("chart-divergence", [], {}, 0); return; }
    const flagged = d.points.filter(function (p) { return p.findings.length > 0; });
    const others = d.points.filter(function (p) { return p.findings.length === 0; });
    function trace(pts, name, marker, text) {
      return { x: pts.map(function (p) { return p.cosine; }), y: pts.map(function (p) { return p.norm_ratio; }),
        mode: text ? "markers+text" : "markers", type: "scatter", name: name, marker: marker,
        text: text ? pts.map(function (p) { return p.client; }) : undefined, textposition: "top center",
        customdata: pts.map(function (p) { return [p.client, p.findings.join(", ") || "no finding"]; }),
        hovertemplate: "client %{customdata[0]}<br>round " + d.round +
          "<br>cosine %{x:.3f}<br>norm ratio %{y:.3f}<br>%{customdata[1]}<extra></extra>" };
    }
    const positive = d.points.every(function (p) { return p.norm_ratio > 0; });
    const note = d.no_finite_update.length ? "no finite update: " + d.no_finite_update.join(", ") : "";
    draw("chart-divergence", [
      trace(others, "clients", { color: "#7a8896", size: 7, opacity: 0.7 }, false),
      trace(flagged, "with a finding", { color: "#c62828", size: 11, symbol: "diamond" }, true),
    ], { xaxis: { title: { text: "cosine to the aggregate update (round " + d.round + ")" } },
         yaxis: { title: { text: "update norm / round median" }, type: positive ? "log" : "linear" },
         annotations: note ? [{ text: note, xref: "paper", yref: "paper", x: 0, y: 1.06, showarrow: false }] : [] },
      d.points.length);
  }

  function privacyChart() {
    const p = data.privacy;
    if (!p) { return; }
    const traces = [{ x: p.rounds, y: p.epsilon, name: "epsilon spent", mode: "lines+markers",
                      hovertemplate: "round %{x}<br>epsilon %{y:.3f} (delta " + p.delta + ")<extra></extra>" }];
    if (p.target_epsilon !== null) {
      traces.push({ x: p.rounds, y: p.rounds.map(function () { return p.target_epsilon; }), name: "budget",
                    mode: "lines", line: { dash: "dash", color: "#c62828" },
                    hovertemplate: "budget %{y:.3f}<extra></extra>" });
    }
    draw("chart-privacy", traces, { xaxis: roundAxis(), yaxis: { title: { text: "epsilon" }, rangemode: "tozero" } },
      finite(p.epsilon));
  }

  function timelineChart() {
    const fs = data.findings;
    const traces = Object.keys(SEV).map(function (sev) {
      const x = [], y = [], custom = [];
      fs.filter(function (f) { return f.severity === sev; }).forEach(function (f) {
        const label = f.kind + " · " + (f.client_id || "federation");
        [f.first_round, f.last_round].forEach(function (r) { x.push(r); y.push(label); custom.push(f.status + ": " + f.message); });
        x.push(null); y.push(null); custom.push(null);
      });
      return { x: x, y: y, customdata: custom, name: sev, mode: "lines+markers", type: "scatter",
               line: { color: SEV[sev], width: 6 }, marker: { color: SEV[sev], size: 8 },
               hovertemplate: "%{y}<br>round %{x}<br>%{customdata}<extra></extra>" };
    }).filter(function (t) { return t.x.length > 0; });
    const rows = new Set(fs.map(function (f) { return f.kind + " · " + (f.client_id || "federation"); })).size;
    const el = document.getElementById("chart-timeline");
    el.style.height = Math.max(240, 90 + 22 * rows) + "px";
    draw("chart-timeline", traces, { xaxis: roundAxis(), yaxis: { type: "category", automargin: true, autorange: "reversed" },
                                     margin: { l: 200, r: 20, t: 10, b: 45 } }, fs.length);
  }

  function clientCharts(c) {
    const anchor = document.querySelector('section.client[data-client="' + CSS.escape(c.client_id) + '"]').id;
    const lm = c.label_mix;
    if (lm) {
      draw(anchor + "-labels", [
        { type: "bar", x: lm.classes, y: lm.reference, name: "reference (rounds " + lm.reference_rounds.join(", ") + ")",
          marker: { color: "#90a4ae" }, hovertemplate: "client " + c.client_id + "<br>class %{x}<br>reference share %{y:.3f}<extra></extra>" },
        { type: "bar", x: lm.classes, y: lm.current, name: "round " + lm.current_round, marker: { color: "#c62828" },
          hovertemplate: "client " + c.client_id + "<br>round " + lm.current_round + "<br>class %{x}<br>share %{y:.3f}<extra></extra>" },
      ], { barmode: "group", title: { text: "label mix", font: { size: 13 } }, margin: { l: 50, r: 10, t: 30, b: 95 }, legend: { orientation: "h", y: -0.45 },
           xaxis: { type: "category", title: { text: "class" } }, yaxis: { title: { text: "share" } } },
        finite(lm.reference) + finite(lm.current));
    } else {
      draw(anchor + "-labels", [], {}, 0);
    }
    const names = { label_drift_ratio: "label drift / threshold", feature_drift_ratio: "feature drift / threshold" };
    const driftTraces = Object.keys(names).filter(function (k) { return c.drift[k]; }).map(function (k) {
      return { x: c.drift[k].rounds, y: c.drift[k].values, name: names[k], mode: "lines+markers", marker: { size: 4 },
               hovertemplate: "client " + c.client_id + "<br>round %{x}<br>" + names[k] + " %{y:.2f}<extra></extra>" };
    });
    const driftPoints = driftTraces.reduce(function (n, t) { return n + finite(t.y); }, 0);
    if (driftTraces.length) {
      const xs = driftTraces[0].x;
      driftTraces.push({ x: [xs[0], xs[xs.length - 1]], y: [1, 1], name: "threshold", mode: "lines",
                         line: { dash: "dash", color: "#000", width: 1 }, hoverinfo: "skip" });
    }
    draw(anchor + "-drift", driftTraces, { title: { text: "drift against its reference", font: { size: 13 } },
      margin: { l: 50, r: 10, t: 30, b: 95 }, legend: { orientation: "h", y: -0.45 }, xaxis: roundAxis(), yaxis: { rangemode: "tozero" } }, driftPoints);
    const l = c.loss;
    draw(anchor + "-loss", [
      { x: l.rounds, y: l.eval_loss, name: "eval loss (global model)", mode: "lines+markers", marker: { size: 4 },
        customdata: l.status, hovertemplate: "client " + c.client_id + "<br>round %{x}<br>eval loss %{y:.3f}<br>status %{customdata}<extra></extra>" },
      { x: l.rounds, y: l.train_loss, name: "train loss", mode: "lines", line: { dash: "dot" },
        hovertemplate: "client " + c.client_id + "<br>round %{x}<br>train loss %{y:.3f}<extra></extra>" },
    ], { title: { text: "loss history", font: { size: 13 } }, margin: { l: 50, r: 10, t: 30, b: 95 }, legend: { orientation: "h", y: -0.45 },
         xaxis: roundAxis(), yaxis: { rangemode: "tozero" } }, finite(l.eval_loss) + finite(l.train_loss));
  }

  [globalChart, participationChart, fairnessChart, driftMap, divergenceChart, privacyChart, timelineChart]
    .forEach(function (f) { f(); });
  data.clients.forEach(clientCharts);
  document.body.dataset.reportReady = "true";
})();
