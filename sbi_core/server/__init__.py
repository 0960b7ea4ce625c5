"""Serve trained posteriors over HTTP: a REST API, a web explorer and a notebook view.

Requires the ``serve`` extra (``pip install sbi-core[serve]``: FastAPI, uvicorn and orjson)::

    from sbi_core.server import create_app
    app = create_app({"two_moons": posterior}, max_samples=100_000)

or from the shell ``sbi-core serve model.pt``, or in Jupyter
``sbi_core.server.notebook.explore(posterior)``. See docs/serve.md.
"""

from sbi_core.server.app import create_app
from sbi_core.server.background import BackgroundServer

__all__ = ["create_app", "BackgroundServer"]
