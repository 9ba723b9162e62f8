"""Versions recorded in every artifact (bundles, reports, study results), read from installed metadata.

Reading ``importlib.metadata`` never imports the libraries themselves, so it is fast (``fairsample info`` answers in
well under a second) and safe for optional extras.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def package_versions(dists: Iterable[str], missing: str | None = None) -> dict[str, str | None]:
    """``{distribution: version}`` for each name; ``missing`` (default None) where it is not installed.

    Example:
        >>> package_versions(["pip", "no-such-dist-x"], missing="not installed")["no-such-dist-x"]
        'not installed'
    """
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = missing
    return out
