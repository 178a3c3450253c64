"""Results: the long-format schema, the append-only store, the run manifest.

* :mod:`bench.results.schema` -- :class:`Result` rows and their configuration hash;
* :mod:`bench.results.store` -- ``results.csv`` written as configurations finish, and read back;
* :mod:`bench.results.manifest` -- ``manifest.json``: command, machine, backends' settings, versions.
"""

from bench.results.manifest import MANIFEST_FILE, Manifest, cpu_model, device_name, git_commit, read_manifest
from bench.results.schema import (
    FIELDS,
    RESULTS_FILE,
    SCHEMA_VERSION,
    Result,
    config_hash,
    make_result,
    size_numel,
    to_frame,
)
from bench.results.store import (
    CheckpointError,
    ResultsWriter,
    check_schema,
    done_hashes,
    free_run_path,
    load_checkpoint,
    read_results,
    run_series,
    save_checkpoint,
    write_whole,
)

__all__ = [
    "FIELDS",
    "MANIFEST_FILE",
    "Manifest",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Result",
    "ResultsWriter",
    "check_schema",
    "config_hash",
    "cpu_model",
    "device_name",
    "CheckpointError",
    "done_hashes",
    "free_run_path",
    "git_commit",
    "load_checkpoint",
    "make_result",
    "read_manifest",
    "read_results",
    "run_series",
    "save_checkpoint",
    "size_numel",
    "to_frame",
    "write_whole",
]
