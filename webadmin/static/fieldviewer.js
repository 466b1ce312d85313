/* Zoom and pan on a field at full resolution (OpenSeadragon, vendored under static/vendor).
   Each .viewer[data-zoomable] gets a viewer of its image, with the blast overlay as a second
   layer that the "Blast overlay" box and the opacity slider of its card control. A crop clicked
   in the cell gallery (gallery.js, event "bcd:show-cell") zooms to the cell and marks it. */
(function () {
  "use strict";
  if (typeof OpenSeadragon === "undefined") { return; }
  var viewers = {};

  function setup(box) {
    var card = box.closest(".image-card") || document;
    var toggle = card.querySelector("[data-toggle]");
    var opacity = card.querySelector("[data-opacity]");
    box.textContent = "";
    var viewer = OpenSeadragon({
      element: box,
      tileSources: { type: "image", url: box.dataset.imageUrl, buildPyramid: true },
      showNavigationControl: false,
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      crossOriginPolicy: false
    });
    var state = { viewer: viewer, overlay: null, mark: null, width: Number(box.dataset.width),
                  height: Number(box.dataset.height) };
    viewers[box.dataset.instance] = state;

    function applyOverlay() {
      if (!state.overlay || !toggle || !opacity) { return; }
      state.overlay.setOpacity(toggle.checked ? opacity.value / 100 : 0);
      opacity.disabled = !toggle.checked;
      box.dataset.overlayOpacity = String(state.overlay.getOpacity());
    }
    viewer.addHandler("open", function () {
      // What a test (or a curious user) can read: the picture's own size, at full resolution.
      box.dataset.imageWidth = String(viewer.world.getItemAt(0).getContentSize().x);
      box.dataset.ready = "true";
      // The picture, once loaded, also serves the cell gallery's crops (gallery.js): one
      // download of the field, not two.
      var picture = viewer.world.getItemAt(0).source.image || null;
      box.fieldImage = picture;
      document.dispatchEvent(new CustomEvent("bcd:field-image", { detail: {
        instance: box.dataset.instance, image: picture } }));
      if (!box.dataset.overlayUrl) { return; }
      viewer.addTiledImage({
        tileSource: { type: "image", url: box.dataset.overlayUrl, buildPyramid: true },
        opacity: 0,
        success: function (event) {
          state.overlay = event.item;
          applyOverlay();
          box.dataset.overlay = "true";
        }
      });
    });
    if (toggle && opacity) {
      toggle.addEventListener("change", applyOverlay);
      opacity.addEventListener("input", applyOverlay);
    }
    card.querySelectorAll("[data-zoom]").forEach(function (button) {
      button.addEventListener("click", function () {
        var how = button.dataset.zoom;
        if (how === "home") { viewer.viewport.goHome(); return; }
        viewer.viewport.zoomBy(how === "in" ? 1.6 : 1 / 1.6);
        viewer.viewport.applyConstraints();
      });
    });
  }

  document.addEventListener("bcd:show-cell", function (event) {
    var cell = event.detail;
    var state = viewers[cell.instance];
    if (!state || !state.viewer.world.getItemCount()) { return; }
    var viewer = state.viewer;
    var image = viewer.world.getItemAt(0);
    // The cells are in the analysed image's pixels; the picture may be smaller (a preview).
    var size = image.getContentSize();
    var sx = cell.shape ? size.x / cell.shape[1] : 1, sy = cell.shape ? size.y / cell.shape[0] : 1;
    var rect = image.imageToViewportRectangle(cell.x * sx, cell.y * sy, cell.width * sx,
                                              cell.height * sy);
    if (!state.mark) {
      state.mark = document.createElement("div");
      state.mark.className = "cell-mark";
      viewer.addOverlay({ element: state.mark, location: rect });
    } else {
      viewer.updateOverlay(state.mark, rect);
    }
    state.mark.dataset.cell = String(cell.index);
    var margin = Math.max(rect.width, rect.height) * 2;
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(rect.x - margin, rect.y - margin,
                                                     rect.width + 2 * margin,
                                                     rect.height + 2 * margin));
    var box = viewer.element;
    box.dataset.shownCell = String(cell.index);
    box.scrollIntoView({ block: "nearest", behavior: "smooth" });
  });

  document.querySelectorAll(".viewer[data-zoomable]").forEach(setup);
})();
