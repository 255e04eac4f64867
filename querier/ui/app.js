// Orrery web UI: expression box, instant table, range graph (uPlot), stores page.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var plot = null;

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  }

  function metricName(m) {
    var name = m.__name__ || "";
    var parts = [];
    Object.keys(m).sort().forEach(function (k) {
      if (k !== "__name__") parts.push(k + '="' + m[k] + '"');
    });
    return name + "{" + parts.join(", ") + "}";
  }

  function commonParams() {
    var p = new URLSearchParams();
    p.set("dedup", $("dedup").checked ? "true" : "false");
    p.set("partial_response", $("partial").checked ? "true" : "false");
    p.set("max_source_resolution", $("max-res").value);
    return p;
  }

  function endSeconds() {
    var v = $("end").value;
    if (!v) return Date.now() / 1000;
    var t = new Date(v).getTime();
    return isNaN(t) ? Date.now() / 1000 : t / 1000;
  }

  function autoStep(range) {
    return Math.max(1, Math.round(range / 250));
  }

  function api(path, params) {
    return fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: params.toString()
    }).then(function (r) { return r.json(); });
  }

  function showWarnings(list) {
    $("warnings").textContent = (list || []).map(function (w) { return "warning: " + w; }).join("\n");
  }

  function renderTable(data) {
    var body = $("table").querySelector("tbody");
    body.innerHTML = "";
    var rows = [];
    if (data.resultType === "vector") {
      data.result.forEach(function (s) { rows.push([metricName(s.metric), s.value[1]]); });
    } else if (data.resultType === "matrix") {
      data.result.forEach(function (s) {
        rows.push([metricName(s.metric), s.values.map(function (v) { return v[1] + " @" + v[0]; }).join("\n")]);
      });
    } else if (data.resultType === "scalar" || data.resultType === "string") {
      rows.push(["scalar", data.result[1]]);
    }
    if (rows.length === 0) {
      body.innerHTML = '<tr class="empty"><td colspan="2">Empty query result</td></tr>';
      return 0;
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.className = "result-row";
      tr.innerHTML = '<td class="series">' + esc(r[0]) + '</td><td class="value">' + esc(r[1]) + "</td>";
      body.appendChild(tr);
    });
    return rows.length;
  }

  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function renderGraph(data, start, end, step) {
    var el = $("graph");
    if (plot) { plot.destroy(); plot = null; }
    el.innerHTML = "";
    el.removeAttribute("data-drawn");
    if (data.resultType !== "matrix" || data.result.length === 0) {
      el.textContent = "No data to graph";
      return;
    }
    var xs = [];
    for (var t = start; t <= end + 1e-9; t += step) xs.push(Math.round(t * 1000) / 1000);
    var index = {};
    xs.forEach(function (x, i) { index[x.toFixed(3)] = i; });
    var cols = [xs];
    var series = [{}];
    data.result.forEach(function (s, n) {
      var ys = new Array(xs.length).fill(null);
      s.values.forEach(function (v) {
        var i = index[Number(v[0]).toFixed(3)];
        if (i !== undefined) ys[i] = parseFloat(v[1]);
      });
      cols.push(ys);
      series.push({ label: metricName(s.metric), stroke: palette[n % palette.length], width: 1.5, spanGaps: false });
    });
    var width = Math.max(300, el.clientWidth || 900);
    plot = new uPlot({ width: width, height: 320, series: series, legend: { show: true }, scales: { x: { time: true } } }, cols, el);
    el.setAttribute("data-drawn", String(data.result.length));
  }

  function run() {
    var expr = $("expr").value.trim();
    if (!expr) return;
    var range = parseInt($("range").value, 10);
    var end = endSeconds();
    var start = end - range;
    var step = $("step").value ? parseFloat($("step").value) : autoStep(range);
    if (!(step > 0)) step = autoStep(range);
    var url = new URL(window.location.href);
    url.searchParams.set("expr", expr);
    url.searchParams.set("range", String(range));
    url.searchParams.set("max_source_resolution", $("max-res").value);
    history.replaceState(null, "", url.toString());
    $("status").textContent = "Loading...";
    $("status").className = "status";
    var t0 = performance.now();
    var ip = commonParams(); ip.set("query", expr); ip.set("time", String(end));
    var rp = commonParams(); rp.set("query", expr); rp.set("start", String(start)); rp.set("end", String(end)); rp.set("step", String(step));
    Promise.all([api("/api/v1/query", ip), api("/api/v1/query_range", rp)]).then(function (res) {
      var inst = res[0], rng = res[1];
      var warnings = (inst.warnings || []).concat(rng.warnings || []);
      showWarnings(warnings);
      if (inst.status !== "success") {
        $("status").textContent = "Error: " + inst.error;
        $("status").className = "status error";
        $("table").querySelector("tbody").innerHTML = "";
        return;
      }
      var n = renderTable(inst.data);
      if (rng.status === "success") {
        renderGraph(rng.data, start, end, step);
      } else {
        $("graph").textContent = "Error: " + rng.error;
      }
      $("status").textContent = "Load time: " + Math.round(performance.now() - t0) + "ms, result series: " + n;
      document.body.setAttribute("data-query-done", "1");
    }).catch(function (e) {
      $("status").textContent = "Error: " + e;
      $("status").className = "status error";
    });
  }

  function renderStores() {
    fetch("/api/v1/stores").then(function (r) { return r.json(); }).then(function (j) {
      var el = $("stores");
      el.innerHTML = "";
      var groups = j.data || {};
      var kinds = Object.keys(groups).sort();
      if (kinds.length === 0) el.textContent = "No endpoints configured.";
      kinds.forEach(function (kind) {
        var h = document.createElement("h3");
        h.textContent = kind;
        el.appendChild(h);
        groups[kind].forEach(function (s) {
          var d = document.createElement("div");
          d.className = "store";
          var health = s.lastError ? '<span class="unhealthy">DOWN</span>' : '<span class="healthy">UP</span>';
          var ls = (s.labelSets || []).map(function (l) { return '<span class="labelset">' + esc(metricName(l)) + "</span>"; }).join(" ");
          var fmt = function (ms) { return ms <= -9e15 ? "-inf" : ms >= 9e15 ? "+inf" : new Date(ms).toISOString(); };
          d.innerHTML = "<b>" + esc(s.name) + "</b> " + health +
            "<div>Labels: " + (ls || "none") + "</div>" +
            "<div>Time range: " + esc(fmt(s.minTime)) + " \u2013 " + esc(fmt(s.maxTime)) + "</div>" +
            "<div>Last check: " + esc(s.lastCheck) + (s.lastError ? ' <span class="error">' + esc(s.lastError) + "</span>" : "") + "</div>";
          el.appendChild(d);
        });
      });
      document.body.setAttribute("data-stores-done", "1");
    });
  }

  var path = window.location.pathname;
  if (path.indexOf("/stores") === 0) {
    $("stores-page").hidden = false;
    $("nav-stores").className = "active";
    renderStores();
  } else {
    $("graph-page").hidden = false;
    $("nav-graph").className = "active";
    $("query-form").addEventListener("submit", function (e) { e.preventDefault(); run(); });
    $("expr").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); run(); }
    });
    $("end-now").addEventListener("click", function () { $("end").value = ""; run(); });
    var q = new URLSearchParams(window.location.search);
    if (q.get("range")) $("range").value = q.get("range");
    if (q.get("max_source_resolution")) $("max-res").value = q.get("max_source_resolution");
    if (q.get("expr")) { $("expr").value = q.get("expr"); run(); }
  }
})();
