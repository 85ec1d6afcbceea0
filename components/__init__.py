"""Plain-Python stages of the amalia-vl pipeline.

Nothing here imports Prefect: the CLI (`amalia_vl.cli`), DVC (`dvc.yaml`) and the Prefect
flows (`flows/`) all call the same stage functions registered in `components.stages`.
"""

import logging as _logging


class _NoCpuAcceleratorNotice(_logging.Filter):
    """DeepSpeed warns "Setting accelerator to CPU" whenever Accelerate imports it on a box
    without a GPU; there the engine runs DDP over gloo and says so itself."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


_logging.getLogger("DeepSpeed").addFilter(_NoCpuAcceleratorNotice())
