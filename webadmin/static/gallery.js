/* Cell gallery (templates/worklist/_gallery.html): one crop per blast cell of a field, drawn
   from the field's image; sort by position, size or score; click a crop to show it on the
   field (a "bcd:show-cell" event that the field viewer answers); "Not a blast" / "Undo" post to
   the node and update the field's and the case's counts and areas wherever the page shows them
   ([data-field-count|area=<result id>], [data-case-count|area=<study id>]). */
(function () {
  "use strict";
  var CROP = 112;      // crop side in CSS pixels
  var MARGIN = 0.25;   // context around the cell, as a share of its box

  function setCounts(data) {
    document.querySelectorAll('[data-field-count="' + data.result_id + '"]').forEach(function (el) {
      el.textContent = String(data.field_count);
    });
    document.querySelectorAll('[data-case-count="' + data.study_id + '"]').forEach(function (el) {
      el.textContent = String(data.case_count);
    });
    // The areas follow the cells as the counts do (written by the node, as the page does).
    document.querySelectorAll('[data-field-area="' + data.result_id + '"]').forEach(function (el) {
      el.textContent = data.field_area;
    });
    if (data.case_area !== null) {
      document.querySelectorAll('[data-case-area="' + data.study_id + '"]').forEach(function (el) {
        el.textContent = data.case_area;
      });
    }
  }

  function ownImage(gallery) {
    var img = new Image();
    img.src = gallery.dataset.imageUrl;
    return new Promise(function (resolve) {
      if (img.complete && img.naturalWidth) { resolve(img); return; }
      img.addEventListener("load", function () { resolve(img); }, { once: true });
    });
  }

  function fieldImage(gallery) {
    // The field's picture as the page already loads it: the zoomable viewer's (fieldviewer.js)
    // or a plain <img data-field-image>; only without either, a download of our own.
    var instance = gallery.dataset.instance;
    var viewer = document.querySelector('.viewer[data-zoomable][data-instance="' + instance + '"]');
    if (viewer && typeof OpenSeadragon !== "undefined") {
      if (viewer.dataset.ready) {
        return viewer.fieldImage ? Promise.resolve(viewer.fieldImage) : ownImage(gallery);
      }
      return new Promise(function (resolve) {
        document.addEventListener("bcd:field-image", function listen(event) {
          if (event.detail.instance !== instance) { return; }
          document.removeEventListener("bcd:field-image", listen);
          if (event.detail.image) { resolve(event.detail.image); } else { resolve(ownImage(gallery)); }
        });
      });
    }
    var shown = document.querySelector('img[data-field-image="' + instance + '"]');
    if (shown) {
      return new Promise(function (resolve) {
        if (shown.complete && shown.naturalWidth) { resolve(shown); return; }
        shown.addEventListener("load", function () { resolve(shown); }, { once: true });
      });
    }
    return ownImage(gallery);
  }

  function drawCrop(canvas, img, cell, shape) {
    var scaleX = shape ? img.naturalWidth / shape[1] : 1;
    var scaleY = shape ? img.naturalHeight / shape[0] : 1;
    var side = Math.max(cell.width, cell.height) * (1 + 2 * MARGIN);
    var cx = cell.x + cell.width / 2, cy = cell.y + cell.height / 2;
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(CROP * ratio);
    canvas.height = Math.round(CROP * ratio);
    var ctx = canvas.getContext("2d");
    ctx.fillStyle = "#10161c";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, (cx - side / 2) * scaleX, (cy - side / 2) * scaleY, side * scaleX,
                  side * scaleY, 0, 0, canvas.width, canvas.height);
    // The cell's box, so that the one meant is clear when cells touch.
    var k = canvas.width / side;
    ctx.strokeStyle = "rgba(255, 0, 160, 0.9)";
    ctx.lineWidth = Math.max(1, ratio);
    ctx.strokeRect((cell.x - (cx - side / 2)) * k, (cell.y - (cy - side / 2)) * k,
                   cell.width * k, cell.height * k);
  }

  function caption(cell, unit) {
    var area = unit === "µm²" ? cell.area_um2 : cell.area_px;
    var text = "#" + cell.index + " · " + (unit === "µm²" ? area.toFixed(0) : area) + " " + unit;
    return text + " · score " + (cell.score === null ? "—" : cell.score.toFixed(2));
  }

  function sorted(cells, key) {
    var copy = cells.slice();
    if (key === "size") {
      copy.sort(function (a, b) { return b.area_px - a.area_px || a.index - b.index; });
    } else if (key === "score") {
      copy.sort(function (a, b) {
        var sa = a.score === null ? -1 : a.score, sb = b.score === null ? -1 : b.score;
        return sb - sa || a.index - b.index;
      });
    } else {
      copy.sort(function (a, b) { return a.index - b.index; });
    }
    return copy;
  }

  function setup(gallery) {
    var grid = gallery.querySelector("[data-grid]");
    var status = gallery.querySelector("[data-gallery-status]");
    var picture = fieldImage(gallery);
    var state = { data: null, sort: "index" };

    function render() {
      var data = state.data;
      grid.textContent = "";
      if (!data.cells.length) {
        status.textContent = "The model marked no blast cells on this field.";
        return;
      }
      status.textContent = "";
      sorted(data.cells, state.sort).forEach(function (cell) {
        var item = document.createElement("li");
        item.className = "cell" + (cell.rejected ? " rejected" : "");
        item.dataset.cell = String(cell.index);
        item.dataset.area = String(cell.area_px);
        item.dataset.score = cell.score === null ? "" : String(cell.score);
        var show = document.createElement("button");
        show.type = "button";
        show.className = "crop";
        show.title = "Show cell " + cell.index + " on the field";
        var canvas = document.createElement("canvas");
        canvas.setAttribute("aria-hidden", "true");
        show.appendChild(canvas);
        picture.then(function (img) {
          drawCrop(canvas, img, cell, data.shape);
          canvas.dataset.drawn = "true";
        });
        show.addEventListener("click", function () {
          gallery.querySelectorAll(".cell.selected").forEach(function (el) {
            el.classList.remove("selected");
          });
          item.classList.add("selected");
          document.dispatchEvent(new CustomEvent("bcd:show-cell", { detail: {
            instance: gallery.dataset.instance, result: data.result_id, index: cell.index,
            x: cell.x, y: cell.y, width: cell.width, height: cell.height, shape: data.shape
          } }));
        });
        item.appendChild(show);
        var text = document.createElement("span");
        text.className = "caption";
        text.textContent = caption(cell, data.area_unit) + (cell.rejected ? " · not a blast" : "");
        item.appendChild(text);
        if (data.editable) {
          var act = document.createElement("button");
          act.type = "button";
          act.className = "small" + (cell.rejected ? "" : " danger");
          act.dataset.action = cell.rejected ? "restore" : "reject";
          act.textContent = cell.rejected ? "Undo" : "Not a blast";
          act.addEventListener("click", function () { change(cell.index, act.dataset.action, act); });
          item.appendChild(act);
        }
        grid.appendChild(item);
      });
    }

    function accept(data) {
      state.data = data;
      setCounts(data);
      render();
    }

    function change(index, action, button) {
      button.disabled = true;
      fetch(gallery.dataset.changeUrl + index + "/" + action, {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRFToken": gallery.dataset.csrf, "Accept": "application/json" }
      }).then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      }).then(function (answer) {
        if (!answer.ok) { throw new Error(answer.body.message || "refused"); }
        accept(answer.body);
        status.textContent = action === "reject"
          ? "Cell " + index + " is not counted as a blast." : "Cell " + index + " is counted again.";
      }).catch(function (error) {
        button.disabled = false;
        status.textContent = "Not saved: " + error.message;
      });
    }

    gallery.querySelectorAll("[data-sort]").forEach(function (button) {
      button.addEventListener("click", function () {
        state.sort = button.dataset.sort;
        gallery.querySelectorAll("[data-sort]").forEach(function (b) {
          b.setAttribute("aria-pressed", String(b === button));
        });
        if (state.data) { render(); }
      });
    });

    fetch(gallery.dataset.cellsUrl, { credentials: "same-origin",
                                      headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(accept)
      .catch(function (error) { status.textContent = "The cells could not be loaded: " + error.message; });
  }

  document.querySelectorAll("[data-gallery]").forEach(setup);
})();
