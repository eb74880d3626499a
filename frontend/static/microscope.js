// Keyboard navigation: arrows move between units (unit page) and across the grid (layer page).
(function () {
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  }
  document.addEventListener("keydown", function (e) {
    if (typing(e) || e.altKey || e.ctrlKey || e.metaKey) return;
    var cells = Array.prototype.slice.call(document.querySelectorAll(".unit-cell a"));
    if (cells.length) {
      var i = cells.indexOf(document.activeElement);
      if (i < 0) {
        if (["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"].indexOf(e.key) >= 0) {
          cells[0].focus();
          e.preventDefault();
        }
        return;
      }
      var top = cells[0].offsetTop, cols = 0;
      while (cols < cells.length && cells[cols].offsetTop === top) cols++;
      var j = { ArrowRight: i + 1, ArrowLeft: i - 1, ArrowDown: i + cols, ArrowUp: i - cols }[e.key];
      if (j !== undefined && j >= 0 && j < cells.length) {
        cells[j].focus();
        e.preventDefault();
      }
      return;
    }
    var rel = { ArrowLeft: "prev", ArrowRight: "next" }[e.key];
    if (rel) {
      var a = document.querySelector("a[rel=" + rel + "]");
      if (a) window.location.href = a.href;
    }
  });
})();

// Live job progress without htmx (it is vendored at set-up; this keeps pages live without it).
(function () {
  if (window.htmx) return;
  function poll() {
    var el = document.querySelector(".job-live[hx-get]");
    if (!el) return;
    fetch(el.getAttribute("hx-get"), { headers: { "HX-Request": "true" } }).then(function (r) {
      if (r.headers.get("HX-Refresh") === "true") { window.location.reload(); return; }
      return r.text().then(function (html) {
        el.outerHTML = html;
        setTimeout(poll, 1000);
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { setTimeout(poll, 1000); });
})();
