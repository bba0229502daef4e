"""Imports each family module once so that its models register. Add a family here."""
