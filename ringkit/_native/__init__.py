"""Native shared-memory helpers (being written; see _build.py for the compiled part)."""
