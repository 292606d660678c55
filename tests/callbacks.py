"""Trainer callbacks the tests share."""

from transformers import TrainerCallback


class StopAt(TrainerCallback):
    """Ends training after ``step``: a run cut off there, as by a disconnect after its last checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def batch_rows(kwargs) -> list[tuple[int, ...]]:
    """The rows of the micro-batch a forward pass got, as token tuples, whatever its layout: padded (one row per
    line, the attention mask marks the real tokens) or padding-free / packed (one line, each row starting where its
    position ids restart at 0)."""
    ids = kwargs["input_ids"]
    if kwargs.get("attention_mask") is not None:
        return [tuple(row[m.bool()].tolist()) for row, m in zip(ids, kwargs["attention_mask"])]
    rows = []
    for line, positions in zip(ids, kwargs["position_ids"]):
        starts = (positions == 0).nonzero().flatten().tolist() + [len(line)]
        rows += [tuple(line[a:b].tolist()) for a, b in zip(starts, starts[1:])]
    return rows


class Recorder(TrainerCallback):
    """Keeps the training arguments the trainer really runs with (``args`` at the start of training)."""

    def __init__(self):
        self.args = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.args = args
