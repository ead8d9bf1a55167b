/* OHIF (@ohif/app 3.13.2) configuration served by deploy/viewer/serve.py in place of the
 * build's own dist/app-config.js, which points at a public demo server.
 *
 * Everything is same-origin: serve.py serves OHIF and forwards /dicom-web/ and /wado to
 * Orthanc's DICOMweb plugin on the same host and port, so the roots are built from the
 * page's own origin (no CORS, no host name to edit, nothing fetched from elsewhere).
 */
(function () {
  const origin = window.location.origin;
  window.config = {
    name: 'dicomnode-viewer',
    routerBasename: null,
    extensions: [],
    modes: [],
    customizationService: {},
    showStudyList: true,
    // The node's host has few cores; OHIF's default (3) starves the node on 2 cores.
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: false,
    showLoadingIndicator: true,
    // The results are AI output for review: OHIF's "investigational use" banner
    // would only repeat what the SC images and the SR already say.
    investigationalUseDialog: { option: 'never' },
    defaultDataSourceName: 'orthanc',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'orthanc',
        configuration: {
          friendlyName: 'Orthanc beside dicomnode',
          name: 'orthanc',
          wadoUriRoot: origin + '/wado',
          qidoRoot: origin + '/dicom-web',
          wadoRoot: origin + '/dicom-web',
          qidoSupportsIncludeField: false,
          supportsReject: false,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          // The settings OHIF's own docs give for Orthanc's DICOMweb plugin.
          omitQuotationForMultipartRequest: true,
          bulkDataURI: { enabled: true },
        },
      },
    ],
  };
})();
