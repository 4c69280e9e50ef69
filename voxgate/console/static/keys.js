// Keys page (admin key): list, create (secret shown once, with a copy button), edit limits,
// budget, expiry and model allowlist, revoke. All through /admin/keys.
import { el, getKey, json, models, showError } from "./api.js";

const LIMITS = [
  ["rpm", "keys-rpm", "req/min"],
  ["audio_seconds_per_minute", "keys-asm", "audio s/min"],
  ["characters_per_minute", "keys-cpm", "chars/min"],
  ["max_concurrency", "keys-conc", "concurrent"],
];

function usd(value) {
  return value === null || value === undefined ? "∞" : `$${value.toFixed(value < 1 ? 4 : 2)}`;
}

function date(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC" : "never";
}

export function initKeys() {
  const $ = (id) => document.getElementById(id);
  const error = $("keys-error");
  const body = $("keys-table").querySelector("tbody");
  let keys = [];

  function number(id) {
    const value = $(id).value.trim();
    return value === "" ? null : Number(value);
  }

  /** The form as an /admin/keys body; on edit, empty fields clear (null) what was set. */
  function fields() {
    const picked = [...$("keys-models").querySelectorAll("input:checked")].map((box) => box.value);
    const expires = $("keys-expires").value;
    const out = {
      name: $("keys-name").value.trim(),
      budget_usd: number("keys-budget"),
      models: picked.length ? picked : null,
      expires_at: expires ? Math.floor(Date.parse(`${expires}:00Z`) / 1000) : null,
    };
    for (const [field, id] of LIMITS) out[field] = number(id);
    return out;
  }

  function resetForm() {
    $("keys-form").reset();
    $("keys-edit-id").value = "";
    $("keys-form-title").textContent = "New key";
    $("keys-create").textContent = "Create key";
    $("keys-cancel").hidden = true;
  }

  function edit(key) {
    $("keys-edit-id").value = key.id;
    $("keys-form-title").textContent = `Edit ${key.name} (${key.id})`;
    $("keys-create").textContent = "Save changes";
    $("keys-cancel").hidden = false;
    $("keys-name").value = key.name;
    $("keys-budget").value = key.budget_usd ?? "";
    for (const [field, id] of LIMITS) $(id).value = key.limits[field] ?? "";
    $("keys-expires").value = key.expires_at ? new Date(key.expires_at * 1000).toISOString().slice(0, 16) : "";
    for (const box of $("keys-models").querySelectorAll("input")) box.checked = (key.models || []).includes(box.value);
    $("keys-name").focus();
  }

  async function revoke(key, button) {
    if (button.dataset.confirm !== "yes") {
      button.dataset.confirm = "yes";
      button.textContent = "Confirm revoke";
      return;
    }
    try {
      await json(`/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      await load();
    } catch (err) {
      showError(error, err);
    }
  }

  function render() {
    const showRevoked = $("keys-show-revoked").checked;
    const now = Date.now() / 1000;
    body.replaceChildren(
      ...keys
        .filter((k) => showRevoked || !k.revoked)
        .map((k) => {
          const expired = k.expires_at && k.expires_at <= now;
          const state = k.revoked ? "revoked" : expired ? "expired" : "active";
          const limits = LIMITS.filter(([f]) => k.limits[f] !== null).map(([f, , unit]) => `${k.limits[f]} ${unit}`);
          const actions = k.revoked
            ? el("td")
            : el(
                "td",
                { class: "actions" },
                el("button", { type: "button", class: "ghost", text: "Edit", onclick: () => edit(k) }),
                el("button", { type: "button", class: "danger", "data-action": "revoke", text: "Revoke", onclick: (e) => revoke(k, e.currentTarget) }),
              );
          return el(
            "tr",
            { "data-key-id": k.id, "data-state": state },
            el("td", {}, el("strong", { text: k.name }), el("div", { class: "muted small", text: k.id })),
            el("td", {}, el("code", { text: k.redacted_value })),
            el("td", { text: `${usd(k.spent_usd)} / ${usd(k.budget_usd)}` }),
            el("td", { text: limits.join(", ") || "none" }),
            el("td", { text: k.models ? k.models.join(", ") : "all" }),
            el("td", { text: date(k.expires_at) }),
            el("td", {}, el("span", { class: `badge ${state}`, text: state })),
            actions,
          );
        }),
    );
  }

  async function load() {
    showError(error, null);
    if (!getKey()) {
      keys = [];
      render();
      showError(error, "Sign in with the admin key (VOXGATE_ADMIN_KEY) to manage keys.");
      return;
    }
    try {
      keys = (await json("/admin/keys")).data;
    } catch (err) {
      keys = [];
      showError(error, err);
    }
    render();
  }

  async function submit(event) {
    event.preventDefault();
    showError(error, null);
    const id = $("keys-edit-id").value;
    const payload = fields();
    try {
      if (id) {
        await json(`/admin/keys/${encodeURIComponent(id)}`, { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
        $("keys-secret").hidden = true;
      } else {
        for (const [name, value] of Object.entries(payload)) if (value === null) delete payload[name];
        const created = await json("/admin/keys", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
        $("keys-secret-value").textContent = created.key;
        $("keys-copied").textContent = "";
        $("keys-secret").hidden = false;
      }
      resetForm();
      await load();
    } catch (err) {
      showError(error, err);
    }
  }

  async function copy() {
    const secret = $("keys-secret-value").textContent;
    try {
      await navigator.clipboard.writeText(secret);
      $("keys-copied").textContent = "Copied.";
    } catch {
      const range = document.createRange();
      range.selectNodeContents($("keys-secret-value"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("keys-copied").textContent = "Selected: press Ctrl+C.";
    }
  }

  async function fillModels() {
    const all = await models();
    $("keys-models").replaceChildren(
      ...all.map((m) => el("label", { class: "check" }, el("input", { type: "checkbox", value: m.id }), ` ${m.id}`)),
    );
  }

  $("keys-form").addEventListener("submit", submit);
  $("keys-cancel").addEventListener("click", resetForm);
  $("keys-copy").addEventListener("click", copy);
  $("keys-show-revoked").addEventListener("change", render);
  let filled = false;
  return {
    show() {
      if (!filled) {
        filled = true;
        fillModels();
      }
      $("keys-secret").hidden = true;
      load();
    },
  };
}
