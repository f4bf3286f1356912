// prodgate console: live countdowns, and the live section of a promotion's
// or a release's page re-read when the server says it changed (Server-Sent
// Events). No inline script anywhere: the Content-Security-Policy allows
// this file only.
"use strict";

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("time[data-countdown]")) {
    const left = Math.round((Date.parse(el.dataset.countdown) - now) / 1000);
    if (Number.isNaN(left)) continue;
    const abs = Math.abs(left);
    const text = `${Math.floor(abs / 3600)}h ${Math.floor((abs % 3600) / 60)}m ${abs % 60}s`;
    el.textContent = `${el.dataset.countdown} (${left >= 0 ? "in " + text : text + " ago"})`;
  }
}

async function refresh(live) {
  const r = await fetch(location.pathname, { credentials: "same-origin" });
  if (!r.ok) return;
  const doc = new DOMParser().parseFromString(await r.text(), "text/html");
  const fresh = doc.getElementById("live");
  if (fresh) live.replaceWith(fresh);
  const decide = document.getElementById("decide");
  if (decide && !doc.getElementById("decide")) decide.remove();
  tick();
}

function watch() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.watch) return;
  const events = new EventSource(live.dataset.watch);
  // The first event is the state now: re-read only if it moved since the
  // page was rendered; every later one is a change.
  let first = true;
  events.addEventListener("change", (e) => {
    const shown = document.querySelector("#state .state");
    if (first && shown && shown.textContent === e.data) { first = false; return; }
    first = false;
    refresh(document.getElementById("live"));
  });
  events.addEventListener("end", () => {
    events.close();
    refresh(document.getElementById("live"));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  watch();
});
