"""The web UI: NiceGUI pages mounted on the server's FastAPI app (one process, one port).

`mount(app)` adds the pages to an app made by `cotrain.server.app.create_app`;
`cotrain.ui.app:create_app` is a uvicorn factory that returns the server app with the UI mounted.
The pages talk to the server's services (`app.state.platform`), never to the engine.
"""

from cotrain.ui.mount import mount

__all__ = ["mount"]
