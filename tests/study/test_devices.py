"""The device, precision and memory format a run computes in: the measured fastest, overridable."""

from __future__ import annotations

import pytest
import torch

import study.devices as devices
import study.trainer as trainer
from study.devices import autocast_dtype, choose_device, uses_channels_last
from study.errors import UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_precision_on_cpu_is_bf16_for_resnets_only_where_the_cpu_computes_bf16(monkeypatch, has_bf16):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: has_bf16)
    expected = torch.bfloat16 if has_bf16 else None
    assert autocast_dtype(CPU, "auto", "resnet50") is expected
    assert autocast_dtype(CPU, "auto", "resnet18") is expected
    assert autocast_dtype(CPU, "auto", "mobilenet_v2") is None  # bf16 measured slower for it


def test_auto_precision_on_cuda_is_bf16_and_explicit_choices_override_auto(monkeypatch):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert autocast_dtype(CUDA, "auto", "mobilenet_v2") is torch.bfloat16
    assert autocast_dtype(CPU, "fp32", "resnet50") is None
    assert autocast_dtype(CUDA, "fp32", "resnet50") is None
    assert autocast_dtype(CPU, "bf16", "mobilenet_v2") is torch.bfloat16


def test_channels_last_is_used_on_cpu_and_cuda_unless_turned_off():
    assert uses_channels_last(CPU, True) and uses_channels_last(CUDA, True)
    assert not uses_channels_last(CPU, False)
    assert not uses_channels_last(torch.device("meta"), True)


def test_cpu_bf16_support_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    real_path = devices.Path
    monkeypatch.setattr(devices, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    devices.cpu_computes_bf16.cache_clear()
    try:
        assert devices.cpu_computes_bf16()
        devices.cpu_computes_bf16.cache_clear()
        cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
        assert not devices.cpu_computes_bf16()
    finally:
        devices.cpu_computes_bf16.cache_clear()


def test_a_device_that_is_not_there_is_refused_with_the_fix():
    with pytest.raises(UserError, match="not a device"):
        choose_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            choose_device("cuda")


def test_a_cpu_run_trains_channels_last_with_its_configured_threads(tiny_config, tmp_path, monkeypatch):
    seen = {}
    real_epoch = trainer.train_epoch

    def spy(forward, model, optimizer, batches, autocast, step, config):
        first = next(iter(model.parameters()))
        seen["model_channels_last"] = first.is_contiguous(memory_format=torch.channels_last)
        seen["threads"] = torch.get_num_threads()

        def watched():
            for images, labels in batches:
                seen["images_channels_last"] = images.is_contiguous(memory_format=torch.channels_last)
                yield images, labels

        return real_epoch(forward, model, optimizer, watched(), autocast, step, config)

    monkeypatch.setattr(trainer, "train_epoch", spy)
    threads = torch.get_num_threads()
    config = tiny_config({"name": "finetune", "epochs": 1}, train={"device": "cpu", "threads": 1})
    try:
        trainer.train_run(config, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert seen == {"model_channels_last": True, "images_channels_last": True, "threads": 1}
