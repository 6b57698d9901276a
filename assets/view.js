/* The sensor page's view in the URL (see dash_app/controls.py): the browser's back and forward
 * buttons restore the range the URL names. Choosing a range pushes the entry (a clientside
 * callback); here a popstate sets the controls back from the URL, and the history load follows. */
(function () {
  "use strict";
  const RANGES = ["live", "1h", "24h", "7d", "custom"];
  window.addEventListener("popstate", function () {
    const set = window.dash_clientside && window.dash_clientside.set_props;
    if (!set || !document.getElementById("range")) return; // not the sensor page
    const query = new URLSearchParams(window.location.search);
    const choice = RANGES.includes(query.get("range")) ? query.get("range") : "live";
    if (choice === "custom") {
      const dates = {};
      if (query.get("from")) dates.start_date = query.get("from");
      if (query.get("to")) dates.end_date = query.get("to");
      if (Object.keys(dates).length) set("custom-dates", dates);
    }
    set("range", { value: choice });
  });
})();
