// The copy button on the one-time key reveal, and keeping that reveal out of reload/back.
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
