"""umop."""
