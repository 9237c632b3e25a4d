"""Changelog-backed faust tables and the encoding of their values."""
