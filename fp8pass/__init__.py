"""fp8pass."""
