"""Baseline for ``bench/train.py``: the small autoencoder training step (config ``small-vae``) in PyTorch.

Run by ``python bench/train.py --baseline-python PY`` with a Python that has ``torch`` and
``pytorch_msssim`` (neither is a medfusion-jax dependency; this file is never imported by the package).
It rebuilds the reference's step from the spec (sections 3 and 4.3): the MONAI-style VAE with
hid_chs (32, 64, 128, 128), 4 latent channels and one deep-supervision head; the lpips package's
uncalibrated VGG16 ("baseline") perceptual term; pytorch_msssim's SSIM as the reference imports it; L1;
KL x 1e-6; Adam 1e-4; batch 8 of 64x64 images. The VGG16 weights are random (the time does not depend
on them). Prints one JSON line: {"ms_per_step": median, "threads": n}.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_msssim import ssim


class BasicBlock(nn.Module):
    def __init__(self, i, o, k, st=1, norm=True, act=True, zero=False):
        super().__init__()
        self.conv = nn.Conv2d(i, o, k, st, (k - st + 1) // 2)
        if zero: nn.init.zeros_(self.conv.weight); nn.init.zeros_(self.conv.bias)
        self.norm = nn.GroupNorm(8, o) if norm else None
        self.act = nn.SiLU() if act else None
    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None: x = self.norm(x)
        if self.act is not None: x = self.act(x)
        return x

class BasicResBlock(nn.Module):
    def __init__(self, i, o, k, st=1, zero=False):
        super().__init__()
        self.basic_block = BasicBlock(i, o, k, st, zero=zero)
        self.conv_res = nn.Conv2d(i, o, 1, st) if i != o else None
    def forward(self, x):
        return self.basic_block(x) + (x if self.conv_res is None else self.conv_res(x))

class UnetResBlock(nn.Module):
    def __init__(self, i, o, k=3, st=1):
        super().__init__()
        self.block_seq = nn.Sequential(BasicResBlock(i, o, k, st), BasicResBlock(o, o, k, 1, zero=True))
    def forward(self, x): return self.block_seq(x)

class Down(nn.Module):
    def __init__(self, i, o):
        super().__init__(); self.down = nn.Conv2d(i, o, 3, 2, 1); self.block = UnetResBlock(o, o)
    def forward(self, x): return self.block(self.down(x))

class Up(nn.Module):
    def __init__(self, i, o):
        super().__init__(); self.up = nn.Conv2d(i, o, 3, 1, 1); self.block = UnetResBlock(o, o)
    def forward(self, x): return self.block(self.up(F.interpolate(x, scale_factor=2, mode="nearest-exact")))

class VAE(nn.Module):
    def __init__(self, hid=(32, 64, 128, 128), emb=4):
        super().__init__()
        self.inc = UnetResBlock(3, hid[0])
        self.encoders = nn.ModuleList([Down(hid[i - 1], hid[i]) for i in range(1, len(hid))])
        self.out_enc = nn.Sequential(nn.Conv2d(hid[-1], 2 * emb, 3, 1, 1), nn.Conv2d(2 * emb, 2 * emb, 1))
        self.inc_dec = UnetResBlock(emb, hid[-1])
        self.decoders = nn.ModuleList([Up(hid[i + 1], hid[i]) for i in range(len(hid) - 1)])
        self.outc = nn.Conv2d(hid[0], 3, 1); nn.init.zeros_(self.outc.weight); nn.init.zeros_(self.outc.bias)
        self.outc_ver = nn.Conv2d(hid[1], 3, 1)
        nn.init.zeros_(self.outc_ver.weight)
        nn.init.zeros_(self.outc_ver.bias)
    def forward(self, x):
        h = self.inc(x)
        for e in self.encoders: h = e(h)
        mean, logvar = self.out_enc(h).chunk(2, 1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        kl = 0.5 * torch.sum(mean ** 2 + logvar.exp() - 1 - logvar) / x.shape[0]
        h = self.inc_dec(z); head = None
        for i in reversed(range(len(self.decoders))):
            if i == 0: head = self.outc_ver(h)
            h = self.decoders[i](h)
        return self.outc(h), [head], kl

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
class LPIPSBaseline(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in CFG:
            if v == "M": layers.append(nn.MaxPool2d(2, 2))
            else: layers += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU(inplace=False)]; c = v
        self.features = nn.Sequential(*layers)
        for p in self.parameters(): p.requires_grad_(False)
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])
        relus = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]
        self.taps = {relus[1], relus[3], relus[6], relus[9], relus[12]}
    def feats(self, x):
        x = (x - self.shift) / self.scale; out = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps: out.append(x)
        return out
    def forward(self, a, b):
        total = 0
        for fa, fb in zip(self.feats(a), self.feats(b), strict=True):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (na - nb).pow(2).sum(1, keepdim=True).mean([2, 3], keepdim=True)
        return total

def rec_loss(pred, target, lpips):
    pixel = (pred - target).abs()
    p = lpips(pred, target)
    structural = 1 - ssim(((pred + 1) / 2).clamp(0, 1), (target + 1) / 2, data_range=1, size_average=False,
                          nonnegative_ssim=True)
    per = pixel + p + structural.view(-1, 1, 1, 1)
    return per.sum() / pred.shape[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae, lpips = VAE(), LPIPSBaseline()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-4)
    x = torch.rand(8, 3, 64, 64) * 2 - 1

    def step():
        opt.zero_grad(set_to_none=True)
        out, heads, kl = vae(x)
        head_target = F.interpolate(x, size=heads[0].shape[2:], mode="nearest-exact")
        loss = rec_loss(out, x, lpips) + rec_loss(heads[0], head_target, lpips) + 1e-6 * kl
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps(dict(ms_per_step=round(1e3 * float(np.median(times)), 2), threads=torch.get_num_threads(),
                          torch=torch.__version__)))


if __name__ == "__main__":
    main()
