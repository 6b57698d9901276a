/* Live charts for the sensor dashboard, all in the browser: no server callback per point.
 *
 * The server pushes frames over /ws/live; each frame holds every point after the client's
 * cursor ("<epoch>:<seq>") up to its own `to`. The dash-extensions WebSocket component passes
 * only its newest `message` to callbacks, so frames that arrive while the page is busy would be
 * lost (emilhe/dash-extensions#214). We therefore queue every frame of the live socket here and
 * use the `message` prop only as a doorbell: `drain` takes the whole queue each time.
 *
 * Drawing is the expensive part: every extendData redraws the whole SVG chart. So `drain` never
 * redraws sooner than 1.5 times the time recent redraws took (measured), and a short interval
 * picks up frames it left queued. A point arriving at a quiet moment is drawn at once; under load
 * the browser spends at most about two thirds of its time drawing, and frames share a redraw.
 */
(function () {
  "use strict";
  const state = {
    frames: [], socket: null, cursor: null, loaded: null, live: false, traces: {},
    latest: {}, health: {}, gap: false, attempts: 0, lastAttempt: 0, lastReload: 0,
    lastDraw: 0, drawMs: 0,
  };
  window.dashLive = state; // tests and curious analysts can look inside

  const NativeWebSocket = window.WebSocket;
  class QueuedWebSocket extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      if (String(url).indexOf("/ws/live") >= 0) {
        state.socket = this;
        this.addEventListener("message", (event) => state.frames.push(event.data));
      }
    }
  }
  window.WebSocket = QueuedWebSocket;

  const seqOf = (cursor) => Number(String(cursor).split(":")[1]);
  const epochOf = (cursor) => String(cursor).split(":")[0];

  function socketUrl(cursor) {
    state.attempts += 1;
    state.lastAttempt = Date.now();
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + "/ws/live?since=" + encodeURIComponent(cursor) + "&attempt=" + state.attempts;
  }

  function formatAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  const noUpdate = () => window.dash_clientside.no_update;
  const MIN_GAP_MS = 40;
  const MAX_GAP_MS = 1000;

  /* Every chart update goes through Plotly.extendTraces (dcc.Graph's extendData). We wrap it to
   * time each redraw until it is done, and to drop points a trace already holds: dcc.Graph
   * re-applies a queued extendData when the next one arrives before the first finished drawing
   * (it clears its queue only after the redraw), which would draw those points twice. Each
   * series arrives in time order, so a point at or before its trace's last x is already drawn.
   * The same check covers a frame that overlaps the history it follows. */
  function newPoints(gd, update, indices) {
    const fresh = {};
    let any = false;
    for (const key of Object.keys(update)) fresh[key] = [];
    indices.forEach((index, k) => {
      const x = (gd.data[index] || {}).x || [];
      let last = x.length ? Number(x[x.length - 1]) : -Infinity;
      const keep = update.x[k].map((v) => {
        if (Number(v) <= last) return false;
        last = Number(v);
        return true;
      });
      any = any || keep.some(Boolean);
      for (const key of Object.keys(update)) fresh[key].push(update[key][k].filter((_, j) => keep[j]));
    });
    return any ? fresh : null;
  }

  function wrapExtendTraces(Plotly) {
    if (!Plotly || !Plotly.extendTraces || Plotly.extendTraces.wrapped) return;
    const original = Plotly.extendTraces;
    const wrapped = function (gd, update, indices, maxPoints) {
      const root = typeof gd === "string" ? document.getElementById(gd) : gd;
      if (root && root.data && update && update.x && Array.isArray(indices)) {
        update = newPoints(root, update, indices);
        if (!update) return Promise.resolve(root); // nothing new: skip the redraw
      }
      const start = performance.now();
      const done = () => { state.drawMs = 0.7 * state.drawMs + 0.3 * (performance.now() - start); };
      const result = original.call(this, gd, update, indices, maxPoints);
      if (result && result.then) result.then(done, done); else done();
      return result;
    };
    wrapped.wrapped = true;
    Plotly.extendTraces = wrapped;
  }

  // dcc.Graph loads plotly.js on demand, after this file: wrap it the moment it is assigned.
  let plotly = window.Plotly;
  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => plotly,
    set: (value) => { plotly = value; wrapExtendTraces(value); },
  });
  wrapExtendTraces(plotly);

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    live: {
      /* Open the socket after each history load, from the cursor the history ends at; reopen
       * it from our own cursor when it closed or a frame went missing. */
      connect: function (cursor, _tick, wsState) {
        if (!cursor) return noUpdate();
        if (cursor.load !== state.loaded) {
          state.loaded = cursor.load;
          state.cursor = cursor.cursor;
          state.live = cursor.live;
          state.traces = cursor.traces;
          state.frames = [];
          state.gap = false;
          return socketUrl(state.cursor);
        }
        const closed = !wsState || wsState.readyState === NativeWebSocket.CLOSED;
        if ((closed || state.gap) && Date.now() - state.lastAttempt > 1000) {
          state.gap = false;
          return socketUrl(state.cursor);
        }
        return noUpdate();
      },

      /* Apply every queued frame in order; append chart points with extendData. */
      drain: function (_message, _tick, cursor, config) {
        const ctx = window.dash_clientside.callback_context;
        const chartIds = ctx.outputs_list[0].map((o) => o.id.id);
        const idle = [chartIds.map(noUpdate), noUpdate(), noUpdate()];
        const gap = Math.min(MAX_GAP_MS, Math.max(MIN_GAP_MS, 1.5 * state.drawMs));
        if (!state.frames.length || performance.now() - state.lastDraw < gap) return idle;
        // A new history has reached the charts but `connect` has not taken its cursor yet: points
        // drained now would be measured against the old history, and dcc.Graph applies extendData
        // queued behind a new figure on top of it, drawing them twice. Wait for `connect`.
        if (!cursor || cursor.load !== state.loaded) return idle;
        const adds = {};
        let reload = false;
        const health = JSON.stringify(state.health);
        for (const raw of state.frames.splice(0)) {
          const frame = JSON.parse(raw);
          if (frame.reset) { reload = true; continue; }
          state.health = frame.status;
          if (frame.from !== state.cursor) {
            const old = epochOf(frame.to) === epochOf(state.cursor) && seqOf(frame.to) <= seqOf(state.cursor);
            if (!old) state.gap = true; // a frame went missing: reconnect from our cursor
            continue;
          }
          state.cursor = frame.to;
          for (const [topic, rows] of Object.entries(frame.rows)) {
            const columns = config.topics[topic];
            for (const row of rows) {
              const id = topic + "|" + row[1];
              const prev = state.latest[id];
              if (!prev || row[0] >= prev.ts) {
                const item = { ts: row[0], topic: topic, key: row[1] };
                columns.forEach((c, i) => { if (i > 1) item[c] = row[i]; });
                state.latest[id] = item;
                if (!prev) reload = true; // a new sensor: its card and traces come with history
              }
            }
            if (!state.live) continue;
            for (const chart of config.charts) {
              if (chart.topic !== topic) continue;
              const traces = state.traces[chart.id];
              for (const row of rows) {
                chart.fields.forEach((field, f) => {
                  const meta = row[1] + "|" + field;
                  const index = traces[meta];
                  if (index === undefined) { reload = true; return; }
                  const add = adds[chart.id] || (adds[chart.id] = {});
                  const trace = add[index] || (add[index] = { x: [], y: [] });
                  trace.x.push(row[0]);
                  trace.y.push(row[chart.columns[f]]);
                });
              }
            }
          }
        }
        if (cursor && cursor.error && state.health.store) reload = true; // the store is back
        const extend = chartIds.map((id) => {
          const add = adds[id];
          if (!add) return noUpdate();
          const indices = Object.keys(add).map(Number);
          return [{ x: indices.map((i) => add[i].x), y: indices.map((i) => add[i].y) }, indices, config.maxPoints];
        });
        if (Object.keys(adds).length) state.lastDraw = performance.now();
        let reloadOut = noUpdate();
        if (reload && Date.now() - state.lastReload > 2000) {
          state.lastReload = Date.now();
          reloadOut = state.lastReload;
        }
        const healthOut = JSON.stringify(state.health) === health ? noUpdate() : Object.assign({}, state.health);
        return [extend, reloadOut, healthOut];
      },

      cards: function (latest, _tick, config) {
        const ctx = window.dash_clientside.callback_context;
        const ids = ctx.outputs_list[0].map((o) => o.id.id);
        if (latest) {
          for (const [id, item] of Object.entries(latest)) {
            const prev = state.latest[id];
            if (!prev || item.ts > prev.ts) state.latest[id] = item;
          }
        }
        const values = ids.map((id) => {
          const item = state.latest[id];
          const fields = item && config ? config.cards[item.topic] : null;
          if (!item || !fields) return "–";
          return fields.map(([field, label, unit, scale, digits]) => label + (item[field] * scale).toFixed(digits) + unit).join(" · ");
        });
        const ages = ids.map((id) => (state.latest[id] ? formatAge(Date.now() - state.latest[id].ts) : ""));
        return [values, ages];
      },

      badge: function (wsState, health) {
        const open = wsState && wsState.readyState === NativeWebSocket.OPEN;
        if (!open) return [state.loaded ? "reconnecting" : "connecting", "badge badge-wait"];
        if (health && health.broker === false) return ["broker unreachable", "badge badge-down"];
        if (health && health.store === false) return ["store unreachable", "badge badge-down"];
        return ["live", "badge badge-live"];
      },
    },
  });
})();
