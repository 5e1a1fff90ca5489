// Copy buttons (the one-time key and the setup snippets), and keeping the key reveal out of reload/back.
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

  document.addEventListener("DOMContentLoaded", function () {
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
