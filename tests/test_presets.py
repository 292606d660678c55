import pytest

from rslora_colab import adapter_scale, lr_for_rank, preset_for_rank
from rslora_colab.presets import LR_CEILING, LR_FLOOR, log_lr_curve


@pytest.mark.parametrize("r, lr", [(16, 2e-4), (32, 1.5e-4), (64, 1e-4)])
def test_anchor_points(r, lr):
    assert lr_for_rank(r) == pytest.approx(lr, rel=1e-9)


def test_lr_never_rises_with_rank_and_falls_between_clamps():
    lrs = [lr_for_rank(r) for r in range(1, 1025)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    inside = [lr for lr in lrs if LR_FLOOR < lr < LR_CEILING]
    assert all(b < a for a, b in zip(inside, inside[1:]))
    assert lrs[0] == LR_CEILING and LR_FLOOR <= lrs[-1] < 2e-5


def test_curve_is_smooth_at_the_joins():
    # the log-log slope just inside and just outside r=16 (x=-1) and r=64 (x=1) agree: a C1 curve
    def slope(x, h=1e-6):
        return (log_lr_curve(x + h) - log_lr_curve(x - h)) / (2 * h)

    for edge in (-1.0, 1.0):
        assert slope(edge - 1e-3) == pytest.approx(slope(edge + 1e-3), rel=1e-2)
    assert slope(-2) != pytest.approx(slope(2), rel=0.1)  # and it does bend in between


def test_scale_is_alpha_over_sqrt_r_or_alpha_over_r():
    assert adapter_scale(64, 64) == 8.0
    assert adapter_scale(16, 64, use_rslora=False) == 0.25
    assert preset_for_rank(256).scale == 16.0
    assert preset_for_rank(64, alpha=8).scale == 1.0


@pytest.mark.parametrize("bad", [0, 1025, -3, 2.5, "64", True])
def test_bad_ranks_are_refused_with_the_range(bad):
    with pytest.raises(ValueError, match="1 to 1024"):
        lr_for_rank(bad)
