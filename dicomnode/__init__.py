"""dicomnode: a PACS-integrated DICOM node that runs angiography and spine AI modules."""
from __future__ import annotations

import logging

__version__ = "0.1.0"

# A library adds only a NullHandler; the CLI configures real handlers (as pynetdicom does).
logging.getLogger(__name__).addHandler(logging.NullHandler())
