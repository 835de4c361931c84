// tokenvault connect page, popup mode. Serve it from the sidecar and use:
//
//   <script src="https://sidecar.example.com/connect/embed.js"></script>
//   const result = await TokenVault.connect(sessionURL);
//   // result: {type, provider, connectionId, status}
//
// status is "connected", "reconnected", "disconnected", "denied", "failed",
// "unavailable", or "closed" when the user closed the window first. The
// page posts only to origins configured on the sidecar
// (connect_page.popup_origins); this script accepts messages only from the
// sidecar's origin and from the window it opened.
(function () {
  "use strict";
  var script = document.currentScript;
  var SIDECAR = new URL(script ? script.src : window.location.href).origin;

  function connect(sessionURL, options) {
    options = options || {};
    return new Promise(function (resolve, reject) {
      var u;
      try { u = new URL(sessionURL, SIDECAR); } catch (e) { reject(e); return; }
      if (u.origin !== SIDECAR) { reject(new Error("tokenvault: the session URL is not on " + SIDECAR)); return; }
      u.searchParams.set("mode", "popup");
      var w = window.open(u.href, options.name || "tokenvault-connect",
        "popup,width=" + (options.width || 520) + ",height=" + (options.height || 720));
      if (!w) { reject(new Error("tokenvault: the popup was blocked")); return; }
      var timer = setInterval(function () {
        if (w.closed) { done({ type: "tokenvault.connect", provider: null, connectionId: null, status: "closed" }); }
      }, 400);
      function onMessage(e) {
        if (e.origin !== SIDECAR || e.source !== w || !e.data || e.data.type !== "tokenvault.connect") return;
        done(e.data);
        if (options.keepOpen !== true) { try { w.close(); } catch (_) {} }
      }
      function done(result) {
        clearInterval(timer);
        window.removeEventListener("message", onMessage);
        resolve(result);
      }
      window.addEventListener("message", onMessage);
    });
  }
  window.TokenVault = { connect: connect };
})();
