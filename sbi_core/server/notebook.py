"""The explorer inside Jupyter: serve posteriors on localhost and embed the page in an iframe.

Example (in a notebook cell)::

    from sbi_core.server.notebook import explore
    view = explore(posterior)      # displays the explorer below the cell
    view.stop()                    # when done

:func:`explore` starts the app in a background thread bound to ``127.0.0.1`` and returns an
:class:`Explorer`, which Jupyter displays as an iframe of the explorer page (its
``_repr_html_``); ``view.url`` opens the same page in a browser tab, and the REST API is
available under ``view.url + "/api"``.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

from sbi_core.posterior import Posterior
from sbi_core.server.app import create_app
from sbi_core.server.background import BackgroundServer

__all__ = ["Explorer", "explore"]


class Explorer:
    """A running explorer: ``url``, ``stop()``, and an iframe when displayed in Jupyter."""

    def __init__(self, server: BackgroundServer, model: str, height: int):
        self.server = server
        self.model = model
        self.height = int(height)

    @property
    def url(self) -> str:
        """Address of the explorer page, with the first model preselected."""
        return f"{self.server.url}/?model={quote(self.model, safe='')}"  # "a&b", "x#1" too

    def _repr_html_(self) -> str:
        src = html.escape(self.url, quote=True)
        return (f'<iframe src="{src}" width="100%" height="{self.height}" '
                'style="border:1px solid #ddd" title="sbi-core posterior explorer"></iframe>')

    def iframe(self) -> Any:
        """An ``IPython.display.IFrame`` of the explorer (requires IPython)."""
        from IPython.display import IFrame

        return IFrame(self.url, width="100%", height=self.height)

    def stop(self) -> None:
        """Shut the background server down."""
        self.server.stop()

    def __repr__(self) -> str:
        state = "running" if self.server.running else "stopped"
        return f"Explorer({self.url}, {state})"


def explore(posterior: Posterior | dict[str, Posterior], name: str = "model",
            port: int | None = None, height: int = 720, max_samples: int = 100_000) -> Explorer:
    """Serve ``posterior`` (or several as ``{name: posterior}``) and return a displayable view.

    Args:
        posterior: one posterior or a dict of named posteriors.
        name: the name of a single posterior in the model selector and the URLs.
        port: localhost port; ``None`` picks a free one.
        height: iframe height in pixels.
        max_samples: largest number of samples one request may ask for.
    """
    models = posterior if isinstance(posterior, dict) else {name: posterior}
    app = create_app(models, max_samples=max_samples)
    server = BackgroundServer(app, host="127.0.0.1", port=port).start()
    return Explorer(server, next(iter(models)), height)
