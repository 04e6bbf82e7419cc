"""Where block 5-7's spatial logits come from, checkpoint by checkpoint: for each attention block, over the first
128 clips of a split, the mean and standard deviation of S (eq. 4), of the global branch's logit (eq. 5) and of
the local branch's (eq. 6), with the global branch's last conv (its bias and the summed weights, which a
uniform rise of the logit moves) and the mean of the ReLU'd BatchNorm output it weights.

    python results/sed/mask_branches.py SPLIT.h5 CHECKPOINT...
"""
import sys

import torch

from fastsca.inference import load_trained_model
from fastsca.mask_stats import read_log_mels


def branch_rows(path: str, data: str) -> list[str]:
    trained = load_trained_model(path)
    model, rows = trained.model, []
    kept: dict[str, torch.Tensor] = {}
    hooks = []
    for block in model.config.attention_blocks:
        spatial = model.blocks[block].attention.spatial
        g, loc = spatial.global_branch, spatial.local_branch
        hooks += [spatial.register_forward_pre_hook(lambda m, i, b=block: kept.__setitem__(f"{b}S", i[0])),
                  g.register_forward_hook(lambda m, i, o, b=block: kept.__setitem__(f"{b}g", o)),
                  g.act.register_forward_hook(lambda m, i, o, b=block: kept.__setitem__(f"{b}h", o)),
                  loc.register_forward_hook(lambda m, i, o, b=block: kept.__setitem__(f"{b}l", o))]
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for mel in read_log_mels(data, trained.log_mel, 128, 64):
            model(mel)
            for key, value in kept.items():
                parts.setdefault(key, []).append(value.clone())
    for hook in hooks:
        hook.remove()
    for block in model.config.attention_blocks:
        g = model.blocks[block].attention.spatial.global_branch
        s, gl, hl, ll = (torch.cat(parts[f"{block}{k}"]) for k in "Sghl")
        rows.append(f"| {trained.step} | {block + 1} | {s.mean():.3f} | {s.std():.3f} | {gl.mean():.2f} "
                    f"| {gl.std():.2f} "
                    f"| {ll.mean():.2f} | {ll.std():.2f} | {g.conv2.bias.item():.3f} | {g.conv2.weight.sum():.2f} "
                    f"| {hl.mean():.3f} | {g.bn.weight.mean():.3f} |")
    return rows


def main() -> None:
    data, *paths = sys.argv[1:]
    print("| step | block | S mean | S std | global mean | global std | local mean | local std | conv2 bias "
          "| conv2 weight sum | ReLU(BN) mean | BN gamma mean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        print("\n".join(branch_rows(path, data)))


if __name__ == "__main__":
    main()
