"""Text through the `datasets` library (the `data` extra), as documents: a folder written by
`save_to_disk`, and a Hugging Face dataset by name, streamed. corpus.py makes `Source`s of them
beside the user's files (`text_sources`, `hub_source`).

    is_datasets_folder(path)            whether a folder is a save_to_disk one
    disk_documents(path, field, split)  its rows' `field`, one document each
    hub_documents(name, ...)            a dataset by name: its rows, read as prepare asks
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UserError


def is_datasets_folder(path: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def rows_documents(rows, field: str, where: str) -> Iterator[str]:
    """Documents from a `datasets` Dataset / IterableDataset, row by row."""
    names = getattr(rows, "column_names", None)
    if names is not None and field not in names:
        raise UserError(f"{where} has no column {field!r} (it has {', '.join(names[:8])}); name the text column "
                        "with --text-field")
    for row in rows:
        text = row.get(field)
        if not isinstance(text, str):
            raise UserError(f"{where} has a row whose {field!r} is not a string ({type(text).__name__}); name the text "
                            "column with --text-field")
        if text.strip():
            yield text.strip()


def need_datasets(what: str):
    """The datasets module, or a UserError saying that `what` needs it (an optional extra)."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{what} needs the datasets library: pip install 'superpose[data]'") from None
    return datasets


def disk_documents(path: Path, field: str, split: str) -> Iterator[str]:
    """The documents of a save_to_disk folder: its rows' `field`, of `split` when it holds several."""
    datasets = need_datasets(f"{path} (a datasets folder)")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"cannot load the datasets folder {path} ({exc}); save it with save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path} has the splits {', '.join(ds)}, not {split!r}; choose one with --split")
        ds = ds[split]
    yield from rows_documents(ds, field, str(path))


def hub_documents(name: str, config: str | None, split: str, text_field: str, data_files: list[str] | None,
                  streaming: bool) -> Callable[[], Iterator[str]]:
    """A Hugging Face dataset by name (`datasets.load_dataset`) as a function returning a fresh
    stream of its documents; the library's absence is said now, the dataset is opened when read."""
    datasets = need_datasets(f"the dataset {name!r}")

    def docs() -> Iterator[str]:
        try:
            rows = datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=streaming)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise UserError(f"cannot load the dataset {name!r} ({first}); check the name, --hf-config and --split, "
                            "and that the hub is reachable") from None
        yield from rows_documents(rows, text_field, f"the dataset {name!r}")

    return docs
