/* The live charts' browser side: one socket, one frame in flight, drawn through Dash props.
 *
 * The server (dash_app/live.py) sends a frame with everything after the page's cursor; the page
 * draws it, each chart in a task of its own, and answers "<n> <cursor>"; only then does the
 * next frame come. Each series arrives bucketed to about one pixel column: a line point (the
 * bucket's last reading) and, where the bucket spans values, its lowest and highest on its
 * envelope trace, closed buckets first, then a provisional `tail` for the open bucket that the
 * next frame replaces. So a lone reading is drawn at once, and however fast readings come a
 * chart holds a few points per pixel column.
 *
 * State lives in Dash props: the charts' `figure`, the `live-state` store (which history load
 * the stream continues, its cursor, its last frame and the charts that got a part of it), each
 * chart's `chart-part` (its share of that frame) and `chart-drawn` (the part it drew last and how
 * many tail points each of its traces holds), the `latest` store (the cards), the `resolution`
 * store (how coarse the page draws, and how long its frames take to draw), the socket's `url`
 * (it also records when it was last opened).
 */
(function () {
  "use strict";
  const RECONNECT_MS = 1000;
  const BUSY = 1013; // the server streams to as many pages as it may (LIVE_MAX_PAGES)
  const BUSY_RETRY_MS = 10000;
  const RELOAD_MS = 2000;
  const ALERTS_KEEP_MS = 24 * 3600 * 1000; // the panel's "last 24 h"
  const ALERTS_KEPT = 2000;
  const HOLD_MS = 10000; // a resolution is kept at least this long after its first frame
  const MEAN_WEIGHT = 0.2; // of the newest frame in the running mean of drawing times
  const PAINT_WAIT_MS = 1000; // a page being painted gets its next animation frame far sooner
  const noUpdate = () => window.dash_clientside.no_update;

  function socketUrl(since, load, level) {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const query = new URLSearchParams({ since: since, load: String(load), level: String(level), opened: String(Date.now()) });
    return scheme + window.location.host + "/ws/live?" + query;
  }

  function urlParam(url, name) {
    return url ? new URL(url).searchParams.get(name) : null;
  }

  /* A trace with its old tail replaced by `points`: [xs, ys, tail]. Points at or before the
   * trace's last kept x are already drawn (the history overlaps the first frame), so they are
   * skipped. Where a point comes `gapMs` or more after the one before, a null point goes
   * first: the line (or envelope) breaks over the hole (the gap rule of dash_app/figures.py).
   * Values are multiplied by the chart's `scale` (bytes to
   * GiB). Returns the new trace and how many tail points (a tail point's null included) it now
   * holds. */
  function extendTrace(trace, oldTail, points, cutoff, gapMs, scale) {
    const [xs, ys, tail] = points;
    const keep = trace.x.length - oldTail;
    let start = 0;
    while (start < keep && trace.x[start] < cutoff) start += 1; // the live window moved on
    const x = trace.x.slice(start, keep);
    const y = trace.y.slice(start, keep);
    const last = x.length ? x[x.length - 1] : -Infinity;
    let newTail = 0;
    let prev = last;
    xs.forEach((t, i) => {
      if (t <= last) return;
      const inTail = i >= xs.length - tail;
      if (gapMs && prev !== -Infinity && t - prev >= gapMs) {
        x.push(Math.floor((prev + t) / 2));
        y.push(null);
        if (inTail) newTail += 1;
      }
      x.push(t);
      y.push(ys[i] !== null && scale && scale !== 1 ? ys[i] * scale : ys[i]);
      if (inTail) newTail += 1;
      prev = t;
    });
    return [Object.assign({}, trace, { x: x, y: y }), newTail];
  }

  /* Add to `marks` the out-of-range points of one series' trace in a frame, in the chart's unit,
   * one a bucket as dash_app/figures.py marks history: of an envelope's low and high, the one
   * further out of range (its bucket start goes into `marked`); a line point only where its
   * bucket has no such mark (a raw reading, or a danger zone between a bucket's low and high). */
  function addOutside(marks, sid, points, scale, bands, envelope, marked, bucketMs) {
    if (!bands) return;
    const [xs, ys] = points;
    const mark = (x, v) => { marks[0].push(x); marks[1].push(v); marks[2].push(sid); };
    if (envelope) {
      for (let k = 0; k + 1 < xs.length; k++) {
        if (ys[k] === null || ys[k + 1] === null || xs[k] !== xs[k + 1]) continue; // a break
        const lo = Math.min(ys[k], ys[k + 1]) * scale, hi = Math.max(ys[k], ys[k + 1]) * scale;
        const dLo = outDepth(bands, lo), dHi = outDepth(bands, hi);
        if (dHi >= 0 || dLo >= 0) { mark(xs[k], dHi >= dLo ? hi : lo); marked.add(xs[k]); }
        k += 1;
      }
      return;
    }
    xs.forEach((x, k) => {
      if (ys[k] === null || marked.has(bucketStart(x, bucketMs))) return;
      if (outDepth(bands, ys[k] * scale) >= 0) mark(x, ys[k] * scale);
    });
  }

  /* The markers trace of out-of-band points (`customdata`: each mark's series) with `marks`
   * added and what left the live window dropped. A series' marks from its bucket that was
   * still open (`reopened`: series -> that bucket's start) are replaced: the frame brings that
   * bucket again, final or still open. Otherwise a point already marked (the history overlaps a
   * new connection's first frame) is not marked twice. */
  function withMarks(trace, marks, reopened, cutoff) {
    const x = [], y = [], of = [], seen = new Set();
    const add = (t, v, sid) => {
      if (t < cutoff || seen.has(sid + " " + t + " " + v)) return;
      x.push(t); y.push(v); of.push(sid); seen.add(sid + " " + t + " " + v);
    };
    const sids = trace.customdata || [];
    trace.x.forEach((t, k) => {
      const from = reopened[sids[k]];
      if (from === undefined || t < from) add(t, trace.y[k], sids[k]);
    });
    marks[0].forEach((t, k) => add(t, marks[1][k], marks[2][k]));
    return Object.assign({}, trace, { x: x, y: y, customdata: of });
  }

  /* One chart's figure with a frame's points for its topic (`series`: meta -> points, in the
   * buckets of `level`: config.levels) added; null when the frame has nothing for it. `tails`
   * (trace index -> how many tail points it holds) is updated in place. */
  function drawChart(figure, series, tails, chart, config, level) {
    if (!figure || !series) return null;
    const cutoff = Date.now() - config.windowMs;
    const index = {};
    figure.data.forEach((trace, i) => { index[trace.meta] = i; });
    let data = null;
    const marks = [[], [], []]; // points out of a band: xs, ys (in the chart's unit), series
    const marked = {}; // series -> the buckets its envelope marked in this frame
    const reopened = {}; // series -> start of its bucket that was open before this frame
    // Envelopes ("!envelope|key|field") before lines: a line point's mark depends on its bucket's.
    for (const [meta, points] of Object.entries(series).sort(([a], [b]) => (a < b ? -1 : 1))) {
      const envelope = meta.startsWith("!");
      const field = meta.split("|").pop();
      if (!chart.fields.includes(field)) continue;
      if (points[0][points[0].length - 1] < cutoff) continue; // late readings, before the window: nothing to draw
      const i = index[meta];
      if (i === undefined) continue; // a series new to the chart: the frame handler asks for a history load
      data = data || figure.data.slice();
      if (!envelope && tails[i]) reopened[meta] = bucketStart(data[i].x[data[i].x.length - 1], level.bucketMs);
      [data[i], tails[i]] = extendTrace(data[i], tails[i] || 0, points, cutoff, level.gapMs, chart.scale);
      const sid = envelope ? meta.slice(meta.indexOf("|") + 1) : meta;
      addOutside(marks, sid, points, chart.scale, config.limits[chart.topic + "|" + field], envelope,
        marked[sid] || (marked[sid] = new Set()), level.bucketMs);
    }
    const m = index[config.outsideMeta];
    if ((marks[0].length || Object.keys(reopened).length) && m !== undefined) data[m] = withMarks(data[m], marks, reopened, cutoff);
    return data && Object.assign({}, figure, { data: data });
  }

  /* Whether a frame brings a series that a chart has no trace for: it needs a history load. An
   * envelope does not count: it is drawn only where the live buckets aggregate (the figure then
   * has one for every series). */
  function unknownSeries(frame, figures, chartIds, config) {
    const cutoff = Date.now() - config.windowMs;
    return figures.some((figure, c) => {
      const chart = config.charts[chartIds[c]];
      const series = frame.traces[chart.topic];
      if (!figure || !series) return false;
      const metas = new Set(figure.data.map((trace) => trace.meta));
      return Object.entries(series).some(([meta, points]) => !meta.startsWith("!") && chart.fields.includes(meta.split("|").pop())
        && points[0][points[0].length - 1] >= cutoff && !metas.has(meta));
    });
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    live: {
      /* Open the socket after each history load, from the cursor that history ends at; reopen
       * it from the stream's own cursor when it closed. */
      connect: function (cursor, _tick, wsState, url, liveState) {
        if (!cursor) return noUpdate();
        if (urlParam(url, "load") !== String(cursor.load)) return socketUrl(cursor.cursor, cursor.load, cursor.level);
        const closed = !wsState || wsState.readyState === WebSocket.CLOSED;
        const wait = wsState && wsState.code === BUSY ? BUSY_RETRY_MS : RECONNECT_MS;
        if (!closed || Date.now() - Number(urlParam(url, "opened")) < wait) return noUpdate();
        const since = liveState && liveState.load === cursor.load ? liveState.cursor : cursor.cursor;
        return socketUrl(since, cursor.load, cursor.level);
      },

      /* Each frame: hand each chart its part (drawn by `draw`), merge the cards' values and the
       * alert changes, pass on the status. */
      frame: function (message, figures, liveState, cursor, latest, health, reload, config, alertsLive) {
        const ctx = window.dash_clientside.callback_context;
        const chartIds = ctx.states_list[0].map((s) => s.id.id);
        const none = [figures.map(noUpdate), noUpdate(), noUpdate(), noUpdate(), noUpdate(), noUpdate()];
        if (!message || !cursor) return none;
        const frame = JSON.parse(message.data);
        const reloadOut = (wanted) => (wanted && Date.now() - (reload || 0) > RELOAD_MS ? Date.now() : noUpdate());
        if (frame.reset) return none.slice(0, 4).concat([reloadOut(true), noUpdate()]); // the cursor is gone: new history
        const same = liveState && liveState.load === cursor.load;
        const expected = same ? liveState.cursor : cursor.cursor;
        if (frame.from !== expected) return none; // from a socket this page has already left
        let unknown = cursor.live && unknownSeries(frame, figures, chartIds, config);
        let merged = null;
        for (const [id, item] of Object.entries(frame.latest)) {
          const prev = (latest || {})[id];
          if (!prev) unknown = true; // a new sensor: its card and traces come with a history load
          if (!prev || item.ts > prev.ts) (merged = merged || Object.assign({}, latest))[id] = item;
        }
        const healthChanged = JSON.stringify(frame.status) !== JSON.stringify(health);
        const storeBack = cursor.error && frame.status.store;
        const alerts = mergeAlerts(alertsLive, frame.alerts);
        // A chart gets a part where it has something to draw: points, or alert bands that may
        // have changed (an alert changed; a new history load or connection, which also starts
        // the chart's buckets afresh: what the last connection drew stays drawn).
        const fresh = !same || frame.n === 0;
        const frameId = performance.now(); // names this frame's parts: what `ack` waits for
        const parts = chartIds.map((id) => {
          const series = frame.traces[config.charts[id].topic] || null;
          if (!(series && cursor.live) && !alerts && !fresh) return noUpdate();
          return { load: cursor.load, id: frameId, fresh: fresh, live: cursor.live, level: cursor.level, series: series };
        });
        return [
          parts,
          { load: cursor.load, cursor: frame.to, n: frame.n, id: frameId, charts: chartIds.filter((_, c) => parts[c] !== noUpdate()) },
          merged || noUpdate(),
          healthChanged ? frame.status : noUpdate(),
          reloadOut(unknown || storeBack),
          alerts || noUpdate(),
        ];
      },

      /* One chart's part of a frame, drawn in a task of its own: a click, a range switch or a
       * zoom waits for one chart's redraw at most, never for all of them. Returns the figure
       * (with its alert bands) and what it drew: the part (its history load and frame) and how
       * many tail points each trace now holds. */
      draw: function (part, figure, drawn, config, alertsLive, alertsHistory) {
        const chartId = window.dash_clientside.callback_context.outputs_list[0].id.id;
        if (!part) return [noUpdate(), noUpdate()];
        return new Promise((resolve) => inBackground(() => {
          // A history load that replaced the figure meanwhile (a range switch) is not drawn over.
          const current = window.dash_component_api.getLayout({ type: "chart", id: chartId });
          if (current && current.props.figure !== figure) return resolve([noUpdate(), { load: part.load, id: part.id, tails: {} }]);
          const same = !part.fresh && drawn && drawn.load === part.load;
          const tails = same ? Object.assign({}, drawn.tails) : {};
          const extended = part.live ? drawChart(figure, part.series, tails, config.charts[chartId], config, config.levels[part.level]) : null;
          const banded = withAlertBands(extended, figure, chartId, part.live, config, alertsLive, alertsHistory);
          resolve([banded || noUpdate(), { load: part.load, id: part.id, tails: tails }]);
        }));
      },

      /* Ask for the next frame once every chart has drawn this one and it is on screen: a frame
       * asked for any sooner would wait behind those redraws and carry readings that are already
       * old when it is drawn. Under load the readings that come meanwhile share the next frame,
       * drawn at the same cost (a chart holds a few points per pixel column).
       * How long the frame took from its arrival to the screen also sets the page's resolution
       * (`resolution`, see nextResolution): a change of it reloads the history in the new
       * resolution's buckets, and the stream continues in them. */
      ack: function (drawn, liveState, resolution, cursor, config) {
        const none = [noUpdate(), noUpdate(), noUpdate()];
        if (!liveState || liveState.n === undefined) return none;
        const chartIds = window.dash_clientside.callback_context.inputs_list[0].map((i) => i.id.id);
        const done = (id) => { const d = drawn[chartIds.indexOf(id)]; return d && d.id === liveState.id; };
        if (!liveState.charts.every(done)) return none;
        // Timed: frames that drew a chart, not a connection's first (it draws the whole history),
        // drawn live at the resolution the page asked for (not while its history reloads), on a
        // page in view (a hidden one is not painted: the animation frame waits until it shows).
        const level = resolution ? resolution.level : 0;
        const timed = liveState.n > 0 && liveState.charts.length > 0 && cursor && cursor.live && cursor.load === liveState.load
          && cursor.level === level && !document.hidden;
        const asked = performance.now();
        return new Promise((resolve) => requestAnimationFrame(() => {
          const now = performance.now();
          const painted = now - asked < PAINT_WAIT_MS;
          const next = timed && painted ? nextResolution(resolution, now - liveState.id, Date.now(), config) : null;
          const reload = next && next.level !== level ? Date.now() : noUpdate();
          resolve([liveState.n + " " + liveState.cursor, next || noUpdate(), reload]);
        }));
      },

      /* The cards' HTML (assets/markup.js), one a sensor of `latest` in its order: value, age,
       * stale (no reading for config.staleMs: "last seen …", class card-stale, counted in the
       * header), a flag when the value is outside a chart's band, and the rules firing for its
       * sensor (`firing`, from assets/alerts.js: class card-firing). Each card carries its
       * sensor in `data-sensor`. */
      cards: function (_tick, _cursor, firing, latest, config) {
        const tag = window.dash_clientside.markup.tag;
        const now = Date.now();
        let staleCount = 0;
        const cards = Object.entries(latest || {}).map(([id, item]) => {
          const fields = config ? config.cards[item.topic] : null;
          const value = fields ? fields.map(([field, label, unit, scale, digits]) => label + (item[field] * scale).toFixed(digits) + unit).join(" · ") : "–";
          const stale = Boolean(config && now - item.ts >= config.staleMs);
          const rules = (firing || {})[id] || "";
          const flag = [rules && "firing: " + rules, outOfBand(item, config)].filter(Boolean).join(" · ");
          const title = item.key + " · " + (config ? config.cardTitles[item.topic] : item.topic);
          const age = stale ? "stale · last seen " + formatAge(now - item.ts) : formatAge(now - item.ts);
          const classes = "card" + (stale ? " card-stale" : "") + (flag ? " card-alert" : "") + (rules ? " card-firing" : "");
          staleCount += stale ? 1 : 0;
          return tag("div", { class: classes, "data-sensor": id }, [
            tag("div", { class: "card-title" }, title), tag("div", { class: "card-value" }, value),
            tag("div", { class: "card-flag" }, flag), tag("div", { class: "card-age" }, age),
          ]);
        });
        return [cards.join(""), staleCount ? staleCount + " stale" : ""];
      },

      badge: function (wsState, health, cursor) {
        if (wsState && wsState.code === BUSY) return ["server busy, retrying", "badge badge-wait"];
        const open = wsState && wsState.readyState === WebSocket.OPEN;
        if (!open) return [cursor ? "reconnecting" : "connecting", "badge badge-wait"];
        if (health && health.broker === false) return ["broker unreachable", "badge badge-down"];
        if (health && health.store === false) return ["store unreachable", "badge badge-down"];
        if (cursor && !cursor.live) return [cursor.shown, "badge badge-history"];
        return ["live", "badge badge-live"];
      },
    },
  });

  /* The `alerts-live` store with a frame's alert changes added (null when it brings none); changes
   * older than a day leave it, and at most ALERTS_KEPT stay (a rule flapping all day). */
  function mergeAlerts(alertsLive, changes) {
    if (!changes || !changes.length) return null;
    const cutoff = Date.now() - ALERTS_KEEP_MS;
    const all = Object.values((alertsLive || {}).changes || {}).concat(changes).filter((c) => c.ts >= cutoff);
    const kept = {};
    for (const c of all.sort((a, b) => a.ts - b.ts).slice(-ALERTS_KEPT)) kept[c.id] = c;
    return { changes: kept };
  }

  /* A chart's figure with a band over the time each of its alerts fired (assets/alerts.js
   * shapes), null when it needs no redraw: `drawn` (the figure with a frame's points, or null)
   * is given new bands when they differ from those it has (an alert fired or resolved, a
   * history load replaced the figure), and an open band is stretched to now only when the
   * chart redraws anyway (a redraw costs more than the band's last fraction of a second). */
  function withAlertBands(drawn, figure, chartId, live, config, alertsLive, alertsHistory) {
    const alerting = window.dash_clientside.alerts;
    const now = Date.now();
    const from = live ? now - config.windowMs : -Infinity;
    // By name (episode and end): an open band's end moves with the clock, and a closed one's
    // start with the live window, neither worth a redraw of its own.
    const sign = (shapes) => shapes.map((s) => s.name).join(",");
    const isBand = (s) => String(s.name || "").startsWith("alert|");
    const base = drawn || figure;
    if (!base || !base.layout) return null;
    const shapes = alerting.shapes(alerting.episodes(alertsHistory, alertsLive), chartId, config.alertCharts, now, from, Infinity);
    const current = base.layout.shapes || [];
    const same = sign(current.filter(isBand)) === sign(shapes);
    if (same && !(drawn && sign(shapes).includes("|open"))) return drawn;
    const layout = Object.assign({}, base.layout, { shapes: current.filter((s) => !isBand(s)).concat(shapes) });
    return Object.assign({}, base, { layout: layout });
  }

  /* The page's resolution after a frame that took `drawMs` to draw: {level (an index into
   * config.levels, finest first), busy (the running mean of drawing times at that level), since
   * (its first frame)}. Once a level has been kept HOLD_MS, a mean over config.drawBudgetMs
   * takes as many steps coarser as halving the points per step would need to meet the budget,
   * where the level's buckets hold several readings (a raw series drawn coarser is no cheaper);
   * a mean under a quarter of it takes one step finer (a step doubles the points: the hysteresis
   * keeps the page from going back and forth). */
  function nextResolution(resolution, drawMs, now, config) {
    const level = resolution ? resolution.level : 0;
    if (!resolution || resolution.busy === null) return { level: level, busy: drawMs, since: now };
    const busy = resolution.busy + MEAN_WEIGHT * (drawMs - resolution.busy);
    const budget = config.drawBudgetMs;
    let next = level;
    if (now - resolution.since >= HOLD_MS) {
      const fewer = config.levels[level].aggregates; // else coarser buckets would hold as many points, or more
      if (busy > budget && fewer) next = Math.min(config.levels.length - 1, level + Math.ceil(Math.log2(busy / budget)));
      else if (busy < budget / 4) next = Math.max(0, level - 1);
    }
    return next === level ? { level: level, busy: busy, since: resolution.since } : { level: next, busy: null, since: now };
  }

  /* Run `task` when the page has nothing more urgent to do (input, timers, rendering come
   * first): the Prioritized Task Scheduling API where the browser has it, else a timer. */
  function inBackground(task) {
    if (window.scheduler && window.scheduler.postTask) window.scheduler.postTask(task, { priority: "background" });
    else setTimeout(task, 0);
  }

  /* What is out of range in a card's reading: the labels of the bands it breaks, or "". */
  function outOfBand(item, config) {
    if (!item || !config || !config.limits) return "";
    const broken = [];
    for (const [series, bands] of Object.entries(config.limits)) {
      const [topic, field] = series.split("|");
      if (topic !== item.topic || typeof item[field] !== "number") continue;
      for (const band of bands) {
        const [, , alert, label, scale] = band;
        if (breaks(band, item[field] * scale) && !broken.includes(label)) broken.push(alert ? label : "outside " + label);
      }
    }
    return broken.join(" · ");
  }

  /* The start of the live bucket that time `t` falls in (dash_app/live.py's Buckets). */
  function bucketStart(t, bucketMs) {
    return Math.floor(t / bucketMs) * bucketMs;
  }

  /* How far a value in the chart's unit is out of range: its distance to the nearest limit of
   * the bands it breaks, -1 when it breaks none (figures.out_depth). */
  function outDepth(bands, v) {
    let depth = -1;
    for (const band of bands) {
      if (!breaks(band, v)) continue;
      const limits = [band[0], band[1]].filter((limit) => limit !== null);
      depth = Math.max(depth, limits.length ? Math.min(...limits.map((limit) => Math.abs(v - limit))) : 0);
    }
    return depth;
  }

  /* Whether a value in the chart's unit is out of range for a band [low, high, alert, ...]: outside
   * a comfort range, or inside a danger zone (the rule of dash_app/charts.py's Band). */
  function breaks([low, high, alert], v) {
    const inside = (low === null || v >= low) && (high === null || v <= high);
    return alert ? inside : !inside;
  }

  function formatAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
})();
