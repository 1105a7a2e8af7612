"""The PyTorch twin of train/gan.py: one iteration of rosinality's stylegan2-pytorch
`train.py` loop (Dmain, Dreg every d_reg_every, Gmain, Greg every g_reg_every, G EMA)
on the twin networks of eval/torch_reference/stylegan2.py, for tests and benchmarks.

Written from the semantics of rosinality's `train.py` (the paper's code base):
the loss functions carry its names; one Adam per network with the lazy
rescaling lr * k/(k+1), betas ** (k/(k+1)); R1 weighted r1/2 * d_reg_every;
path length weighted path_regularize * g_reg_every at batch // path_batch_shrink;
style mixing per batch; G EMA with decay 0.5 ** (batch / (ema_kimg * 1000))
(rosinality fixes 0.5 ** (32 / 10000); equal at batch 32). No augmentation,
no distributed reduction.

Gradients are zeroed, not dropped (`zero_grad(set_to_none=False)`): rosinality
calls `zero_grad()`, which zeroed them in the PyTorch 1.x it was written for.
It matters for the parameters a regulariser does not reach (G's toRGB biases in
Greg, D's last bias in Dreg): they take an Adam step with a zero gradient (their
second moments decay), where set_to_none would skip them.

    step = TorchGANStep(g, d)           # rosinality Generator / Discriminator
    metrics = step(real)                # real (B, C, H, W) float32 in [-1, 1]
"""

from __future__ import annotations

import copy
import math
import random

import torch
import torch.nn.functional as F
from torch import autograd


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """mean softplus(-D(x)) + mean softplus(D(G(z))); preds (B, 1)."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """mean_b ||d sum D(x) / d x_b||^2; real_img must require grad (create_graph)."""
    (grad,) = autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """mean softplus(-D(G(z)))."""
    return F.softplus(-fake_pred).mean()


def g_path_regularize(fake_img: torch.Tensor, latents: torch.Tensor, mean_path_length,
                      decay: float = 0.01, noise: torch.Tensor | None = None):
    """(penalty, new mean (detached), lengths (B,)); fake_img (B, C, H, W) from
    latents (B, n_latent, D). noise: y (B, C, H, W) already divided by sqrt(H W),
    drawn here when None."""
    if noise is None:
        noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    path_lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
    path_mean = mean_path_length + decay * (path_lengths.mean() - mean_path_length)
    path_penalty = (path_lengths - path_mean).pow(2).mean()
    return path_penalty, path_mean.detach(), path_lengths


def mixing_noise(batch: int, latent_dim: int, prob: float, device) -> list[torch.Tensor]:
    """One z (B, D), or two with probability `prob` (style mixing)."""
    if prob > 0 and random.random() < prob:
        return list(torch.randn(2, batch, latent_dim, device=device).unbind(0))
    return [torch.randn(batch, latent_dim, device=device)]


def requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad = flag


def lazy_adam(params, lr: float, betas, interval: int | None) -> torch.optim.Adam:
    """Adam with StyleGAN2's lazy-regularisation rescaling (c = k / (k + 1))."""
    c = 1.0 if interval is None else interval / (interval + 1)
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c))


class TorchGANStep:
    """rosinality's training iteration as a callable object holding G, D, G_ema, two
    Adams, the running path-length mean and the step counter."""

    def __init__(self, generator, discriminator, *, g_lr=2e-3, d_lr=2e-3, betas=(0.0, 0.99),
                 r1=10.0, path_regularize=2.0, d_reg_every=16, g_reg_every=4,
                 path_batch_shrink=2, pl_decay=0.01, mixing=0.9, ema_kimg=10.0,
                 autocast_dtype: torch.dtype | None = None):
        self.g, self.d = generator, discriminator
        self.g_ema = copy.deepcopy(generator).eval()
        requires_grad(self.g_ema, False)
        self.g_optim = lazy_adam(self.g.parameters(), g_lr, betas, g_reg_every)
        self.d_optim = lazy_adam(self.d.parameters(), d_lr, betas, d_reg_every)
        self.r1, self.path_regularize = r1, path_regularize
        self.d_reg_every, self.g_reg_every = d_reg_every, g_reg_every
        self.path_batch_shrink, self.pl_decay, self.mixing = path_batch_shrink, pl_decay, mixing
        self.ema_kimg = ema_kimg
        self.autocast_dtype = autocast_dtype
        self.mean_path_length = torch.zeros(())
        self.step = 0

    def _autocast(self, device):
        if self.autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def __call__(self, real_img: torch.Tensor) -> dict[str, float]:
        g, d, device = self.g, self.d, real_img.device
        batch, latent = real_img.shape[0], self.g.style_dim
        metrics = {}
        with self._autocast(device):
            requires_grad(g, False)
            requires_grad(d, True)
            fake_img, _ = g(mixing_noise(batch, latent, self.mixing, device))
            fake_pred, real_pred = d(fake_img), d(real_img)
            d_loss = d_logistic_loss(real_pred.float(), fake_pred.float())
        d.zero_grad(set_to_none=False)
        d_loss.backward()
        self.d_optim.step()
        metrics["Loss/D/loss"] = d_loss.detach()

        if self.step % self.d_reg_every == 0:
            real = real_img.detach().requires_grad_(True)
            with self._autocast(device):
                r1_loss = d_r1_loss(d(real).float(), real)
            d.zero_grad(set_to_none=False)
            (self.r1 / 2 * r1_loss * self.d_reg_every).backward()
            self.d_optim.step()
            metrics["Loss/D/r1"] = r1_loss.detach()

        requires_grad(g, True)
        requires_grad(d, False)
        with self._autocast(device):
            fake_img, _ = g(mixing_noise(batch, latent, self.mixing, device))
            g_loss = g_nonsaturating_loss(d(fake_img).float())
        g.zero_grad(set_to_none=False)
        g_loss.backward()
        self.g_optim.step()
        metrics["Loss/G/loss"] = g_loss.detach()

        if self.step % self.g_reg_every == 0:
            path_batch = max(1, batch // self.path_batch_shrink)
            with self._autocast(device):
                fake_img, latents = g(mixing_noise(path_batch, latent, self.mixing, device),
                                      return_latents=True)
                path_loss, self.mean_path_length, _ = g_path_regularize(
                    fake_img.float(), latents, self.mean_path_length.to(device), self.pl_decay)
            g.zero_grad(set_to_none=False)
            (self.path_regularize * self.g_reg_every * path_loss).backward()
            self.g_optim.step()
            metrics["Loss/G/pl_penalty"] = path_loss.detach()

        beta = 0.5 ** (batch / (self.ema_kimg * 1000.0))
        with torch.no_grad():
            for p_ema, p in zip(self.g_ema.parameters(), g.parameters()):
                p_ema.mul_(beta).add_(p.detach(), alpha=1 - beta)
        self.step += 1
        return metrics
