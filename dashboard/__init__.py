"""The control-room web page: static files (HTML, CSS, JavaScript modules), no build step.

The API serves this folder at ``/`` (``api/routes/dashboard.py``); this module only says
where the files are, so an installed package finds them as well as a source checkout.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["static_dir"]


def static_dir() -> Path:
    """The folder holding ``index.html`` and its assets."""
    return Path(__file__).resolve().parent
