"""`data.dataset = "hf:..."`: which Hugging Face dataset a config names, parsed in one place for the
config schema, the server's request schema, both data roots checks (server and engine), the
volunteer's allow-list and the loader (cotrain.core.hf_datasets).

Forms (the split is `data.split`, default "train"; the text is `data.text_column`, default "text"):

    hf:NAME, hf:OWNER/NAME     a dataset in this machine's Hugging Face datasets cache, by its Hub name
    hf:OWNER/NAME:CONFIG       one configuration of it (hf:Salesforce/wikitext:wikitext-2-raw-v1)
    hf:/data/raw/wiki          a folder written by `save_to_disk` (a Dataset or a DatasetDict);
    hf:./wiki, hf:../wiki, hf:~/wiki   relative (to where the run starts) or under the home folder

A path must begin with "/", "./", "../" or "~", and a name is letters, digits, "-", "_" and "."
(one "/" between owner and name), so a name can never be read as a path: the data roots rule (issue
11) applies to exactly the path form. The `datasets` library's builder names (json, text, csv, ...)
are refused as names, since loading them without files would read the current directory.

Standard library only: the server imports it without the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "hf:"
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_NAME = rf"{_PART}(?:/{_PART})?"
_CONFIG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PATH = r"(?:/|\./|\.\./|~)[^\x00]*"
# what `data.dataset` / the API's `dataConfig.dataset` may hold (the builder names are refused later)
DATASET_PATTERN = rf"^(?:stdlib|hf:(?:{_PATH}|{_NAME}(?::{_CONFIG})?))$"
_NAMED = re.compile(rf"^hf:(?P<name>{_NAME})(?::(?P<config>{_CONFIG}))?$")
_PATHED = re.compile(rf"^hf:(?P<path>{_PATH})$")

# `datasets`' packaged builders, past and present: `load_dataset("json")` with no files reads the
# current directory (COTRAIN_HOME for a server's run), so these are never dataset names here
BUILDER_NAMES = frozenset({
    "arrow", "audiofolder", "cache", "conll", "csv", "eval", "fasta", "fastq", "genbank", "generator", "harbor",
    "hdf5", "iceberg", "imagefolder", "json", "lance", "meshfolder", "mmcif", "niftifolder", "pandas", "parquet",
    "pdb", "pdffolder", "spark", "sql", "text", "tsfile", "videofolder", "vortex", "webdataset", "xml",
})

FORMS = ('"hf:NAME", "hf:OWNER/NAME", "hf:OWNER/NAME:CONFIG" (a dataset in the Hugging Face cache) or '
         '"hf:/path/to/folder" (a save_to_disk folder; a path starts with /, ./, ../ or ~)')


@dataclass(frozen=True)
class HFDataset:
    """One `hf:` dataset: a cached dataset by name (and config), or a save_to_disk folder by path."""

    spec: str
    name: str | None = None
    config: str | None = None
    path: str | None = None

    @property
    def shown(self) -> str:
        """'owner/name (config cfg)' or the path, for sentences."""
        if self.path is not None:
            return self.path
        return f"{self.name} (config {self.config})" if self.config else str(self.name)


def is_hf(dataset: str | None) -> bool:
    return isinstance(dataset, str) and dataset.startswith(PREFIX)


def parse_hf(dataset: str) -> HFDataset:
    """The parts of an `hf:` spec; ValueError (a sentence of what is allowed) when it is malformed."""
    if (match := _PATHED.match(dataset)) is not None:
        return HFDataset(dataset, path=match["path"])
    if (match := _NAMED.match(dataset)) is not None:
        if match["name"].lower() in BUILDER_NAMES:
            raise ValueError(f'a dataset name, not "{match["name"]}" (a builder of the datasets library, which '
                             f'would read the current folder): read {match["name"]} files with data.data_path')
        return HFDataset(dataset, name=match["name"], config=match["config"])
    raise ValueError(f"one of {FORMS}")


def hf_path(dataset: str | None) -> str | None:
    """The save_to_disk folder an `hf:` spec names, None for every other value (never raises)."""
    if not is_hf(dataset):
        return None
    match = _PATHED.match(dataset or "")
    return match["path"] if match else None
