"""The reference's log-mel front-end: shape, mel filter bank, log, resampling, padding."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from datasets.encoders.logmel import EPS, LogMel, LogMelConfig, load_wave
from datasets.errors import DatasetError


def test_ten_seconds_give_1001_by_64():
    cfg = LogMelConfig()
    assert (cfg.samples, cfg.frames, cfg.shape) == (320000, 1001, (1001, 64))
    out = LogMel(cfg)(torch.randn(2, cfg.samples) * 0.1)
    assert out.shape == (2, 1001, 64) and out.dtype == torch.float32


def test_htk_mel_no_norm_natural_log_of_power():
    cfg = LogMelConfig(seconds=0.5)
    x = torch.randn(1, cfg.samples) * 0.1
    spec = (
        torch.stft(
            x, 1024, 320, 1024, torch.hann_window(1024), center=True, pad_mode="reflect", return_complex=True
        ).abs()
        ** 2
    )
    fb = torchaudio.functional.melscale_fbanks(513, 20.0, 14000.0, 64, 32000, norm=None, mel_scale="htk")  # (513, 64)
    want = torch.log(spec.transpose(1, 2) @ fb + EPS)  # (1, frames, 64)
    assert torch.allclose(LogMel(cfg)(x), want, atol=1e-4)
    assert EPS == float(np.finfo(np.float32).eps)


def test_load_wave_resamples_mixes_pads_and_truncates(tmp_path):
    cfg = LogMelConfig(seconds=0.25)
    t = np.arange(16000) / 16000.0  # 1 s at 16 kHz, stereo
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], 1).astype(np.float32) * 0.5
    sf.write(str(tmp_path / "s.wav"), stereo, 16000)
    w = load_wave(tmp_path / "s.wav", cfg)
    assert w.shape == (8000,) and w.dtype == np.float32  # truncated to 0.25 s at 32 kHz
    assert abs(np.abs(w).max() - 0.25) < 0.02  # channels averaged
    sf.write(str(tmp_path / "short.wav"), np.full(3200, 0.1, dtype=np.float32), 32000)
    w = load_wave(tmp_path / "short.wav", cfg)
    assert w.shape == (8000,) and np.allclose(w[:3200], 0.1, atol=1e-4) and not w[3200:].any()  # zero-padded


def test_unreadable_audio_names_the_file_and_where_it_was_listed(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.wav \(listed at f.txt:3\): audio file not found"):
        load_wave(tmp_path / "nope.wav", LogMelConfig(), where="f.txt:3")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(DatasetError, match="bad.wav.*not a readable audio file"):
        load_wave(tmp_path / "bad.wav", LogMelConfig())
