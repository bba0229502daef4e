"""inference layer (see DESIGN.md)."""
