"""Writing files safely: re-exports the project's one atomic writer, ``vsml_runtime.files``.

Train code imports it from here; the writer itself lives in the torch-free
runtime so the runtime's ``save``, the exporter and training share it.
"""

from __future__ import annotations

from vsml_runtime.files import atomic_write, atomic_write_bytes, atomic_write_files, new_file_mode

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_files", "new_file_mode"]
