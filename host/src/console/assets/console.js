// Bulkhead console: the one script. Pages work without it; with it the
// approvals inbox updates live from server-sent events. The server sends
// the inbox already rendered and escaped; nothing here builds markup
// from data.
"use strict";
(function () {
  var inbox = document.getElementById("inbox");
  if (!inbox || !window.EventSource) return;
  var source = new EventSource(inbox.getAttribute("data-events"));
  source.addEventListener("inbox", function (event) {
    // Keep a reason being typed: do not replace the list under a focused field.
    var active = document.activeElement;
    if (active && inbox.contains(active) && active.tagName === "TEXTAREA" && active.value) return;
    inbox.innerHTML = event.data;
    inbox.setAttribute("data-updated", String(Date.now()));
  });
  source.addEventListener("error", function () {
    // Signed out or the host went away: the browser retries by itself; a
    // closed stream (sign-out) shows as a stale inbox, reload signs in.
    inbox.setAttribute("data-stream", "error");
  });
})();
