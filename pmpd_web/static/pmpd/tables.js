// Wide tables scroll inside their card instead of widening the page (a 390 px phone), and the
// keyboard can reach the scrolling region: every table.data not already in one is wrapped in a
// focusable, named region.
(function () {
  'use strict';
  function name(table) {
    const caption = table.querySelector('caption');
    if (caption) return caption.textContent.trim();
    const card = table.closest('section, .card');
    const heading = card && card.querySelector('h2, h3');
    return heading ? heading.textContent.trim() : 'Table';
  }
  function wrap(root) {
    root.querySelectorAll('table.data').forEach(table => {
      let region = table.parentElement.closest('.table-scroll');
      if (!region) {
        region = document.createElement('div');
        region.className = 'table-scroll';
        table.parentNode.insertBefore(region, table);
        region.appendChild(table);
      }
      if (!region.hasAttribute('tabindex')) region.setAttribute('tabindex', '0');
      if (!region.hasAttribute('role')) region.setAttribute('role', 'region');
      if (!region.hasAttribute('aria-label')) region.setAttribute('aria-label', name(table));
    });
  }
  document.addEventListener('DOMContentLoaded', () => wrap(document));
  // htmx swaps in fresh fragments (job progress, upload status).
  document.addEventListener('htmx:afterSwap', event => wrap(event.target));
})();
