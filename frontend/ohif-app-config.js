/** @type {AppTypes.Config} */
// The OHIF viewer of the PMPD platform: served under /ohif/ by Django behind the platform's
// login, embedded in the patient page, fed by the platform's own DICOMweb endpoints on the same
// origin (/dicomweb; QIDO-RS and WADO-RS, and STOW-RS of corrected SEGs). frontend/build.mjs installs this file as
// the viewer's app-config.js. Settings as shared/design/DICOMWEB_OHIF.md records them working.
(function () {
  const dicomweb = window.location.origin + '/dicomweb';

  window.config = {
    name: 'pmpd',
    routerBasename: '/ohif',
    extensions: [],
    modes: [],
    // No onboarding tour over the embedded viewer.
    customizationService: { 'ohif.tours': { $set: [] } },
    // Open the segmentation with the CT instead of asking first.
    disableConfirmationPrompts: true,
    showStudyList: true,
    // The platform's pages already say "research use only" on every page.
    investigationalUseDialog: { option: 'never' },
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
    showErrorDetails: 'production',
    defaultDataSourceName: 'pmpd',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'pmpd',
        configuration: {
          friendlyName: 'PMPD platform',
          name: 'pmpd',
          wadoUriRoot: dicomweb,
          qidoRoot: dicomweb,
          wadoRoot: dicomweb,
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: false,
          staticWado: false,
          singlepart: false,
          omitQuotationForMultipartRequest: true,
          bulkDataURI: { enabled: true },
          dicomUploadEnabled: false,
          supportsReject: false,
          // Saving a corrected mask posts it by STOW-RS to /dicomweb/studies; a BINARY SEG
          // (not OHIF's default label map) is what highdicom and the platform's reader read.
          segmentation: { store: { defaultMode: 'bitmap' } },
        },
      },
    ],
    // A lapsed session answers 401, which OHIF would show as "study not found": send the
    // whole page (not just the frame) to the login, and back here afterwards.
    httpErrorHandler: error => {
      if (error && error.status === 401) {
        const page = window.top.location;
        page.href = '/accounts/login/?next=' + encodeURIComponent(page.pathname + page.search);
      }
    },
  };
})();
