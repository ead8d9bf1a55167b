"""dicomnode.cli."""
