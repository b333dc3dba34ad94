// The dashboard's only script: live updates over server-sent events, copy buttons
// and the CSR dialog. Pages work without it, less conveniently.
"use strict";
(function () {
  function copy(id, button) {
    var el = document.getElementById(id);
    if (!el) return;
    var text = el.textContent;
    var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(el); done(); });
    } else { fallback(el); done(); }
  }
  function fallback(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try { document.execCommand("copy"); } catch (e) { /* the text stays selected */ }
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-copy]");
    if (b) { copy(b.getAttribute("data-copy"), b); return; }
    var o = e.target.closest("[data-open]");
    if (o) { var d = document.getElementById(o.getAttribute("data-open")); if (d && d.showModal) d.showModal(); }
  });
  document.querySelectorAll("dialog[data-autoopen]").forEach(function (d) {
    if (d.showModal && location.search.indexOf("csr=new") >= 0) d.showModal();
  });
  if (!document.body.hasAttribute("data-live") || !window.EventSource) return;
  var es = new EventSource("/events");
  es.addEventListener("status", function (e) {
    var live = document.getElementById("live");
    if (!live) return;
    // Keep open menus open across an update.
    var open = Array.prototype.map.call(live.querySelectorAll("details[open]"), function (d) {
      var row = d.closest("tr"); return row ? row.getAttribute("data-hsm") || row.getAttribute("data-slot") : "";
    });
    live.innerHTML = e.data;
    live.querySelectorAll("tr").forEach(function (row) {
      var key = row.getAttribute("data-hsm") || row.getAttribute("data-slot");
      var d = row.querySelector("details");
      if (d && open.indexOf(key) >= 0) d.open = true;
    });
  });
  es.addEventListener("count", function (e) {
    var c = document.getElementById("count");
    if (c) c.textContent = e.data;
  });
  es.addEventListener("ota", function (e) {
    var p; try { p = JSON.parse(e.data); } catch (err) { return; }
    var bar = document.getElementById("ota-progress");
    if (bar) { bar.value = p.percent; bar.textContent = p.percent + "%"; }
    var ph = document.getElementById("ota-phase");
    if (ph) ph.textContent = p.phase;
    var m = document.getElementById("ota-message");
    if (m) m.textContent = p.message || "";
  });
})();
