/* Review page: blast overlay toggle and opacity; the corrected-stage field follows the decision. */
(function () {
  "use strict";
  document.querySelectorAll(".image-card").forEach(function (card) {
    var overlay = card.querySelector("[data-overlay]");
    var toggle = card.querySelector("[data-toggle]");
    var opacity = card.querySelector("[data-opacity]");
    if (!overlay || !toggle || !opacity) { return; }
    function apply() {
      overlay.style.opacity = toggle.checked ? String(opacity.value / 100) : "0";
      opacity.disabled = !toggle.checked;
    }
    toggle.addEventListener("change", apply);
    opacity.addEventListener("input", apply);
    apply();
  });
  // A crop clicked in the cell gallery (gallery.js): mark the cell on its field.
  document.addEventListener("bcd:show-cell", function (event) {
    var cell = event.detail;
    var viewer = document.querySelector('.viewer[data-instance="' + cell.instance + '"]');
    if (!viewer || !cell.shape || viewer.hasAttribute("data-zoomable")) { return; }
    var mark = viewer.querySelector(".cell-mark");
    if (!mark) {
      mark = document.createElement("div");
      mark.className = "cell-mark";
      viewer.appendChild(mark);
    }
    mark.style.left = (100 * cell.x / cell.shape[1]) + "%";
    mark.style.top = (100 * cell.y / cell.shape[0]) + "%";
    mark.style.width = (100 * cell.width / cell.shape[1]) + "%";
    mark.style.height = (100 * cell.height / cell.shape[0]) + "%";
    mark.dataset.cell = String(cell.index);
    viewer.scrollIntoView({ block: "nearest", behavior: "smooth" });
  });
  document.querySelectorAll("[data-verify]").forEach(function (form) {
    var decision = form.querySelector("[data-decision]");
    var stage = form.querySelector("[data-stage]");
    if (!decision || !stage) { return; }
    function apply() {
      var correcting = decision.value === "correct";
      stage.disabled = !correcting;
      stage.closest(".field").classList.toggle("dim", !correcting);
    }
    decision.addEventListener("change", apply);
    apply();
  });
})();
