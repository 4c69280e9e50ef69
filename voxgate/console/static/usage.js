// Usage page: requests, audio seconds, characters and cost over time, by model or by key,
// from OpenAI's usage and costs API (/v1/organization/...).
import { barChart, COLOURS } from "./chart.js";
import { el, getKey, json, showError } from "./api.js";

const RANGES = {
  "1h": { width: "1m", seconds: 60, count: 60 },
  "24h": { width: "1h", seconds: 3600, count: 24 },
  "7d": { width: "1d", seconds: 86400, count: 7 },
  "30d": { width: "1d", seconds: 86400, count: 30 },
};
const FORMATS = {
  requests: (v) => String(Math.round(v * 100) / 100),
  seconds: (v) => `${v.toFixed(v >= 100 ? 0 : 1)} s`,
  characters: (v) => String(Math.round(v)),
  cost: (v) => `$${v.toFixed(v >= 1 ? 2 : 4)}`,
};

/** Every page of one usage endpoint (following next_page). */
async function allBuckets(path, query) {
  const buckets = [];
  let page = null;
  do {
    const params = new URLSearchParams(query);
    if (page) params.set("page", page);
    const body = await json(`${path}?${params}`);
    buckets.push(...body.data);
    page = body.has_more ? body.next_page : null;
  } while (page);
  return buckets;
}

function label(start, width) {
  const d = new Date(start * 1000);
  if (width === "1d") return d.toLocaleDateString([], { month: "short", day: "numeric" });
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function initUsage() {
  const $ = (id) => document.getElementById(id);
  const error = $("usage-error");
  let data = null; // {width, starts, metrics: {metric: Map(start → {series: value})}}

  function add(table, start, series, value) {
    if (!table.has(start)) table.set(start, {});
    const row = table.get(start);
    row[series] = (row[series] || 0) + value;
  }

  async function load() {
    showError(error, null);
    if (!getKey()) {
      data = null;
      render();
      showError(error, "Sign in with the admin key (every key) or an API key (its own usage).");
      return;
    }
    const range = RANGES[$("usage-range").value];
    const group = $("usage-group").value;
    const now = Math.floor(Date.now() / 1000);
    const start = (Math.floor(now / range.seconds) - range.count + 1) * range.seconds;
    const query = [["start_time", start], ["bucket_width", range.width], ["limit", range.count], ["group_by", group]];
    try {
      const [transcriptions, speeches, costs] = await Promise.all([
        allBuckets("/v1/organization/usage/audio_transcriptions", query),
        allBuckets("/v1/organization/usage/audio_speeches", query),
        allBuckets("/v1/organization/costs", query),
      ]);
      const metrics = { requests: new Map(), seconds: new Map(), characters: new Map(), cost: new Map() };
      const name = (result) => result[group] || "(none)";
      for (const bucket of transcriptions) {
        for (const r of bucket.results) {
          add(metrics.requests, bucket.start_time, name(r), r.num_model_requests);
          add(metrics.seconds, bucket.start_time, name(r), r.seconds);
        }
      }
      for (const bucket of speeches) {
        for (const r of bucket.results) {
          add(metrics.requests, bucket.start_time, name(r), r.num_model_requests);
          add(metrics.characters, bucket.start_time, name(r), r.characters);
        }
      }
      for (const bucket of costs) {
        for (const r of bucket.results) add(metrics.cost, bucket.start_time, name(r), Number(r.amount.value));
      }
      const starts = Array.from({ length: range.count }, (_, i) => start + i * range.seconds);
      data = { width: range.width, starts, metrics };
    } catch (err) {
      data = null;
      showError(error, err);
    }
    render();
  }

  function render() {
    const chart = $("usage-chart");
    const legend = $("usage-legend");
    const totals = $("usage-totals");
    if (!data) {
      chart.replaceChildren();
      legend.replaceChildren();
      totals.replaceChildren();
      return;
    }
    const metric = $("usage-metric").value;
    const format = FORMATS[metric];
    const sum = (table) => [...table.values()].reduce((total, row) => total + Object.values(row).reduce((a, b) => a + b, 0), 0);
    totals.replaceChildren(
      ...Object.entries(data.metrics).map(([name, table]) =>
        el("div", { class: `total${name === metric ? " current" : ""}`, "data-metric": name, "data-total": String(sum(table)) }, el("span", { class: "muted small", text: name }), el("strong", { text: FORMATS[name](sum(table)) })),
      ),
    );
    const table = data.metrics[metric];
    const seriesTotals = {};
    for (const row of table.values()) for (const [s, v] of Object.entries(row)) seriesTotals[s] = (seriesTotals[s] || 0) + v;
    const series = Object.keys(seriesTotals).sort((a, b) => seriesTotals[b] - seriesTotals[a]);
    const buckets = data.starts.map((start) => ({ label: label(start, data.width), values: table.get(start) || {} }));
    chart.dataset.metric = metric;
    chart.dataset.total = String(sum(table));
    chart.setAttribute("aria-label", `${metric} per ${data.width} bucket, ${format(sum(table))} in total`);
    const whole = metric === "requests" || metric === "characters";
    chart.replaceChildren(barChart(buckets, series, format, whole, Math.max(300, chart.clientWidth || 800)));
    legend.replaceChildren(
      ...(series.length
        ? series.map((s, i) => el("li", {}, el("span", { class: "swatch", style: null, "data-colour": String(i) }), `${s}: ${format(seriesTotals[s])}`))
        : [el("li", { class: "muted", text: "Nothing in this range." })]),
    );
    // Colours via a class per index: inline style attributes are blocked by the CSP.
    legend.querySelectorAll(".swatch").forEach((swatch, i) => swatch.classList.add(`c${i % COLOURS.length}`));
  }

  $("usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  $("usage-range").addEventListener("change", load);
  $("usage-group").addEventListener("change", load);
  $("usage-metric").addEventListener("change", render);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(render, 150);
  });
  return { show: load };
}
