"""A registry that answers only dist-tags: for policy tests where a packument must never be asked for."""

from __future__ import annotations


class TagsOnly:
    def __init__(self, tag: str):
        self.tag = tag

    def dist_tags(self, package: str) -> dict[str, str]:
        return {"nightly": self.tag}

    def packument(self, package: str):  # noqa: ANN201
        raise AssertionError(f"policy asked for the {package} packument: a refused tag needs none")

    def cached_packument(self, package: str):  # noqa: ANN201
        return None
