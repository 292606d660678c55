"""The library internals the kit still touches, each pinned here so that a version that moves one fails this test
(on both lanes' pins) instead of a user's run. docs/architecture.md says why each stays; anything else goes through
public API (the out-of-memory coordination is a public ``always_call`` forward hook, the embeddings' learning rate
the trainer's ``optimizers`` argument)."""

from __future__ import annotations

import inspect

import torch
from transformers import Trainer


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_transformers_trainer_internals_the_kit_uses_are_there_with_their_signatures():
    assert _params(Trainer._save_checkpoint)[:3] == ["self", "model", "trial"]  # atomic checkpoints
    assert _params(Trainer._get_output_dir)[:2] == ["self", "trial"]  # where a checkpoint is staged
    assert _params(Trainer._load_from_checkpoint)[:2] == ["self", "resume_from_checkpoint"]  # best across moves
    assert _params(Trainer._load_best_model) == ["self"]  # the best adapter after a resume that had ended
    source = inspect.getsource(Trainer)
    assert "self._train_batch_size" in source  # what get_train_dataloader batches by (OOM recovery)
    assert "self._tr_loss" in source  # the running loss sum the guard clears after a NaN


def test_the_scheduler_logs_the_lr_it_keeps_in_last_lr():
    """The guard halves the lr and sets ``_last_lr``, which ``get_last_lr()`` (what the trainer logs) returns."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scheduler._last_lr = [5e-4]
    assert scheduler.get_last_lr() == [5e-4]


def test_bitsandbytes_can_undo_its_cpu_repacking():
    import bitsandbytes.functional as F

    assert _params(F._convert_weight_packed_for_cpu_inverse)[:2] == ["packed_weight", "quant_state"]


def test_a_forward_hook_with_always_call_runs_when_the_forward_raises():
    """What coordinates an out-of-memory error across processes (``resilience.oom.coordinate_out_of_memory``)."""
    seen = []

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    model = Boom()
    model.register_forward_hook(lambda m, a, k, out: seen.append(out), with_kwargs=True, always_call=True)
    try:
        model(torch.zeros(1))
    except torch.OutOfMemoryError:
        pass
    assert seen == [None]
