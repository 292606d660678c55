"""The notebook side of the kit: the control panel, the live view, the data preview, the runtime check.

==================  ================================================================
module              job
==================  ================================================================
:mod:`.panel`       ipywidgets control panel: choose, see the VRAM gauge, Train / Stop
:mod:`.live`        the live progress bar and loss plot under a cell
:mod:`.preview`     one row as the trainer formats and masks it
:mod:`.check`       which GPU, bf16 or fp16 and why, backend; the CPU demo notice
==================  ================================================================

Everything here calls the tested package; the notebooks stay thin.
"""

from .check import CPU_NOTICE, RuntimeCheck, check_runtime
from .live import LivePlotCallback, enable_colab_widgets
from .panel import ControlPanel, control_panel
from .preview import DataPreview, preview_data

__all__ = ["CPU_NOTICE", "ControlPanel", "DataPreview", "LivePlotCallback", "RuntimeCheck", "check_runtime",
           "control_panel", "enable_colab_widgets", "preview_data"]
