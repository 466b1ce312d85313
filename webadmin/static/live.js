/* Live pages: the worklist and an open case poll a small JSON endpoint and refresh on their
   own. A case reloads when its status changes (e.g. its summary arrived, its signed report is
   made) unless the doctor is filling in a form; other changes are offered as a link. The
   worklist updates status, stage and confidence in place and reloads when cases arrive.
   Neither the polls nor these reloads count as the doctor's activity (webadmin/auth.py): a page
   left open still signs out when idle, and a poll answered 401 (signed out) reloads the page,
   which then shows the sign-in page. */
(function () {
  "use strict";
  var PERIOD = 10000;

  function busy(root) {
    if (root.querySelector(".has-error")) { return true; }  // a refused form, as typed
    var active = document.activeElement;
    if (active && root.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
      return true;
    }
    return Array.prototype.some.call(root.querySelectorAll("textarea"), function (t) {
      return t.value.trim() !== "";
    });
  }

  var RELOAD_COOKIE = "bcd_live_reload";

  function reload() {
    // Marks this page view, and the pictures it loads, as the refresh's own rather than the
    // doctor's: removed at the doctor's first click or key press on the reloaded page, or
    // after 60 s.
    document.cookie = RELOAD_COOKIE + "=1; path=/; max-age=60; samesite=strict";
    window.location.reload();
  }

  if (document.cookie.split("; ").indexOf(RELOAD_COOKIE + "=1") !== -1) {
    var forget = function () {
      document.cookie = RELOAD_COOKIE + "=; path=/; max-age=0; samesite=strict";
      document.removeEventListener("pointerdown", forget, true);
      document.removeEventListener("keydown", forget, true);
    };
    document.addEventListener("pointerdown", forget, true);
    document.addEventListener("keydown", forget, true);
  }

  function poll(url, handle) {
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (response.status === 401) {
            // Signed out: reloaded, the page is the sign-in page; not while the doctor has
            // typed something, which stays on the screen to be copied.
            if (!busy(document.body)) { window.location.reload(); }
            throw new Error("signed out");
          }
          if (!response.ok) { throw new Error(String(response.status)); }
          return response.json();
        })
        .then(handle)
        .catch(function () { /* offline or signed out: try again later */ })
        .then(function () { window.setTimeout(tick, PERIOD); });
    }
    window.setTimeout(tick, PERIOD);
  }

  function setBadge(holder, status, label) {
    if (!holder) { return; }
    var badge = holder.querySelector(".badge") || holder;
    badge.className = "badge status-" + status;
    badge.textContent = label;
  }

  var page = document.querySelector("[data-case]");
  if (page) {
    var status = page.getAttribute("data-status");
    var ready = page.getAttribute("data-report-ready") === "true";
    poll(page.getAttribute("data-state-url"), function (state) {
      setBadge(page.querySelector("[data-live-status]"), state.status, state.status_label);
      var due = page.querySelector("[data-summary-due]");
      if (due && state.summary_due) { due.textContent = state.summary_due; }
      state.fields.forEach(function (f) {
        var cell = page.querySelector('[data-field="' + f.number + '"] [data-flags]');
        if (cell) { cell.textContent = f.flags.join(", "); }
      });
      var changed = state.status !== status || state.report_ready !== ready;
      if (changed && !busy(page)) {
        reload();
      } else if (state.version !== page.getAttribute("data-version")) {
        var note = page.querySelector("[data-live-note]");
        if (note) { note.hidden = false; }
      }
    });
  }

  var list = document.querySelector("[data-worklist]");
  if (list) {
    var known = list.getAttribute("data-uids");
    poll(list.getAttribute("data-state-url"), function (state) {
      state.rows.forEach(function (row) {
        var tr = list.querySelector('tr[data-uid="' + row.uid + '"]');
        if (!tr) { return; }
        setBadge(tr.querySelector("[data-status]"), row.status, row.status_label);
        var stage = tr.querySelector("[data-stage] .badge");
        if (stage) {
          stage.className = "badge stage stage-" + (row.stage ? row.stage.toLowerCase() : "none");
          stage.textContent = row.stage || "—";
        }
        var conf = tr.querySelector("[data-confidence]");
        if (conf) {
          // The figure, and the mark of a case that needs review with its reasons (it was
          // wiped by the first refresh when the figure alone was written).
          conf.textContent = row.confidence === null ? "—" : Math.round(row.confidence * 100) + " %";
          if (row.attention.length) {
            var mark = document.createElement("span");
            mark.className = "warnicon";
            mark.setAttribute("data-attention", "");
            mark.title = "Needs review: " + row.attention.join("; ");
            mark.setAttribute("aria-label", mark.title);
            mark.textContent = "▲";
            conf.appendChild(document.createTextNode(" "));
            conf.appendChild(mark);
          }
        }
        tr.classList.toggle("attention", row.attention.length > 0 || row.status === "failed");
      });
      if (state.uids !== known && !busy(document.querySelector("form.filters") || list)) {
        reload();
      }
    });
  }
})();
