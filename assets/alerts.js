/* The alerts panel's browser side (dash_app/alerts.py): changes of alert state in, episodes out.
 *
 * A change is {id, rule, sensor, topic, state, since, ts, summary} (dash_app/live.py alert_row);
 * `since` names its episode (rule, sensor, since): pending, firing, resolved. Changes come from
 * the `alerts-history` store (the last 24 h at the history load) and the `alerts-live` store
 * (the websocket frames since), each {changes: {id: change}}; the same id in both is one change.
 * Everything here is a pure function of its inputs; assets/live.js uses `episodes` and `shapes`
 * for the bands on the charts.
 */
(function () {
  "use strict";
  const HISTORY_MS = 24 * 3600 * 1000;
  const LOG_ROWS = 100; // newest changes listed under "Last 24 h"
  const ORDER = { pending: 0, firing: 1, resolved: 2 };

  /* Every episode of the changes, newest first: {key, rule, sensor, topic, since, state (its
   * latest), pending, firing, resolved (the times of each, or null), summary (the latest's)}. */
  function episodes(historyData, liveData) {
    const changes = Object.assign({}, (historyData || {}).changes, (liveData || {}).changes);
    const byKey = {};
    for (const c of Object.values(changes)) {
      const key = c.rule + "|" + c.sensor + "|" + c.since;
      const ep = byKey[key] || (byKey[key] = {
        key: key, rule: c.rule, sensor: c.sensor, topic: c.topic, since: c.since,
        state: null, pending: null, firing: null, resolved: null, summary: "", last: -Infinity,
      });
      ep[c.state] = c.ts;
      const later = c.ts > ep.last || (c.ts === ep.last && ORDER[c.state] > ORDER[ep.state]);
      if (later) { ep.state = c.state; ep.summary = c.summary; ep.last = c.ts; }
    }
    return Object.values(byKey).sort((a, b) => b.last - a.last);
  }

  /* Bands over the time each alert of `chartId` fired (layout shapes named "alert|<episode>|<end>",
   * the end being "open" while it fires: what tells a band that changed),
   * from its firing to its resolution or `now`, clipped to [from, to]: a shape on the x axis
   * counts in its autorange, so a live chart must not get one older than its window. */
  function shapes(eps, chartId, alertCharts, now, from, to) {
    const out = [];
    for (const ep of eps) {
      if (ep.firing === null || !(alertCharts[ep.rule] || []).includes(chartId)) continue;
      const x0 = Math.max(ep.firing, from);
      const x1 = Math.min(ep.resolved === null ? now : ep.resolved, to);
      if (x1 < x0) continue;
      out.push({
        type: "rect", xref: "x", yref: "paper", x0: x0, x1: x1, y0: 0, y1: 1, layer: "below",
        fillcolor: "#d9480f", opacity: 0.12, line: { width: 0 }, name: "alert|" + ep.key + "|" + (ep.resolved === null ? "open" : x1),
        label: { text: ep.sensor + (ep.resolved === null ? " firing" : ""), textposition: "top left", font: { size: 10, color: "#d9480f" } },
      });
    }
    return out;
  }

  function clock(ms) {
    return new Date(ms).toTimeString().slice(0, 8);
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    alerts: {
      episodes: episodes,
      shapes: shapes,

      /* The panel (HTML for assets/markup.js): alerts pending or firing now, the last 24 h of
       * changes, the count in the title, and for the cards: "topic|sensor" -> the rules firing
       * for it. */
      panel: function (historyData, liveData) {
        const tag = window.dash_clientside.markup.tag;
        const eps = episodes(historyData, liveData);
        const active = eps.filter((ep) => ep.state === "firing" || ep.state === "pending")
          .sort((a, b) => ORDER[b.state] - ORDER[a.state] || b.last - a.last);
        const firing = {};
        for (const ep of active) {
          if (ep.state !== "firing") continue;
          const card = ep.topic + "|" + ep.sensor;
          firing[card] = (firing[card] ? firing[card] + ", " : "") + ep.rule;
        }
        const now = active.length
          ? tag("ul", { class: "alert-list" }, active.map((ep) => tag("li", {
            class: "alert-row alert-" + ep.state, "data-alert": ep.rule + "|" + ep.sensor, "data-state": ep.state, "data-firing": ep.firing,
          }, [
            tag("span", { class: "alert-state" }, ep.state),
            tag("span", { class: "alert-name" }, ep.rule + " · " + ep.sensor),
            tag("span", { class: "alert-since" }, (ep.state === "firing" ? "firing since " + clock(ep.firing) : "pending since " + clock(ep.pending))),
            tag("span", { class: "alert-summary" }, ep.summary),
          ])))
          : tag("p", { class: "alert-none" }, "No alert pending or firing.");
        const cutoff = Date.now() - HISTORY_MS;
        const changes = Object.values(Object.assign({}, (historyData || {}).changes, (liveData || {}).changes))
          .filter((c) => c.ts >= cutoff)
          .sort((a, b) => b.ts - a.ts || ORDER[b.state] - ORDER[a.state])
          .slice(0, LOG_ROWS);
        const error = (historyData || {}).error;
        const log = (error ? tag("p", { class: "notice" }, error) : "") + (changes.length
          ? tag("table", { class: "alert-log" }, [tag("tbody", {}, changes.map((c) => tag("tr", {
            class: "alert-change alert-" + c.state, "data-alert": c.rule + "|" + c.sensor, "data-state": c.state,
          }, [clock(c.ts), c.state, c.rule, c.sensor, c.summary].map((cell) => tag("td", {}, cell)))))])
          : tag("p", { class: "alert-none" }, "No changes in the last 24 h."));
        const firingCount = active.filter((ep) => ep.state === "firing").length;
        const count = firingCount ? firingCount + " firing" : active.length ? active.length + " pending" : "";
        return [now, log, count, firing];
      },
    },
  });
})();
