"""Deformation Representation Learning (Xu, Hou et al., BIBM 2020), exactly as METHOD.md (b).

One step, with N originals ``x`` and their elastic deformations ``x̂``:

1. ``[x; x̂]`` goes through the encoder as ONE batch (BatchNorm statistics shared, E10); the map at
   the tap (default conv4_4, M = S/8) is split into ``e`` and ``ê`` (N, C1, M, M).
2. The Feature Enhance Module gives ``f = FEM(e)``, ``f̂ = FEM(ê)`` (N, C2, M, M), again as one batch.
3. L_LSH (eq. 4, E2): the local discriminator scores the aligned pairs (e, f) as positives and
   (ê, f) as negatives, per location.
4. L_GCH (eq. 8 hard, eqs. 9–10 soft) on ``g = L2norm(GAP(f))`` and ``ĝ = L2norm(GAP(f̂))``.
5. Prior matching ("as in [14]"): ``σ(GAP(f))`` of the originals against U[0,1]^C2.

The encoder, FEM and local discriminator minimise L_LSH + λ·L_GCH + γ·L_prior; the prior
discriminator minimises its own loss. Both are stepped by one Adam over all parameters: Adam is
per-parameter, and each loss reaches only its own parameters (the encoder's prior loss goes through a
copy of the prior discriminator whose weights are detached), so this is the same update as two
optimizers stepped on the same batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from histodrl.deform import elastic_deform, paper_sigma_alpha, warp
from histodrl.losses import gch_hard_loss, gch_soft_loss, lsh_loss, lsh_loss_literal
from histodrl.losses.distributed import world_size
from histodrl.nn import FeatureEnhanceModule, LocalDiscriminator, PriorDiscriminator
from histodrl.pretext.base import PretextModule
from histodrl.pretext.prior import prior_losses


class DRL(PretextModule):
    """Deformation Representation Learning: local structure heterogeneity + global context homogeneity."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        c = config
        self.M = self.crop // self.encoder.tap_stride(self.tap)
        if self.M < 1:
            raise ValueError(f"crop {self.crop} is too small for tap {self.tap}")
        c1 = self.encoder.tap_channels(self.tap)
        if c["no_fem"]:
            self.fem = None
            c2 = c1
        else:
            self.fem = FeatureEnhanceModule(
                c1, max(self.M, 2), branch_channels=self.width(int(c["fem_branch_channels"]))
            )
            c2 = self.fem.out_channels
        widths = tuple(self.width(w) for w in (512, 256, 256))
        self.local_d = LocalDiscriminator(c1 + c2, widths=widths)
        self.prior_d = PriorDiscriminator(c2) if c["gamma"] > 0 else None

    def tap_name(self) -> str:
        return str(self.config["tap"])

    # -- pieces ------------------------------------------------------------------------------------

    def deform(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = Deform(x) with σ ~ U(range)·S and α = factor·S per image (METHOD.md (d))."""
        c = self.config
        size = int(c.get("deform_size") or min(x.shape[-2:]))
        lo, hi = c["sigma_range"]
        sigma, alpha = paper_sigma_alpha(
            size,
            x.shape[0],
            generator=self.generator,
            sigma_range=(lo, hi),
            alpha_factor=float(c["alpha_factor"]),
            device=x.device,
        )
        x_hat, _ = elastic_deform(x, sigma, alpha, generator=self.generator)
        return x_hat

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        """E16's optional mitigation: shift x by a random sub-pixel offset (|shift| ≤ 0.5 px per
        axis, bilinear), so that the original is interpolated like x̂ and the slight blur of
        interpolation cannot tell the two apart."""
        n, _, h, w = x.shape
        shift = torch.rand(n, 2, 1, 1, generator=self.generator, device=x.device) - 0.5
        return warp(x, shift.expand(n, 2, h, w))

    def _gch(self, g: torch.Tensor, g_hat: torch.Tensor) -> torch.Tensor:
        c = self.config
        kw = {
            "temperature": float(c["temperature"]),
            "reduction": c["gch_reduction"],
            # Negatives from every process; a no-op when training on one.
            "gather_distributed": True,
        }
        if c["gch"] == "soft":
            return gch_soft_loss(
                g,
                g_hat,
                weight_temperature=float(c["weight_temperature"]),
                detach_target=bool(c["detach_soft_target"]),
                **kw,
            )
        return gch_hard_loss(g, g_hat, **kw)

    def _prior(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder's non-saturating prior loss, prior discriminator's loss)."""
        assert self.prior_d is not None
        penalty = float(self.config.get("prior_penalty", 0.0))
        return prior_losses(self.prior_d, pooled, self.generator, penalty)

    def _count_foreign_negatives(self, g_hat: torch.Tensor) -> torch.Tensor:
        """How many of the gathered deformed descriptors came from other processes (logged as the
        minimum over processes, so a value of N·(world−1) shows every process saw every other's)."""
        from histodrl.losses import gather_distributed

        everyone = gather_distributed(g_hat)
        own = (torch.cdist(everyone.float(), g_hat.float()).min(dim=1).values < 1e-6).sum()
        return (everyone.shape[0] - own).float()

    # -- the step ----------------------------------------------------------------------------------

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        n = x.shape[0]
        x_hat = self.deform(x)
        if c.get("resample_original"):
            x = self.resample(x)
        both = self.encode(self.prepare(torch.cat([x, x_hat])), [self.tap])[self.tap]
        e, e_hat = both[:n], both[n:]
        if self.fem is not None:
            f_both = self.fem(both)
            f, f_hat = f_both[:n], f_both[n:]
            pooled, pooled_hat = f.mean(dim=(2, 3)), f_hat.mean(dim=(2, 3))
            context = f  # positives (e, f) and negatives (ê, f) share F(x), spatially aligned
        else:
            # E9: F := X^Enc; the global vector F_G is tiled over the map (broadcast, no copy).
            pooled, pooled_hat = e.mean(dim=(2, 3)), e_hat.mean(dim=(2, 3))
            context = F.normalize(pooled, dim=1)[:, :, None, None]
        logits = self.local_d.forward_shared(both, context)
        t_pos, t_neg = logits[:n], logits[n:]
        lsh = (lsh_loss_literal if c["lsh"] == "literal" else lsh_loss)(t_pos, t_neg)

        g, g_hat = F.normalize(pooled, dim=1), F.normalize(pooled_hat, dim=1)
        logs: dict[str, torch.Tensor] = {"lsh": lsh}
        loss = lsh
        if c["gch"] != "none":
            gch = self._gch(g, g_hat)
            loss = loss + float(c["lambda_"]) * gch
            logs["gch"] = gch
        if self.prior_d is not None:
            prior, prior_d = self._prior(pooled)
            loss = loss + float(c["gamma"]) * prior + prior_d
            logs["prior"] = prior
            logs["prior_d"] = prior_d
        with torch.no_grad():
            logs["mi"] = 2 * math.log(2) - lsh.detach() if c["lsh"] == "jsd" else -lsh.detach()
            logs["sigmoid_pos"] = torch.sigmoid(t_pos.detach().float()).mean()
            logs["sigmoid_neg"] = torch.sigmoid(t_neg.detach().float()).mean()
            sim = g.detach() @ g_hat.detach().T
            target = torch.arange(n, device=sim.device)
            logs["gch_acc"] = (sim.argmax(dim=1) == target).float().mean()
            if world_size() > 1 and self.global_step % int(c["log_every"]) == 0:
                logs["foreign_negatives"] = self._count_foreign_negatives(g_hat.detach())
        # The main loss minus the prior discriminator's own term is what the paper calls L.
        logs["objective"] = (
            (loss - logs["prior_d"]).detach() if "prior_d" in logs else loss.detach()
        )
        return loss, logs
