/* Draws the analytics figures: each element with data-figure="<id of a JSON script>" becomes a
   Plotly figure whose mode bar downloads PNG and SVG; buttons with data-download="png|svg" and
   data-target="<element id>" download the same images. A page waiting for a background analysis
   ([data-reload-when-done]) reloads when its job succeeds. Used by the dashboards, the patient
   risk view and the self-contained report (inlined there). */
(function () {
  "use strict";

  // CSS pixels per inch: Plotly lays a figure out in CSS pixels, so a figure W cm wide is
  // laid out at W / 2.54 * 96 px and a PNG at D dpi is that layout scaled by D / 96.
  var CSS_DPI = 96;

  function chosenSize(element) {
    var card = element.closest(".figure-card");
    var field = function (name) {
      var input = card && card.querySelector('[data-size="' + name + '"]');
      var value = input ? parseFloat(input.value) : NaN;
      return isFinite(value) && value > 0 ? value : null;
    };
    return { width: field("width"), height: field("height"), dpi: field("dpi") };
  }

  function download(element, format) {
    var box = element.getBoundingClientRect();
    var chosen = chosenSize(element);
    var toPixels = function (cm, fallback) {
      return cm ? Math.round((cm / 2.54) * CSS_DPI) : Math.max(Math.round(fallback), 400);
    };
    Plotly.downloadImage(element, {
      format: format,
      filename: element.dataset.filename || "figure",
      width: toPixels(chosen.width, box.width),
      height: toPixels(chosen.height, box.height),
      scale: format === "png" ? (chosen.dpi || 2 * CSS_DPI) / CSS_DPI : 1,
    });
  }

  function draw(root) {
    if (typeof Plotly === "undefined") {
      return;
    }
    root.querySelectorAll("[data-figure]").forEach(function (element) {
      if (element.dataset.drawn) {
        return;
      }
      var source = document.getElementById(element.dataset.figure);
      if (!source) {
        return;
      }
      var figure = JSON.parse(source.textContent);
      var name = element.dataset.filename || "figure";
      Plotly.newPlot(element, figure.data, figure.layout, {
        responsive: true,
        displaylogo: false,
        toImageButtonOptions: { format: "png", filename: name, scale: 2 },
        modeBarButtonsToAdd: [
          {
            name: "Download plot as SVG",
            icon: Plotly.Icons.camera,
            click: function (graph) {
              download(graph, "svg");
            },
          },
        ],
      });
      element.dataset.drawn = "1";
    });
    root.querySelectorAll("[data-download]").forEach(function (button) {
      if (button.dataset.bound) {
        return;
      }
      button.dataset.bound = "1";
      button.addEventListener("click", function () {
        var element = document.getElementById(button.dataset.target);
        if (element && element.dataset.drawn) {
          download(element, button.dataset.download);
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    draw(document);
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    draw(event.target);
  });
  // A page waiting for a background analysis reloads once the job has succeeded.
  document.addEventListener("htmx:afterSettle", function () {
    if (document.querySelector("[data-reload-when-done] .progress.succeeded")) {
      window.location.reload();
    }
  });
})();
