// A stacked bar chart in hand-written SVG: one bar per time bucket, one colour per series.
const SVG = "http://www.w3.org/2000/svg";
export const COLOURS = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];

function node(tag, attrs = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/** The axis top: four steps of 1, 2, 2.5 or 5 times a power of ten (whole steps for counts). */
function axisTop(max, whole) {
  if (max <= 0) return whole ? 4 : 1;
  const power = 10 ** Math.floor(Math.log10(max / 4));
  const step = [1, 2, 2.5, 5, 10]
    .map((m) => m * power)
    .find((s) => s * 4 >= max && (!whole || Number.isInteger(s)));
  return step * 4;
}

/**
 * buckets: [{label, values: {series: number}}]; series: [names]; format(value) → text;
 * whole: the values are counts (axis steps are whole numbers); width: the drawing's pixels.
 * Returns the <svg>.
 */
export function barChart(buckets, series, format, whole = false, width = 800) {
  const height = width < 500 ? 220 : 280;
  const pad = { left: 64, right: 12, top: 12, bottom: 36 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = buckets.map((b) => series.reduce((sum, s) => sum + (b.values[s] || 0), 0));
  const top = axisTop(Math.max(0, ...totals), whole);
  const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, class: "bars", width, height });
  for (let i = 0; i <= 4; i++) {
    const y = pad.top + plotH - (plotH * i) / 4;
    svg.append(node("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }));
    svg.append(node("text", { x: pad.left - 8, y: y + 4, class: "axis", "text-anchor": "end" }, format((top * i) / 4)));
  }
  const slot = plotW / Math.max(1, buckets.length);
  const barW = Math.max(1, slot * 0.72);
  const every = Math.ceil(buckets.length / Math.max(2, Math.floor(plotW / 90)));
  buckets.forEach((bucket, index) => {
    const x = pad.left + index * slot + (slot - barW) / 2;
    let y = pad.top + plotH;
    series.forEach((name, s) => {
      const value = bucket.values[name] || 0;
      if (value <= 0) return;
      const h = (plotH * value) / top;
      y -= h;
      const rect = node("rect", { x, y, width: barW, height: Math.max(h, 0.5), fill: COLOURS[s % COLOURS.length], "data-series": name, "data-value": value, class: "bar" });
      rect.append(node("title", {}, `${bucket.label} · ${name}: ${format(value)}`));
      svg.append(rect);
    });
    if (index % every === 0) {
      svg.append(node("text", { x: x + barW / 2, y: height - pad.bottom + 18, class: "axis", "text-anchor": "middle" }, bucket.label));
    }
  });
  svg.append(node("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + plotH, y2: pad.top + plotH, class: "base" }));
  return svg;
}
