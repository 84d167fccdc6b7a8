"""Input formats: bytes -> samples, one module per format, registered in one table."""
