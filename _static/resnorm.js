/* resnorm site script (Jupyter Book adds every .js file under _static/ to each page).
 *
 * Scroll cue: a block that is wider than the text column (a long equation, a wide table, a code
 * line or an output line on a phone) scrolls sideways inside its own box, but browsers with
 * overlay scrollbars show no scrollbar until the reader touches the box, so the content simply
 * looks cut off. Every horizontally scrollable element of the article that overflows gets the
 * class `resnorm-overflows` (a shadow on its right edge, _static/resnorm.css) and, right after
 * it, a small "scroll sideways" hint. The site test (tests/site/test_site.py) fails on any
 * overflowing element without both.
 */
(function () {
  "use strict";

  var HINT_CLASS = "resnorm-scroll-hint";
  var OVERFLOW_CLASS = "resnorm-overflows";
  var AT_END_CLASS = "resnorm-scrolled-to-end";
  var hintCount = 0;

  function isHorizontalScroller(el) {
    var overflowX = getComputedStyle(el).overflowX;
    return overflowX === "auto" || overflowX === "scroll";
  }

  // The hint goes after the box, or after its nearest ancestor that lays children out in a row
  // (MathJax's div.math is a flex box: a hint inside it would sit beside the equation).
  function hintAnchor(el) {
    var anchor = el;
    while (anchor.parentElement && /flex|grid/.test(getComputedStyle(anchor.parentElement).display)) {
      anchor = anchor.parentElement;
    }
    return anchor;
  }

  function hintOf(el) {
    var id = el.getAttribute("data-scroll-hint");
    return id ? document.getElementById(id) : null;
  }

  function markScrolledToEnd(el) {
    var atEnd = el.scrollLeft + el.clientWidth >= el.scrollWidth - 1;
    el.classList.toggle(AT_END_CLASS, atEnd);
    var hint = hintOf(el);
    if (hint) hint.classList.toggle(AT_END_CLASS, atEnd);
  }

  function update(el) {
    // A hidden element (a collapsed cell, a closed <details>) is left until it is shown.
    var shown = el.checkVisibility ? el.checkVisibility({visibilityProperty: true}) : el.getClientRects().length > 0;
    if (!shown || el.clientWidth === 0) return;
    var overflows = el.scrollWidth > el.clientWidth + 1;
    el.classList.toggle(OVERFLOW_CLASS, overflows);
    var hint = hintOf(el);
    if (overflows && !hint) {
      hint = document.createElement("div");
      hint.id = "resnorm-scroll-hint-" + (++hintCount);
      hint.className = HINT_CLASS;
      hint.setAttribute("aria-hidden", "true");  // the content itself is there for screen readers
      hint.textContent = "scroll sideways for more \u2192";
      hintAnchor(el).insertAdjacentElement("afterend", hint);
      el.setAttribute("data-scroll-hint", hint.id);
      el.addEventListener("scroll", function () { markScrolledToEnd(el); }, {passive: true});
    } else if (!overflows && hint) {
      hint.remove();
      el.removeAttribute("data-scroll-hint");
    }
    if (overflows) markScrolledToEnd(el);
  }

  // An inline equation cannot wrap: one wider than its paragraph (on a phone) would stick out of
  // the column, so it becomes a box of its own that scrolls (resnorm.css), and gets the cue below.
  function boxWideInlineMath(article) {
    article.querySelectorAll('mjx-container:not([display="true"])').forEach(function (math) {
      var block = math.parentElement && math.parentElement.closest("p, li, dd, dt, td, th, div, section");
      if (block && math.getBoundingClientRect().width > block.clientWidth) {
        math.classList.add("resnorm-wide-inline-math");
      }
    });
  }

  function updateAll() {
    var article = document.querySelector("article.bd-article") || document.querySelector("main");
    if (!article) return;
    boxWideInlineMath(article);
    article.querySelectorAll("*").forEach(function (el) {
      // MathJax's inner mjx-* nodes never scroll (only the mjx-container around an equation does).
      if (el.tagName.indexOf("MJX-") === 0 && el.tagName !== "MJX-CONTAINER") return;
      if (!el.classList.contains(HINT_CLASS) && isHorizontalScroller(el)) update(el);
    });
  }

  var pending = null;
  function scheduleUpdate() {
    if (pending) clearTimeout(pending);
    pending = setTimeout(function () { pending = null; updateAll(); }, 100);
  }

  function start() {
    updateAll();
    window.addEventListener("resize", scheduleUpdate);
    window.addEventListener("load", scheduleUpdate);
    // A cell expanded by the reader (hide-input, hide-cell) only has a width once it is shown.
    document.addEventListener("toggle", scheduleUpdate, true);
    document.addEventListener("click", scheduleUpdate);
    // Equations get their final width when MathJax has typeset them.
    var tries = 0;
    (function waitForMathJax() {
      if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
        MathJax.startup.promise.then(updateAll);
      } else if (tries++ < 100) {
        setTimeout(waitForMathJax, 100);
      }
    })();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
