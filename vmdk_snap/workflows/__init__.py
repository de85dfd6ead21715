"""Workflows: named steps with their undo, the engine that runs them, the
SQLite journal that records them, and the locks that keep them apart."""
