"""Reusable pieces of the pages: badges, stat tiles, charts, copyable commands."""
