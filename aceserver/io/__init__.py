"""File formats: the aceserver model file (JSON, arrays as base64 little-endian), training data."""
