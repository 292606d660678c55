"""Trainer callbacks the tests share."""

from transformers import TrainerCallback


class StopAt(TrainerCallback):
    """Ends training after ``step``: a run cut off there, as by a disconnect after its last checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
