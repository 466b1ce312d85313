/* Every page: buttons with data-confirm ask before their form is sent. */
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var button = event.submitter || event.target.querySelector("[data-confirm]");
    var text = button && button.getAttribute("data-confirm");
    if (text && !window.confirm(text)) { event.preventDefault(); }
  });
})();

/* Every page of a signed-in user: two minutes before the session ends, a warning with a
   countdown and "Stay signed in" (the idle sign-out, web.idle_timeout_minutes, comes without
   one otherwise); typing into a form counts as being there (at most one keep-alive a minute),
   so a long comment is not cut off by the idle sign-out. The page asks the server how long is
   left (at load, before it warns, when the tab is shown again: another tab's activity counts
   too); asking is not activity. At the end, the page shows the sign-in page, unless something
   typed is on it, which stays to be copied. */
(function () {
  "use strict";
  var body = document.body;
  var stateUrl = body.getAttribute("data-session-url");
  var banner = document.querySelector("[data-idle-warning]");
  if (!stateUrl || !banner || !window.fetch) { return; }
  var keepUrl = body.getAttribute("data-keepalive-url");
  var token = body.getAttribute("data-csrf");
  var text = banner.querySelector("[data-idle-text]");
  var stay = banner.querySelector("[data-idle-stay]");
  var WARN = 120;             // seconds before the end
  var TYPING = 60000;         // typing keeps the session open, at most once a minute
  var timer = null;
  var ticker = null;
  var endsAt = 0;
  var endsBy = "idle";
  var lastKept = Date.now();
  var over = false;
  var keeping = false;

  function typed() {
    return Array.prototype.some.call(document.querySelectorAll("textarea, input[type=text]"),
                                     function (t) { return t.value.trim() !== ""; });
  }

  function clock(seconds) {
    var s = Math.max(0, Math.round(seconds));
    return Math.floor(s / 60) + ":" + ("0" + (s % 60)).slice(-2);
  }

  function render() {
    var left = (endsAt - Date.now()) / 1000;
    text.textContent = endsBy === "idle"
      ? "You will be signed out in " + clock(left) + " because nothing was done on this console."
      : "Your session ends in " + clock(left) + " (a session lasts at most "
        + body.getAttribute("data-session-hours") + " hours): finish what you are typing, then "
        + "sign in again.";
  }

  function signedOut() {
    over = true;
    window.clearTimeout(timer);
    window.clearInterval(ticker);
    if (!typed()) { window.location.reload(); return; }
    banner.hidden = false;
    stay.hidden = true;
    text.textContent = "You were signed out. What you typed is still on this page: copy it, "
      + "then reload the page to sign in again.";
  }

  function schedule(state) {
    window.clearTimeout(timer);
    window.clearInterval(ticker);
    endsAt = Date.now() + state.seconds_left * 1000;
    endsBy = state.ends_by;
    var wait = (state.seconds_left - WARN) * 1000;
    if (wait > 0) {
      banner.hidden = true;
      timer = window.setTimeout(check, wait);
      return;
    }
    banner.hidden = false;
    stay.hidden = endsBy !== "idle";
    render();
    ticker = window.setInterval(render, 1000);
    // Asked again at the end (or sooner: activity in another tab may have kept the session).
    timer = window.setTimeout(check, Math.min(30000, state.seconds_left * 1000 + 1000));
  }

  function ask(request) {
    if (over) { return Promise.resolve(); }
    return window.fetch(request.url, request.options)
      .then(function (response) {
        if (response.status === 401) { signedOut(); throw new Error("signed out"); }
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.json();
      })
      .then(function (state) {
        if (!over) { schedule(state); }  // an answer sent before the end arrives after it
      })
      .catch(function () {
        if (!over) { window.clearTimeout(timer); timer = window.setTimeout(check, 30000); }
      });
  }

  function check() {
    ask({ url: stateUrl, options: { credentials: "same-origin",
                                    headers: { "Accept": "application/json" } } });
  }

  function keep() {
    if (keeping) { return; }  // one at a time, however fast the doctor types
    keeping = true;
    lastKept = Date.now();
    ask({ url: keepUrl, options: { method: "POST", credentials: "same-origin",
                                   headers: { "Accept": "application/json",
                                              "X-CSRFToken": token } } })
      .then(function () { keeping = false; });
  }

  stay.addEventListener("click", keep);
  document.addEventListener("input", function () {
    // Typing while warned is being there; otherwise once a minute is enough.
    if (!banner.hidden || Date.now() - lastKept > TYPING) { keep(); }
  });
  // Back at this tab (another tab's activity may have kept the session, or time passed while
  // the computer slept): asked again.
  window.addEventListener("focus", check);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") { check(); }
  });
  check();
})();
