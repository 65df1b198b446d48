"""Operator moves: each returns a report or a result; the CLI renders it."""
