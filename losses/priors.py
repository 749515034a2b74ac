"""Long-tail recipes as pure functions of the per-class training counts.

Everything here takes the counts n_1..n_C (a list, NumPy array or tensor) and returns a CPU
float32 tensor of length C, so losses can keep the results as buffers and ``.to(device)`` them.
Arithmetic is done in float64 first: ``beta ** n`` with beta = 0.9999 and n in the thousands loses
digits in float32, and those digits are exactly what separates the head-class weights.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

Counts = Union[Sequence[float], np.ndarray, torch.Tensor]


def as_counts(counts: Counts) -> torch.Tensor:
    """Validate per-class counts and return them as a 1-D float64 CPU tensor.

    Raises ``ValueError`` for an empty, non-1-D, non-finite or negative input, so a wrong
    ``class_counts`` fails where it is passed rather than as a NaN loss many steps later.
    """
    if isinstance(counts, torch.Tensor):
        values = counts.detach().to("cpu", torch.float64)
    else:
        values = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"class counts must be a non-empty 1-D sequence, got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("class counts must be finite")
    if (values < 0).any():
        raise ValueError(f"class counts must be non-negative; negative at classes {_where(values < 0)}")
    return values


def _positive_counts(counts: Counts, what: str) -> torch.Tensor:
    # Log priors, effective numbers and n^{-1/4} margins are undefined for an empty class.
    values = as_counts(counts)
    if (values == 0).any():
        raise ValueError(f"{what} needs every class count > 0; zero at classes {_where(values == 0)}")
    return values


def _where(mask: torch.Tensor) -> list:
    return mask.nonzero().flatten().tolist()


def class_prior(counts: Counts) -> torch.Tensor:
    """Empirical class prior pi_c = n_c / N (Menon et al., ICLR 2021, Sec. 4), float32, shape (C,)."""
    values = as_counts(counts)
    total = values.sum()
    if total <= 0:
        raise ValueError("class counts sum to zero; there is no prior to estimate")
    return (values / total).float()


def log_prior(counts: Counts, tau: float = 1.0) -> torch.Tensor:
    """tau * log pi_c, the offset of logit adjustment (Menon et al., ICLR 2021, Eq. 10 and 11).

    A class with no training sample would get -inf, which turns the adjusted loss into NaN the
    moment such a label shows up, so zero counts are rejected instead.
    """
    if not math.isfinite(tau):
        raise ValueError(f"tau must be finite, got {tau}")
    values = _positive_counts(counts, "log_prior")
    return (tau * torch.log(values / values.sum())).float()


def effective_number_weights(counts: Counts, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019, Eq. 3 and 4).

    The effective number of samples of class c is E_c = (1 - beta^{n_c}) / (1 - beta), and the
    class weight is 1 / E_c = (1 - beta) / (1 - beta^{n_c}). As in the LDAM-DRW and semi-self code
    the weights are rescaled to sum to C, so the mean weight is 1 and the loss keeps its scale;
    ``beta = 0`` therefore gives all ones (no re-weighting) and beta -> 1 approaches inverse
    frequency.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    values = _positive_counts(counts, "effective_number_weights")
    effective = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), values)
    weights = (1.0 - beta) / effective
    return (weights / weights.sum() * values.numel()).float()


def drw_weights(counts: Counts, epoch: int, drw_epoch: int = 160, beta: float = 0.9999) -> torch.Tensor:
    """Deferred re-weighting (Cao et al., NeurIPS 2019, Alg. 1): uniform, then class-balanced.

    The features are learned with plain ERM for the 0-based epochs ``epoch < drw_epoch``; from
    ``drw_epoch`` on, the loss uses the effective-number weights. The reference code indexes
    ``[0, beta][epoch // 160]``, which matches this for epochs below 320 and fails beyond.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if drw_epoch < 0:
        raise ValueError(f"drw_epoch must be >= 0, got {drw_epoch}")
    if epoch < drw_epoch:
        return torch.ones(as_counts(counts).numel(), dtype=torch.float32)
    return effective_number_weights(counts, beta)


def ldam_margins(counts: Counts, max_margin: float = 0.5) -> torch.Tensor:
    """Label-distribution-aware margins (Cao et al., NeurIPS 2019, Eq. 12): m_c = C' / n_c^{1/4}.

    C' is chosen so the rarest class gets exactly ``max_margin``; the head gets the smallest margin.
    """
    if not (math.isfinite(max_margin) and max_margin >= 0):
        raise ValueError(f"max_margin must be a finite number >= 0, got {max_margin}")
    values = _positive_counts(counts, "ldam_margins")
    inverse_quartic_root = values.pow(-0.25)
    return (inverse_quartic_root * (max_margin / inverse_quartic_root.max())).float()


def posthoc_logit_adjust(logits: torch.Tensor, counts: Counts, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit correction f_y(x) - tau * log pi_y (Menon et al., ICLR 2021, Eq. 9).

    For a model trained with plain CE this removes the label prior, so argmax targets the balanced
    error. ``logits`` is (..., C); the prior is moved to the logits' device and dtype.
    """
    return _remove_prior(logits, log_prior(counts, tau))


def _remove_prior(logits: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] != offset.numel():
        raise ValueError(f"logits have {logits.shape[-1]} classes but counts have {offset.numel()}")
    return logits - offset.to(device=logits.device, dtype=logits.dtype)
