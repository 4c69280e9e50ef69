// Models page: the public catalog (GET /api/models) as a filterable table.
import { el, models } from "./api.js";

/** The catalog price in the model's own audio unit, e.g. "$15.00 per 1M input characters". */
export function price(pricing) {
  if (!pricing) return "";
  const amount = pricing.per_second ?? pricing.input ?? pricing.per_request;
  if (amount === null || amount === undefined) return "free";
  const digits = amount < 0.01 ? 6 : 2;
  return `$${amount.toFixed(digits)} ${pricing.unit}`;
}

function summary(list, limit) {
  if (!list || list.length === 0) return "—";
  const shown = list.slice(0, limit).join(", ");
  return list.length > limit ? `${shown} +${list.length - limit} more` : shown;
}

export function initModels() {
  const $ = (id) => document.getElementById(id);
  const body = $("models-table").querySelector("tbody");
  let all = [];

  function render() {
    const needle = $("models-filter").value.trim().toLowerCase();
    const feature = $("models-feature").value;
    const shown = all.filter((m) => {
      if (feature && !m.features.includes(feature)) return false;
      if (!needle) return true;
      const haystack = [m.id, m.name, m.description, m.alias_of || "", ...(m.languages || []), ...(m.voices || []).flatMap((v) => [v.id, v.name])];
      return haystack.some((s) => s.toLowerCase().includes(needle));
    });
    body.replaceChildren(
      ...shown.map((m) =>
        el(
          "tr",
          { "data-model": m.id },
          el("td", {}, el("strong", { text: m.id }), el("div", { class: "muted small", text: m.alias_of ? `alias of ${m.alias_of}` : m.name })),
          el("td", {}, ...m.features.map((f) => el("span", { class: "tag", text: f }))),
          el("td", { text: price(m.pricing) }),
          el("td", { title: (m.voices || []).map((v) => `${v.id}: ${v.name}`).join("\n"), text: summary((m.voices || []).map((v) => v.id), 6) }),
          el("td", { title: (m.languages || []).join(", "), text: summary(m.languages, 8) }),
        ),
      ),
    );
    $("models-count").textContent = `${shown.length} of ${all.length} models`;
  }

  async function load() {
    all = await models();
    const features = [...new Set(all.flatMap((m) => m.features))].sort();
    $("models-feature").replaceChildren(el("option", { value: "", text: "any" }), ...features.map((f) => el("option", { value: f, text: f })));
    render();
  }

  $("models-filter").addEventListener("input", render);
  $("models-feature").addEventListener("change", render);
  let loaded = false;
  return {
    show() {
      if (!loaded) {
        loaded = true;
        load();
      }
    },
  };
}
