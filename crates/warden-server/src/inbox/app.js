// Warden inbox: what the page does with JavaScript on. Without it every action still
// works as a plain form; with it the expiry times tick, the filters apply as they change,
// and the list follows the server's event stream without a reload.
"use strict";
(() => {
  const main = document.getElementById("inbox");
  if (!main) return;

  const words = (ms) => {
    if (ms <= 0) return "expired";
    const s = Math.ceil(ms / 1000);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, r = s % 60;
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${r}s`;
    return `${r}s`;
  };
  const tick = () => {
    for (const t of document.querySelectorAll("time[data-expires-at]")) {
      t.textContent = words(Number(t.dataset.expiresAt) - Date.now());
    }
  };
  tick();
  setInterval(tick, 1000);

  document.addEventListener("change", (e) => {
    if (e.target.matches("form.filters select")) e.target.form.requestSubmit();
  });

  const url = main.dataset.events;
  if (!url || !window.EventSource) return;

  // Whether someone is writing in an item: it is kept as it is when the list is replaced.
  const busy = (item) =>
    [...item.querySelectorAll("input:not([type=hidden]), textarea")].some(
      (f) => f.value !== "" || f === document.activeElement,
    );

  let running = false;
  let again = false;
  const refresh = async () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const page = new URL(location.href);
      page.searchParams.delete("notice");
      const response = await fetch(page, { credentials: "same-origin" });
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("live");
      const freshMain = doc.getElementById("inbox");
      if (!fresh || !freshMain) {
        location.reload(); // signed out: show the sign-in page
        return;
      }
      for (const item of fresh.querySelectorAll("article.item[id]")) {
        const old = document.getElementById(item.id);
        if (old && busy(old)) item.replaceWith(old);
      }
      document.getElementById("live").replaceWith(document.adoptNode(fresh));
      main.dataset.version = freshMain.dataset.version;
      tick();
      document.dispatchEvent(new CustomEvent("warden:updated"));
    } catch (error) {
      console.warn("the inbox could not be refreshed", error);
    } finally {
      running = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  };

  const events = new EventSource(url);
  events.addEventListener("changed", refresh);
  events.addEventListener("signed-out", () => {
    events.close();
    location.reload();
  });
  events.addEventListener("open", () => document.body.classList.add("live"));
  events.addEventListener("error", () => {
    document.body.classList.remove("live");
    // A refused stream (the session ended) is not retried by the browser.
    if (events.readyState === EventSource.CLOSED) location.reload();
  });
})();
