"""HTTP serving: a FastAPI app with the remove-background API and a web page.

Needs the ``serve`` extra (``pip install "birefnet[serve]"``: fastapi, uvicorn, python-multipart).

Example::

    from birefnet.serve import create_app, ServeSettings
    app = create_app(["lite"], settings=ServeSettings(max_batch=4))
    # uvicorn.run(app, host="127.0.0.1", port=8000)   or: birefnet serve --model lite
"""

from __future__ import annotations

from birefnet.serve.app import APIError, ServeSettings, create_app
from birefnet.serve.batcher import MicroBatcher, QueueFull

__all__ = ["APIError", "MicroBatcher", "QueueFull", "ServeSettings", "create_app"]
