"""dicomnode AI modules: quality, mtici, keyframes, spine, on MONAI networks."""
