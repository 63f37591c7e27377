"""Interpolated Kneser-Ney (Kneser & Ney 1995; Chen & Goodman 1998, eq. 26) in four steps.

For a history h of k-1 tokens and h' = h without its oldest token:

    P_k(w | h) = ( max(c(h w) - D_k, 0) + D_k * T(h) * P_(k-1)(w | h') ) / S(h)

    S(h) = sum_w c(h w)          all counts after h
    T(h) = #{w : c(h w) > 0}     distinct tokens after h: the mass the discount frees
                                  goes to the lower order, spread like it

and P_k(. | h) = P_(k-1)(. | h') when h was never seen (S(h) = 0). P_0 is uniform over
the vocabulary, so every token keeps some probability.

The counts c are the raw counts at the highest order the position uses, and Kneser-Ney's
continuation counts N1+(. h w) (how many distinct tokens precede h w) at every order
below it: a lower order only speaks when the longer context is unseen, so what matters
there is in how many contexts a token appears, not how often. D_k is Ney's n1/(n1+2 n2)
of those counts, or a fixed value. Each step sums to one by construction: the discounts
take D * T(h) from the seen tokens and give exactly that to the lower order.
"""
from __future__ import annotations

import torch


def interpolate(counts: torch.Tensor, lower: torch.Tensor, discount: float) -> torch.Tensor:
    """One Kneser-Ney step: (P, V) counts after each position's history and (P, V) lower-
    order probabilities -> (P, V) probabilities of this order."""
    total = counts.sum(-1, keepdim=True)                      # S(h)
    types = (counts > 0).sum(-1, keepdim=True).to(counts)     # T(h)
    seen = (counts - discount).clamp(min=0) + discount * types * lower
    return torch.where(total > 0, seen / total.clamp(min=1), lower)


def uniform(n_positions: int, vocab: int, device: torch.device | None = None) -> torch.Tensor:
    """P_0: every token equally likely."""
    return torch.full((n_positions, vocab), 1.0 / vocab, device=device)
