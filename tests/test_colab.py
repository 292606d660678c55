"""Colab: outputs default to Google Drive when it is mounted; a warning when they would be lost."""

from rslora_colab import FinetuneConfig
from rslora_colab.resilience import drive as colab


def test_output_dir_defaults_to_drive_when_mounted(tmp_path, monkeypatch):
    assert FinetuneConfig().output_dir == "outputs/rslora"  # no Drive here
    monkeypatch.setattr(colab, "DRIVE_HOME", tmp_path / "MyDrive")
    (tmp_path / "MyDrive").mkdir()
    assert FinetuneConfig().output_dir == str(tmp_path / "MyDrive" / "rslora-colab" / "outputs" / "rslora")
    assert FinetuneConfig(output_dir="mine").output_dir == "mine"


def test_warns_only_on_colab_and_only_off_drive(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(colab, "on_colab", lambda: False)
    assert not colab.warn_if_volatile("outputs/rslora")  # a laptop or CI: nothing to warn about
    monkeypatch.setattr(colab, "on_colab", lambda: True)
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp_path / "drive")
    assert not colab.warn_if_volatile(tmp_path / "drive" / "MyDrive" / "run")
    assert colab.warn_if_volatile("outputs/rslora")
    assert "a disconnect will lose it" in capsys.readouterr().out
