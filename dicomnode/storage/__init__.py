"""dicomnode.storage."""
