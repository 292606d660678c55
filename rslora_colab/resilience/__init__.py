"""Nothing lost: what keeps a run alive through NaNs, out-of-memory errors, disconnects, Ctrl-C and clumsy starts.

=====================  ==============================================================
module                 job
=====================  ==============================================================
:mod:`.guard`          divergence guard: roll back NaN / exploding steps, lower the lr
:mod:`.oom`            out-of-memory recovery: halve the micro-batch, same step, same data
:mod:`.checkpoints`    atomic, timed checkpoints (the one save path); which ones are valid
:mod:`.resume`         the run manifest; resume only the same run
:mod:`.lock`           one live run per output folder
:mod:`.interrupt`      Ctrl-C stops after the step and saves
:mod:`.drive`          Google Drive on Colab, where a disconnect cannot take the outputs
:mod:`.atomic`         JSON files that appear whole or not at all
=====================  ==============================================================

What is guaranteed, and what is not: ``docs/resilience.md``.

This ``__init__`` imports nothing: the low modules (``drive``, ``atomic``,
``lock``) are read by the settings themselves, the high ones (``oom``,
``resume``) read the resolved run; importing each from its own module keeps
the two apart without a cycle.
"""
