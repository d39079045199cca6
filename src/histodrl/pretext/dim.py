"""Deep InfoMax, local version with prior matching (Hjelm et al., ICLR 2019), the DRL paper's DIM.

Hjelm et al., "Learning deep representations by mutual information estimation and maximization",
https://arxiv.org/abs/1808.06670 (local MI objective, eq. 6 with the JSD estimator, and prior
matching, section 3.3). It is DRL's local term with DIM's negatives instead of deformed images
(METHOD.md E5, the comparison of the paper's Table II):

1. The N originals go through the trunk; ``e`` (N, C1, M, M) is the map at the tap (``--tap``, the
   same as DRL's).
2. The global vector is E9's: ``g = L2norm(GAP(e))`` (N, C1), tiled over the map. DIM's global
   vector is a summary of its local map, and this is the parameter-free one DRL's no-FEM ablation
   uses, so DIM and DRL differ only in their negatives.
3. Positives are ``(e_i, g_i)``; negatives ``(e_{i+1}, g_i)``, the local map of the next image of
   the batch (:func:`histodrl.losses.roll_negatives`). The same local discriminator as DRL scores
   them, and the same JSD loss (eq. 4) is minimised by trunk and discriminator together.
4. Prior matching exactly as DRL's without the FEM (:func:`histodrl.pretext.prior.prior_losses`),
   on ``z = σ(h)`` against U[0, 1]^C1 with weight ``--gamma``, where ``h = BN(W·GAP(e))`` is the
   learned ``Linear -> BatchNorm1d`` projection :class:`histodrl.nn.fem.GlobalProjection`. DIM's
   own prior sigmoid acts on a linear output too. ``σ(GAP(e))`` of the post-ReLU map would have
   every coordinate ≥ 0.5, which the prior discriminator rejects by a trivial rule (METHOD.md (b),
   "Correction (measured)"); the BatchNorm centres each coordinate over the batch, so ``z`` lies on
   both sides of 0.5 from the start. Option ``global_head="relu"`` restores ``σ(GAP(e))``, for
   comparison only. The local path (steps 2–3) is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from histodrl.losses import lsh_loss, roll_negatives
from histodrl.nn import LocalDiscriminator, PriorDiscriminator
from histodrl.nn.fem import GlobalProjection
from histodrl.pretext.base import PretextModule
from histodrl.pretext.prior import prior_losses

if TYPE_CHECKING:
    from histodrl.commands.pretrain import PretrainOptions


class DIM(PretextModule):
    """Deep InfoMax (Hjelm et al. 2019), local JSD objective with batch negatives and prior matching."""

    def __init__(self, options: PretrainOptions | Mapping[str, Any]) -> None:
        super().__init__(options)
        c1 = self.encoder.tap_channels(self.tap)
        widths = tuple(self.width(w) for w in (512, 256, 256))
        self.local_d = LocalDiscriminator(2 * c1, widths=widths)
        self.prior_d = PriorDiscriminator(c1) if float(self.options.gamma) > 0 else None
        global_head = str(self.options.global_head)
        # The prior's pre-sigmoid vector; only the prior term uses it.
        self.global_proj = (
            GlobalProjection(c1) if self.prior_d is not None and global_head == "preact" else None
        )

    def tap_name(self) -> str:
        return str(self.options.tap)

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = x.shape[0]
        e = self.encode(self.prepare(x), [self.tap])[self.tap]
        pooled = e.mean(dim=(2, 3))
        g = F.normalize(pooled, dim=1)[:, :, None, None]
        # Row i of the negatives is image i+1's local map against image i's global vector.
        local = torch.cat([e, roll_negatives(e)])
        logits = self.local_d.forward_shared(local, g)
        t_pos, t_neg = logits[:n], logits[n:]
        local_loss = lsh_loss(t_pos, t_neg)
        loss = local_loss
        logs: dict[str, torch.Tensor] = {"local": local_loss}
        if self.prior_d is not None:
            penalty = float(self.options.prior_penalty)
            h = self.global_proj(pooled) if self.global_proj is not None else pooled
            prior, prior_d = prior_losses(self.prior_d, h, self.generator, penalty)
            loss = loss + float(self.options.gamma) * prior + prior_d
            logs.update(prior=prior, prior_d=prior_d)
            with torch.no_grad():  # U[0, 1] has standard deviation 1/√12 ≈ 0.289
                logs["prior_z_std"] = torch.sigmoid(h.detach().float()).std()
        with torch.no_grad():
            logs["mi"] = 2 * math.log(2) - local_loss.detach()
            logs["sigmoid_pos"] = torch.sigmoid(t_pos.detach().float()).mean()
            logs["sigmoid_neg"] = torch.sigmoid(t_neg.detach().float()).mean()
            # The objective the trunk minimises: everything but the prior discriminator's own loss.
            logs["objective"] = loss.detach() - logs.get("prior_d", torch.zeros_like(loss))
        return loss, logs
