// The overview refreshes its live section without a full reload: fetch the
// server-rendered fragment (same origin, same credentials) and swap it in.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  var url = live.getAttribute("data-refresh");
  var busy = false;
  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          live.innerHTML = html;
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
      });
  }
  setInterval(refresh, 5000);
})();
