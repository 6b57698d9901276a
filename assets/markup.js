/* HTML for the parts of the page drawn whole as one string into a dash_extensions Purify (the
 * cards, the alerts panel). Drawn as Dash components made afresh on each update, each component
 * is a store update of its own as it mounts, and each store update is work for every component
 * on the page: the alerts panel's rows alone held the page's main thread long enough for a click
 * to wait.
 */
(function () {
  "use strict";
  const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escape(text) {
    return String(text).replace(/[&<>"']/g, (c) => ENTITIES[c]);
  }

  /* `<name attrs>inner</name>`: attribute values (null and undefined left out) and a string
   * `inner` are escaped; an array `inner` is markup already (of `tag`). */
  function tag(name, attrs, inner) {
    const a = Object.entries(attrs || {}).filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => " " + k + '="' + escape(v) + '"').join("");
    const body = Array.isArray(inner) ? inner.join("") : escape(inner === null || inner === undefined ? "" : inner);
    return "<" + name + a + ">" + body + "</" + name + ">";
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, { markup: { tag: tag } });
})();
