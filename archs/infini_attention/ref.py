"""Infini-attention's compressive memory (Munkhdalai et al. 2024, "Leave No Context Behind",
arXiv:2404.07143, §2.1.2), as pure functions on float32 tensors.

Per head, a memory matrix M (d_k × d_v) and a normaliser z (d_k) summarise every key/value
of the *previous* segments, written with linear attention (Katharopoulos et al. 2020):

  σ(x) = ELU(x) + 1                                              (the paper's σ)
  read:    A_mem = σ(Q) M_{s-1} / (σ(Q) z_{s-1})                  (Eq. 3)
  linear:  M_s = M_{s-1} + σ(K)ᵀ V,   z_s = z_{s-1} + Σ_t σ(K_t)   (Eq. 4)
  delta:   M_s = M_{s-1} + σ(K)ᵀ (V − σ(K) M_{s-1} / (σ(K) z_{s-1}))  (Eq. 5; z as in Eq. 4)

The delta rule first retrieves what the memory already returns for the new keys and
writes only the difference, so re-writing a stored association changes nothing.

The paper starts from M_0 = 0, z_0 = 0, where Eq. 3 is 0/0; we clamp the denominator at
``eps`` so an empty memory reads exactly 0 (the first segment sees no past). Once anything
is written, σ > 0 makes σ(Q)z strictly positive and the clamp is inactive in practice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6  # only bites on an empty memory (z = 0)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """σ = ELU + 1: positive, so every normaliser σ(Q)z is positive."""
    return F.elu(x) + 1.0


def memory_read(sq: torch.Tensor, mem: torch.Tensor, norm: torch.Tensor,
                eps: float = EPS) -> torch.Tensor:
    """Eq. 3. sq = σ(Q): (B, H, N, Dk); mem: (B, H, Dk, Dv); norm: (B, H, Dk) -> (B, H, N, Dv)."""
    num = torch.einsum("bhnk,bhkv->bhnv", sq, mem)
    den = torch.einsum("bhnk,bhk->bhn", sq, norm)
    return num / den.clamp_min(eps)[..., None]


def memory_write(sk: torch.Tensor, v: torch.Tensor, mem: torch.Tensor, norm: torch.Tensor,
                 update: str, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 ("linear") or Eq. 5 ("delta"): fold one segment in. sk = σ(K): (B, H, N, Dk);
    v: (B, H, N, Dv). Returns the new (mem, norm); the inputs are not modified."""
    if update == "delta":
        v = v - memory_read(sk, mem, norm, eps)
    elif update != "linear":
        raise ValueError(f"unknown memory update {update!r}; choose 'linear' or 'delta'")
    mem = mem + torch.einsum("bhnk,bhnv->bhkv", sk, v)
    norm = norm + sk.sum(dim=2)
    return mem, norm
