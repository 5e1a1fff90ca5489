// Accessibility fixes for Django's admin widgets that ship without accessible names (found by axe-core
// in tests/test_browser_accessibility.py): controls in table cells (tabular inlines, list_editable)
// named after their column, split date/time inputs named after their field, select2 comboboxes named
// by their field's label, icon spans that carry aria-label, and empty column headers.
(function () {
  "use strict";

  function text(node) {
    return node ? node.textContent.replace(/\s+/g, " ").replace(/[:*]\s*$/, "").trim() : "";
  }

  function hasName(control) {
    if (control.getAttribute("aria-label") || control.getAttribute("aria-labelledby")) return true;
    if (control.closest("label")) return true;
    return Boolean(control.id && document.querySelector('label[for="' + control.id + '"]'));
  }

  function columnHeader(cell) {
    var table = cell.closest("table");
    var row = table && table.querySelector("thead tr");
    if (!row) return "";
    var column = 0;
    var cells = cell.parentElement.children;
    for (var i = 0; i < cells.length && cells[i] !== cell; i++) {
      column += parseInt(cells[i].getAttribute("colspan") || "1", 10);
    }
    var at = 0;
    for (var j = 0; j < row.children.length; j++) {
      if (at === column) return text(row.children[j]);
      at += parseInt(row.children[j].getAttribute("colspan") || "1", 10);
    }
    return "";
  }

  function rowName(cell) {
    var first = cell.parentElement.querySelector("th, td.field-__str__, td.original p");
    return first && first !== cell ? text(first) : "";
  }

  function nameControls() {
    document.querySelectorAll("td input:not([type=hidden]), td select, td textarea").forEach(function (control) {
      if (hasName(control)) return;
      var cell = control.closest("td");
      var label = [columnHeader(cell), rowName(cell)].filter(Boolean).join(", ");
      if (label) control.setAttribute("aria-label", label);
    });
    document.querySelectorAll("p.datetime input").forEach(function (control) {
      if (hasName(control)) return;
      var row = control.closest(".form-row, .fieldBox, td");
      var field = row ? text(row.querySelector("label")) || columnHeader(row.closest("td") || row) : "";
      var part = control.classList.contains("vTimeField") ? "time" : "date";
      control.setAttribute("aria-label", (field ? field + ", " : "") + part);
    });
    document.querySelectorAll("span.help-tooltip[aria-label]:not([role])").forEach(function (icon) {
      icon.setAttribute("role", "img");
    });
    document.querySelectorAll("thead th").forEach(function (th) {
      if (!text(th) && !th.querySelector("input")) {
        th.innerHTML = '<span class="visually-hidden">' + (th.classList.contains("original") ? "Object" : "Column") + "</span>";
      }
    });
    var search = document.getElementById("searchbar");
    if (search && !search.getAttribute("aria-label")) search.setAttribute("aria-label", "Search");
  }

  // select2 (autocomplete_fields) builds its combobox after jQuery's ready handlers: name it on load.
  function nameComboboxes() {
    document.querySelectorAll("select.admin-autocomplete").forEach(function (select) {
      var label = select.id && document.querySelector('label[for="' + select.id + '"]');
      var container = select.nextElementSibling;
      var combobox = container && container.querySelector("[role=combobox]");
      if (!combobox) return;
      var rendered = container.querySelector("[role=textbox]");
      if (label) {
        if (!label.id) label.id = select.id + "_label";
        var current = (combobox.getAttribute("aria-labelledby") || "").split(" ").filter(Boolean);
        if (current.indexOf(label.id) === -1) combobox.setAttribute("aria-labelledby", [label.id].concat(current).join(" "));
        if (rendered && !rendered.getAttribute("aria-labelledby")) rendered.setAttribute("aria-labelledby", label.id);
      } else if (!combobox.getAttribute("aria-label")) {
        combobox.setAttribute("aria-label", columnHeader(select.closest("td") || select) || select.name);
      }
    });
  }

  // A stacked cell is a two-column grid, the label (::before) and one box with everything the cell held,
  // so that text and elements in a cell stay together in the second column.
  function wrapCell(cell) {
    if (cell.classList.contains("actions") || cell.querySelector(":scope > .cell-value")) return;
    var box = document.createElement("div");
    box.className = "cell-value";
    while (cell.firstChild) box.appendChild(cell.firstChild);
    cell.appendChild(box);
  }

  // On a phone, change lists and tabular inlines become one box per row (admin.css), each cell
  // labelled with its column; ARIA roles keep the table semantics the CSS display change drops.
  function stackTables() {
    document.querySelectorAll("#result_list, .inline-group .tabular table").forEach(function (table) {
      if (table.classList.contains("table--stacked")) return;
      table.setAttribute("role", "table");
      table.querySelectorAll("thead, tbody").forEach(function (group) { group.setAttribute("role", "rowgroup"); });
      table.querySelectorAll("tr").forEach(function (row) { row.setAttribute("role", "row"); });
      table.querySelectorAll("thead th").forEach(function (th) { th.setAttribute("role", "columnheader"); });
      table.querySelectorAll("tbody tr").forEach(function (row) {
        Array.prototype.forEach.call(row.children, function (cell) {
          cell.setAttribute("role", cell.tagName === "TH" ? "rowheader" : "cell");
          var header = columnHeader(cell);
          if (header && !cell.hasAttribute("data-label")) {
            cell.setAttribute("data-label", header);
            wrapCell(cell);
          }
        });
      });
      table.classList.add("table--stacked");
    });
  }

  function fixAll() {
    nameControls();
    nameComboboxes();
    stackTables();
  }

  // Django's widgets (select2, the filter_horizontal boxes, inline rows) are built after the page has
  // loaded, so fix whatever is added, whenever it is added. Mutation callbacks run before the next task.
  var pending = false;
  new MutationObserver(function () {
    if (pending) return;
    pending = true;
    Promise.resolve().then(function () { pending = false; fixAll(); });
  }).observe(document.documentElement, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", fixAll);
  window.addEventListener("load", fixAll);
})();
