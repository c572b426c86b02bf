"""The example session `cotrain up --example` (and `make run`) creates on an empty database:
the original front end's create body (reference/session-create.json) at the engine's tiny
`debug` size, so it trains in about a minute on a laptop CPU. It waits as a draft for its
Start button."""

from __future__ import annotations

from typing import Any

EXAMPLE_SESSION: dict[str, Any] = {
    "name": "Your first run: a tiny Llama (example)",
    "description": "The original design's llama2 session at the debug size, on the Python standard library's "
    "sources: press Start and watch it train, about a minute on a laptop CPU",
    "modelConfig": {"type": "llama2", "size": "debug", "precision": "fp32"},
    "trainingConfig": {"batchSize": 8, "learningRate": 0.003, "epochs": 1, "optimizer": "adamw", "maxSteps": 200,
                       "logInterval": 2, "evalInterval": 50},
    "distributedConfig": {"nodes": 1, "gpusPerNode": 1, "strategy": "ddp"},
    "dataConfig": {"dataset": "stdlib", "seqLength": 64, "maxBytes": 300000, "vocabSize": 512},
    "checkpointConfig": {"interval": 50},
    "autoStart": False,  # a draft: the newcomer starts it with one click
}
