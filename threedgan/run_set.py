"""The final weights and config of a run, written and checked as one set.

A run's output folder ends with three files that belong together: `generator_weights.h5`, `discriminator_weights.h5`
and `config.json` (whose `z_stddev`, `z_size` and networks the weights need). They cannot be replaced together in
one atomic step, so `write_final_set` makes any interruption detectable instead, with a manifest, `final_set.json`,
listing the size and SHA-256 of each file:

1. the three new files are written under temporary names (`.tmp-final-*.h5`, `config.json.tmp`) and flushed;
2. the manifest is replaced by one that lists the new set *and* the set now in place;
3. the three files are renamed over the old ones, one at a time;
4. the manifest is replaced by one that lists the new set only.

A kill at any moment leaves files that all belong to one set the manifest lists (the old one, or the new one), or,
between two renames of step 3, a mix of both: `check_final_set` (run by generate and evaluate before loading anything)
finds the mix and refuses it in one line naming the files. A folder without a manifest (written before it existed)
is used as it is. Temporary files left by a kill are removed by the next training run
(`threedgan.checkpoint.remove_temporary_outputs`) or the next `write_final_set`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from threedgan.config import CONFIG_FILENAME
from threedgan.errors import WeightsError
from threedgan.safe_io import file_sha256, fsync_directory, fsync_file

GENERATOR_FILENAME = "generator_weights.h5"
DISCRIMINATOR_FILENAME = "discriminator_weights.h5"
MANIFEST_FILENAME = "final_set.json"
SET_FILENAMES = (GENERATOR_FILENAME, DISCRIMINATOR_FILENAME, CONFIG_FILENAME)
# Temporary names that `threedgan.checkpoint.remove_temporary_outputs` already cleans up (`.tmp-*.h5`, config.json.tmp).
_TEMPORARY_NAMES = {
    GENERATOR_FILENAME: ".tmp-final-generator_weights.h5",
    DISCRIMINATOR_FILENAME: ".tmp-final-discriminator_weights.h5",
    CONFIG_FILENAME: f"{CONFIG_FILENAME}.tmp",
}
_FORMAT = "threedgan-final-set"
_FORMAT_VERSION = 1
_MAX_MANIFEST_BYTES = 1 << 20


def file_digest(path: str) -> Dict[str, object]:
    """`{"bytes": size, "sha256": hex}` of a file."""
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def _write_manifest(directory: str, sets: List[dict]) -> None:
    path = os.path.join(directory, MANIFEST_FILENAME)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump({"format": _FORMAT, "version": _FORMAT_VERSION, "sets": sets}, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(directory)


def _current_set(directory: str) -> dict:
    """The size and hash of each of the set's files now in `directory` (those present)."""
    present = {}
    for name in SET_FILENAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            present[name] = file_digest(path)
    return present


def write_final_set(directory: str, generator, discriminator, config) -> None:
    """Writes G's and D's weights (legacy HDF5 layout) and `config.json` into `directory` as one set (see the
    module notes): whenever the process dies, the folder holds one complete set or a mix `check_final_set` refuses.

    Args:
        directory: the run's output folder (created if needed).
        generator, discriminator: built Keras models.
        config: the run's `Config`.

    Raises:
        OSError: the disk is full, the folder is read-only, ...; the temporary files are removed and the set in
            place is left as it was.
    """
    from threedgan.weights import save_weights_h5

    os.makedirs(directory, exist_ok=True)
    temporary = {name: os.path.join(directory, temporary_name) for name, temporary_name in _TEMPORARY_NAMES.items()}
    stale_manifest = os.path.join(directory, f"{MANIFEST_FILENAME}.tmp")
    if os.path.isfile(stale_manifest):  # left by a process killed while writing the manifest
        os.remove(stale_manifest)
    try:
        save_weights_h5(generator, temporary[GENERATOR_FILENAME])
        save_weights_h5(discriminator, temporary[DISCRIMINATOR_FILENAME])
        with open(temporary[CONFIG_FILENAME], "w") as handle:
            json.dump(config.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        new_set = {}
        for name, path in temporary.items():
            fsync_file(path)
            new_set[name] = file_digest(path)
        old_set = _current_set(directory)
        _write_manifest(directory, [new_set] + ([old_set] if old_set else []))
        for name in SET_FILENAMES:
            os.replace(temporary[name], os.path.join(directory, name))
        fsync_directory(directory)
        _write_manifest(directory, [new_set])
    except BaseException:
        for path in list(temporary.values()) + [os.path.join(directory, f"{MANIFEST_FILENAME}.tmp")]:
            if os.path.isfile(path):
                os.remove(path)
        raise


def read_manifest(folder: str) -> Optional[List[dict]]:
    """The sets a folder's `final_set.json` lists, or `None` when it has none.

    Raises:
        WeightsError: the manifest exists but is not one (not a regular file, not JSON, malformed).
    """
    from threedgan.safe_io import read_regular_file

    path = os.path.join(folder, MANIFEST_FILENAME)
    if not os.path.lexists(path):
        return None
    try:
        document = json.loads(read_regular_file(path, _MAX_MANIFEST_BYTES, WeightsError, what="manifest").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise WeightsError(f"manifest {path} cannot be read ({error})".splitlines()[0]) from None
    sets = document.get("sets") if isinstance(document, dict) else None
    valid = (
        isinstance(document, dict)
        and document.get("format") == _FORMAT
        and isinstance(sets, list)
        and sets
        and all(
            isinstance(entry, dict)
            and set(entry) <= set(SET_FILENAMES)
            and all(
                isinstance(item, dict)
                and isinstance(item.get("bytes"), int)
                and not isinstance(item.get("bytes"), bool)
                and isinstance(item.get("sha256"), str)
                for item in entry.values()
            )
            for entry in sets
        )
    )
    if not valid:
        raise WeightsError(f"manifest {path} is malformed; delete it to use the files as they are")
    return sets


def check_final_set(folder: str, required=(GENERATOR_FILENAME,)) -> None:
    """Refuses a run folder whose weights and config are not one set (a final save killed between two files).

    A folder without `final_set.json` passes (written before it existed). Otherwise every file of the set present
    (and every one in `required`) must match one set the manifest lists, by size and SHA-256.

    Raises:
        WeightsError: the files are a mix of two saves, or were changed after the save; the message names them.
    """
    sets = read_manifest(folder)
    if sets is None:
        return
    present = _current_set(folder)
    for name in required:
        if name not in present:
            raise WeightsError(f"{os.path.join(folder, name)} is missing")
    for candidate in sets:
        if all(name in candidate and candidate[name] == digest for name, digest in present.items()):
            return
    # Described against the set most of the files belong to (the newest among equals): the odd ones out are named.
    closest = max(sets, key=lambda candidate: sum(candidate.get(name) == digest for name, digest in present.items()))
    differing = [name for name, digest in present.items() if closest.get(name) != digest]
    matching = [name for name in present if name not in differing]
    if matching:
        detail = f"{', '.join(differing)} {'is' if len(differing) == 1 else 'are'} not from the save that wrote {', '.join(matching)}"
    else:
        detail = f"{', '.join(differing)} differ from what the last save wrote"
    raise WeightsError(
        f"{folder}: {detail} (a final save was interrupted, or the files were changed after it); run the training "
        f"command again to finish the save, use a checkpoint's files, or delete {MANIFEST_FILENAME} to use them as they are"
    )


def check_weights_file(weights_path: str) -> None:
    """`check_final_set` for the folder of a weights file named like one of the set's (others are not checked)."""
    name = os.path.basename(os.fspath(weights_path))
    if name in SET_FILENAMES:
        check_final_set(os.path.dirname(os.path.abspath(os.fspath(weights_path))), required=(name,))
