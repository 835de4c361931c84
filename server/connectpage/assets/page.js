// The connect page's script. The page works without it (full-page mode);
// in a popup or an iframe it tells the application the outcome of a flow.
// Messages go to exact origins from the sidecar's configuration, never a wildcard.
(function () {
  "use strict";
  var MSG = "tokenvault.connect";
  function origins(el) {
    return el && el.dataset.origins ? el.dataset.origins.split(" ").filter(Boolean) : [];
  }
  var res = document.getElementById("tv-result");
  if (res) {
    var msg = {
      type: MSG,
      provider: res.dataset.provider,
      connectionId: res.dataset.connection || null,
      status: res.dataset.status
    };
    if (window.opener) {
      // A message whose target origin is not the opener's is dropped by
      // the browser: posting to each configured origin reaches only the
      // one that opened us.
      origins(res).forEach(function (o) { window.opener.postMessage(msg, o); });
    }
  }
  // iframe mode: the flow ran in its own window, which tells this frame
  // (same origin); the frame shows the new state and tells its parent.
  var parents = document.getElementById("tv-parents");
  if (parents) {
    window.addEventListener("message", function (e) {
      if (e.origin !== window.location.origin || !e.data || e.data.type !== MSG) return;
      origins(parents).forEach(function (o) { window.parent.postMessage(e.data, o); });
      window.location.reload();
    });
  }
  var close = document.getElementById("tv-close");
  if (close) close.addEventListener("click", function () { window.close(); });
  var banner = document.getElementById("banner");
  if (banner) banner.focus();
})();
