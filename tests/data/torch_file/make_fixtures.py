"""Regenerate the real-torch fixtures of tests/test_torch_file.py (files next to this script).

Needs torch, lightning, omegaconf and numpy, none of which the project or its tests depend on;
run it in a throwaway environment, e.g.::

    python3 -m venv /tmp/torchcheck
    /tmp/torchcheck/bin/pip install torch lightning omegaconf numpy
    /tmp/torchcheck/bin/python tests/data/torch_file/make_fixtures.py

The tests check exact values, so keep the tensors below in step with them.
"""

import argparse
import collections
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import OmegaConf

OUT = Path(__file__).resolve().parent


def state_dict() -> collections.OrderedDict:
    """Views of one storage (offset, strides, transpose, 0-dim), an expanded tensor, every dtype."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return collections.OrderedDict(
        base=base,
        rows=base[1:, ::2],
        transposed=base.t(),
        column=base[:, 2],
        element=base[2, 3],
        expanded=torch.arange(3, dtype=torch.float32).expand(2, 3),
        f64=torch.linspace(-1, 1, 5, dtype=torch.float64),
        f16=torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16),
        bf16=torch.tensor([1.0, -3.5, 0.0078125], dtype=torch.bfloat16),
        i64=torch.tensor([-(2**40), 0, 2**40], dtype=torch.int64),
        i32=torch.tensor([-(2**31), 7, 2**31 - 1], dtype=torch.int32),
        i16=torch.tensor([-300, 300], dtype=torch.int16),
        i8=torch.tensor([-128, 127], dtype=torch.int8),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        u16=torch.tensor([0, 1, 65535]).to(torch.uint16),
        flags=torch.tensor([True, False, True]),
        c64=torch.tensor([1 + 2j, -0.5j], dtype=torch.complex64),
        zero_dim=torch.tensor(7, dtype=torch.int64),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.full((2, 2), 0.25)),
    )


class TinyEstimator(torch.nn.Module):
    """Stands for a network class that a Medfusion-style model keeps in its hyper-parameters."""


class Tiny(pl.LightningModule):
    def __init__(self, in_ch=2, estimator=TinyEstimator, optimizer=torch.optim.AdamW,
                 optimizer_kwargs={"lr": 0.0},  # noqa: B006 -- Medfusion's style: a dict default in the hparams
                 loss=torch.nn.L1Loss, cfg=None, args=None):
        super().__init__()
        self.save_hyperparameters()
        self.lin = torch.nn.Linear(in_ch, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(3, 2) / 10)
            self.lin.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))

    def training_step(self, batch, batch_idx):
        return self.bn(self.lin(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        # lr=0 keeps the weights at their known values through the two training steps.
        return self.hparams.optimizer(self.parameters(), **self.hparams.optimizer_kwargs)


def lightning_checkpoint(path: Path) -> None:
    """A real Trainer checkpoint after two steps, with class references and configs in hyper_parameters."""
    torch.manual_seed(0)
    cfg = OmegaConf.create({"model": {"ch": [1, 2], "name": "vae", "scale": 0.5, "nothing": None}})
    model = Tiny(cfg=cfg, args=argparse.Namespace(batch_size=4, run="demo"))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=root, accelerator="cpu", enable_checkpointing=False)
        trainer.fit(model, data)
        trainer.save_checkpoint(path)


def misc() -> dict:
    """Values other than tensors that checkpoints hold (Lightning 1.x stored hparams as AttributeDict)."""
    return {
        "hyper_parameters": AttributeDict(lr=1e-4, optimizer=torch.optim.AdamW),
        "cuda": torch.device("cuda", 0),
        "cpu": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "np_scalar": np.float64(2.5),
        "np_array": np.arange(3, dtype=np.int32),
        "set": {1, 2},
        "frozenset": frozenset({"a"}),
        "slice": slice(1, 5, 2),
        "complex": 1 + 2j,
        "bytes": b"\x00\xff",
        "namespace": argparse.Namespace(a=1, b="x"),
        "dictconfig": OmegaConf.create({"lr": 0.1, "layers": [4, {"k": "v"}]}),
    }


class Scripted(torch.nn.Module):
    """Conv, BatchNorm, Sequential with a bias-free Linear, a buffer and a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)
        self.seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False))
        self.register_buffer("buf", torch.arange(4, dtype=torch.float32))
        self.plain = torch.ones(2)  # neither parameter nor buffer: not in state_dict()
        with torch.no_grad():
            self.conv.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x):
        return self.seq(self.bn(self.conv(x)).mean((2, 3))) + self.plain.sum() + self.buf.sum()


def main() -> None:
    torch.save(state_dict(), OUT / "state_dict.pt")
    lightning_checkpoint(OUT / "lightning.ckpt")
    torch.save(misc(), OUT / "misc.pt")
    torch.save({"w": torch.arange(3, dtype=torch.float32), "b": b"xy"}, OUT / "protocol4.pt", pickle_protocol=4)
    scripted = torch.jit.script(Scripted())
    torch.jit.save(scripted, OUT / "script.pt")
    print("script.pt state_dict keys:", list(scripted.state_dict()))
    torch.save({"w": torch.ones(2)}, OUT / "legacy.pt", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
