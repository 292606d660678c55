"""The library internals the kit still touches, each pinned here so that a version that moves one fails this test
(on both lanes' pins) instead of a user's run. docs/architecture.md says why each stays; anything else goes through
public API (the out-of-memory coordination is a public ``always_call`` forward hook, the embeddings' learning rate
the trainer's ``optimizers`` argument)."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import Trainer


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_transformers_trainer_internals_the_kit_uses_are_there_with_their_signatures():
    # atomic checkpoints; where it writes follows the public args.output_dir, which test_resume.py's SIGKILL
    # mid-save checks (the half-written checkpoint is in the staging folder) on both lanes
    assert _params(Trainer._save_checkpoint)[:3] == ["self", "model", "trial"]
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


def test_a_4bit_layer_repacked_for_cpu_inference_gets_its_plain_layout_back_from_state_dict():
    """What ``adapt.keep_cpu_4bit_trainable`` relies on: bitsandbytes repacks a ``Linear4bit`` weight the first time
    it runs on CPU in eval mode without gradients, and its public ``state_dict()`` restores the plain layout (the
    one training needs) before it saves."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    if not layer.support_avx512bf16_for_cpu:
        pytest.skip("this CPU has no avx512bf16: bitsandbytes never repacks here")
    plain = layer.weight.data.clone()
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))
    assert layer.weight.quant_state.packing_format_for_cpu and layer.weight.data.shape != plain.shape
    layer.state_dict()
    assert not layer.weight.quant_state.packing_format_for_cpu and torch.equal(layer.weight.data, plain)


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
