/* Live pages: the worklist and an open case poll a small JSON endpoint and refresh on their
   own. A case reloads when its status changes (e.g. its summary arrived, its signed report is
   made) unless the doctor is filling in a form; other changes are offered as a link. The
   worklist updates status, stage and confidence in place and reloads when cases arrive. */
(function () {
  "use strict";
  var PERIOD = 10000;

  function busy(root) {
    var active = document.activeElement;
    if (active && root.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
      return true;
    }
    return Array.prototype.some.call(root.querySelectorAll("textarea"), function (t) {
      return t.value.trim() !== "";
    });
  }

  function poll(url, handle) {
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
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
        window.location.reload();
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
        if (conf) { conf.textContent = row.confidence === null ? "—" : Math.round(row.confidence * 100) + " %"; }
      });
      if (state.uids !== known && !busy(document.querySelector("form.filters") || list)) {
        window.location.reload();
      }
    });
  }
})();
