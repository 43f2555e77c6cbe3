"""The page's only script: the sliders of part 2.

Plain JavaScript (ES5, no library, no network). It reads the runs that Python computed
(``<script type="application/json" id="neuron-grid">``), picks the one the sliders name and
draws its recorded points — the output :math:`a` and the factor :math:`\\sigma'(z)` per step,
both losses. It computes nothing about the neuron itself: every plotted value is a number
from the library's run, looked up.
"""

SCRIPT = r"""
(function () {
  "use strict";
  var root = document.getElementById("play");
  var source = document.getElementById("neuron-grid");
  if (!root || !source) { return; }
  var data = JSON.parse(source.textContent);
  var NS = "http://www.w3.org/2000/svg";
  // Drawn at the size it is shown (resized with the window): text stays 11-13 px on a phone.
  var W = 560, H = 340, L = 52, R = 12, T = 34, B = 44;
  var COLORS = {cross_entropy: "#0072B2", mse: "#D55E00"};
  var DASHES = {cross_entropy: "", mse: "7 4"};
  var LOSSES = ["cross_entropy", "mse"];
  var z0 = document.getElementById("play-z0");
  var lr = document.getElementById("play-lr");
  var k = data.recorded.length, nl = data.lr.length;

  function el(name, attrs, parent, text) {
    var e = document.createElementNS(NS, name);
    for (var a in attrs) { if (attrs.hasOwnProperty(a)) { e.setAttribute(a, attrs[a]); } }
    if (text !== undefined) { e.textContent = text; }
    parent.appendChild(e);
    return e;
  }
  function fmt(v) { return String(Math.round(v * 1000) / 1000); }
  function sx(s, xmax) { return L + (W - L - R) * s / xmax; }
  function sy(v, ymax) { return H - B - (H - T - B) * v / ymax; }

  function frame(svg, xmax, ymax, yticks, half) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    W = Math.max(260, Math.round(svg.getBoundingClientRect().width) || 560);
    H = Math.round(Math.min(340, Math.max(250, W * 0.62)));
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var clip = el("clipPath", {id: svg.id + "-clip"}, el("defs", {}, svg));
    el("rect", {x: L, y: T, width: W - L - R, height: H - T - B}, clip);
    var xt = xmax <= 50 ? [0, 10, 20, 30, 40, 50] : [0, 100, 200, 300, 400, 500];
    if (W < 400) { xt = xt.filter(function (s, i) { return i % 2 === 0; }); }
    xt.forEach(function (s) {
      if (s > xmax) { return; }
      el("line", {x1: sx(s, xmax), x2: sx(s, xmax), y1: T, y2: H - B, stroke: "#e4e7eb"}, svg);
      el("text", {x: sx(s, xmax), y: H - B + 16, "font-size": 11, "text-anchor": "middle",
                  fill: "#39424c"}, svg, String(s));
    });
    yticks.forEach(function (v) {
      el("line", {x1: L, x2: W - R, y1: sy(v, ymax), y2: sy(v, ymax), stroke: "#e4e7eb"}, svg);
      el("text", {x: L - 6, y: sy(v, ymax) + 4, "font-size": 11, "text-anchor": "end",
                  fill: "#39424c"}, svg, String(v));
    });
    if (half) {
      el("line", {x1: L, x2: W - R, y1: sy(0.5, ymax), y2: sy(0.5, ymax), stroke: "#1d232a",
                  "stroke-dasharray": "2 3"}, svg);
    }
    el("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#1d232a"}, svg);
    el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#1d232a"}, svg);
    el("text", {x: (L + W - R) / 2, y: H - 8, "font-size": 12, "text-anchor": "middle",
                fill: "#1d232a"}, svg, data.text["fig.step"]);
  }

  function curve(svg, values, offset, xmax, ymax, loss) {
    var pts = [];
    for (var i = 0; i < k; i++) {
      var s = data.recorded[i];
      pts.push(fmt(sx(s, xmax)) + "," + fmt(sy(values[offset + i], ymax)));
      if (s >= xmax) { break; }
    }
    el("polyline", {points: pts.join(" "), fill: "none", stroke: COLORS[loss],
                    "stroke-width": 2.4, "stroke-dasharray": DASHES[loss],
                    "clip-path": "url(#" + svg.id + "-clip)", "data-loss": loss}, svg);
  }

  function legend(svg) {
    LOSSES.forEach(function (loss, j) {
      var x = L + j * 130, y = T - 16;  // a row of its own, above the plot
      el("line", {x1: x, x2: x + 26, y1: y, y2: y, stroke: COLORS[loss], "stroke-width": 2.4,
                  "stroke-dasharray": DASHES[loss]}, svg);
      el("text", {x: x + 32, y: y + 4, "font-size": 12, fill: "#1d232a"}, svg,
         data.text["loss." + loss]);
    });
  }

  function range() {
    var r = root.querySelector("input[name=play-range]:checked");
    return r ? Number(r.value) : data.steps;
  }

  function draw() {
    var iz = Number(z0.value), il = Number(lr.value), xmax = range();
    var cell = iz * nl + il, offset = cell * k;
    var z = data.z0[iz];
    document.getElementById("play-z0-value").textContent =
      String(z) + " (a\u2080 = " + (1 / (1 + Math.exp(-z))).toFixed(4) + ")";
    document.getElementById("play-lr-value").textContent = String(data.lr[il]);
    var out = document.getElementById("play-output");
    frame(out, xmax, 1, [0, 0.25, 0.5, 0.75, 1], true);
    var fac = document.getElementById("play-factor");
    frame(fac, xmax, 0.25, [0, 0.05, 0.1, 0.15, 0.2, 0.25], false);
    LOSSES.forEach(function (loss) {
      curve(out, data.output[loss], offset, xmax, 1, loss);
      curve(fac, data.sigma_prime[loss], offset, xmax, 0.25, loss);
    });
    legend(out);
    legend(fac);
    var said = {};
    LOSSES.forEach(function (loss) {
      var n = data.correct[loss][cell];
      said[loss] = n >= 0 ? data.text.right_after.replace("{n}", n)
                          : data.text.still_wrong.replace("{n}", data.steps);
    });
    document.getElementById("play-summary").textContent =
      data.text.summary.replace("{ce}", said.cross_entropy).replace("{mse}", said.mse);
  }

  z0.addEventListener("input", draw);
  lr.addEventListener("input", draw);
  Array.prototype.forEach.call(root.querySelectorAll("input[name=play-range]"), function (r) {
    r.addEventListener("change", draw);
  });
  var pending = null;
  window.addEventListener("resize", function () {
    if (pending === null) { pending = setTimeout(function () { pending = null; draw(); }, 100); }
  });
  root.hidden = false;
  draw();
})();
"""
