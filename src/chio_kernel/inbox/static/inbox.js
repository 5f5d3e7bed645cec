// Keeps an open inbox page true: every few seconds it asks the inbox where each approval on the
// page stands (GET .../state, same origin, JSON) and shows an answer given elsewhere (the CLI,
// another approver). No HTML is built from data: only textContent is set.
(function () {
  "use strict";
  var EVERY_MS = 2000;
  function poll() {
    document.querySelectorAll("[data-poll]").forEach(function (card) {
      fetch(card.getAttribute("data-poll"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) {
          if (!s || s.status === "pending") { return; }
          var live = card.querySelector(".live");
          if (live) { live.textContent = s.text; }
          card.classList.remove("pending");
          card.classList.add(s.status);
          card.querySelectorAll("form.answer button").forEach(function (b) { b.disabled = true; });
        })
        .catch(function () { /* the inbox is unreachable: try again next time */ });
    });
    document.querySelectorAll("[data-poll-reload]").forEach(function (el) {
      fetch(el.getAttribute("data-poll-reload"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) { if (s && s.key !== el.getAttribute("data-state-key")) { window.location.reload(); } })
        .catch(function () {});
    });
  }
  window.setInterval(poll, EVERY_MS);
})();
