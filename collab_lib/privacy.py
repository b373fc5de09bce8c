"""Differential privacy (beyond the paper, §6.1-6.2): DP-SGD inside training, and ε.

Two units of protection, each a setting of the trade-off:

- **Example-level** DP-SGD (Abadi et al. 2016) with Opacus: every optimizer step draws its
  batch by Poisson sampling (each training sequence with probability ``q = batch / N``),
  clips each sequence's gradient to ``max_grad_norm`` and adds Gaussian noise of standard
  deviation ``noise_multiplier x max_grad_norm`` to their sum. Two datasets are neighbours
  when one has one more training *sequence* (a packed block of ``model.context`` tokens) of
  one organization: a file spanning k blocks, or a canary repeated k times, is protected
  as a group of k (about k times ε). Inside a federated run each organization runs DP-SGD
  on its own data, so its sequences are protected by the steps of its own client over all
  rounds, whatever the server does with the updates.
- **Organization-level** DP (:mod:`collab_lib.federated.server_app`): Flower's server-side
  fixed-clipping wrapper around FedAvg clips each organization's update and adds noise to
  their average, every organization in every round (no sampling). Neighbours differ by one
  organization's whole participation.

ε comes from Rényi DP of the sampled Gaussian mechanism (Mironov et al. 2019), as Opacus
computes it, converted to (ε, δ) with Balle et al. 2020's bound; :func:`epsilon` with
``conversion="mironov"`` gives the older conversion that Abadi et al.'s and TF Privacy's
published figures used (a test reproduces one). Every checkpoint is released (the curves
score each epoch), which the accountant covers: ε after T steps bounds every prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EXAMPLE, ORGANIZATION = "example", "organization"  # the unit a DP setting protects
# Rényi orders: Opacus's default grid
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


class Row(str):
    """A text that is one training sequence of its own (an audit canary): repeated to fill
    the context, and never packed with the documents (:func:`collab_lib.training.pack`), so
    adding or removing it changes exactly one sequence (DP's neighbouring datasets)."""


@dataclass(frozen=True)
class DPSGD:
    """One DP-SGD job's mechanism: Gaussian noise of ``noise_multiplier x max_grad_norm`` on
    the sum of per-sequence gradients clipped to ``max_grad_norm``, over a Poisson sample of
    ``batch_size`` sequences on average (noise on the mean shrinks as the batch grows)."""

    noise_multiplier: float
    max_grad_norm: float
    batch_size: int


def epsilon(
    q: float, noise_multiplier: float, steps: int, delta: float, conversion: str = "balle"
) -> float:
    """ε of ``steps`` compositions of the Gaussian mechanism on a Poisson sample of rate
    ``q`` (1: everyone, every step) at ``delta``, from its Rényi DP over :data:`ORDERS`.

    ``conversion``: ``balle`` (Balle et al. 2020, Theorem 21: what we report) or
    ``mironov`` (Mironov 2017, Proposition 3: ε = RDP(α) + log(1/δ)/(α-1), what Abadi et
    al.'s and TF Privacy's published figures used; never smaller).
    """
    from opacus.accountants.analysis import rdp

    if steps == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    curve = np.asarray(
        rdp.compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=list(ORDERS))
    )
    if conversion == "mironov":
        orders = np.asarray(ORDERS)
        return float(np.min(curve + math.log(1 / delta) / (orders - 1)))
    import warnings

    with warnings.catch_warnings():  # "optimal order is the smallest alpha": a loose ε
        warnings.simplefilter("ignore")
        eps, _ = rdp.get_privacy_spent(orders=list(ORDERS), rdp=curve, delta=delta)
    return float(eps)


def dp_batch(cfg) -> int:
    """A profile's DP-SGD batch: ``privacy.batch_size``, or the plain one (batch x accum)."""
    return cfg.privacy.batch_size or cfg.train.batch_size * cfg.train.grad_accum


def sampling_rate(batch: float, sequences: int) -> float:
    """DP-SGD's Poisson rate: each of ``sequences`` joins a step's batch with this chance,
    ``batch`` of them on average (all, every step, when the data holds fewer)."""
    return min(1.0, batch / sequences)


def steps_per_epoch(sequences: int, batch: int) -> int:
    """DP-SGD's steps per epoch: as many as batches of ``batch`` fit in the data, rounded up
    (training and the accountant count them alike)."""
    return math.ceil(sequences / batch)


def poisson_batch(n: int, q: float, generator) -> torch.Tensor:  # noqa: F821
    """The indices of one Poisson-sampled batch: each of ``n`` sequences with probability
    ``q``, drawn from ``generator`` (the accountant's sampling, not a shuffled split)."""
    import torch

    return torch.nonzero(torch.rand(n, generator=generator) < q).flatten()


def make_private(model, optimizer, dp: DPSGD, expected_batch: float, generator):
    """``model`` with per-sample gradients (Opacus's ``GradSampleModule``) and ``optimizer``
    clipping and noising them (``DPOptimizer``, noise drawn from ``generator``), the noisy
    sum divided by ``expected_batch`` (the sampling rate times the sequences)."""
    import warnings

    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    # token ids need no gradient: torch warns that the hooks see only the modules' outputs
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    register_conv1d()
    private = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=expected_batch,
        generator=generator,
    )
    return private, optimizer


def empty_batch(private) -> None:
    """Mark a batch the Poisson draw left empty: zero per-sample gradients, so the step
    still adds the noise (the accountant counts every step)."""
    import torch

    for p in private.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def register_conv1d() -> None:
    """Opacus's per-sample gradients for ``transformers``' ``Conv1D`` (GPT-2's projections):
    ``y = x W + b`` with ``W`` stored (in, out), so one einsum over the activations and the
    output gradients, as Opacus does for ``nn.Linear`` with ``W`` transposed. Without it
    Opacus falls back to functorch, which gives the same gradients (a test checks) about a
    quarter slower."""
    import torch
    from opacus.grad_sample import register_grad_sampler
    from transformers.pytorch_utils import Conv1D

    def conv1d(layer, activations, backprops):
        x = activations[0].to(backprops.dtype)
        out = {}
        if layer.weight.requires_grad:
            out[layer.weight] = torch.einsum("n...i,n...j->nij", x, backprops)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = torch.einsum("n...k->nk", backprops)
        return out

    register_grad_sampler(Conv1D)(conv1d)
