// The patient page's viewer: once OHIF (same origin, in the iframe) has the CT on screen, show
// the CT image the page names (the largest tumour slice, or a Grad-CAM slice the user picked).
// OHIF 3.13's @ohif/seg layout ignores initialSOPInstanceUID, so the page moves the viewport.
(function () {
  'use strict';
  const frame = document.getElementById('patient-viewer');
  if (!frame) return;
  const POLL_MS = 250;
  const GIVE_UP_MS = 180000;
  let wanted = frame.dataset.initialSop || null;
  let timer = null;

  function viewport() {
    const cs = frame.contentWindow && frame.contentWindow.cornerstone;
    if (!cs || !cs.getEnabledElements) return null;
    const element = cs.getEnabledElements().find(e => e.viewport && e.viewport.getImageIds);
    return element ? element.viewport : null;
  }

  function show(sop) {
    const port = viewport();
    if (!port) return false;
    const ids = port.getImageIds() || [];
    const index = ids.findIndex(id => id.indexOf(sop) !== -1);
    if (index === -1) return false;
    if (port.getCurrentImageIdIndex() === index) return true;
    const tools = frame.contentWindow.cornerstoneTools;
    if (tools && tools.utilities && tools.utilities.jumpToSlice) {
      tools.utilities.jumpToSlice(port.element, { imageIndex: index });
    } else {
      port.setImageIdIndex(index);
    }
    return false;
  }

  function follow(sop) {
    wanted = sop;
    if (timer) clearInterval(timer);
    const started = Date.now();
    let settled = 0;
    timer = setInterval(() => {
      // OHIF may reset the stack once the segmentation arrives: hold the slice a little while.
      settled = show(wanted) ? settled + 1 : 0;
      if (settled >= 8 || Date.now() - started > GIVE_UP_MS) clearInterval(timer);
    }, POLL_MS);
  }

  document.addEventListener('click', event => {
    const link = event.target.closest('a[data-viewer-sop]');
    if (!link) return;
    event.preventDefault();
    frame.scrollIntoView({ behavior: 'smooth', block: 'center' });
    follow(link.dataset.viewerSop);
  });
  if (wanted) follow(wanted);
})();
