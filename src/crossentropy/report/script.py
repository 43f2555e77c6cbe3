"""The page's only script: the sliders of the saturated-neuron part and the draggable bars of
:math:`H(p, q) = H(p) + \\mathrm{KL}(p \\| q)`.

Plain JavaScript (ES5, no library, no network). The sliders read the runs that Python computed
(``<script type="application/json" id="neuron-grid">``), pick the one the sliders name and
draw its recorded points — the output :math:`a` and the factor :math:`\\sigma'(z)` per step,
both losses. They compute nothing about the neuron itself: every plotted value is a number
from the library's run, looked up.

The bars (``id="hpq-data"``) start at the library's example, drawn by Python into the page; a
drag or an arrow key changes one probability, rescales the others of that distribution to
sum 1 (each keeps at least 0.01), and recomputes the three sums :math:`-\\sum p \\ln p`,
:math:`\\sum p \\ln(p/q)` and :math:`-\\sum p \\ln q`
— arithmetic the library's numbers for the example pin (a browser test compares them).
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
    // the range inputs step through indices: a screen reader announces the values instead
    z0.setAttribute("aria-valuetext", document.getElementById("play-z0-value").textContent);
    lr.setAttribute("aria-valuetext", String(data.lr[il]));
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
(function () {
  "use strict";
  var svg = document.getElementById("hpq-svg");
  var source = document.getElementById("hpq-data");
  if (!svg || !source) { return; }
  var data = JSON.parse(source.textContent);
  var g = data.geometry, n = data.p.length;
  var scale = g.bottom - g.top, nat = (g.width - g.left - 6) / g.max_nats;
  var dist = {p: data.p.slice(), q: data.q.slice()};
  var readout = document.getElementById("hpq-readout");

  function fmt(v) { return v.toFixed(3); }
  function sums() {
    var h = 0, kl = 0, hpq = 0;
    for (var i = 0; i < n; i++) {
      var p = dist.p[i], q = dist.q[i];
      if (p > 0) { h -= p * Math.log(p); kl += p * Math.log(p / q); hpq -= p * Math.log(q); }
    }
    return {h: h, kl: kl, hpq: hpq};
  }
  function each(selector, fn) {
    Array.prototype.forEach.call(svg.querySelectorAll(selector), fn);
  }
  function draw() {
    each("rect.bar", function (r) {
      var v = dist[r.getAttribute("data-dist")][Number(r.getAttribute("data-i"))];
      r.setAttribute("y", (g.bottom - v * scale).toFixed(2));
      r.setAttribute("height", (v * scale).toFixed(2));
    });
    each("text.value", function (tx) {
      var v = dist[tx.getAttribute("data-dist")][Number(tx.getAttribute("data-i"))];
      tx.setAttribute("y", (g.bottom - v * scale - 4).toFixed(2));
      tx.textContent = v.toFixed(3);
    });
    each("rect.hit", function (r) {
      var v = dist[r.getAttribute("data-dist")][Number(r.getAttribute("data-i"))];
      r.setAttribute("aria-valuenow", v.toFixed(3));
      r.setAttribute("aria-valuetext", v.toFixed(3));
    });
    var s = sums(), width = g.width - g.left - 6;
    var hw = Math.min(s.h * nat, width), kw = Math.max(0, Math.min(s.kl * nat, width - hw));
    var hr = document.getElementById("hpq-h"), kr = document.getElementById("hpq-kl");
    hr.setAttribute("width", hw.toFixed(2));
    kr.setAttribute("x", (g.left + hw).toFixed(2));
    kr.setAttribute("width", kw.toFixed(2));
    document.getElementById("hpq-kl-label").setAttribute("x", (g.left + hw + 4).toFixed(2));
    document.getElementById("hpq-kl-label").style.display = kw > 18 ? "" : "none";
    document.getElementById("hpq-h-label").style.display = hw > 30 ? "" : "none";
    readout.textContent = data.text.readout.replace("{h}", fmt(s.h))
      .replace("{kl}", fmt(s.kl)).replace("{hpq}", fmt(s.hpq));
  }
  var HI = 1 - g.min * (n - 1);  // the others keep at least g.min each
  function set(which, i, value) {
    // bar i takes the value asked for (within [g.min, HI]); the others share what is left
    // above their floor g.min in proportion to what they had above it: each keeps g.min,
    // the distribution sums to 1, and bar i lands exactly where it was sent
    var arr = dist[which], v = Math.max(g.min, Math.min(HI, value)), excess = 0, j;
    for (j = 0; j < n; j++) { if (j !== i) { excess += arr[j] - g.min; } }
    var room = 1 - v - g.min * (n - 1);
    for (j = 0; j < n; j++) {
      if (j !== i) {
        arr[j] = g.min + (excess > 0 ? room * (arr[j] - g.min) / excess : room / (n - 1));
      }
    }
    arr[i] = v;
    draw();
  }
  function valueAt(evt) {
    var pt = svg.createSVGPoint();
    pt.x = evt.clientX; pt.y = evt.clientY;
    var local = pt.matrixTransform(svg.getScreenCTM().inverse());
    return (g.bottom - local.y) / scale;
  }
  var active = null;
  each("rect.hit", function (r) {
    var which = r.getAttribute("data-dist"), i = Number(r.getAttribute("data-i"));
    // a vertical slider from the keyboard (Tab, arrows, Page Up/Down, Home, End)
    r.setAttribute("role", "slider");
    r.setAttribute("aria-orientation", "vertical");
    r.setAttribute("aria-valuemin", String(g.min));
    r.setAttribute("aria-valuemax", HI.toFixed(3));
    r.setAttribute("tabindex", "0");
    r.addEventListener("pointerdown", function (evt) {
      evt.preventDefault();
      active = {which: which, i: i, id: evt.pointerId};
      // a drag redraws the sums many times a second: announce them once, when it ends
      readout.setAttribute("aria-live", "off");
      try { r.setPointerCapture(evt.pointerId); } catch (e) { /* no such pointer: no capture */ }
      r.focus({preventScroll: true});  // a click must not scroll the bar away from the pointer
      set(which, i, valueAt(evt));
    });
    r.addEventListener("pointermove", function (evt) {
      if (active && active.which === which && active.i === i) { set(which, i, valueAt(evt)); }
    });
    function stop() {
      if (active === null) { return; }
      active = null;
      readout.setAttribute("aria-live", "polite");
      draw();  // the final sums, to the live region
    }
    r.addEventListener("pointerup", stop);
    r.addEventListener("pointercancel", stop);
    r.addEventListener("keydown", function (evt) {
      var v = dist[which][i], step = evt.shiftKey ? 0.1 : 0.02, next = null;
      if (evt.key === "ArrowUp" || evt.key === "ArrowRight") { next = v + step; }
      else if (evt.key === "ArrowDown" || evt.key === "ArrowLeft") { next = v - step; }
      else if (evt.key === "PageUp") { next = v + 0.1; }
      else if (evt.key === "PageDown") { next = v - 0.1; }
      else if (evt.key === "Home") { next = g.min; }
      else if (evt.key === "End") { next = HI; }
      if (next !== null) { evt.preventDefault(); set(which, i, next); }
    });
  });
  document.getElementById("hpq-reset").addEventListener("click", function () {
    dist.p = data.p.slice(); dist.q = data.q.slice(); draw();
  });
  document.getElementById("hpq-equal").addEventListener("click", function () {
    dist.q = dist.p.slice(); draw();
  });
  document.getElementById("hpq-howto").hidden = false;
  document.getElementById("hpq-buttons").hidden = false;
  draw();
})();
"""
