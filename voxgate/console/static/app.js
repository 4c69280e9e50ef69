// Entry point: sign-in, page switching by #hash (never sent to the server), page start-up.
import { getKey, setKey } from "./api.js";
import { initSpeech } from "./speech.js";
import { initStt } from "./stt.js";
import { initModels } from "./models.js";
import { initKeys } from "./keys.js";
import { initUsage } from "./usage.js";

const pages = {
  speech: initSpeech(),
  transcribe: initStt(),
  models: initModels(),
  keys: initKeys(),
  usage: initUsage(),
};

function show() {
  const name = location.hash.slice(1) in pages ? location.hash.slice(1) : "speech";
  for (const [page, controller] of Object.entries(pages)) {
    const active = page === name;
    document.getElementById(`page-${page}`).hidden = !active;
    const link = document.querySelector(`nav a[data-page="${page}"]`);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
    if (active && controller.show) controller.show();
  }
}

function renderSignin() {
  const key = getKey();
  const state = document.getElementById("signin-state");
  document.getElementById("api-key").value = "";
  document.getElementById("signout").hidden = !key;
  state.textContent = key ? `Signed in: …${key.slice(-4)}` : "Not signed in";
}

document.getElementById("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("api-key").value.trim();
  if (value) setKey(value);
});
document.getElementById("signout").addEventListener("click", () => setKey(""));
document.addEventListener("voxgate:key", () => {
  renderSignin();
  show();
});
window.addEventListener("hashchange", show);
renderSignin();
show();
