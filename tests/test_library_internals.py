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
    source = inspect.getsource(Trainer)
    assert "self._train_batch_size" in source  # what get_train_dataloader batches by (OOM recovery)
    assert "self._tr_loss" in source  # the running loss sum the guard clears after a NaN


def test_a_lambda_schedule_stepped_again_at_the_same_step_takes_scaled_base_lrs():
    """What the guard's lr cut relies on (``resilience.guard.scale_lr``): ``LambdaLR.step()`` computes base_lr x
    lambda(last_epoch) afresh, so setting ``last_epoch`` back one and stepping gives the same step's lr, scaled."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [5e-4] and scheduler.last_epoch == 1
    scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
    scheduler.last_epoch -= 1
    scheduler.step()
    assert scheduler.get_last_lr() == [2.5e-4] == [optimizer.param_groups[0]["lr"]] and scheduler.last_epoch == 1


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
