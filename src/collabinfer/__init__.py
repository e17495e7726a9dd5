"""collabinfer."""
