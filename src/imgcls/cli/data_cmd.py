"""Command-line verbs (placeholder: filled in by the issue that owns these verbs)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's verbs to the `imgcls` parser."""
