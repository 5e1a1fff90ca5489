// The copy button on the one-time key reveal, keeping that reveal out of reload/back, and tables that
// stack on phones.
(function () {
  "use strict";

  function copyFrom(button) {
    var source = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.getElementById("copy-status");
    var value = source.value || source.textContent;
    function done(ok) {
      if (status) status.textContent = ok ? "Copied to the clipboard." : "Could not copy: select the key and copy it by hand.";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(function () { done(true); }, function () { done(false); });
    } else {
      source.focus();
      source.select();
      try { done(document.execCommand("copy")); } catch (e) { done(false); }
    }
  }

  // On a phone each table row becomes a box (see .table--stacked in site.css): every cell is labelled
  // with its column's header, and the ARIA roles keep it a table for screen readers, which drop table
  // semantics from elements whose CSS display changes.
  function stackTable(table) {
    var headers = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.replace(/\s+/g, " ").trim();
    });
    if (!headers.length) return;
    table.setAttribute("role", "table");
    table.querySelectorAll("thead, tbody").forEach(function (group) { group.setAttribute("role", "rowgroup"); });
    table.querySelectorAll("tr").forEach(function (row) { row.setAttribute("role", "row"); });
    table.querySelectorAll("thead th").forEach(function (th) { th.setAttribute("role", "columnheader"); });
    table.querySelectorAll("tbody tr").forEach(function (row) {
      var column = 0;
      Array.prototype.forEach.call(row.children, function (cell) {
        cell.setAttribute("role", cell.tagName === "TH" ? "rowheader" : "cell");
        var span = parseInt(cell.getAttribute("colspan") || "1", 10);
        if (span === 1 && headers[column] && !cell.hasAttribute("data-label")) {
          cell.setAttribute("data-label", headers[column]);
        }
        column += span;
      });
    });
    table.classList.add("table--stacked");
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".table-wrap table").forEach(stackTable);
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      button.addEventListener("click", function () { copyFrom(button); });
    });
    document.querySelectorAll("input.key-value").forEach(function (input) {
      input.addEventListener("focus", function () { input.select(); });
    });
    // The reveal is a POST response; point this history entry at the key list so a reload or a
    // "back" never re-submits the form (which would create another key).
    var reveal = document.querySelector("[data-replace-url]");
    if (reveal && window.history.replaceState) {
      window.history.replaceState(null, "", reveal.getAttribute("data-replace-url"));
    }
  });
})();
