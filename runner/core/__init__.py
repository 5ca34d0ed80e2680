"""The training core: plain PyTorch. `train.fit` and what it uses (augment, optim, schedule, budget,
checkpoint). Imports torch, numpy, `models` and `runner.data`'s in-memory types; never Ray or MLflow,
so it runs wherever torch does (the GPU benchmark machine has neither)."""
