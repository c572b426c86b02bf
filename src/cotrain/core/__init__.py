"""CotrainCore, the training engine. It never fetches from a model or dataset hub: models start
from random init or a local directory, data comes from local files."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
