"""The notebook side of the kit: the control panel, the live view, the data preview, the runtime check.

==================  ================================================================
module              job
==================  ================================================================
:mod:`.panel`       ipywidgets control panel: choose, see the VRAM gauge, Train / Stop
:mod:`.live`        the live progress bar and loss plot under a cell
:mod:`.preview`     one row as the trainer formats and masks it
:mod:`.check`       which GPU, bf16 or fp16 and why, backend; the CPU demo notice
:mod:`.runs`        which folder a notebook's next run writes to (never over a finished run)
==================  ================================================================

Everything here calls the tested package; the notebooks stay thin.
"""

from .check import CPU_NOTICE, RuntimeCheck, check_runtime
from .live import LivePlotCallback, enable_colab_widgets, show_figures_as_images
from .panel import ControlPanel, control_panel
from .preview import DataPreview, preview_data
from .runs import download, folder_state, new_run_folder, next_run_folder, notebook_output_dir, notebook_run

show_figures_as_images()  # a Figure a cell returns (e.g. sweep.plot()) shows as a picture in Jupyter and Colab

__all__ = ["CPU_NOTICE", "ControlPanel", "DataPreview", "LivePlotCallback", "RuntimeCheck", "check_runtime",
           "control_panel", "download", "enable_colab_widgets", "folder_state", "new_run_folder", "next_run_folder",
           "notebook_output_dir", "notebook_run",
           "preview_data", "show_figures_as_images"]
