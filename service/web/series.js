// The series view: a sample from samples/series.json, POST /v1/timeseries/forecast, and
// an SVG chart of the history, the forecast (with its quantile band) and the truth.
// Plain JavaScript, no build step; URLs are relative to the page (web/series.html).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), form: $("series-form"), sample: $("sample"), model: $("model"),
    horizon: $("horizon"), apiKey: $("api-key"), error: $("error"), chart: $("chart"),
    note: $("note"), title: $("chart-title"),
  };
  let samples = {};
  let models = [];

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = !message;
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (el.apiKey.value) h["X-API-Key"] = el.apiKey.value;
    return h;
  }

  async function load() {
    try {
      const [s, m] = await Promise.all([
        fetch("samples/series.json").then((r) => r.json()),
        fetch("../v1/timeseries/models").then((r) => r.json()),
      ]);
      samples = s;
      models = Array.isArray(m) ? m : [];
    } catch (err) {
      el.status.textContent = "Could not load the samples or the model list: " + err.message;
      return;
    }
    el.sample.replaceChildren(...Object.keys(samples).map((k) => new Option(k, k)));
    el.status.textContent = models.length
      ? `${models.length} series model(s) served.`
      : "No series model is served; start the service on models/series.";
    fillModels();
  }

  function fillModels() {
    const name = el.sample.value;
    const mine = models.filter((m) => m.startsWith(name + "_"));
    const shown = mine.length ? mine : models;
    el.model.replaceChildren(...shown.map((m) => new Option(m, m)));
    const sample = samples[name];
    if (sample) el.horizon.value = sample.horizon;
    draw(sample, null);
  }

  async function forecast(event) {
    event.preventDefault();
    showError("");
    const sample = samples[el.sample.value];
    if (!sample || !el.model.value) return;
    const multivariate = Array.isArray(sample.history[0]);
    const body = {
      model: el.model.value,
      inputs: [{
        type: multivariate ? "multivariate_time_series" : "univariate_time_series",
        name: el.sample.value,
        series: sample.history,
        frequency: sample.frequency,
        start_timestamp: sample.start_timestamp,
      }],
      options: { horizon: Number(el.horizon.value), quantiles: [0.1, 0.9] },
    };
    const response = await fetch("../v1/timeseries/forecast", {
      method: "POST", headers: headers(), body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) {
      const e = answer.error || {};
      showError(`${response.status}: ${e.message || JSON.stringify(answer)}`);
      return;
    }
    draw(sample, answer.outputs[0].content[0]);
  }

  // ---- the chart -------------------------------------------------------------------

  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 360, PAD = 40;

  function line(points, color, width) {
    const path = document.createElementNS(NS, "polyline");
    path.setAttribute("points", points.map(([x, y]) => `${x},${y}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", color);
    path.setAttribute("stroke-width", width);
    return path;
  }

  function draw(sample, content) {
    el.chart.replaceChildren();
    if (!sample) return;
    const target = Array.isArray(sample.history[0])
      ? sample.history.map((row) => row[sample.features.indexOf(sample.target)])
      : sample.history;
    const n = target.length;
    const mean = content ? content.mean_forecast.map((v) => (Array.isArray(v) ? v[0] : v)) : [];
    const q = (content && content.quantiles) || {};
    const low = (q["0.1"] || []).map((v) => (Array.isArray(v) ? v[0] : v));
    const high = (q["0.9"] || []).map((v) => (Array.isArray(v) ? v[0] : v));
    const steps = Math.max(sample.truth.length, mean.length);
    const all = [...target, ...sample.truth, ...mean, ...low, ...high];
    const lo = Math.min(...all), hi = Math.max(...all);
    const x = (i) => PAD + ((W - 2 * PAD) * i) / (n + steps - 1);
    const y = (v) => H - PAD - ((H - 2 * PAD) * (v - lo)) / (hi - lo || 1);
    if (low.length && high.length) {
      const band = document.createElementNS(NS, "polygon");
      const top = high.map((v, i) => [x(n + i), y(v)]);
      const bottom = low.map((v, i) => [x(n + i), y(v)]).reverse();
      band.setAttribute("points", [...top, ...bottom].map(([a, b]) => `${a},${b}`).join(" "));
      band.setAttribute("fill", "#9db4ea");
      band.setAttribute("opacity", "0.6");
      el.chart.append(band);
    }
    el.chart.append(line(target.map((v, i) => [x(i), y(v)]), "#5d6577", 1.5));
    const last = [x(n - 1), y(target[n - 1])];
    el.chart.append(line([last, ...sample.truth.map((v, i) => [x(n + i), y(v)])], "#1a7f37", 2));
    if (mean.length) {
      el.chart.append(line([last, ...mean.map((v, i) => [x(n + i), y(v)])], "#2456c7", 2.5));
    }
    for (const [v, label] of [[lo, lo.toPrecision(4)], [hi, hi.toPrecision(4)]]) {
      const text = document.createElementNS(NS, "text");
      text.setAttribute("x", 2);
      text.setAttribute("y", y(v));
      text.setAttribute("font-size", "12");
      text.textContent = label;
      el.chart.append(text);
    }
    el.title.textContent = `${sample.target}: ${sample.source}`;
    el.note.textContent = content
      ? (content.note || "") + (content.start_timestamp ? ` Forecast from ${content.start_timestamp}.` : "")
      : "Press Forecast.";
  }

  el.sample.addEventListener("change", fillModels);
  el.form.addEventListener("submit", (event) => {
    forecast(event).catch((err) => showError(err.message));
  });
  load();
})();
