"""Harness: block speed/memory, vanilla-vs-variant runs and the report."""
