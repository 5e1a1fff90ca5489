// Copy buttons (the one-time key and the setup snippets), keeping the key reveal out of reload/back,
// and tables that stack on phones.
(function () {
  "use strict";

  function selectContents(source) {
    if (typeof source.select === "function") {
      source.focus();
      source.select();
      return;
    }
    var range = document.createRange();
    range.selectNodeContents(source);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copyFrom(button) {
    var source = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.getElementById(button.getAttribute("data-copy-status") || "copy-status");
    var value = source.value !== undefined ? source.value : source.textContent;
    function done(ok) {
      if (status) status.textContent = ok ? "Copied to the clipboard." : "Could not copy: select the text and copy it by hand.";
    }
    function fallback() {
      selectContents(source);
      try { done(document.execCommand("copy")); } catch (e) { done(false); }
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(function () { done(true); }, fallback);
    } else {
      fallback();
    }
  }

  // On a phone each table row becomes a box (see .table--stacked in site.css): every cell is labelled
  // with its column's header, and the ARIA roles keep it a table for screen readers, which drop table
  // semantics from elements whose CSS display changes.
  // A stacked cell is a two-column grid, the label (::before) and one box with everything the cell held,
  // so that text and elements in a cell stay together in the second column.
  function wrapCell(cell) {
    if (cell.classList.contains("actions") || cell.querySelector(":scope > .cell-value")) return;
    var box = document.createElement("div");
    box.className = "cell-value";
    while (cell.firstChild) box.appendChild(cell.firstChild);
    cell.appendChild(box);
  }

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
          wrapCell(cell);
        }
        column += span;
      });
    });
    table.classList.add("table--stacked");
  }

  document.addEventListener("DOMContentLoaded", function () {
    // .stack-table tables carry their own data-label markup and CSS.
    document.querySelectorAll(".table-wrap table:not(.stack-table)").forEach(stackTable);
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
