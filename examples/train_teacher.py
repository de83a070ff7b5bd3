"""Train the example's teacher with plain PyTorch and save its state_dict where
tabular_task.pretrained_teacher() loads it. Run it from anywhere: python examples/train_teacher.py"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tabular_task import WEIGHTS, make_task


def main(epochs: int = 40, batch_size: int = 64) -> None:
    torch.manual_seed(0)
    task = make_task()
    splits = task.splits()
    x, y = splits.train.tensors
    model = task.build_teacher()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y)).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        x_val, y_val = splits.val.tensors
        accuracy = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
    torch.save(model.state_dict(), WEIGHTS)
    print(f"teacher: val_acc {accuracy:.3f}, saved to {WEIGHTS}")


if __name__ == "__main__":
    main()
