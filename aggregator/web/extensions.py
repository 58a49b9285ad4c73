"""Plug-ins of the web app, so that the packages above the aggregator (the dashboard, the
alerts) add routes, periodic jobs and mounts without the aggregator importing them.

An installed distribution names its extensions in the `afmon.web` entry-point group
(pyproject.toml); `create_app` loads them in the order of their names, or takes a list of its
own (`create_app(extensions=[])`: the bare API). Every hook is a no-op by default, so an
extension overrides only what it adds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

from afmon.aggregator.query.base import Principal

if TYPE_CHECKING:
    from afmon.aggregator.web.services import Services

ENTRY_POINT_GROUP = "afmon.web"

Job = Callable[["Services", threading.Event], None]
"""A periodic job: runs in its own thread from start-up until `stop` is set."""


class WebExtension:
    """A part of the server contributed by a package above the aggregator."""

    name = "extension"

    def routers(self, reader: Callable[..., Principal]) -> Sequence[APIRouter]:
        """Routers to include; `reader` is the dependency that says who is asking."""
        return ()

    def jobs(self) -> Sequence[Job]:
        """Periodic jobs (wrap one in `web.leader.leader_only` to run it on one worker)."""
        return ()

    def mount(self, app: FastAPI, services: Services) -> None:
        """Called after every route is in place: a mount at "/" goes here."""


def installed_extensions(group: str = ENTRY_POINT_GROUP) -> list[WebExtension]:
    """One instance of each extension that the installed distributions name, by name."""
    found: list[WebExtension] = []
    for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
        extension = ep.load()()
        if not isinstance(extension, WebExtension):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a WebExtension")
        found.append(extension)
    return found
