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
