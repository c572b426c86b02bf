"""The CoTrain platform from Python: `Client(server, token)` (blocking) and `AsyncClient` (asyncio),
typed with the server's own schemas, raising `CotrainError` with the server's message.

    from cotrain.client import Client

    with Client.from_login() as c:           # or Client("http://127.0.0.1:8000", token)
        s = c.create_session("configs/templates/tiny-cpu.toml", overrides=["train.max_steps=40"])
        for m in c.watch(s.id):              # live, resumes after a disconnect, loses nothing
            print(m.seq, m.event, m.data.get("step"), m.data.get("loss"))
        print(c.wait(s.id).status)
        zip_path = c.download_session_model(s.id, ".")

Importing this package does not import torch, the server or the engine.
"""

from cotrain.client.aio import AsyncClient
from cotrain.client.core import FINAL_STATES, create_body
from cotrain.client.errors import CotrainError
from cotrain.client.sync import Client
from cotrain.server.schemas import (
    CheckpointOut,
    MessageOut,
    MetricSeries,
    ModelVersionOut,
    Page,
    SessionCreate,
    SessionFromConfig,
    SessionOut,
    SessionUpdate,
)

__all__ = [
    "FINAL_STATES", "AsyncClient", "CheckpointOut", "Client", "CotrainError", "MessageOut", "MetricSeries",
    "ModelVersionOut", "Page", "SessionCreate", "SessionFromConfig", "SessionOut", "SessionUpdate", "create_body",
]
